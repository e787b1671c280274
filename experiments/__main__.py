"""``python -m experiments <name> [args...]``: run one registered paper experiment.

``python -m experiments summary [--root DIR] [--scale SCALE]`` prints the table of
every experiment's verdict (``experiments/summary.py``); ``python -m experiments
pieces {save,restore} WORKDIR`` keeps a workdir's finished pieces without its
checkpoints (``experiments/pieces.py``).

``sslit reproduce <name> ...`` launches this from a repository checkout. The batched
LAPACK workaround of ``sslit.parallel.serialize_cpu_lapack`` is applied before JAX
starts (the CPA analyses of the experiments run batched LAPACK kernels).
"""

from __future__ import annotations

import importlib
import sys

from experiments import REGISTRY


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: python -m experiments <name> [args...]\n"
          "       python -m experiments summary [--root DIR] [--scale SCALE]\n"
          "       python -m experiments pieces {save,restore} WORKDIR [--store DIR]\n"
          "experiments: " + ", ".join(sorted(REGISTRY)))
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name == "summary":  # the table of every experiment's verdict; no JAX needed
    from experiments import summary  # pylint: disable=g-import-not-at-top
    return summary.main(rest)
  if name == "pieces":  # moves small JSON files; no JAX needed
    from experiments import pieces  # pylint: disable=g-import-not-at-top
    return pieces.main(rest)
  if name not in REGISTRY:
    print(f"sslit reproduce: error: unknown experiment {name!r}; registered: "
          f"{', '.join(sorted(REGISTRY))}.", file=sys.stderr)
    return 2
  from sslit import parallel  # pylint: disable=g-import-not-at-top  (before JAX starts)
  parallel.serialize_cpu_lapack()
  return int(importlib.import_module(REGISTRY[name]).main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
