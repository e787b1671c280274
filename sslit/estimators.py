"""Entropy and mutual-information estimators, in nats.

The representation of a data set under the data model of the project (SPEC §2) is a
Gaussian mixture ``p(z) = (1/N) Σ_n N(z; μ_n, Σ_n)``. This module estimates the
entropy of such mixtures (pairwise-distance bounds and Monte-Carlo truth), the
entropy surrogates that SSL objectives maximise (LogDet, the Gaussian surrogate of
VICReg, the log-det of the correlation matrix, DINOv2's KoLeo), the
Kozachenko-Leonenko nearest-neighbour estimator, and Gaussian mutual informations.

Conventions: natural logarithms (nats); covariances of a batch are unbiased
(``ddof = 1``, divisor ``n - 1``); batches are ``[n, k]`` (``n`` samples, ``k``
dimensions). Mixture covariances ``covs`` are given in one of three forms:

* a scalar ``σ²``: every component is ``N(μ_i, σ² I)`` (isotropic, shared);
* ``[n]``: component ``i`` is ``N(μ_i, σ_i² I)`` (isotropic, one variance each);
* ``[n, k, k]``: full, heteroscedastic covariances (e.g. ``σ² A_n A_nᵀ``).

Every function is pure, jittable and differentiable, works in float32 and float64
and checks shapes and dtypes statically before tracing. This module imports only
jax, jax.numpy, numpy and ``sslit.parallel`` (for ``per_matrix``: batches of matrices
are factored one at a time, see there), the dependency rule of the project.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from sslit import parallel
from sslit._validate import (check_batch, check_choice, check_float, check_positive,
                             shape_of)

__all__ = [
    "gaussian_entropy",
    "logdet_entropy",
    "pairwise_entropy",
    "mixture_entropy_mc",
    "mixture_conditional_entropy",
    "gaussian_mutual_information",
    "barlow_gaussian_mi",
    "effective_rank",
    "gaussian_surrogate_entropy",
    "correlation_logdet",
    "l2_normalize",
    "nearest_neighbor_distances",
    "kozachenko_leonenko_entropy",
    "koleo_loss",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2PI_E = _LOG_2PI + 1.0
_DISTANCES = ("kl", "bhattacharyya", "chernoff")


# ----------------------------------------------------------------------------------
# Input handling.


def _check_square(x: Any, name: str) -> None:
  shape = shape_of(x)
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(f"{name} must be a batch of square matrices [..., k, k], got "
                     f"shape {shape}.")


def _covs_form(covs: Any, n: int, k: int | None, name: str = "covs") -> str:
  """Validate mixture covariances; return "shared", "each" or "full"."""
  if isinstance(covs, (bool, np.bool_)):
    raise TypeError(f"{name} must be a float scalar or array, got a bool.")
  if isinstance(covs, (int, float)):
    check_positive(covs, name)
    return "shared"
  check_float(covs, name)
  shape = shape_of(covs)
  if len(shape) == 0:
    check_positive(covs, name)
    return "shared"
  if len(shape) == 1:
    if shape[0] != n:
      raise ValueError(f"{name} of shape {shape} (one variance per component) must "
                       f"have length n={n}, the number of means.")
    _check_component_variances(covs, "each", name)
    return "each"
  if len(shape) == 3:
    if shape[0] != n or shape[1] != shape[2] or (k is not None and shape[1] != k):
      want = f"[{n}, {k}, {k}]" if k is not None else f"[{n}, k, k]"
      raise ValueError(f"{name} of shape {shape} must be full covariances {want} "
                       f"matching the means.")
    _check_component_variances(covs, "full", name)
    return "full"
  raise ValueError(f"{name} must be a scalar, [n] or [n, k, k], got shape {shape}"
                   f"{' (for one component use covs[None])' if len(shape) == 2 else ''}.")


def _concrete(x: Any) -> np.ndarray | None:
  """``x`` as a NumPy array, or None when it is traced (not inspectable)."""
  try:
    return np.asarray(x)
  except Exception:  # pylint: disable=broad-except  (a tracer)
    return None


def _check_component_variances(covs: Any, form: str, name: str) -> None:
  """Raise ``ValueError`` for a concrete variance <= 0 or non-finite.

  ``[n]`` variances are checked entry by entry, full covariances by their diagonal
  (the per-dimension variances) and finiteness. Traced values pass unchecked.
  """
  values = _concrete(covs)
  if values is None or form == "shared":
    return
  if form == "full" and not np.all(np.isfinite(values)):
    i = tuple(int(a[0]) for a in np.nonzero(~np.isfinite(values)))
    raise ValueError(f"{name} must be finite, got {name}{list(i)} = {values[i]}.")
  var = values if form == "each" else np.diagonal(values, axis1=-2, axis2=-1)
  bad = ~(np.isfinite(var) & (var > 0))
  if np.any(bad):
    i = tuple(int(a[0]) for a in np.nonzero(bad))
    what = "variances" if form == "each" else "diagonal entries (variances)"
    index = list(i) if form == "each" else [i[0], i[1], i[1]]
    raise ValueError(f"{name} {what} must be > 0 and finite, got {name}{index} = "
                     f"{var[i]}.")


def _variances(covs: Any, n: int, dtype: Any) -> jax.Array:
  """Isotropic covariances (scalar or [n]) as a [n] vector of variances."""
  return jnp.broadcast_to(jnp.asarray(covs, dtype), (n,))


def _result_dtype(means: Any, covs: Any) -> Any:
  if isinstance(covs, (int, float)):
    return jnp.result_type(means)
  return jnp.result_type(means, covs)


def _chol_half_logdet(cov: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cholesky factor and ½ log det of a (batch of) positive-definite matrices.

  A batch is factored one matrix at a time (``parallel.per_matrix``: batched LAPACK
  calls can deadlock XLA:CPU on jaxlib 0.10); do not ``vmap`` a caller.
  """
  if cov.ndim > 2:
    k = cov.shape[-1]
    chol = parallel.per_matrix(jnp.linalg.cholesky, cov.reshape((-1, k, k)))
    chol = chol.reshape(cov.shape)
  else:
    chol = jnp.linalg.cholesky(cov)
  half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  return chol, half_logdet


