"""SSL methods as objects: what the step and the run layer need to know of each.

Each method is one :class:`Method` (a frozen dataclass of pure functions): the
model outputs and heads it needs, its state in ``TrainState.ema_params`` (an EMA
target, DINO's centre, SwAV's queue) and how that starts and changes, which network
``eval.target`` probes, and how its loss is called on a step's outputs. An
objective (``sslit.objectives.get_objective``) names its method in ``kind``;
:func:`get_method` resolves it, once per run.

============  ===================================================================
``pair``      ``loss_fn(z_a, z_b)`` (VICReg, SimCLR, Barlow Twins, W-MSE, MMCR, ...)
``byol``      ``loss_fn(p_a, p_b, t_a, t_b, z_a, z_b)``, EMA target, predictor
``simsiam``   ``loss_fn(p_a, p_b, z_a, z_b)``, bottleneck predictor, no target
``moco``      ``loss_fn(q_a, q_b, k_a, k_b)``, momentum encoder, predictor
``dino``      ``loss_fn(student, teacher, center, teacher_temperature=)``
``swav``      ``loss_fn(z, prototypes, queue=)``, unit-norm prototypes, queue
``views``     ``loss_fn(z [m, n, k], key=)``: all views at once
============  ===================================================================

Adding a method: one module here defining a :class:`Method` and a line in
``METHODS``; adding an objective to an existing method: its loss module and a line
in the objectives' registry.
"""

from __future__ import annotations

from sslit.methods.base import (Method, Settings, StepOutputs, ema, embedding_of,
                                settings_for, view_pairs)
from sslit.methods.dino import DINO, dino_logits_output
from sslit.methods.momentum import BYOL, MOCO
from sslit.methods.pair import PAIR
from sslit.methods.simsiam import SIMSIAM
from sslit.methods.swav import SWAV
from sslit.methods.views import VIEWS

__all__ = ["Method", "Settings", "StepOutputs", "METHODS", "get_method",
           "settings_for", "view_pairs", "embedding_of", "ema", "dino_logits_output",
           "option_fields"]

METHODS: dict[str, Method] = {m.name: m for m in (PAIR, BYOL, SIMSIAM, MOCO, DINO, SWAV,
                                                  VIEWS)}


def get_method(method: Method | str) -> Method:
  """The :class:`Method` of a name (``Objective.kind``); a ``Method`` is returned as is.

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  if isinstance(method, Method):
    return method
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)} "
                     f"(an objective's kind, see sslit.objectives.get_objective).")
  return METHODS[method]


def option_fields() -> dict[str, tuple[str, ...]]:
  """``FitOptions`` field -> the methods that read it, for fields one method owns."""
  owners: dict[str, tuple[str, ...]] = {}
  for m in METHODS.values():
    for field in m.options:
      owners[field] = owners.get(field, ()) + (m.name,)
  return owners
