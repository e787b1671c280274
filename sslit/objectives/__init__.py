"""Self-supervised objectives as pure functions of the global batch, split by topic.

Every loss takes embeddings of views of one batch (two views ``z_a, z_b`` of shape
``[n, k]``; stacked views ``[m, n, k]`` for the multi-crop methods) and returns
``(loss, aux)``: a scalar and a flat dict of the unweighted scalar terms, ready for
``jax.value_and_grad(fn, has_aux=True)`` and for logging. The functions see the
whole (global) batch: under ``jax.jit`` with a batch-sharded input the compiler
inserts the all-reduces that the covariance and the InfoNCE negatives need.

The modules, the way Optax splits its losses (every public name is re-exported
here, so ``sslit.objectives.vicreg_loss`` and the rest stay where they were):

* :mod:`~sslit.objectives.variance_covariance`: VICReg (code and paper forms),
  Barlow Twins, W-MSE;
* :mod:`~sslit.objectives.contrastive`: SimCLR's InfoNCE, MoCo v3;
* :mod:`~sslit.objectives.distillation`: BYOL, SimSiam, DINO;
* :mod:`~sslit.objectives.clustering`: SwAV and Sinkhorn-Knopp;
* :mod:`~sslit.objectives.information`: invariance minus an entropy estimate
  (LogDet, pairwise, KoLeo), BYOL plus entropy, MMCR;
* :mod:`~sslit.objectives.alignment_uniformity`: Wang & Isola's alignment and
  uniformity on the sphere;
* :mod:`~sslit.objectives.lejepa`: LeJEPA, SIGReg (a sketched Gaussianity test);
* :mod:`~sslit.objectives.registry`: ``get_objective``, ``list_objectives``;
* :mod:`~sslit.objectives.common`: helpers shared by the topics (not re-exported).

Read in the information-theoretic view (SPEC.md section 3), each loss is an
*invariance* term (a conditional log-likelihood ``-E log q(z | z')``) plus an
*entropy* term (an estimate of ``H(Z)``, to be maximised), explicit or implicit.

This package imports only jax, numpy and the math modules of sslit.
"""

from sslit.objectives.alignment_uniformity import (alignment_uniformity_loss,
                                                   uniformity)
from sslit.objectives.clustering import sinkhorn_knopp, swav_loss
from sslit.objectives.contrastive import infonce_loss, moco_v3_loss
from sslit.objectives.distillation import (byol_loss, byol_pair_loss, dino_loss,
                                           dino_teacher_temperature, simsiam_loss)
from sslit.objectives.information import (DEFAULT_BYOL_ENTROPY_COEFF,
                                          DEFAULT_ENTROPY_COEFF, ENTROPY_ESTIMATORS,
                                          INVARIANCES, byol_information_loss,
                                          information_loss, mmcr_loss)
from sslit.objectives.lejepa import (epps_pulley, lejepa_loss, sigreg,
                                     sigreg_directions)
from sslit.objectives.registry import (KIND_STATE, Objective, get_objective,
                                       list_objectives)
from sslit.objectives.variance_covariance import (barlow_twins_loss, vicreg_loss,
                                                  vicreg_paper_loss, wmse_loss)

__all__ = [
    "vicreg_loss", "vicreg_paper_loss", "barlow_twins_loss", "wmse_loss",
    "infonce_loss", "moco_v3_loss", "byol_loss", "byol_pair_loss", "simsiam_loss",
    "dino_loss", "dino_teacher_temperature", "sinkhorn_knopp", "swav_loss",
    "information_loss", "byol_information_loss", "mmcr_loss", "ENTROPY_ESTIMATORS",
    "INVARIANCES", "DEFAULT_ENTROPY_COEFF", "DEFAULT_BYOL_ENTROPY_COEFF",
    "alignment_uniformity_loss", "uniformity", "epps_pulley", "sigreg_directions", "sigreg", "lejepa_loss",
    "KIND_STATE", "Objective", "get_objective", "list_objectives",
]