def _centre(z: jax.Array) -> jax.Array:
  return z - jnp.mean(z, axis=0, keepdims=True)


# ----------------------------------------------------------------------------------
# Gaussians.


def gaussian_entropy(cov: Any) -> jax.Array:
  """Differential entropy of a Gaussian, ``H = ½ log det(2πe Σ)``.

  Computed as ``k/2 · log(2πe) + Σ_a log L_aa`` with ``L`` the Cholesky factor of
  ``Σ``: ``O(k³)`` per matrix.

  Args:
    cov: covariance matrices ``[..., k, k]``, symmetric positive definite.

  Returns:
    Entropies ``[...]`` in nats. NaN where ``cov`` is not numerically positive
    definite (a singular Gaussian has entropy −∞; see
    ``gaussian_surrogate_entropy`` for a rank-aware version on a batch).
  """
  _check_square(cov, "cov")
  check_float(cov, "cov")
  return _gaussian_entropy(jnp.asarray(cov))


# The public functions validate their inputs in Python, then call a jitted core:
# eager calls (analysis code) compile one program per shape instead of dispatching
# and compiling primitive by primitive.


@jax.jit
def _gaussian_entropy(cov):
  _, half_logdet = _chol_half_logdet(cov)
  return 0.5 * cov.shape[-1] * _LOG_2PI_E + half_logdet


def gaussian_mutual_information(cov: Any, *, split: int) -> jax.Array:
  """Mutual information between two blocks of a jointly Gaussian vector.

  ``I(X₁; X₂) = ½ (log det Σ₁₁ + log det Σ₂₂ − log det Σ)`` where ``X₁`` are the
  first ``split`` coordinates and ``X₂`` the rest. Cholesky based, ``O(k³)``.

  Args:
    cov: joint covariance ``[..., k, k]``, positive definite.
    split: number of coordinates in the first block, ``1 <= split <= k - 1``.

  Returns:
    ``[...]`` mutual informations in nats (``>= 0``).
  """
  _check_square(cov, "cov")
  check_float(cov, "cov")
  k = shape_of(cov)[-1]
  if not isinstance(split, (int, np.integer)) or not 1 <= split <= k - 1:
    raise ValueError(f"split must be an integer in [1, k-1] = [1, {k - 1}] for cov "
                     f"of shape {shape_of(cov)}, got {split!r}.")
  return _gaussian_mi(jnp.asarray(cov), split=int(split))


