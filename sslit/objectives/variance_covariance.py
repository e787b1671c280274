"""Variance/covariance objectives: VICReg (code and paper forms), Barlow Twins, W-MSE.

Each is an invariance term plus a penalty or constraint on the second moments of the
embedding (VICReg's variance hinge and covariance penalty, Barlow Twins' cross-
correlation to the identity, W-MSE's whitening), the Gaussian surrogate of the
entropy term in the information-theoretic reading (SPEC section 3). Pure functions
of the global batch returning ``(loss, aux)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ['vicreg_loss', 'vicreg_paper_loss', 'barlow_twins_loss', 'wmse_loss']


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


# ----------------------------------------------------------------------------------
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
  common.check_coeffs(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff,
                eps=eps)
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  k = z_a.shape[1]
  inv = common.mse(z_a, z_b)
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
  common.check_coeffs(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff,
                eps=eps)
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  k = z_a.shape[1]
  inv = common.mse(z_a, z_b)
  zc = _center(jnp.concatenate([z_a, z_b], axis=0))
  var = _variance_hinge(zc, gamma, eps)
  cov = _offdiag_sq_of_cov(zc) / k
  loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
  return loss, {"invariance": inv, "variance": var, "covariance": cov}


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
  common.check_coeffs(lambda_offdiag=lambda_offdiag, eps=eps)
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  n = z_a.shape[0]

  def standardise(z):
    zc = _center(z)
    return zc * jax.lax.rsqrt(jnp.mean(zc * zc, axis=0) + eps)

  a, b = standardise(z_a), standardise(z_b)
  diag = jnp.sum(a * b, axis=0) / n
  on = jnp.sum(jnp.square(1.0 - diag))
  off = _sum_sq_of_product(a, b) / n**2 - jnp.sum(diag * diag)
  return on + lambda_offdiag * off, {"on_diagonal": on, "off_diagonal": off}


# ----------------------------------------------------------------------------------
# W-MSE: whitening, the hard constraint Cov Z = I.


def _whiten(z: Array, size: int, eps: float) -> Array:
  """Cholesky whitening of each consecutive group of ``size`` rows of ``z [n, k]``."""
  n, k = z.shape
  groups = z.reshape(n // size, size, k)
  zc = groups - jnp.mean(groups, axis=1, keepdims=True)
  cov = jnp.einsum("gik,gil->gkl", zc, zc) / (size - 1)
  cov = (1.0 - eps) * cov + eps * jnp.eye(k, dtype=z.dtype)
  chol = jnp.linalg.cholesky(cov)
  white = jax.vmap(lambda c, x: solve_triangular(c, x.T, lower=True).T)(chol, zc)
  return white.reshape(n, k)


def wmse_loss(z_a: Array, z_b: Array, *, whitening_size: int | None = None,
              eps: float = 0.0) -> tuple[Array, Aux]:
  r"""W-MSE: mean squared distance of the normalised, whitened views.

  Each view is whitened on its own, group by group of ``w = whitening_size`` rows:
  ``x = L^{-1} (z - mean)`` with ``L L^T = (1 - eps) C + eps I``, ``C`` the unbiased
  covariance of the group; then with unit-norm rows

  ``loss = mean_i |x_a[i]/|x_a[i]| - x_b[i]/|x_b[i]||^2 = mean_i (2 - 2 cos)``.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float.
    z_b: embeddings of the second view, ``[n, k]``.
    whitening_size: rows whitened together (consecutive groups; ``None``: the
      whole batch). Must divide ``n`` and exceed ``k`` (a covariance of rank
      ``w - 1 >= k``). The reference draws the groups at random and repeats
      (``w_iter``); permute the rows of both views alike before calling for that.
    eps: shrinkage towards the identity (0 in the reference code).

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss).

  Cost: O(n k^2 + (n / w) k^3).

  References:
    Ermolov, Siarohin, Sangineto, Sebe. Whitening for Self-Supervised
    Representation Learning. ICML 2021.
  """
  _validate.check_pair(z_a, z_b)
  n, k = _validate.shape_of(z_a)
  w = n if whitening_size is None else whitening_size
  if not isinstance(w, int) or n % w or w <= k:
    raise ValueError(f"whitening_size must divide n and exceed k for z_a of shape "
                     f"{(n, k)} (the group covariance must be full rank), got "
                     f"{whitening_size!r}.")
  if not 0.0 <= float(eps) <= 1.0:
    raise ValueError(f"eps must lie in [0, 1], got {eps}.")
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  loss = common.cosine_distance(_whiten(z_a, w, eps), _whiten(z_b, w, eps))
  return loss, {"invariance": loss}
