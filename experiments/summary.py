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
# The main caveat of each verdict, in one line (each doc says it with the numbers).
CAVEATS = {
    "assumptions": "sigma 1e-6 was chosen after a failed run at 1e-3, with float32 "
                   "slopes; at 1e-5 one SimCLR seed fails and the random-init "
                   "network passes; the mean error is not in the criterion",
    "separation": "4.3 epochs of training; the ratio's denominator is a max over "
                  "1,000 inputs; the upper MI bound sits at log n by construction",
    "table1": "400 steps and 3 seeds, no multiplicity correction; the pre-registered "
              "10-seed run at the main job's length is pending",
    "bound": "the test loss (~0.6) is far below every bound (42-117): only 'bound < "
             "c' can bite; the per-checkpoint series are not checked in yet",
    "vicreg_logdet": "the correlation over training is algebraic (it holds on "
                     "untrained features); only the weight intervention tests the "
                     "paper's reading",
}
SECTIONS = {"assumptions": "§7.1", "separation": "§7.2", "table1": "§7.3",
            "bound": "§7.4", "vicreg_logdet": "§7.5"}
# Keys of a results.json kept in a checked-in copy (everything the table reads).
SAVED_KEYS = ("experiment", "scale", "seeds", "verdict", "claim_held", "criterion",
              "summary", "evidence")
# The verdict paragraph of each experiment's doc (docs/experiment_<name>.md).
DOC_START, DOC_END = "<!-- verdict:start -->", "<!-- verdict:end -->"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
NO_EVIDENCE = "stored verdict; its evidence is not checked in, so it is not recomputed"


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


def _normal(x: Any) -> Any:
  """``x`` as JSON would store it (tuples as lists, NumPy values as Python ones)."""
  return json.loads(json.dumps(common._jsonable(x)))  # pylint: disable=protected-access


def differences(stored: Any, new: Any, path: str = "", *, rtol: float = 1e-9,
                limit: int = 5) -> list[str]:
  """Where two JSON values differ (floats up to ``rtol``), as readable paths."""
  out: list[str] = []
  if isinstance(stored, dict) and isinstance(new, dict):
    for k in sorted(set(stored) | set(new)):
      if k not in stored or k not in new:
        out.append(f"{path}.{k}: {'missing' if k not in stored else 'extra'} in the "
                   f"stored copy")
      else:
        out += differences(stored[k], new[k], f"{path}.{k}", rtol=rtol)
      if len(out) >= limit:
        break
  elif isinstance(stored, list) and isinstance(new, list):
    if len(stored) != len(new):
      out.append(f"{path}: {len(stored)} items stored, {len(new)} recomputed")
    else:
      for i, (a, b) in enumerate(zip(stored, new)):
        out += differences(a, b, f"{path}[{i}]", rtol=rtol)
        if len(out) >= limit:
          break
  elif (isinstance(stored, (int, float)) and isinstance(new, (int, float))
        and not isinstance(stored, bool) and not isinstance(new, bool)):
    if not (stored == new or abs(stored - new) <= rtol * max(abs(stored), abs(new))):
      out.append(f"{path}: stored {stored!r}, recomputed {new!r}")
  elif stored != new:
    out.append(f"{path}: stored {str(stored)[:80]!r}, recomputed {str(new)[:80]!r}")
  return out[:limit]


def recompute(name: str, results: Mapping[str, Any]) -> dict[str, Any] | None:
  """The experiment's summary recomputed from its ``evidence`` (None without one).

  ``<module>.summarize(evidence)``: the experiment's own criterion functions on
  the raw numbers (per-seed scores, per-checkpoint series, the controls' inputs).
  """
  if not isinstance(results.get("evidence"), Mapping):
    return None
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(REGISTRY[name])
  return _normal(module.summarize(results["evidence"]))


def verify(name: str, results: Mapping[str, Any]) -> list[str]:
  """Every way the stored verdict, flag and summary differ from the recomputation."""
  new = recompute(name, results)
  if new is None:
    return []
  problems = [f"{name}: summary{d}" for d in differences(_normal(results.get("summary")),
                                                          new)]
  for key in ("verdict", "claim_held"):
    if results.get(key) != new[key]:
      problems.append(f"{name}: {key} is {results.get(key)!r}, the evidence gives "
                      f"{new[key]!r}")
  return problems


def _controls_text(summary: Mapping[str, Any]) -> str:
  parts = [f"{c['name']}: {c['verdict']}" for c in summary.get("negative_controls", [])]
  parts += [f"{c['name']} (positive): {c['verdict']}"
            for c in summary.get("positive_controls", [])]
  return "; ".join(parts) or "none run"


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
    cells = ([claim, CLAIMS[name], NOT_RUN] + ([] if compact else ["–"])
             + ["–", _cell(CAVEATS[name]), doc])
  else:
    recomputed = recompute(name, results)
    verdict = f"**{summary['verdict']}**" + ("" if recomputed is not None
                                               else f" ({NO_EVIDENCE})")
    s = recomputed or summary
    cells = ([claim, _cell(s["claim"])]
             + ([] if compact else [_cell(s["result"])])
             + [verdict, _cell(_controls_text(s)), _cell(CAVEATS[name]), doc])
  return "| " + " | ".join(cells) + " |"