@jax.jit(static_argnames="split")
def _gaussian_mi(cov, *, split):
  _, h = _chol_half_logdet(cov)
  _, h1 = _chol_half_logdet(cov[..., :split, :split])
  _, h2 = _chol_half_logdet(cov[..., split:, split:])
  return h1 + h2 - h


def barlow_gaussian_mi(rho: Any) -> jax.Array:
  """Gaussian mutual information from per-dimension correlations, ``−½ Σ log(1 − ρ²)``.

  The information between two views that Barlow Twins' diagonal term targets, if
  the pairs ``(z_a[:, d], z_b[:, d])`` are bivariate Gaussian and independent
  across ``d``.

  Args:
    rho: correlations ``[..., k]`` (the sum runs over the last axis) or a scalar
      (one bivariate pair). ``|ρ| < 1``; ``|ρ| = 1`` gives ``+inf``.

  Returns:
    ``[...]`` (or a scalar) in nats.
  """
  check_float(rho, "rho")
  rho = jnp.asarray(rho)
  terms = -0.5 * jnp.log1p(-jnp.square(rho))
  return terms if rho.ndim == 0 else jnp.sum(terms, axis=-1)


# ----------------------------------------------------------------------------------
# Entropy surrogates computed on a batch of embeddings.


def logdet_entropy(z: Any, *, beta: float = 1.0) -> jax.Array:
  """LogDet entropy estimate of a batch, ``½ log det(I + β Ĉ)``.

  ``Ĉ = z̄ᵀ z̄ / (n − 1)`` is the unbiased covariance of the centred batch ``z̄``.
  The identity regulariser keeps it finite when ``n <= k`` (rank-deficient ``Ĉ``).
  By Sylvester's identity ``det(I_k + β/(n−1) z̄ᵀz̄) = det(I_n + β/(n−1) z̄z̄ᵀ)``,
  so the smaller of the ``k × k`` covariance and the ``n × n`` Gram matrix is
  factorised: time ``O(nk·min(n, k) + min(n, k)³)``, memory ``O(nk + min(n, k)²)``.

  Args:
    z: embeddings ``[n, k]``, ``n >= 2``, float.
    beta: scale of the covariance inside the log-det (``>= 0``).

  Returns:
    Scalar, nats (``>= 0``; 0 for a collapsed batch).

  References:
    Zhouyin & Liu, "Understanding neural networks with logarithm determinant
    entropy estimator", 2021.
  """
  check_batch(z, "z", min_n=2)
  check_positive(beta, "beta", allow_zero=True)
  return _logdet_entropy(jnp.asarray(z), beta)


@jax.jit
def _logdet_entropy(z, beta):
  n, k = z.shape
  zc = _centre(z)
  scale = beta / (n - 1)
  if n < k:
    m = jnp.eye(n, dtype=z.dtype) + scale * (zc @ zc.T)
  else:
    m = jnp.eye(k, dtype=z.dtype) + scale * (zc.T @ zc)
  _, half_logdet = _chol_half_logdet(m)
  return half_logdet


def _centred_singular_values(z: jax.Array) -> jax.Array:
  return jnp.linalg.svd(_centre(z), compute_uv=False)


def _full_rank(s: jax.Array, n: int, k: int) -> jax.Array:
  """Whether singular values ``s`` are all above NumPy's matrix-rank tolerance."""
  tol = s[0] * max(n, k) * jnp.finfo(s.dtype).eps
  return s[-1] > tol


def gaussian_surrogate_entropy(z: Any) -> jax.Array:
  """Gaussian (maximum-entropy) surrogate of a batch, ``½ log det(2πe Ĉ)``.

  ``Ĉ`` is the unbiased covariance of ``z``. This is the entropy of the Gaussian
  with the batch's covariance, an upper bound on the entropy of any distribution
  with that covariance: the quantity VICReg's variance and covariance terms raise.
  Computed from the singular values ``s`` of the centred batch,
  ``½ log det Ĉ = Σ log s_a − k/2 · log(n − 1)``: time ``O(nk·min(n, k))``.

  Args:
    z: embeddings ``[n, k]``, ``n >= 2``, float.

  Returns:
    Scalar, nats. ``−inf`` when ``Ĉ`` is rank-deficient: always when ``n <= k``,
    otherwise when the smallest singular value is below NumPy's rank tolerance
    ``s_max · max(n, k) · eps``.
  """
  check_batch(z, "z", min_n=2)
  return _gaussian_surrogate_entropy(jnp.asarray(z))


