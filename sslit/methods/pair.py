"""The two-view method: ``loss_fn(z_a, z_b)`` on one embedding of each view.

VICReg, SimCLR, Barlow Twins, the information family, W-MSE and MMCR. With local
crops the loss is averaged over the pairs of ``view_pairs``. No state; a weight
average may be kept beside it for evaluation (``average_weights``).
"""

from __future__ import annotations

from sslit.methods.base import Method, StepOutputs, embedding_of, mean_over_pairs


def _loss(o: StepOutputs):
  e = lambda i: embedding_of(o.outs[i], o.settings.embedding)
  return mean_over_pairs(o, lambda i, j: o.loss_fn(e(i), e(j)))


PAIR = Method(name="pair", loss=_loss)
