"""The objectives by name: ``get_objective``, ``list_objectives``, ``Objective``.

Each name maps to the method that calls it (``kind``, a name of ``sslit.methods``),
its function and preset keyword values. Adding an objective: its topic module (or one
new module) and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax

import sslit._validate as _validate
from sslit.objectives.alignment_uniformity import alignment_uniformity_loss
from sslit.objectives.clustering import swav_loss
from sslit.objectives.contrastive import infonce_loss, moco_v3_loss
from sslit.objectives.distillation import byol_pair_loss, dino_loss, simsiam_loss
from sslit.objectives.information import (ENTROPY_ESTIMATORS, byol_information_loss,
                                          information_loss, mmcr_loss)
from sslit.objectives.lejepa import lejepa_loss
from sslit.objectives.variance_covariance import (barlow_twins_loss, vicreg_loss,
                                                  vicreg_paper_loss, wmse_loss)

Array = jax.Array
Aux = dict[str, Array]

__all__ = ["KIND_STATE", "Objective", "list_objectives", "get_objective"]


# What the training step must carry and feed for each kind of objective (see
# Objective; each kind is a method of sslit.methods, which owns the behaviour): "ema" = a momentum copy of the online parameters, "predictor" = a
# predictor head on the online branch, "center" = DINO's [K] centre, "prototypes" =
# SwAV's [P, k] prototype matrix, "multi_crop" = stacked views [m, n, ...].
KIND_STATE: dict[str, tuple[str, ...]] = {
    "pair": (),
    "byol": ("ema", "predictor"),
    "simsiam": ("predictor",),
    "moco": ("ema", "predictor"),
    "dino": ("ema", "center", "multi_crop"),
    "swav": ("prototypes", "multi_crop"),
    "views": ("multi_crop",),
}


class Objective(NamedTuple):
  """A named objective: ``kind`` says how ``fn`` is called (and ``KIND_STATE`` what
  state the training step needs for it).

  ``kind == "pair"``: ``fn(z_a, z_b) -> (loss, aux)``.
  ``kind == "byol"``: ``fn(p_a, p_b, t_a, t_b, z_a, z_b) -> (loss, aux)``.
  ``kind == "simsiam"``: ``fn(p_a, p_b, z_a, z_b)`` (online predictor and projector
  outputs; no EMA).
  ``kind == "moco"``: ``fn(q_a, q_b, k_a, k_b)`` (online predictor outputs, momentum
  encoder projections).
  ``kind == "dino"``: ``fn(student [m, n, K], teacher [g, n, K], center [K],
  teacher_temperature=...)``; ``aux["center"]`` is the next centre.
  ``kind == "swav"``: ``fn(z [m, n, k], prototypes [P, k])``.
  ``kind == "views"``: ``fn(z [m, n, k], *, key)`` (all views, global first).
  """
  name: str
  kind: str
  fn: Callable[..., tuple[Array, Aux]]


def _byol_base(p_a, p_b, t_a, t_b, z_a, z_b):
  del z_a, z_b  # plain BYOL has no entropy term
  return byol_pair_loss(p_a, p_b, t_a, t_b)


# name -> (kind, function, preset keyword values)
_REGISTRY: dict[str, tuple[str, Callable[..., Any], dict[str, Any]]] = {
    "vicreg": ("pair", vicreg_loss, {}),
    "vicreg_paper": ("pair", vicreg_paper_loss, {}),
    "simclr": ("pair", infonce_loss, {}),
    "barlow_twins": ("pair", barlow_twins_loss, {}),
    "byol": ("byol", _byol_base, {}),
    "information": ("pair", information_loss, {}),
    "vicreg+logdet": ("pair", information_loss, {"entropy": "logdet"}),
    "vicreg+pairdist": ("pair", information_loss,
                        {"entropy": "pairwise_bhattacharyya"}),
    "byol+logdet": ("byol", byol_information_loss, {"entropy": "logdet"}),
    "byol+pairdist": ("byol", byol_information_loss,
                      {"entropy": "pairwise_bhattacharyya"}),
    "vicreg+koleo": ("pair", information_loss,
                     {"entropy": "koleo", "invariance": "cosine"}),
    "byol+koleo": ("byol", byol_information_loss, {"entropy": "koleo"}),
    "simsiam": ("simsiam", simsiam_loss, {}),
    "moco_v3": ("moco", moco_v3_loss, {}),
    "dino": ("dino", dino_loss, {}),
    "swav": ("swav", swav_loss, {}),
    "wmse": ("pair", wmse_loss, {}),
    "mmcr": ("pair", mmcr_loss, {}),
    "lejepa": ("views", lejepa_loss, {}),
    "align_uniform": ("pair", alignment_uniformity_loss, {}),
}
_ALIASES = {"infonce": "simclr", "barlow": "barlow_twins", "mocov3": "moco_v3",
            "w_mse": "wmse"}


def list_objectives() -> list[str]:
  """Every name :func:`get_objective` accepts (canonical names and aliases), sorted."""
  return sorted(list(_REGISTRY) + list(_ALIASES))


def _keyword_options(fn: Callable[..., Any]) -> list[str]:
  return [p.name for p in inspect.signature(fn).parameters.values()
          if p.kind is inspect.Parameter.KEYWORD_ONLY]


def get_objective(name: str, **overrides: Any) -> Objective:
  """Look up an objective by name, with hyperparameter overrides.

  Args:
    name: one of :func:`list_objectives` (aliases ``infonce`` = ``simclr``,
      ``barlow`` = ``barlow_twins`` resolve to the canonical name).
    **overrides: keyword hyperparameters of the underlying function (e.g.
      ``sim_coeff=10.0``); they replace the preset's values.

  Returns:
    ``Objective(name, kind, fn)`` with ``name`` canonical and ``fn`` a
    ``functools.partial`` whose ``keywords`` are the preset's values merged with the
    overrides, so ``get_objective(o.name, **o.fn.keywords)`` rebuilds ``o``.

  Raises:
    ValueError: unknown name or unknown override (the message lists the valid ones).
  """
  canonical = _ALIASES.get(name, name)
  if canonical not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; choose one of "
                     f"{list_objectives()}.")
  kind, fn, preset = _REGISTRY[canonical]
  valid = _keyword_options(fn)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for objective {canonical!r}; "
                     f"valid options: {valid}.")
  if "entropy" in overrides:
    _validate.check_choice(overrides["entropy"], ENTROPY_ESTIMATORS, "entropy")
  return Objective(canonical, kind, functools.partial(fn, **{**preset, **overrides}))
