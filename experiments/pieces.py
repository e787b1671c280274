"""Keep an experiment's finished pieces without its checkpoints, and bring them back.

``python -m experiments pieces save <workdir> [--store DIR]`` copies every small
JSON file of an experiment's workdir (each run's ``config.json``, ``results.json``
and cached probes, each analysed checkpoint and seed: what the experiments reuse
instead of recomputing) into ``DIR`` (default
``experiments/results/pieces/<basename of workdir>``), leaving out checkpoints,
TensorBoard events, metrics logs and plots. ``python -m experiments pieces restore
<workdir> [--store DIR]`` copies them back without overwriting what is there. A
cpu-scale experiment longer than one sitting (or than one machine's life) is then
run in resumable parts: run, ``save``, commit the store; on the next machine
``restore``, run again: finished runs and analyses are reused, the rest computed.

What is reused is the experiment's own rule (``table1``: a run whose
``config.json`` equals the one it would write and whose ``results.json`` is at the
final step; ``separation``: ``pieces/seed<S>.json`` and
``<run>/separation/step<N>.json`` with the same settings); this module only moves
files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

# Folders never copied (large or rebuilt): checkpoints, event files, plots.
SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "__pycache__"})
MAX_BYTES = 1 << 20  # a JSON file larger than this is not a "piece"
DEFAULT_STORE = os.path.join("experiments", "results", "pieces")


def _pieces(root: str) -> list[str]:
  """Relative paths of the ``*.json`` files under ``root`` that are pieces."""
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    for name in sorted(files):
      path = os.path.join(folder, name)
      if name.endswith(".json") and os.path.getsize(path) <= MAX_BYTES:
        out.append(os.path.relpath(path, root))
  return out


def _copy(src_root: str, dst_root: str, *, overwrite: bool) -> list[str]:
  copied = []
  for rel in _pieces(src_root):
    dst = os.path.join(dst_root, rel)
    if os.path.exists(dst) and not overwrite:
      continue
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    shutil.copyfile(os.path.join(src_root, rel), tmp)
    os.replace(tmp, dst)
    copied.append(rel)
  return copied


def save(workdir: str, store: str) -> list[str]:
  """Copy the pieces of ``workdir`` into ``store`` (replacing older copies)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no experiment workdir {workdir!r}")
  return _copy(workdir, store, overwrite=True)


def restore(workdir: str, store: str) -> list[str]:
  """Copy the pieces in ``store`` into ``workdir``, keeping files already there."""
  if not os.path.isdir(store):
    raise FileNotFoundError(f"no pieces stored in {store!r}")
  return _copy(store, workdir, overwrite=False)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments pieces",
                              description=__doc__.split("\n")[0])
  p.add_argument("action", choices=("save", "restore"))
  p.add_argument("workdir", help="the experiment's workdir, e.g. runs/reproduce/table1-cpu")
  p.add_argument("--store", default=None,
                 help=f"where the pieces are kept (default {DEFAULT_STORE}/<basename>)")
  args = p.parse_args(argv)
  store = args.store or os.path.join(DEFAULT_STORE,
                                     os.path.basename(os.path.normpath(args.workdir)))
  try:
    files = (save if args.action == "save" else restore)(args.workdir, store)
  except FileNotFoundError as e:
    print(f"pieces: error: {e}", file=sys.stderr)
    return 2
  src, dst = (args.workdir, store) if args.action == "save" else (store, args.workdir)
  print(f"pieces: {args.action}d {len(files)} file(s) from {src} to {dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