@jax.jit
def _gaussian_surrogate_entropy(z):
  n, k = z.shape
  if n <= k:  # the centred batch has rank <= n - 1 < k
    return jnp.full((), -jnp.inf, z.dtype)
  s = _centred_singular_values(z)
  value = 0.5 * k * _LOG_2PI_E + jnp.sum(jnp.log(s)) - 0.5 * k * math.log(n - 1)
  return jnp.where(_full_rank(s, n, k), value, -jnp.inf)


def correlation_logdet(z: Any) -> jax.Array:
  """Log-determinant of the correlation matrix of a batch, ``log det R``.

  ``R = D^{-1/2} Ĉ D^{-1/2}`` with ``D = diag(Ĉ)``; ``log det R <= 0`` with equality
  iff the dimensions are uncorrelated. VICReg's covariance penalty is its
  second-order expansion (``log det(I + E) ≈ −½‖E‖_F²`` for small off-diagonal
  ``E``). Computed from the singular values of the centred batch with unit-norm
  columns: time ``O(nk·min(n, k))``.

  Args:
    z: embeddings ``[n, k]``, ``n >= 2``, float.

  Returns:
    Scalar, nats. ``−inf`` when ``R`` is rank-deficient (always when ``n <= k``, or
    when a dimension is constant).
  """
  check_batch(z, "z", min_n=2)
  return _correlation_logdet(jnp.asarray(z))


@jax.jit
def _correlation_logdet(z):
  n, k = z.shape
  if n <= k:
    return jnp.full((), -jnp.inf, z.dtype)
  zc = _centre(z)
  norms = jnp.sqrt(jnp.sum(jnp.square(zc), axis=0))
  constant = jnp.any(norms == 0)
  zs = zc / jnp.where(constant, 1.0, norms)
  s = jnp.linalg.svd(zs, compute_uv=False)
  value = 2.0 * jnp.sum(jnp.log(s))
  return jnp.where(constant | ~_full_rank(s, n, k), -jnp.inf, value)


def effective_rank(z: Any) -> jax.Array:
  """Effective rank of a batch (Roy & Vetterli 2007), ``exp(−Σ p_a log p_a)``.

  ``p_a = s_a / Σ_b s_b`` are the normalised singular values of the centred batch.
  Lies in ``[1, rank]`` for a non-zero matrix; defined here as 0 for a fully
  collapsed batch (all rows equal), so that it never exceeds the rank.

  Args:
    z: embeddings ``[n, k]``, ``n >= 2``, float.

  Returns:
    Scalar (dimensionless).

  References:
    Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
    EUSIPCO 2007.
  """
  check_batch(z, "z", min_n=2)
  return _effective_rank(jnp.asarray(z))


@jax.jit
def _effective_rank(z):
  s = _centred_singular_values(z)
  total = jnp.sum(s)
  collapsed = total <= 0
  p = s / jnp.where(collapsed, 1.0, total)
  positive = p > 0
  ent = -jnp.sum(jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1.0)), 0.0))
  return jnp.where(collapsed, 0.0, jnp.exp(ent))


# ----------------------------------------------------------------------------------
# Gaussian mixtures.


def _squared_distances(means: jax.Array) -> jax.Array:
  """``‖μ_i − μ_j‖²`` as ``[n, n]`` without forming ``[n, n, k]``."""
  # Distances are translation invariant: centring first shrinks the norms and so
  # the cancellation in ‖μ_i‖² + ‖μ_j‖² − 2 μ_i·μ_j.
  mc = _centre(means)
  sq = jnp.sum(jnp.square(mc), axis=-1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * (mc @ mc.T)
  n = means.shape[0]
  return jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.maximum(d2, 0.0))


