"""SimSiam: ``loss_fn(p_a, p_b, z_a, z_b)``, predictor and projector of one network.

The online network's own projections are the stop-gradient targets (no EMA); its
predictor is the paper's bottleneck (hidden width ``p // 4``, ``p`` the projector's
output width).
"""

from __future__ import annotations

from sslit.methods.base import Method, StepOutputs, mean_over_pairs


def _loss(o: StepOutputs):
  outs = o.outs
  return mean_over_pairs(o, lambda i, j: o.loss_fn(
      outs[i]["pred"], outs[j]["pred"], outs[i]["proj"], outs[j]["proj"]))


def _heads(projector):
  if isinstance(projector, tuple):  # the bottleneck predictor p -> p/4 -> p
    return {"predictor": (max(1, projector[-1] // 4), projector[-1])}
  return {"predictor": True}


SIMSIAM = Method(name="simsiam", loss=_loss, outputs=("proj", "pred"), heads=_heads)
