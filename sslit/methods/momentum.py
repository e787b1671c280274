"""BYOL and MoCo v3: an online network with a predictor and an EMA target network.

BYOL: ``loss_fn(p_a, p_b, t_a, t_b, z_a, z_b)``; MoCo v3: ``loss_fn(q_a, q_b, k_a,
k_b)``, with ``p``/``q`` the online predictor outputs, ``t``/``k`` the target
network's projections (training-mode BatchNorm, statistics discarded) and ``z`` the
online projections. The target (``TrainState.ema_params``, the initial parameters
at the start) follows ``ema <- tau_t ema + (1 - tau_t) params`` after each update;
``eval.target`` probes it. With local crops every view is embedded by the target
and the loss averaged over the pairs of ``view_pairs``.
"""

from __future__ import annotations

from sslit.methods.base import (Method, StepOutputs, ema, mean_over_pairs,
                                momentum_metrics, view_pairs)


def _targets(o: StepOutputs) -> dict:
  needed = sorted({v for pair in view_pairs(o.num_local) for v in pair})
  return dict(zip(needed, o.target(o.ema_params, needed)))


def _byol_loss(o: StepOutputs):
  t, outs = _targets(o), o.outs
  return mean_over_pairs(o, lambda i, j: o.loss_fn(
      outs[i]["pred"], outs[j]["pred"], t[i], t[j], outs[i]["proj"], outs[j]["proj"]))


def _moco_loss(o: StepOutputs):
  t, outs = _targets(o), o.outs
  return mean_over_pairs(o, lambda i, j: o.loss_fn(
      outs[i]["pred"], outs[j]["pred"], t[i], t[j]))


def _init(settings, params, outputs):
  del settings, outputs
  return params


def _update(o: StepOutputs, params, aux):
  del aux
  tau, metrics = momentum_metrics(o)
  return ema(tau, o.ema_params, params), metrics


def _target(ema_params):
  return ema_params or None


def _heads(projector):
  del projector
  return {"predictor": True}  # BYOL's 4096-BN-ReLU-p predictor


_COMMON = dict(outputs=("proj", "pred"), heads=_heads, momentum=True, init_state=_init,
               update_state=_update, target=_target)
BYOL = Method(name="byol", loss=_byol_loss, **_COMMON)
MOCO = Method(name="moco", loss=_moco_loss, **_COMMON)
