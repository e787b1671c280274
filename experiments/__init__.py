"""Experiments: configs (``experiments/configs/*.py``) and one script per table/figure.

``REGISTRY`` maps an experiment name to the module that reproduces it, run by
``sslit reproduce <name> [args...]``. Each module provides
``main(argv: list[str]) -> int`` accepting at least ``--scale {smoke,cpu,full}`` and
``--workdir DIR``. An entry whose value is None is announced but not yet
implemented; the command says so instead of failing obscurely.
"""

from __future__ import annotations

# name -> importable module path with main(argv) (None: not implemented yet).
REGISTRY: dict[str, str | None] = {
    "assumptions": "experiments.assumptions",  # SPEC 7.1: noise-model checks vs sigma
    "separation": "experiments.separation",  # SPEC 7.2: separation and entropy bounds
    "table1": "experiments.table1",  # SPEC 7.3: linear probes, methods vs variants
    "bound": "experiments.bound",  # SPEC 7.4: generalization bound per checkpoint
    "vicreg_logdet": "experiments.vicreg_logdet",  # SPEC 7.5: VICReg terms vs log det
}
