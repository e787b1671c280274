"""Self-supervised objectives as pure functions of the global batch.

Every loss takes two views of one batch of embeddings, ``z_a, z_b`` of shape
``[n, k]`` (BYOL: predictions and targets), and returns ``(loss, aux)``: a scalar and
a flat dict of the unweighted scalar terms, ready for
``jax.value_and_grad(fn, has_aux=True)`` and for logging. The functions see the whole
(global) batch: under ``jax.jit`` with a batch-sharded input the compiler inserts the
all-reduces that the covariance and the InfoNCE negatives need.

Read in the information-theoretic view (SPEC.md section 3), each loss is an
*invariance* term (a conditional log-likelihood ``-E log q(z | z')``) plus an
*entropy* term (an estimate of ``H(Z)``, to be maximised):

* VICReg: mean squared distance (Gaussian q); variance hinge + covariance penalty
  (the Gaussian surrogate ``1/2 log det(2 pi e Cov Z)``).
* SimCLR / InfoNCE: cosine of the positive pair (von Mises-Fisher q); log-sum-exp
  over the negatives (a kernel density estimate on the sphere).
* Barlow Twins: diagonal of the cross-correlation; off-diagonal decorrelation.
* BYOL: ``2 - 2 cos`` through a predictor; no entropy term (predictor + stop-grad).
* Information family: mean squared distance; LogDet, pairwise-distance or KoLeo
  (nearest-neighbour) estimate of ``H(Z)``.

SimSiam, MoCo v3, DINO, SwAV, W-MSE and MMCR live in :mod:`sslit.objectives_extra`;
they are re-exported here and registered in :func:`get_objective`.

References:
  Bardes, Ponce, LeCun. VICReg. ICLR 2022 (and github.com/facebookresearch/vicreg).
  Chen, Kornblith, Norouzi, Hinton. SimCLR. ICML 2020.
  Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins. ICML 2021.
  Grill et al. BYOL. NeurIPS 2020.
  Shwartz-Ziv, Balestriero, Kawaguchi, Rudner, LeCun. An Information-Theoretic
  Perspective on Variance-Invariance-Covariance Regularization. NeurIPS 2023.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import sslit._validate as _validate
import sslit.estimators as estimators
from sslit.objectives_extra import (dino_loss, dino_teacher_temperature, mmcr_loss,
                                    moco_v3_loss, simsiam_loss, sinkhorn_knopp,
                                    swav_loss, wmse_loss)

Array = jax.Array
Aux = dict[str, Array]

ENTROPY_ESTIMATORS = ("logdet", "pairwise_kl", "pairwise_bhattacharyya", "koleo")
INVARIANCES = ("mse", "squared_distance", "cosine")

# The project's default entropy weights (the paper's values are not known). Chosen on
# a synthetic task (docs/objectives.md): large enough that the entropy term resists
# collapse, small enough that the invariance term still shapes the embedding.
# The pairwise estimates change by at most log n, LogDet by O(k) nats, hence the
# different magnitudes; with Adam only the ratio to sim_coeff matters.
# KoLeo (not tuned): DINOv2's weight 0.1 per unit of invariance loss, times sim_coeff.
DEFAULT_ENTROPY_COEFF = {"logdet": 1.0, "pairwise_kl": 100.0,
                         "pairwise_bhattacharyya": 400.0, "koleo": 2.5}
DEFAULT_BYOL_ENTROPY_COEFF = {"logdet": 0.02, "pairwise_kl": 1.0,
                              "pairwise_bhattacharyya": 1.0, "koleo": 0.1}

# Row norms below this are treated as this (keeps the gradient of z / |z| finite at
# z = 0, as torch.nn.functional.normalize does).
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------
# Small shared pieces.


def _as_float(z: Array) -> Array:
  """Compute statistics in at least float32 (bfloat16/float16 inputs are upcast)."""
  z = jnp.asarray(z)
  return z.astype(jnp.promote_types(z.dtype, jnp.float32))


def _l2_normalize(z: Array) -> Array:
  return estimators.l2_normalize(z, eps=_NORM_EPS)


def _sum_sq_of_product(a: Array, b: Array) -> Array:
  """``||a^T b||_F^2`` for ``a, b`` of shape ``[n, k]``, cheapest way round.

  ``||a^T b||_F^2 = tr(a a^T b b^T) = sum((a a^T) * (b b^T))``: when ``n < k`` the two
  ``[n, n]`` Gram matrices (O(n^2 k)) are cheaper than the ``[k, k]`` product
  (O(n k^2)), and never need a ``[k, k]`` buffer.
  """
  n, k = a.shape
  if n < k:
    ga = a @ a.T
    gb = ga if b is a else b @ b.T
    return jnp.sum(ga * gb)
  c = a.T @ b
  return jnp.sum(c * c)


def _offdiag_sq_of_cov(zc: Array) -> Array:
  """``sum_{i != j} C_ij^2`` of ``C = zc^T zc / (n - 1)``, ``zc`` centred ``[n, k]``."""
  n = zc.shape[0]
  diag = jnp.sum(zc * zc, axis=0)
  return (_sum_sq_of_product(zc, zc) - jnp.sum(diag * diag)) / (n - 1) ** 2


def _variance_hinge(zc: Array, gamma: float, eps: float) -> Array:
  """``mean_j relu(gamma - sqrt(var_j + eps))``, var unbiased, ``zc`` centred."""
  n = zc.shape[0]
  std = jnp.sqrt(jnp.sum(zc * zc, axis=0) / (n - 1) + eps)
  return jnp.mean(jax.nn.relu(gamma - std))


def _center(z: Array) -> Array:
  return z - jnp.mean(z, axis=0, keepdims=True)


def _mse(z_a: Array, z_b: Array) -> Array:
  return jnp.mean(jnp.square(z_a - z_b))


def _cosine_distance(p: Array, z: Array) -> Array:
  """Batch mean of ``2 - 2 cos(p_i, z_i)``."""
  cos = jnp.sum(_l2_normalize(p) * _l2_normalize(z), axis=-1)
  return jnp.mean(2.0 - 2.0 * cos)


def _check_coeffs(**coeffs: Any) -> None:
  for name, value in coeffs.items():
    if value is None:
      continue
    _validate.check_positive(value, name, allow_zero=True)


# ----------------------------------------------------------------------------------
# VICReg.


def vicreg_loss(z_a: Array, z_b: Array, *, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                eps: float = 1e-4) -> tuple[Array, Aux]:
  r"""VICReg with the official implementation's conventions.

  ``loss = sim_coeff * s + std_coeff * v + cov_coeff * c`` with

  * ``s = mean_{i,j} (z_a[i, j] - z_b[i, j])^2`` (mean over all ``n * k`` entries);
  * each branch centred separately, ``std_j = sqrt(var_j + eps)`` with the unbiased
    (``n - 1``) variance, ``v = mean_j relu(gamma - std_a_j) / 2 +
    mean_j relu(gamma - std_b_j) / 2``;
  * ``C = zc^T zc / (n - 1)`` per branch, ``c = (sum_{i != j} C_a[i, j]^2 +
    sum_{i != j} C_b[i, j]^2) / k``.

  The two hinges are averaged but the two covariance penalties are summed, as in
  ``facebookresearch/vicreg`` (``main_vicreg.py``). :func:`vicreg_paper_loss` is the
  same loss written with the covariance of the stacked views.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    sim_coeff: weight of the invariance term (lambda in the paper).
    std_coeff: weight of the variance term (mu).
    cov_coeff: weight of the covariance term (nu).
    gamma: target standard deviation of every dimension.
    eps: added to the variance under the square root (keeps the gradient finite at
      collapse).

  Returns:
    ``(loss, aux)``, aux with the unweighted ``invariance``, ``variance``,
    ``covariance``.

  Cost: O(n k min(n, k)) time; the ``[k, k]`` covariance is never formed when
  ``n < k`` (its squared Frobenius norm is taken from the ``[n, n]`` Gram matrix).

  References:
    Bardes, Ponce, LeCun. VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning. ICLR 2022.
  """
  _validate.check_pair(z_a, z_b)
  _check_coeffs(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff,
                eps=eps)
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  k = z_a.shape[1]
  inv = _mse(z_a, z_b)
  za, zb = _center(z_a), _center(z_b)
  var = _variance_hinge(za, gamma, eps) / 2 + _variance_hinge(zb, gamma, eps) / 2
  cov = (_offdiag_sq_of_cov(za) + _offdiag_sq_of_cov(zb)) / k
  loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
  return loss, {"invariance": inv, "variance": var, "covariance": cov}


def vicreg_paper_loss(z_a: Array, z_b: Array, *, sim_coeff: float = 25.0,
                      std_coeff: float = 25.0, cov_coeff: float = 1.0,
                      gamma: float = 1.0, eps: float = 1e-4) -> tuple[Array, Aux]:
  r"""VICReg in the notation of Shwartz-Ziv et al.: one covariance of ``[Z; Z']``.

  ``Z = concat([z_a, z_b], axis=0)`` (``2n`` rows), ``C = Cov(Z)`` (unbiased,
  ``2n - 1``, centred with the pooled mean) and

  ``loss = sim_coeff * mean (z_a - z_b)^2 + std_coeff * mean_j relu(gamma -
  sqrt(C_jj + eps)) + cov_coeff * sum_{i != j} C_ij^2 / k``.

  Difference from :func:`vicreg_loss` (the official code): there each branch is
  centred and penalised on its own, the two variance hinges are *averaged* and the
  two covariance penalties *summed*; here one pooled covariance gets one hinge and
  one penalty. The pooled covariance also contains the between-view mean shift
  (``C = (C_a + C_b)/2`` plus a rank-one term in ``mean(z_a) - mean(z_b)`` and an
  ``n / (2n - 1)`` ddof factor), and the off-diagonal penalty of an average is
  not the average of the penalties: when the views are decorrelated differently
  the two losses disagree even at equal means. With ``z_a == z_b`` the variance
  and covariance terms coincide up to the ddof factor; the invariance term is the
  same in both. Normalisations by ``k`` (means over dimensions) are kept as in the
  code so that the same coefficients mean the same thing.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    sim_coeff: weight of the invariance term.
    std_coeff: weight of the variance hinge.
    cov_coeff: weight of the covariance penalty.
    gamma: target standard deviation.
    eps: added to the variance under the square root.

  Returns:
    ``(loss, aux)``, aux with the unweighted ``invariance``, ``variance``,
    ``covariance``.

  References:
    Shwartz-Ziv, Balestriero, Kawaguchi, Rudner, LeCun. NeurIPS 2023 (the VICReg
    loss as written in its section 3); Bardes et al. ICLR 2022.
  """
  _validate.check_pair(z_a, z_b)
  _check_coeffs(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff,
                eps=eps)
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  k = z_a.shape[1]
  inv = _mse(z_a, z_b)
  zc = _center(jnp.concatenate([z_a, z_b], axis=0))
  var = _variance_hinge(zc, gamma, eps)
  cov = _offdiag_sq_of_cov(zc) / k
  loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
  return loss, {"invariance": inv, "variance": var, "covariance": cov}


# ----------------------------------------------------------------------------------
# Contrastive and non-contrastive baselines.


def infonce_loss(z_a: Array, z_b: Array, *,
                 temperature: float = 0.1) -> tuple[Array, Aux]:
  r"""SimCLR's NT-Xent (normalised-temperature cross-entropy) over ``2n`` views.

  With ``u`` the ``2n`` rows of ``[z_a; z_b]`` scaled to unit norm and
  ``s_ij = u_i . u_j / temperature``, anchor ``i`` has its other view ``p(i) =
  (i + n) mod 2n`` as positive and the other ``2n - 2`` rows as negatives:

  ``loss = mean_i [ -s_{i,p(i)} + log sum_{j != i} exp(s_ij) ]``.

  The first part is the invariance (a von Mises-Fisher log-likelihood of the
  positive), the second a kernel-density estimate of the entropy on the sphere.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    temperature: softmax temperature (SimCLR's tau).

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (mean of ``-s_{i,p(i)}``) and
    ``log_sum_exp`` (mean of the log-sum-exp); ``loss`` is their sum. Mean over the
    ``2n`` anchors.

  Cost: O(n^2 k) time, O(n^2) memory for the ``[2n, 2n]`` logits.

  References:
    Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of
    Visual Representations. ICML 2020.
  """
  _validate.check_pair(z_a, z_b)
  _validate.check_positive(temperature, "temperature")
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  n = z_a.shape[0]
  u = _l2_normalize(jnp.concatenate([z_a, z_b], axis=0))
  logits = (u @ u.T) / temperature
  self_mask = jnp.eye(2 * n, dtype=bool)
  lse = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=1)
  # Both anchors of a pair share the same positive similarity.
  pos = jnp.sum(u[:n] * u[n:], axis=1) / temperature
  inv = -jnp.mean(pos)
  log_sum_exp = jnp.mean(lse)
  return inv + log_sum_exp, {"invariance": inv, "log_sum_exp": log_sum_exp}


def barlow_twins_loss(z_a: Array, z_b: Array, *, lambda_offdiag: float = 0.0051,
                      eps: float = 1e-5) -> tuple[Array, Aux]:
  r"""Barlow Twins: push the cross-correlation of the two views to the identity.

  Each view is standardised per dimension over the batch, ``z~ = (z - mean) /
  sqrt(var + eps)`` with the biased (``n``) variance (a BatchNorm without affine
  parameters, as in the official code), ``c = z~_a^T z~_b / n`` and

  ``loss = sum_i (1 - c_ii)^2 + lambda_offdiag * sum_{i != j} c_ij^2``.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    lambda_offdiag: weight of the off-diagonal (redundancy-reduction) term.
    eps: BatchNorm's epsilon, added to the variance.

  Returns:
    ``(loss, aux)``, aux with the unweighted ``on_diagonal`` and ``off_diagonal``.

  Cost: O(n k min(n, k)); the ``[k, k]`` matrix is not formed when ``n < k``.

  References:
    Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction. ICML 2021.
  """
  _validate.check_pair(z_a, z_b)
  _check_coeffs(lambda_offdiag=lambda_offdiag, eps=eps)
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  n = z_a.shape[0]

  def standardise(z):
    zc = _center(z)
    return zc * jax.lax.rsqrt(jnp.mean(zc * zc, axis=0) + eps)

  a, b = standardise(z_a), standardise(z_b)
  diag = jnp.sum(a * b, axis=0) / n
  on = jnp.sum(jnp.square(1.0 - diag))
  off = _sum_sq_of_product(a, b) / n**2 - jnp.sum(diag * diag)
  return on + lambda_offdiag * off, {"on_diagonal": on, "off_diagonal": off}


def byol_loss(p_a: Array, z_b: Array) -> tuple[Array, Aux]:
  r"""BYOL's regression loss, ``mean_i (2 - 2 cos(p_a[i], stop_gradient(z_b[i])))``.

  One direction only: the training step symmetrises (``byol_loss(p_a, t_b) +
  byol_loss(p_b, t_a)``) and keeps the EMA target network.

  Args:
    p_a: online predictor outputs for one view, ``[n, k]``, float, ``n >= 2``.
    z_b: target projections of the other view, ``[n, k]``; no gradient flows into
      them.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss). Rows of norm
    below 1e-12 are divided by 1e-12 instead, so the gradient stays finite.

  References:
    Grill et al. Bootstrap Your Own Latent. NeurIPS 2020.
  """
  _validate.check_pair(p_a, z_b, names=("p_a", "z_b"))
  p_a, z_b = _as_float(p_a), _as_float(z_b)
  loss = _cosine_distance(p_a, jax.lax.stop_gradient(z_b))
  return loss, {"invariance": loss}


# ----------------------------------------------------------------------------------
# The information-theoretic family.


def _entropy(z: Array, *, entropy: str, beta: float, pairwise_variance: float | None,
             normalize: bool) -> tuple[Array, Array | float]:
  """The estimate in nats and its part that does not depend on ``z``."""
  k = z.shape[1]
  if entropy == "koleo":  # scale-free: normalises the rows itself
    return -estimators.koleo_loss(z), 0.0
  if normalize:
    z = _l2_normalize(z) * jnp.sqrt(jnp.asarray(k, z.dtype))
  if entropy == "logdet":
    return estimators.logdet_entropy(z, beta=beta), 0.0
  variance = float(k) if pairwise_variance is None else pairwise_variance
  distance = entropy[len("pairwise_"):]
  h = estimators.pairwise_entropy(z, jnp.asarray(variance, z.dtype),
                                  distance=distance)
  # H(Z | n) = k/2 log(2 pi e sigma^2): the same for every z; left out of the loss so
  # that float32 keeps the resolution of the part that moves.
  return h, 0.5 * k * jnp.log(2 * jnp.pi * jnp.e * jnp.asarray(variance, z.dtype))


def _invariance(z_a: Array, z_b: Array, kind: str) -> Array:
  if kind == "mse":
    return _mse(z_a, z_b)
  if kind == "squared_distance":
    return jnp.mean(jnp.sum(jnp.square(z_a - z_b), axis=1))
  return _cosine_distance(z_a, z_b)


def _check_information_options(entropy, invariance, beta, pairwise_variance,
                               sim_coeff, entropy_coeff):
  _validate.check_choice(entropy, ENTROPY_ESTIMATORS, "entropy")
  _validate.check_choice(invariance, INVARIANCES, "invariance")
  _validate.check_positive(beta, "beta")
  if pairwise_variance is not None:
    _validate.check_positive(pairwise_variance, "pairwise_variance")
  _check_coeffs(sim_coeff=sim_coeff, entropy_coeff=entropy_coeff)


def information_loss(z_a: Array, z_b: Array, *, entropy: str = "logdet",
                     sim_coeff: float = 25.0, entropy_coeff: float | None = None,
                     keep_variance_covariance: bool = False, std_coeff: float = 25.0,
                     cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                     invariance: str = "mse", beta: float = 1.0,
                     pairwise_variance: float | None = None,
                     normalize: bool = False) -> tuple[Array, Aux]:
  r"""Invariance minus an explicit entropy estimate (Shwartz-Ziv et al., SPEC 4).

  ``loss = sim_coeff * invariance - entropy_coeff * (H(z_a) + H(z_b)) / 2``
  ``[+ std_coeff * variance + cov_coeff * covariance]`` (VICReg's terms, exactly as in
  :func:`vicreg_loss`, when ``keep_variance_covariance``; the default replaces them).

  Invariance (``invariance=``): ``"mse"`` = ``mean (z_a - z_b)^2`` over the ``n k``
  entries (VICReg's); ``"squared_distance"`` = ``mean_i |z_a[i] - z_b[i]|^2`` (``k``
  times mse, the Gaussian ``-E log q(z | z') = E|z - z'|^2 / (2 s^2)`` up to a
  constant); ``"cosine"`` = ``mean (2 - 2 cos)``.

  Entropy (``entropy=``), in nats, each branch separately:

  * ``"logdet"``: ``1/2 log det(I + beta C)``, C the unbiased covariance
    (:func:`sslit.estimators.logdet_entropy`); finite for ``n < k`` and at collapse.
  * ``"koleo"``: ``mean_i log rho_i``, ``rho_i`` the distance of row ``i`` to its
    nearest neighbour after scaling the rows to unit norm (minus DINOv2's KoLeo
    regulariser, :func:`sslit.estimators.koleo_loss`): the Kozachenko-Leonenko
    entropy estimate on the sphere up to a factor (the dimension) and a constant.
    Scale-free (``normalize`` does not change it); pair it with
    ``invariance="cosine"`` so that the whole loss is.
  * ``"pairwise_kl"`` / ``"pairwise_bhattacharyya"``: Kolchinsky-Tracey estimate
    (:func:`sslit.estimators.pairwise_entropy`) of the equal-weight mixture of
    ``N(z_i, sigma^2 I)`` over the batch rows, ``sigma^2 = pairwise_variance``
    (default ``k``, so the kernel sees the per-dimension mean squared distance:
    ``D_KL = mean_d (z_id - z_jd)^2 / 2``). KL gives an upper, Bhattacharyya a lower
    bound on the mixture entropy. The loss leaves out the constant
    ``H(Z | n) = k/2 log(2 pi e sigma^2)`` of this estimate (same gradient, better
    float32 resolution); ``aux`` reports the full estimate.

  Scale (why the loss does not run away): the LogDet estimate grows like
  ``k log c`` when ``z`` is scaled by ``c`` while ``"mse"``/``"squared_distance"``
  grow like ``c^2``, so along each direction with non-zero invariance the loss has a
  finite minimiser in the scale (it is bounded below only through that invariance: a
  direction that is exactly invariant would be scaled without end). The pairwise
  estimate is bounded (``<= H(component) + log n``), so it cannot run away at all.
  ``normalize=True`` estimates the entropy on the rows rescaled to norm ``sqrt(k)``
  (``sqrt(k) z / |z|``), which makes it bounded and scale-free; use it when the
  invariance term does not see the scale (``"cosine"``, BYOL).

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    entropy: one of ``ENTROPY_ESTIMATORS``.
    sim_coeff: weight of the invariance term.
    entropy_coeff: weight of the mean entropy of the two branches; ``None`` takes
      the project's default for the estimator, ``DEFAULT_ENTROPY_COEFF``
      (logdet 1, pairwise_kl 100, pairwise_bhattacharyya 400, koleo 2.5).
    keep_variance_covariance: also add VICReg's variance and covariance terms.
    std_coeff: weight of VICReg's variance term (only if kept).
    cov_coeff: weight of VICReg's covariance term (only if kept).
    gamma: VICReg's target standard deviation (only if kept).
    eps: VICReg's variance epsilon (only if kept).
    invariance: ``"mse"``, ``"squared_distance"`` or ``"cosine"``.
    beta: LogDet's scale, ``1/beta`` is the variance below which a direction counts
      as noise.
    pairwise_variance: isotropic variance of each mixture component (pairwise
      estimators); ``None`` means ``k``.
    normalize: estimate the entropy on ``sqrt(k) z / |z|`` instead of ``z``.

  Returns:
    ``(loss, aux)``, aux with ``invariance``, ``entropy`` (the mean of the two),
    ``entropy_a``, ``entropy_b`` and, when kept, ``variance`` and ``covariance``.

  Cost: LogDet O(n k min(n, k) + min(n, k)^3); pairwise O(n^2 k).

  References:
    Shwartz-Ziv, Balestriero, Kawaguchi, Rudner, LeCun. NeurIPS 2023.
    Zhouyin, Liu. Understanding Neural Networks with Logarithm Determinant Entropy
    Estimator. 2021. Kolchinsky, Tracey. Estimating Mixture Entropy with Pairwise
    Distances. Entropy 2017.
  """
  _validate.check_pair(z_a, z_b)
  _check_information_options(entropy, invariance, beta, pairwise_variance,
                             sim_coeff, entropy_coeff)
  if entropy_coeff is None:
    entropy_coeff = DEFAULT_ENTROPY_COEFF[entropy]
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  inv = _invariance(z_a, z_b, invariance)
  ent_kw = dict(entropy=entropy, beta=beta, pairwise_variance=pairwise_variance,
                normalize=normalize)
  (h_a, const), (h_b, _) = _entropy(z_a, **ent_kw), _entropy(z_b, **ent_kw)
  ent = (h_a + h_b) / 2
  loss = sim_coeff * inv - entropy_coeff * (ent - const)
  aux = {"invariance": inv, "entropy": ent, "entropy_a": h_a, "entropy_b": h_b}
  if keep_variance_covariance:
    _, vic = vicreg_loss(z_a, z_b, gamma=gamma, eps=eps)
    loss = loss + std_coeff * vic["variance"] + cov_coeff * vic["covariance"]
    aux.update(variance=vic["variance"], covariance=vic["covariance"])
  return loss, aux


def byol_pair_loss(p_a: Array, p_b: Array, t_a: Array, t_b: Array
                   ) -> tuple[Array, Aux]:
  """Symmetrised BYOL loss ``byol_loss(p_a, t_b) + byol_loss(p_b, t_a)``.

  Args:
    p_a: online predictor outputs of view a, ``[n, k]``.
    p_b: online predictor outputs of view b, ``[n, k]``.
    t_a: target-network projections of view a, ``[n, k]`` (stop-gradient inside).
    t_b: target-network projections of view b, ``[n, k]``.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss).
  """
  _validate.check_pair(p_a, t_b, names=("p_a", "t_b"))
  _validate.check_pair(p_b, t_a, names=("p_b", "t_a"))
  _validate.check_same_shape(p_a, p_b, "p_a", "p_b")
  loss = byol_loss(p_a, t_b)[0] + byol_loss(p_b, t_a)[0]
  return loss, {"invariance": loss}


def byol_information_loss(p_a: Array, p_b: Array, t_a: Array, t_b: Array,
                          z_a: Array, z_b: Array, *, entropy: str = "logdet",
                          sim_coeff: float = 1.0,
                          entropy_coeff: float | None = None,
                          beta: float = 1.0, pairwise_variance: float | None = None,
                          normalize: bool = True) -> tuple[Array, Aux]:
  r"""BYOL plus an entropy estimate of the online projector outputs.

  ``loss = sim_coeff * (byol(p_a, t_b) + byol(p_b, t_a)) - entropy_coeff *
  (H(z_a) + H(z_b)) / 2``, with ``H`` as in :func:`information_loss`. BYOL's loss
  is blind to the scale of ``z``, so by default (``normalize=True``) the entropy is
  estimated on ``sqrt(k) z / |z|``: bounded, scale-free, and with unit mean squared
  entry, the range where ``beta = 1`` and ``pairwise_variance = k`` are informative.

  Args:
    p_a: online predictor outputs of view a, ``[n, k]``.
    p_b: online predictor outputs of view b, ``[n, k]``.
    t_a: target-network projections of view a, ``[n, k]`` (stop-gradient inside).
    t_b: target-network projections of view b, ``[n, k]``.
    z_a: online projector outputs of view a, ``[n, k']``.
    z_b: online projector outputs of view b, ``[n, k']``.
    entropy: one of ``ENTROPY_ESTIMATORS``.
    sim_coeff: weight of the BYOL term.
    entropy_coeff: weight of the mean entropy of the two branches; ``None`` takes
      ``DEFAULT_BYOL_ENTROPY_COEFF`` (logdet 0.02, pairwise 1, koleo 0.1).
    beta: LogDet's scale.
    pairwise_variance: component variance of the pairwise estimators (``None``:
      ``k'``).
    normalize: estimate the entropy on the rows rescaled to norm ``sqrt(k')``.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (the symmetrised BYOL term),
    ``entropy``, ``entropy_a``, ``entropy_b``.
  """
  _validate.check_pair(z_a, z_b)
  if _validate.shape_of(z_a)[0] != _validate.shape_of(p_a)[0]:
    raise ValueError(f"z_a and p_a must have the same batch size, got z_a: "
                     f"{_validate.shape_of(z_a)} and p_a: {_validate.shape_of(p_a)}.")
  _check_information_options(entropy, "cosine", beta, pairwise_variance, sim_coeff,
                             entropy_coeff)
  if entropy_coeff is None:
    entropy_coeff = DEFAULT_BYOL_ENTROPY_COEFF[entropy]
  inv, _ = byol_pair_loss(p_a, p_b, t_a, t_b)
  z_a, z_b = _as_float(z_a), _as_float(z_b)
  ent_kw = dict(entropy=entropy, beta=beta, pairwise_variance=pairwise_variance,
                normalize=normalize)
  (h_a, const), (h_b, _) = _entropy(z_a, **ent_kw), _entropy(z_b, **ent_kw)
  ent = (h_a + h_b) / 2
  loss = sim_coeff * inv - entropy_coeff * (ent - const)
  return loss, {"invariance": inv, "entropy": ent, "entropy_a": h_a,
                "entropy_b": h_b}


# ----------------------------------------------------------------------------------
# Registry.


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