def _isotropic_divergences(means, var, distance, alpha):
  """``D(p_i‖p_j)`` ``[n, n]`` for components ``N(μ_i, var_i I)``."""
  k = means.shape[1]
  d2 = _squared_distances(means)
  vi, vj = var[:, None], var[None, :]
  log_vi, log_vj = jnp.log(vi), jnp.log(vj)
  if distance == "kl":
    return 0.5 * (k * vi / vj + d2 / vj - k + k * (log_vj - log_vi))
  v_alpha = (1.0 - alpha) * vi + alpha * vj
  return (0.5 * alpha * (1.0 - alpha) * d2 / v_alpha
          + 0.5 * k * (jnp.log(v_alpha) - (1.0 - alpha) * log_vi - alpha * log_vj))


def _full_divergences(means, covs, distance, alpha):
  """``D(p_i‖p_j)`` ``[n, n]`` for full covariances, one row/column at a time."""
  n, k = means.shape
  chol, half_logdet = _chol_half_logdet(covs)
  if distance == "kl":
    eye = jnp.broadcast_to(jnp.eye(k, dtype=covs.dtype), covs.shape)
    prec = parallel.per_matrix(
        lambda c, e: jax.scipy.linalg.cho_solve((c, True), e), chol, eye)
    trace = jnp.einsum("jab,iab->ij", prec, covs)  # tr(Σ_j⁻¹ Σ_i)

    def column(args):  # (μ_i − μ_j)ᵀ Σ_j⁻¹ (μ_i − μ_j) for all i, one j
      mu_j, chol_j = args
      y = solve_triangular(chol_j, (means - mu_j).T, lower=True)
      return jnp.sum(jnp.square(y), axis=0)

    # One column at a time (a vmapped block would batch its triangular solves).
    quad = jax.lax.map(column, (means, chol)).T  # [i, j]
    return 0.5 * (trace + quad - k) + (half_logdet[None, :] - half_logdet[:, None])

  def row(args):  # C_α(p_i‖p_j) for one i, all j
    mu_i, cov_i, hld_i = args
    cov_alpha = (1.0 - alpha) * cov_i + alpha * covs
    chol_a, hld_a = _chol_half_logdet(cov_alpha)
    y = parallel.per_matrix(lambda c, d: solve_triangular(c, d, lower=True), chol_a,
                            means - mu_i)
    quad = jnp.sum(jnp.square(y), axis=-1)
    return (0.5 * alpha * (1.0 - alpha) * quad + hld_a
            - (1.0 - alpha) * hld_i - alpha * half_logdet)

  # One row at a time: a vmapped block of rows would batch the factorisations again.
  return jax.lax.map(row, (means, covs, half_logdet))


def pairwise_entropy(means: Any, covs: Any, *, distance: str = "kl",
                     alpha: float = 0.5) -> jax.Array:
  """Pairwise-distance estimate of the entropy of an equal-weight Gaussian mixture.

  Kolchinsky & Tracey's estimator for ``p = Σ_i c_i p_i``, ``c_i = 1/n``,
  ``p_i = N(μ_i, Σ_i)``:

  ``Ĥ_D = Σ_i c_i H(p_i) − Σ_i c_i log Σ_j c_j exp(−D(p_i‖p_j))``

  (self-pairs ``j = i`` included, ``D(p_i‖p_i) = 0``). With ``D`` the KL divergence
  it is an upper bound on ``H(p)``; with the Chernoff-α divergence
  ``C_α(p_i‖p_j) = −log ∫ p_i^α p_j^{1−α}`` (Bhattacharyya: ``α = ½``) a lower
  bound. Both equal ``H(p)`` when all components coincide (``H(p_i)``) and in the
  limit of fully separated components (``mean_i H(p_i) + log n``).

  Cost: scalar / ``[n]`` covariances: time ``O(n²k)``, memory ``O(n² + nk)``
  (squared distances from ``‖μ_i‖² + ‖μ_j‖² − 2μ_i·μ_j``, never ``[n, n, k]``).
  Full ``[n, k, k]``: KL time ``O(n²k² + nk³)``; Chernoff/Bhattacharyya time
  ``O(n²k³)`` (one Cholesky per pair); both memory ``O(n² + nk²)``: one row
  (Chernoff, ``n·k²`` intermediate elements) or column (KL, ``n·k``) of pairs at a
  time, each factorisation on one matrix (``sslit.parallel.per_matrix``).

  Args:
    means: component means ``[n, k]``, float, ``n >= 1``.
    covs: component covariances: a scalar ``σ²`` (shared isotropic), ``[n]``
      (isotropic, one variance per component) or ``[n, k, k]`` (full).
    distance: ``"kl"`` (upper bound), ``"bhattacharyya"`` or ``"chernoff"``
      (lower bounds).
    alpha: Chernoff order in ``(0, 1)``, used only with ``"chernoff"``.

  Returns:
    Scalar entropy estimate, nats.

  References:
    Kolchinsky & Tracey, "Estimating mixture entropy with pairwise distances",
    Entropy 19(7):361, 2017.
  """
  check_batch(means, "means", min_n=1)
  check_choice(distance, _DISTANCES, "distance")
  n, k = shape_of(means)
  form = _covs_form(covs, n, k)
  if distance == "chernoff":
    try:
      a = float(alpha)
    except Exception:  # a traced alpha cannot be checked
      a = 0.5
    if not 0.0 < a < 1.0:
      raise ValueError(f"alpha must lie in (0, 1) for the Chernoff divergence, got "
                       f"{alpha}.")
  elif distance == "bhattacharyya":
    alpha = 0.5
  dtype = _result_dtype(means, covs)
  return _pairwise_core(jnp.asarray(means, dtype), jnp.asarray(covs, dtype), alpha,
                        distance=distance, form=form)


