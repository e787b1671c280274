"""Experiments: configs (``experiments/configs/*.py``) and one script per table/figure.

``REGISTRY`` maps an experiment name to the module that reproduces it, run by
``python -m experiments <name> [args...]`` (or ``sslit reproduce <name> ...`` from
the repository root). Each module provides ``main(argv: list[str]) -> int``
accepting at least ``--scale {smoke,cpu,full}`` and ``--workdir DIR``. The
experiments use the library through ``sslit.runs`` with config objects.
"""

from __future__ import annotations

# name -> importable module path with main(argv).
REGISTRY: dict[str, str] = {
    "assumptions": "experiments.assumptions",  # SPEC 7.1: noise-model checks vs sigma
    "separation": "experiments.separation",  # SPEC 7.2: separation and entropy bounds
    "table1": "experiments.table1",  # SPEC 7.3: linear probes, methods vs variants
    "bound": "experiments.bound",  # SPEC 7.4: generalization bound per checkpoint
    "vicreg_logdet": "experiments.vicreg_logdet",  # SPEC 7.5: VICReg terms vs log det
}
