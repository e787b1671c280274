"""``python -m experiments summary``: the table of the paper's claims and verdicts.

Reads each experiment's ``results.json`` under ``--root`` (``<root>/<name>-<scale>/
results.json``, or a checked-in copy ``<root>/<name>-<scale>.json``) and prints the
Markdown table of ``experiments/README.md``: per experiment the paper's claim, the
result with its numbers, the verdict of the criterion stated in its doc (held / not
held / undecided) and the doc. An experiment without a results file, or whose file
predates the current criteria (no ``summary`` entry), is shown as "not yet run with
the current code".

Options: ``--root DIR`` (default ``runs/reproduce``), ``--scale`` (default ``cpu``),
``--save DIR`` (also write the compact copies ``<DIR>/<name>-<scale>.json`` that the
table is made from, for checking in), ``--readme FILE`` (replace the table between
``<!-- summary:start -->`` and ``<!-- summary:end -->`` in FILE; repeatable) and
``--check FILE`` (exit 1 when FILE's table differs from the one it should hold;
repeatable). A block opened with ``<!-- summary:start compact -->`` gets the compact
table (claim, verdict and doc, links relative to the repository root: the top-level
README.md); the plain marker gets the full table with the results' numbers (links
relative to ``experiments/``: experiments/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping, Sequence

from experiments import REGISTRY
from experiments import common

START, END = "<!-- summary:start -->", "<!-- summary:end -->"
START_COMPACT = "<!-- summary:start compact -->"
NOT_RUN = "not yet run with the current code"
# The paper's claim per experiment (SPEC §7), shown also when nothing has run.
CLAIMS = {
    "assumptions": "noisy copies stay in their CPA region and the Gaussian model's "
                   "errors vanish as σ → 0 (SimCLR- and VICReg-trained nets)",
    "separation": "the mixture components separate during training",
    "table1": "each information-theoretic variant beats its base method",
    "bound": "the generalization bound holds at every checkpoint",
    "vicreg_logdet": "VICReg's variance/covariance terms act as a log-det entropy "
                     "surrogate",
}
SECTIONS = {"assumptions": "§7.1", "separation": "§7.2", "table1": "§7.3",
            "bound": "§7.4", "vicreg_logdet": "§7.5"}
# Keys of a results.json kept in a checked-in copy (everything the table reads).
SAVED_KEYS = ("experiment", "scale", "seeds", "verdict", "claim_held", "criterion",
              "summary")


def find_results(root: str, name: str, scale: str) -> dict | None:
  """An experiment's results (full or checked-in copy) under ``root``, or None."""
  for path in (os.path.join(root, f"{name}-{scale}", "results.json"),
               os.path.join(root, f"{name}-{scale}.json")):
    if os.path.isfile(path):
      with open(path) as f:
        try:
          return json.load(f)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path} is not valid JSON ({e}); re-run the experiment "
                           f"or delete the file.") from None
  return None


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def row(name: str, results: Mapping[str, Any] | None, *, compact: bool = False) -> str:
  """One Markdown row of the table for one experiment.

  ``compact``: no result column, the doc linked from the repository root (the
  top-level README.md); otherwise linked from ``experiments/``.
  """
  doc = f"[doc]({'' if compact else '../'}docs/experiment_{name}.md)"
  claim = f"`{name}` ({SECTIONS[name]})"
  summary = (results or {}).get("summary")
  if not isinstance(summary, Mapping):
    cells = [claim, CLAIMS[name], NOT_RUN] + ([] if compact else ["–"]) + [doc]
  else:
    cells = ([claim, _cell(summary["claim"])]
             + ([] if compact else [_cell(summary["result"])])
             + [f"**{summary['verdict']}**", doc])
  return "| " + " | ".join(cells) + " |"


def render(root: str, scale: str, names: Sequence[str] = tuple(REGISTRY), *,
           compact: bool = False) -> str:
  """The Markdown table (header, one row per experiment), newline-terminated.

  ``compact``: the table of the top-level README (claim, verdict, doc).
  """
  header = ("| experiment | paper's claim | verdict | doc |\n|---|---|---|---|"
            if compact else
            "| experiment | paper's claim | result | verdict | doc |\n|---|---|---|---|---|")
  lines = [f"Scale `{scale}`; verdicts of the criteria stated in each doc "
           f"(`python -m experiments summary --root {root} --scale {scale}`).", "",
           header]
  lines += [row(n, find_results(root, n, scale), compact=compact) for n in names]
  return "\n".join(lines) + "\n"


def save(root: str, scale: str, out_dir: str) -> list[str]:
  """Compact copies (``SAVED_KEYS``) of the current results: the checked-in files."""
  written = []
  os.makedirs(out_dir, exist_ok=True)
  for name in REGISTRY:
    results = find_results(root, name, scale)
    if results is None or "summary" not in results:
      continue
    small = {k: results[k] for k in SAVED_KEYS if k in results}
    written.append(common.write_results(out_dir, small, name=f"{name}-{scale}.json"))
  return written


def marked_block(text: str, path: str = "the file") -> tuple[int, int]:
  """``(start, end)`` offsets of the text between the summary markers."""
  for start in (START, START_COMPACT):
    a, b = text.find(start), text.find(END)
    if a >= 0 and b > a:
      return a + len(start), b
  raise ValueError(f"{path} has no '{START}' (or '{START_COMPACT}') ... '{END}' "
                   f"block.")


def is_compact(text: str) -> bool:
  """Whether the file's summary block asks for the compact table."""
  return START_COMPACT in text


def replace_block(text: str, table: str, path: str = "the file") -> str:
  """``text`` with the marked block replaced by ``table``."""
  a, b = marked_block(text, path)
  return text[:a] + "\n" + table + text[b:]


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments summary",
                              description=__doc__.splitlines()[0])
  p.add_argument("--root", default=os.path.join("runs", "reproduce"))
  p.add_argument("--scale", choices=common.SCALES, default="cpu")
  p.add_argument("--save", default=None, help="write compact copies into this folder")
  p.add_argument("--readme", action="append", default=[],
                 help="update the marked table in this file (repeatable)")
  p.add_argument("--check", action="append", default=[],
                 help="exit 1 when this file's marked table differs (repeatable)")
  args = p.parse_args(list(argv or []))
  try:
    tables = {compact: render(args.root, args.scale, compact=compact)
              for compact in (False, True)}
    table = tables[False]
    if args.save:
      for path in save(args.root, args.scale, args.save):
        print(f"wrote {path}", file=sys.stderr)
    for path, checking in ([(p, False) for p in args.readme]
                           + [(p, True) for p in args.check]):
      with open(path) as f:
        text = f.read()
      new = replace_block(text, tables[is_compact(text)], path)
      if checking and new != text:
        print(f"summary: {path}: the table differs from the results under "
              f"{args.root}; run with --readme {path}.", file=sys.stderr)
        return 1
      if not checking and new != text:
        with open(path, "w") as f:
          f.write(new)
  except (OSError, ValueError) as e:
    print(f"summary: error: {e}", file=sys.stderr)
    return 2
  print(table, end="")
  return 0