@jax.jit(static_argnames=("distance", "form"))
def _pairwise_core(means, covs, alpha, *, distance, form):
  n, k = means.shape
  if form == "full":
    _, half_logdet = _chol_half_logdet(covs)
    mean_h = 0.5 * k * _LOG_2PI_E + jnp.mean(half_logdet)
    div = _full_divergences(means, covs, distance, alpha)
  else:
    var = _variances(covs, n, means.dtype)
    mean_h = 0.5 * k * _LOG_2PI_E + 0.5 * k * jnp.mean(jnp.log(var))
    div = _isotropic_divergences(means, var, distance, alpha)
  return mean_h - jnp.mean(jax.nn.logsumexp(-div, axis=1)) + math.log(n)


def mixture_conditional_entropy(covs: Any, *, k: int | None = None) -> jax.Array:
  """``H(Z | n)``: the mean entropy of the components of an equal-weight mixture.

  ``H(Z|n) = (1/n) Σ_i ½ log det(2πe Σ_i)``; the lower end of
  ``H(Z|n) <= H(Z) <= H(Z|n) + log n``.

  Args:
    covs: a scalar ``σ²`` (one isotropic component covariance), ``[n]`` isotropic
      variances, or full covariances ``[n, k, k]``.
    k: the dimension; required for scalar and ``[n]`` forms, checked against the
      full form.

  Returns:
    Scalar, nats.
  """
  if isinstance(covs, (bool, np.bool_)):
    raise TypeError("covs must be a float scalar or array, got a bool.")
  ndim = len(shape_of(covs))
  n = shape_of(covs)[0] if ndim in (1, 3) else 1
  form = _covs_form(covs, n, k)
  if form == "full":
    return jnp.mean(gaussian_entropy(covs))
  if k is None or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k (the dimension, a positive int) is required for scalar or "
                     f"[n] covariances (got covs of shape {shape_of(covs)}, k={k!r}).")
  var = (jnp.asarray(covs, jnp.result_type(float)) if isinstance(covs, (int, float))
         else jnp.asarray(covs))
  return 0.5 * k * (_LOG_2PI_E + jnp.mean(jnp.log(var)))


def _check_key(key: Any) -> None:
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape_of(key) != ():
      raise ValueError(f"key must be a single key, got shape {shape_of(key)}.")
    return
  if dtype == jnp.uint32 and shape_of(key) == (2,):
    return
  raise TypeError(f"key must be a jax.random.key (or a raw uint32 [2] key), got "
                  f"dtype {dtype} and shape {shape_of(key)}.")