def render(root: str, scale: str, names: Sequence[str] = tuple(REGISTRY), *,
           compact: bool = False) -> str:
  """The Markdown table (header, one row per experiment), newline-terminated.

  ``compact``: the table of the top-level README (claim, verdict, doc).
  """
  header = ("| experiment | paper's claim | verdict | negative controls | main caveat "
            "| doc |\n|---|---|---|---|---|---|" if compact else
            "| experiment | paper's claim | result | verdict | negative controls | main "
            "caveat | doc |\n|---|---|---|---|---|---|---|")
  lines = [f"Scale `{scale}`; verdicts recomputed from the checked-in evidence with "
           f"the criteria stated in each doc, and the verdicts of their negative "
           f"controls, which must not be \"held\" (`python -m experiments summary "
           f"--root {root} --scale {scale}`).", "",
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


def doc_paragraph(name: str, results: Mapping[str, Any] | None, scale: str,
                  root: str) -> str:
  """The verdict paragraph of ``docs/experiment_<name>.md`` (generated)."""
  if results is None or not isinstance(results.get("summary"), Mapping):
    return f"\n**Verdict ({scale} scale): {NOT_RUN}.**\n"
  s = recompute(name, results) or results["summary"]
  how = ("recomputed from the evidence in" if recompute(name, results) is not None
         else f"{NO_EVIDENCE}:")
  lines = [f"**Verdict ({scale} scale, {how} `{root}/{name}-{scale}.json` by "
           f"`python -m experiments summary --root {root} --scale {scale}`): "
           f"{s['verdict']}.** {s['result']}", ""]
  for kind in ("negative_controls", "positive_controls"):
    for c in s.get(kind, []):
      label = "Negative" if kind == "negative_controls" else "Positive"
      lines.append(f"- {label} control `{c['name']}`: **{c['verdict']}**. {c['what']}.")
  sup = s.get("superseded")
  if sup:
    lines += ["", f"Superseded criterion, kept beside it: {sup['verdict']} ({sup['why']})."
                  f" {sup['result']}"]
    for c in sup.get("negative_controls", []):
      lines.append(f"- Its control `{c['name']}`: **{c['verdict']}**. {c['what']}.")
  return "\n" + "\n".join(lines) + "\n"


def replace_doc_block(text: str, paragraph: str, path: str) -> str:
  a, b = text.find(DOC_START), text.find(DOC_END)
  if a < 0 or b < a:
    raise ValueError(f"{path} has no '{DOC_START}' ... '{DOC_END}' block.")
  return text[:a + len(DOC_START)] + paragraph + text[b:]


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
                 help="exit 1 when this file's marked table differs, or any stored "
                      "verdict, summary or doc verdict paragraph differs from the "
                      "recomputation from the evidence (repeatable)")
  p.add_argument("--docs", default=DOCS,
                 help="folder of the experiments' docs whose verdict paragraphs "
                      "--readme rewrites and --check checks ('none': no docs; "
                      "default: the repository's docs/)")
  args = p.parse_args(list(argv or []))
  try:
    tables = {compact: render(args.root, args.scale, compact=compact)
              for compact in (False, True)}
    table = tables[False]
    if args.save:
      for path in save(args.root, args.scale, args.save):
        print(f"wrote {path}", file=sys.stderr)
    failed = False
    if args.check:
      for name in REGISTRY:
        results = find_results(args.root, name, args.scale)
        problems = [] if results is None else verify(name, results)
        for problem in problems:
          print(f"summary: {problem}", file=sys.stderr)
        if results is not None and recompute(name, results) is None:
          print(f"summary: note: {name}: {NO_EVIDENCE}.", file=sys.stderr)
        failed |= bool(problems)
    docs = ([] if args.docs == "none" else
            [(os.path.join(args.docs, f"experiment_{n}.md"), n) for n in REGISTRY])
    edits = ([(p, None, False) for p in args.readme] + [(p, None, True) for p in args.check]
             + ([(p, n, False) for p, n in docs] if args.readme else [])
             + ([(p, n, True) for p, n in docs] if args.check else []))
    for path, name, checking in edits:
      if name is not None and not os.path.isfile(path):
        continue
      with open(path) as f:
        text = f.read()
      if name is None:
        new = replace_block(text, tables[is_compact(text)], path)
        what = "the table"
      else:
        new = replace_doc_block(text, doc_paragraph(
            name, find_results(args.root, name, args.scale), args.scale, args.root),
                                path)
        what = "the verdict paragraph"
      if checking and new != text:
        hint = (f"--readme {path}" if name is None else
                "--readme (any file; it rewrites the docs' paragraphs too)")
        print(f"summary: {os.path.relpath(path)}: {what} differs from the results "
              f"under {args.root}; run with {hint}.", file=sys.stderr)
        failed = True
      if not checking and new != text:
        with open(path, "w") as f:
          f.write(new)
    if failed:
      return 1
  except (OSError, ValueError) as e:
    print(f"summary: error: {e}", file=sys.stderr)
    return 2
  print(table, end="")
  return 0