def mixture_entropy_mc(key: Any, means: Any, covs: Any, *, num_samples: int,
                       chunk_size: int | None = None) -> jax.Array:
  """Monte-Carlo estimate of the entropy of an equal-weight Gaussian mixture.

  ``H(p) = −E_{z~p} log p(z)`` with ``log p(z) = logsumexp_j log N(z; μ_j, Σ_j) −
  log n``. Sampling is stratified: exactly ``num_samples`` draws from each of the
  ``n`` components (unbiased for equal weights, lower variance than drawing the
  component at random). Unbiased; standard error ``≈ std(log p)/√(n·num_samples)``.
  Densities use exact differences ``z − μ_j`` (no norm expansion), so small
  component variances stay accurate in float32.

  Cost: time ``O(n²·num_samples·k)`` isotropic, ``O(n²·num_samples·k²)`` full;
  memory ``O(chunk_size·n·k + n·num_samples·k)``.

  Args:
    key: a ``jax.random.key``.
    means: component means ``[n, k]``, float.
    covs: a scalar, ``[n]`` or ``[n, k, k]`` (see module docstring).
    num_samples: draws per component (a positive int).
    chunk_size: samples whose densities are evaluated at once (bounds memory);
      default: as many as keep ``chunk_size·n·k`` below about 4M elements.

  Returns:
    Scalar entropy estimate, nats.
  """
  _check_key(key)
  check_batch(means, "means", min_n=1)
  n, k = shape_of(means)
  form = _covs_form(covs, n, k)
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
  total = n * int(num_samples)
  if chunk_size is None:
    chunk_size = max(1, min(total, (1 << 22) // max(1, n * k)))
  elif not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
  dtype = _result_dtype(means, covs)
  return _mc_core(key, jnp.asarray(means, dtype), jnp.asarray(covs, dtype),
                  num_samples=int(num_samples), chunk_size=int(chunk_size), form=form)


@jax.jit(static_argnames=("num_samples", "chunk_size", "form"))
def _mc_core(key, means, covs, *, num_samples, chunk_size, form):
  n, k = means.shape
  eps = jax.random.normal(key, (n, num_samples, k), means.dtype)
  if form == "full":
    chol, half_logdet = _chol_half_logdet(covs)
    samples = means[:, None, :] + jnp.einsum("iab,imb->ima", chol, eps)

    def log_density(z):  # log p(z) for one sample z [k]
      y = jax.vmap(lambda c, d: solve_triangular(c, d, lower=True))(chol, z - means)
      log_n = -0.5 * (k * _LOG_2PI + jnp.sum(jnp.square(y), axis=-1)) - half_logdet
      return jax.nn.logsumexp(log_n) - math.log(n)
  else:
    var = _variances(covs, n, means.dtype)
    samples = means[:, None, :] + jnp.sqrt(var)[:, None, None] * eps

    def log_density(z):
      quad = jnp.sum(jnp.square(z - means), axis=-1) / var
      log_n = -0.5 * (k * (_LOG_2PI + jnp.log(var)) + quad)
      return jax.nn.logsumexp(log_n) - math.log(n)

  flat = samples.reshape(n * num_samples, k)
  total = flat.shape[0]
  if total > chunk_size and total % chunk_size:
    # Padded to whole chunks (rows of means[0], dropped after): lax.map's remainder
    # would run beside its loop, two batched triangular solves in flight at once,
    # which can deadlock XLA:CPU on jaxlib 0.10 (see sslit.parallel.per_matrix).
    flat = jnp.concatenate(
        [flat, jnp.broadcast_to(means[0], (chunk_size - total % chunk_size, k))])
  log_p = jax.lax.map(log_density, flat, batch_size=chunk_size)[:total]
  return -jnp.mean(log_p)


# ----------------------------------------------------------------------------------
# Nearest-neighbour estimators.


def l2_normalize(z: Any, *, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit norm, ``z / max(|z|, eps)`` (as ``torch.nn.functional.normalize``).

  Args:
    z: ``[..., k]``, float.
    eps: norms below ``eps`` are replaced by ``eps`` (finite gradient at 0).

  Returns:
    Same shape and dtype as ``z``.
  """
  z = jnp.asarray(z)
  sq = jnp.sum(z * z, axis=-1, keepdims=True)
  return z * jax.lax.rsqrt(jnp.maximum(sq, eps**2))


def nearest_neighbor_distances(x: Any, *, k: int = 1) -> jax.Array:
  """Euclidean distance of every row to its ``k``-th nearest other row.

  The neighbour is found on the ``[n, n]`` squared-distance matrix (self excluded);
  the distance to it is recomputed from the difference of the two rows, so it is
  exact and its gradient flows through both (zero, with a zero gradient, for
  duplicate rows). Cost: time ``O(n² d)``, memory ``O(n²)``.

  Args:
    x: samples ``[n, d]``, float, ``n >= k + 1``.
    k: neighbour order (1 = nearest).

  Returns:
    ``[n]`` distances.
  """
  _check_k(x, k)
  return _knn_distances_jit(jnp.asarray(x), k=int(k))


def _check_k(x: Any, k: Any) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")
  check_batch(x, "x", min_n=int(k) + 1)


def _knn_distances(x, *, k):
  n = x.shape[0]
  d2 = _squared_distances(x)
  d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d2)
  _, idx = jax.lax.top_k(-jax.lax.stop_gradient(d2), k)
  sq = jnp.sum(jnp.square(x - x[idx[:, k - 1]]), axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


_knn_distances_jit = jax.jit(_knn_distances, static_argnames="k")


def _digamma_int(m: int) -> float:
  """``ψ(m) = −γ + Σ_{j<m} 1/j`` for a positive integer ``m``."""
  return -0.5772156649015329 + math.fsum(1.0 / j for j in range(1, m))


def kozachenko_leonenko_entropy(x: Any, *, k: int = 1) -> jax.Array:
  """Kozachenko–Leonenko nearest-neighbour estimate of a differential entropy.

  ``Ĥ = ψ(n) − ψ(k) + log V_d + (d/n) Σ_i log ρ_i``, with ``ρ_i`` the distance of
  sample ``i`` to its ``k``-th nearest neighbour and ``V_d = π^{d/2} / Γ(d/2 + 1)``
  the volume of the unit ball in ``R^d``. Consistent (asymptotically unbiased)
  for densities on ``R^d``; no kernel or bandwidth.

  Args:
    x: i.i.d. samples ``[n, d]``, float, ``n >= k + 1``.
    k: neighbour order.

  Returns:
    Scalar, nats. ``−inf`` if two samples coincide (``ρ_i = 0``).

  Cost: time ``O(n² d)``, memory ``O(n²)``.

  References:
    Kozachenko, Leonenko. Sample estimate of the entropy of a random vector.
    Problems Inform. Transmission 23(2), 1987. Kraskov, Stögbauer, Grassberger.
    Estimating mutual information. Phys. Rev. E 69, 2004 (eq. 20).
  """
  _check_k(x, k)
  n, d = shape_of(x)
  const = (_digamma_int(n) - _digamma_int(int(k)) + 0.5 * d * math.log(math.pi)
           - math.lgamma(0.5 * d + 1.0))
  return const + d * _mean_log_knn(jnp.asarray(x), k=int(k))


@jax.jit(static_argnames="k")
def _mean_log_knn(x, *, k):
  return jnp.mean(jnp.log(_knn_distances(x, k=k)))


def koleo_loss(z: Any, *, eps: float = 1e-8) -> jax.Array:
  """DINOv2's KoLeo regulariser, ``−mean_i log(ρ_i + eps)``, on unit-norm rows.

  ``ρ_i`` is the distance of ``z_i/|z_i|`` to its nearest neighbour among the other
  normalised rows. Minimising it spreads the rows over the sphere: it is
  ``−(Ĥ − c)/d`` with ``Ĥ`` the Kozachenko–Leonenko entropy estimate of the
  normalised rows and ``c`` a constant, so it raises an entropy estimate.

  Args:
    z: embeddings ``[n, k]``, float, ``n >= 2``.
    eps: added to the distance (and the norm floor of the normalisation), as in
      DINOv2.

  Returns:
    Scalar.

  References:
    Sablayrolles, Douze, Schmid, Jégou. Spreading vectors for similarity search.
    ICLR 2019. Oquab et al. DINOv2: Learning Robust Visual Features without
    Supervision. TMLR 2024.
  """
  check_batch(z, "z", min_n=2)
  check_positive(eps, "eps")
  return _koleo_loss(jnp.asarray(z), eps)


@jax.jit
def _koleo_loss(z, eps):
  rho = _knn_distances(l2_normalize(z, eps=eps), k=1)
  return -jnp.mean(jnp.log(rho + eps))
