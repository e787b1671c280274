"""Equal-weight Gaussian mixtures with full covariances: entropies and pairwise bounds.

The Gaussian-mixture picture of SPEC §2: with input noise that stays in the region of
``x_n``, the representation is the mixture ``p = (1/n) Σ_i N(μ_i, Σ_i)`` with
heteroscedastic full covariances ``Σ_i = σ² A_i A_iᵀ + τ² I_k``. This module holds
what only needs the means and covariances: output covariances, component
entropies, the separation ratio, and the Kolchinsky–Tracey pairwise bounds on
``H(p)`` (SPEC §5) in two forms:

- ``pairwise_bounds_exact``: every pairwise Bhattacharyya divergence with its own
  ``k × k`` Cholesky factor, ``O(n² k³)`` time. The oracle.
- ``pairwise_bounds``: the KL upper bound exactly from traces and Mahalanobis terms
  computed as matrix products (``O(n² k²)``), the Bhattacharyya lower bound exact on
  the pairs that matter and from a certified lower bound of the divergence on the
  rest, with a bound on what that can cost (``lower_slack``). Chunked over pairs,
  optionally sharded over the devices of a mesh.

Entropies are in nats. This module imports only jax, numpy and the math modules
``sslit.estimators`` and ``sslit._validate``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from sslit import _validate
from sslit import estimators
from sslit import parallel

Array = jax.Array

__all__ = [
    "output_covariance",
    "ConditionalEntropy",
    "conditional_entropy",
    "separation_ratio",
    "PairwiseBounds",
    "pairwise_bounds",
    "pairwise_bounds_exact",
    "kl_divergences",
    "check_noise_model",
    "information_from_slopes",
]

_LOG_2PI_E = math.log(2 * math.pi) + 1.0
# The values of ``method`` in ``information_from_slopes`` (and so in
# ``cpa.representation_information``).
METHODS = ("auto", "exact", "scalable")
# information_from_slopes(method="auto") uses the exact O(n² k³) bounds up to
# this many inputs (the sizes the package computed them for before), the scalable
# ones above.
AUTO_EXACT_MAX_N = 128
# Elements of the largest intermediate of one step of a chunked loop (8 bytes each
# in float64): the chunk sizes are derived from it when not given.
_STEP_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------
# Component covariances and entropies.

def output_covariance(A: Array, noise: Any) -> Array:
  """Covariance of ``A ε`` for input noise ``ε ~ N(0, Σ_x)``: ``A Σ_x Aᵀ``.

  Isotropic ``Σ_x = σ² I`` (``noise`` a scalar σ², or ``[...]`` one per batch entry
  of ``A``) costs ``O(k²d)`` and never forms a ``d × d`` matrix; diagonal
  ``Σ_x = diag(s)`` (``noise [d]``) likewise; full ``Σ_x`` (``noise [d, d]``) costs
  ``O(k d²)``.

  Args:
    A: slopes ``[..., k, d]``.
    noise: the input covariance: scalar σ² (a variance, not σ), ``[d]`` diagonal,
      or ``[d, d]`` full. A vector of per-sample variances must have the batch
      shape ``A.shape[:-2]`` and differ from ``(d,)``; pass ``noise[:, None] *
      jnp.ones(d)`` otherwise.

  Returns:
    ``[..., k, k]``.
  """
  _validate.check_float(A, "A")
  sa = _validate.shape_of(A)
  if len(sa) < 2:
    raise ValueError(f"A must be slopes [..., k, d], got shape {sa}.")
  d = sa[-1]
  sn = _validate.shape_of(noise)
  if sn == ():
    _validate.check_positive(noise, "noise")
  if sn == () or (sn == sa[:-2] and sn != (d,)):
    s = jnp.asarray(noise, A.dtype)[..., None, None]
    return s * jnp.einsum("...kd,...ld->...kl", A, A)
  if sn == (d,):
    return jnp.einsum("...kd,d,...ld->...kl", A, jnp.asarray(noise, A.dtype), A)
  if sn == (d, d):
    return jnp.einsum("...kd,de,...le->...kl", A, jnp.asarray(noise, A.dtype), A)
  raise ValueError(
      f"noise must be a scalar variance, a diagonal {(d,)}, a full {(d, d)} or "
      f"per-sample variances {sa[:-2]}; got shape {sn} for A of shape {sa}.")


class ConditionalEntropy(NamedTuple):
  """Result of ``conditional_entropy``.

  Attributes:
    entropy: ``[...]`` nats; on the row space of ``A`` when ``rank < k``.
    rank: ``[...]`` int32 numerical rank of ``A``.
    full_rank: ``[...]`` bool, ``rank == k`` (the entropy is the ``k``-dim one).
  """
  entropy: Array
  rank: Array
  full_rank: Array


def conditional_entropy(A: Array, sigma: Any, *,
                        rtol: float | None = None) -> ConditionalEntropy:
  """Entropy of ``z | n ~ N(f(x_n), σ² A Aᵀ)``: ``½ log det(2πe σ² A Aᵀ)``.

  Computed from the singular values ``s_i`` of ``A`` (never from a ``slogdet`` of a
  possibly singular ``A Aᵀ``): ``H = r/2 · log(2πe σ²) + Σ_{i≤r} log s_i`` with ``r``
  the numerical rank (``s_i > rtol · s_max``, default ``rtol = max(k, d)·eps``).
  When ``r = k`` this is the ``k``-dimensional Gaussian entropy. When ``r < k``
  (``k > d``, dead units, ...) the ``k``-dim entropy is −∞ and the value returned is
  the entropy of the Gaussian on the ``r``-dim row space of ``Aᵀ`` (the image of the
  noise); ``rank`` and ``full_rank`` in the result say which one it is.

  Args:
    A: slopes ``[..., k, d]``.
    sigma: input noise standard deviation (> 0), scalar or ``[...]``.
    rtol: relative singular-value threshold for the rank.

  Returns:
    ``ConditionalEntropy(entropy [...], rank [...], full_rank [...])``, nats.
  """
  _validate.check_float(A, "A")
  sa = _validate.shape_of(A)
  if len(sa) < 2:
    raise ValueError(f"A must be slopes [..., k, d], got shape {sa}.")
  if _validate.shape_of(sigma) == ():
    _validate.check_positive(sigma, "sigma")
  return _conditional_entropy(A, jnp.asarray(sigma), rtol)


@functools.partial(jax.jit, static_argnums=2)
def _conditional_entropy(A: Array, sigma: Array, rtol: float | None
                         ) -> ConditionalEntropy:
  k, d = A.shape[-2:]
  flat = A.reshape((-1, k, d))
  s = parallel.per_matrix(lambda a: jnp.linalg.svd(a, compute_uv=False), flat)
  s = s.reshape(A.shape[:-2] + s.shape[-1:])
  return _entropy_from_singular_values(s, k, d, sigma, rtol)


def _entropy_from_singular_values(s: Array, k: int, d: int, sigma: Array,
                                  rtol: float | None) -> ConditionalEntropy:
  """Rank-aware ``½ log pdet(2πe σ² A Aᵀ)`` from the singular values ``s`` of ``A``."""
  eps = jnp.finfo(s.dtype).eps
  tol = (max(k, d) * eps if rtol is None else rtol) * s[..., :1]
  keep = s > tol
  rank = jnp.sum(keep, axis=-1, dtype=jnp.int32)
  log_s = jnp.sum(jnp.where(keep, jnp.log(jnp.where(keep, s, 1.0)), 0.0), axis=-1)
  sigma = sigma.astype(s.dtype)
  h = 0.5 * rank * jnp.log(2 * jnp.pi * jnp.e * sigma**2) + log_s
  return ConditionalEntropy(h, rank, rank == k)


def _noisy_entropy(s: Array, k: int, sigma: Array, tau: Array) -> Array:
  """``½ log det(2πe (σ² A Aᵀ + τ² I_k))`` from the singular values ``s`` of ``A``.

  The eigenvalues of ``σ² A Aᵀ + τ² I_k`` are ``σ² s_i² + τ²`` for the
  ``min(k, d)`` singular values and ``τ²`` for the remaining ``k − min(k, d)``.
  ``hypot`` keeps the log-variances free of under/overflow; ``τ > 0``.
  """
  m = s.shape[-1]
  log_var = 2.0 * jnp.log(jnp.hypot(sigma * s, tau))
  return 0.5 * (k * math.log(2 * math.pi * math.e) + jnp.sum(log_var, axis=-1)
                + (k - m) * 2.0 * jnp.log(tau))


def separation_ratio(means: Array, covs: Any) -> Array:
  """Median distance between component means over the largest component std.

  ``ρ = median_{i<j} ‖μ_i − μ_j‖ / max_i sqrt(λ_max(Σ_i))``. ``ρ ≫ 1``: the
  mixture's components are well separated (``H(Z) ≈ H(Z|n) + log n``); ``ρ ≪ 1``: they
  overlap (``H(Z) ≈ H(Z|n)``).

  Args:
    means: ``[n, k]``, n ≥ 2.
    covs: scalar variance, ``[n]`` variances, or ``[n, k, k]`` covariances.

  Returns:
    scalar.
  """
  _validate.check_batch(means, "means")
  n, k = means.shape
  sc = _validate.shape_of(covs)
  if sc == ():
    var_max = jnp.asarray(covs, means.dtype)
  elif sc == (n,):
    var_max = jnp.max(jnp.asarray(covs, means.dtype))
  elif sc == (n, k, k):
    var_max = _max_eigenvalue(jnp.asarray(covs))
  else:
    raise ValueError(
        f"covs must be a scalar, [n]={(n,)} or [n, k, k]={(n, k, k)} for means of "
        f"shape {(n, k)}, got {sc}.")
  return _separation_ratio(jnp.asarray(means), var_max)


@jax.jit
def _separation_ratio(means: Array, var_max: Array) -> Array:
  n = means.shape[0]
  sq = jnp.sum(means**2, axis=1)
  d2 = sq[:, None] + sq[None, :] - 2 * means @ means.T
  iu = np.triu_indices(n, 1)
  dist = jnp.sqrt(jnp.maximum(d2[iu], 0.0))
  return jnp.median(dist) / jnp.sqrt(var_max)


@jax.jit
def _max_eigenvalue(covs: Array) -> Array:
  return jnp.max(parallel.per_matrix(jnp.linalg.eigvalsh, covs)[..., -1])


def _shifted_gaussian_entropy(cov: Array, tau: Array) -> Array:
  """``½ log det(2πe (M + τ² I))`` for a PSD ``M``, from the eigenvalues of ``M``.

  ``τ > 0``: the eigenvalues of ``M`` are clipped at 0 (rounding can make them
  slightly negative) before adding ``τ²``, so the result is finite however
  ill-conditioned ``M`` is. ``τ = 0``: −inf when ``M`` is numerically singular
  (smallest eigenvalue ``<= k · eps · largest``: no density, entropy −∞) instead of
  the NaN a failed Cholesky factor would give.
  """
  k = cov.shape[-1]
  w = jnp.linalg.eigvalsh(cov)
  singular = (tau <= 0) & (w[0] <= k * jnp.finfo(w.dtype).eps * w[-1])
  var = jnp.maximum(w, 0.0) + tau**2
  var = jnp.where(singular, 1.0, var)
  value = 0.5 * (k * math.log(2 * math.pi * math.e) + jnp.sum(jnp.log(var)))
  return jnp.where(singular, -jnp.inf, value)



# ----------------------------------------------------------------------------
# Pairwise bounds on the mixture entropy (SPEC §5).


class PairwiseBounds(NamedTuple):
  """Result of ``pairwise_bounds`` and ``pairwise_bounds_exact`` (nats, scalars).

  Attributes:
    h_lower: lower bound on ``H(p)``: the Bhattacharyya pairwise bound
      (``pairwise_bounds_exact``) or a certified lower bound on it.
    h_upper: upper bound on ``H(p)``: the KL pairwise bound.
    mi_lower: ``h_lower − h_cond``, in ``[0, log n]``.
    mi_upper: ``h_upper − h_cond``, in ``[0, log n]``.
    h_cond: ``(1/n) Σ_i ½ log det(2πe Σ_i)``, from Cholesky factors.
    exact_pairs: int32, the pairs ``i < j`` whose Bhattacharyya divergence entered
      ``h_lower`` exactly.
    num_pairs: int32, ``n (n − 1) / 2``.
    lower_slack: ``≥ 0``, an upper bound on the exact Bhattacharyya bound minus
      ``h_lower``; 0 when every pair is exact.
  """
  h_lower: Array
  h_upper: Array
  mi_lower: Array
  mi_upper: Array
  h_cond: Array
  exact_pairs: Array
  num_pairs: Array
  lower_slack: Array


def _check_mixture(means: Any, covs: Any) -> None:
  _validate.check_batch(means, "means")
  _validate.check_float(covs, "covs")
  n, k = _validate.shape_of(means)
  if _validate.shape_of(covs) != (n, k, k):
    raise ValueError(
        f"covs must be full covariances [n, k, k] = {(n, k, k)} for means of shape "
        f"{(n, k)}, got covs of shape {_validate.shape_of(covs)}.")


def _raise_unless_positive_definite(ok: Array, covs: Any) -> None:
  """``ValueError`` naming the first component whose covariance failed to factor."""
  if isinstance(ok, jax.core.Tracer):  # inside the caller's jit: NaN instead
    return
  bad = np.flatnonzero(~np.asarray(ok))
  if bad.size:
    raise ValueError(
        f"covs[{bad[0]}] (one of {bad.size} components, covs of shape "
        f"{_validate.shape_of(covs)}) is not numerically positive definite, or a "
        f"mean or covariance is not finite: the pairwise bounds need densities; add "
        f"isotropic noise τ² I to the covariances.")


def _lmap(f, xs: Any, batch_size: int) -> Any:
  """``jax.lax.map`` in steps of ``batch_size``; one ``vmap`` when that is all."""
  if batch_size >= jax.tree.leaves(xs)[0].shape[0]:
    return jax.vmap(f)(xs)
  return jax.lax.map(f, xs, batch_size=batch_size)


def _matmul(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _log_max_eigenvalue(m: Array, squarings: int = 4) -> Array:
  """Certified upper bound on ``log λ_max(M)`` of a PSD ``M``: ``log tr(M^{2p})/(2p)``,
  ``p = 2^squarings`` (at most ``log(k)/(2p)`` above), by repeated squaring with each
  square renormalised (no under/overflow)."""
  norm = jnp.linalg.norm(m)
  m, log_norm = m / norm, jnp.log(norm)
  for _ in range(squarings):
    m = _matmul(m, m)
    norm = jnp.linalg.norm(m)
    m, log_norm = m / norm, 2 * log_norm + jnp.log(norm)
  return log_norm / 2**squarings


def _blocks(f, xs: Any, size: int) -> Any:
  """``f`` on consecutive blocks of at most ``size`` rows of ``xs`` (axis 0), stacked.

  Unlike ``_lmap``, ``f`` receives a whole block (no ``vmap`` around it), so the
  linear algebra inside can go through ``parallel.per_matrix``.
  """
  m = jax.tree.leaves(xs)[0].shape[0]
  if size >= m:
    return f(xs)
  full = m // size * size
  head = jax.lax.map(f, jax.tree.map(
      lambda a: a[:full].reshape((m // size, size) + a.shape[1:]), xs))
  head = jax.tree.map(lambda a: a.reshape((full,) + a.shape[2:]), head)
  if full == m:
    return head
  tail = f(jax.tree.map(lambda a: a[full:], xs))
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head, tail)


def _factor(covs: Array, chunk: int) -> tuple[Array, Array, Array, Array]:
  """``½ log det Σ_i``, ``Σ_i⁻¹ = L_i⁻ᵀ L_i⁻¹`` and upper bounds on ``log λ_max(Σ_i)``
  and ``−log λ_min(Σ_i) = log λ_max(Σ_i⁻¹)``, ``[n]`` / ``[n, k, k]``, chunked."""
  eye = jnp.eye(covs.shape[-1], dtype=covs.dtype)

  def factor(cov):
    chol = jnp.linalg.cholesky(cov)
    return chol, solve_triangular(chol, eye, lower=True)

  def block(cov):  # [m, k, k]; one Cholesky factor at a time (parallel.per_matrix)
    chol, inv = parallel.per_matrix(factor, cov)
    prec = jax.vmap(lambda v: _matmul(v.T, v))(inv)
    return (jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1), prec,
            jax.vmap(_log_max_eigenvalue)(cov), jax.vmap(_log_max_eigenvalue)(prec))

  return _blocks(block, covs, chunk)


def _pair_pass(cols: Array, means: Array, covs: Array, prec: Array, *,
               chunk: int, trace_chunk: int) -> tuple[Array, ...]:
  """Per component ``j`` of ``cols``, over all ``i`` (``Δ = μ_i − μ_j``):
  ``tr(Σ_j⁻¹ Σ_i)``, ``Δᵀ Σ_j⁻¹ Δ``, ``Δᵀ Σ_j Δ`` and ``‖Δ‖²``, each ``[len(cols), n]``.

  The traces are ``[n, k²] × [k², trace_chunk]`` products; the quadratic forms one
  ``[n, k] × [k, 2k]`` product per ``j`` (``[Σ_j⁻¹ | Σ_j]``), ``chunk`` at a time,
  on exact differences (no ``‖μ_i‖² − 2μ_i·μ_j + ‖μ_j‖²`` cancellation).
  """
  n, k = means.shape
  flat = covs.reshape(n, k * k)

  def column(j):
    delta = means - means[j]
    prod = _matmul(delta, jnp.concatenate([prec[j], covs[j]], axis=1))
    return (jnp.sum(prod[:, :k] * delta, axis=-1),
            jnp.sum(prod[:, k:] * delta, axis=-1),
            jnp.sum(jnp.square(delta), axis=-1))

  trace = _lmap(lambda j: _matmul(flat, prec[j].reshape(-1)), cols,
                      batch_size=trace_chunk)
  return (trace,) + _lmap(column, cols, batch_size=chunk)


def _bhattacharyya_pairs(pairs: tuple[Array, Array], means: Array, covs: Array,
                         half_logdet: Array, *, chunk: int) -> Array:
  """Exact ``D_B(p_i, p_j)`` for the pairs ``(rows, cols)``, one Cholesky each."""
  def solve(cov, delta):
    chol = jnp.linalg.cholesky(cov)
    y = solve_triangular(chol, delta, lower=True)
    return 0.125 * jnp.sum(jnp.square(y)) + jnp.sum(jnp.log(jnp.diagonal(chol)))

  def block(pair):  # one Cholesky factor at a time (parallel.per_matrix)
    i, j = pair
    return (parallel.per_matrix(solve, 0.5 * (covs[i] + covs[j]), means[i] - means[j])
            - 0.5 * (half_logdet[i] + half_logdet[j]))

  return _blocks(block, pairs, chunk)


def _chunks(n: int, k: int, chunk_size: int | None) -> tuple[int, int]:
  """Components per step of the quadratic forms, and matrices per step of the
  factors, the traces and the exact pairs: ``chunk_size`` or about 8M elements."""
  if chunk_size is not None:
    return chunk_size, chunk_size
  return max(1, _STEP_ELEMENTS // (2 * n * k)), max(1, _STEP_ELEMENTS // (k * k))


def _kl_terms(means: Array, covs: Array, chunk_size: int | None, mesh: Any):
  """KL, ``tr(Σ_j⁻¹ Σ_i)``, ``Δᵀ Σ_j⁻¹ Δ``, ``Δᵀ Σ_j Δ``, ``‖Δ‖²``, ``log r_ij``
  (``[n, n]``, row ``i``, column ``j``; ``r_ij ≥ λ_max(Σ_j⁻¹ Σ_i), 1/λ_min(Σ_j⁻¹ Σ_i)``)
  and ``½ log det Σ_i`` ``[n]``."""
  n, k = means.shape
  col_chunk, mat_chunk = _chunks(n, k, chunk_size)
  half_logdet, prec, log_max, log_inv_min = _factor(covs, mat_chunk)
  body = functools.partial(_pair_pass, chunk=col_chunk, trace_chunk=mat_chunk)
  trace, mahal, spread, sq = (a.T for a in parallel.shard_rows(
      body, mesh, jnp.arange(n), means, covs, prec, pad=True))
  kl = 0.5 * (trace + mahal - k) + half_logdet[None, :] - half_logdet[:, None]
  kl = jnp.where(jnp.eye(n, dtype=bool), 0.0, kl)
  # log of a bound on the spread of the eigenvalues of Σ_j⁻¹ Σ_i (both ways).
  log_spread = log_max[:, None] + log_inv_min[None, :]
  log_spread = jnp.maximum(log_spread, log_spread.T)
  return kl, trace, mahal, spread, sq, log_spread, half_logdet


def _bhattacharyya_interval(kl, trace, mahal, spread, sq, log_spread, half_logdet,
                            k):
  """Certified ``L_ij ≤ D_B(p_i, p_j) ≤ U_ij`` ``[n, n]`` from the KL pass alone.

  With ``λ_a`` the eigenvalues of ``Σ_j⁻¹ Σ_i`` and ``u_a = log λ_a``,
  ``D_B = ⅛ Δᵀ Σ̄⁻¹ Δ + ½ Σ_a log cosh(u_a/2)``. Quadratic term:
  ``≥ ⅛ ‖Δ‖⁴ / Δᵀ Σ̄ Δ`` (Cauchy–Schwarz) and ``≤ (1/16) (Δᵀ Σ_i⁻¹ Δ + Δᵀ Σ_j⁻¹ Δ)``
  (``Σ̄⁻¹ ⪯ ½ (Σ_i⁻¹ + Σ_j⁻¹)``). Log-det term, knowing
  ``Σ_a u_a = log det Σ_i − log det Σ_j`` and
  ``Σ_a cosh²(u_a/2) = (tr(Σ_j⁻¹ Σ_i) + tr(Σ_i⁻¹ Σ_j) + 2k)/4 =: C``:
  ``≥ (k/2) log cosh(Σ_a u_a / 2k)`` (Jensen, ``log cosh`` convex),
  ``≥ ¼ (m log c_max + log(1 + ρ))`` (``¼ Σ_a log c_a`` is concave in the
  ``c_a = cosh²(u_a/2) ∈ [1, c_max]``, ``c_max = (r + 1/r + 2)/4`` from the eigenvalue
  spread ``r``, with a fixed sum ``C``: least at a vertex, ``m`` of them at ``c_max``,
  one at ``1 + ρ``, ``C − k = m (c_max − 1) + ρ``), ``≤ (k/4) log(C/k)`` (Jensen,
  ``log`` concave). Also
  ``D_B = ½ R_½ ≤ ½ R_1 = ½ KL`` in either direction (Rényi divergences grow with
  the order).
  """
  n = kl.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  moved = sq > 0
  quad_lo = jnp.where(moved, sq**2 / (4 * jnp.where(moved, spread + spread.T, 1.0)),
                      0.0)
  quad_hi = (mahal + mahal.T) / 16
  log_ratio = 2 * (half_logdet[:, None] - half_logdet[None, :])  # Σ_a u_a
  jensen = 0.5 * k * _log_cosh(log_ratio / (2 * k))
  excess = jnp.maximum(trace + trace.T - 2 * k, 0.0) / 4  # C − k
  # c_max − 1 = (r + 1/r − 2)/4 = sinh²(½ log r), r ≥ 1 so log r ≥ 0.
  half_log = 0.5 * jnp.maximum(log_spread, 0.0)
  gap = jnp.square(jnp.sinh(half_log))
  safe = gap > 0
  m = jnp.where(safe, jnp.minimum(jnp.floor(excess / jnp.where(safe, gap, 1.0)), k - 1),
                0.0)
  vertex = 0.25 * (m * 2 * _log_cosh(half_log)
                   + jnp.log1p(jnp.maximum(excess - m * gap, 0.0)))
  lower = jnp.where(off, quad_lo + jnp.maximum(jensen, vertex), 0.0)
  # Shrunk by a few ulps so that rounding cannot lift it above the exact value.
  lower = lower * (1 - 4 * k * jnp.finfo(lower.dtype).eps)
  upper = jnp.minimum(quad_hi + 0.25 * k * jnp.log1p(excess / k),
                      0.5 * jnp.minimum(kl, kl.T))
  return lower, jnp.where(off, jnp.maximum(upper, lower), 0.0)


def _log_cosh(x: Array) -> Array:
  a = jnp.abs(x)
  return a + jnp.log1p(jnp.exp(-2 * a)) - math.log(2.0)


def _pairwise_part(div: Array) -> Array:
  """``−(1/n) Σ_i log (1/n) Σ_j exp(−D_ij)``, per row before the mean."""
  return math.log(div.shape[0]) - jax.nn.logsumexp(-div, axis=1)


@functools.partial(jax.jit, static_argnames=("exact_neighbors", "chunk_size", "mesh"))
def _pairwise_bounds(means: Array, covs: Array, *, exact_neighbors: int,
                     chunk_size: int | None, mesh: Any
                     ) -> tuple[PairwiseBounds, Array]:
  n, k = means.shape
  kl, *terms, half_logdet = _kl_terms(means, covs, chunk_size, mesh)
  lower, upper = _bhattacharyya_interval(kl, *terms, half_logdet, k)
  num_pairs = n * (n - 1) // 2
  budget = min(num_pairs, -(-n * exact_neighbors // 2))
  if budget:
    # Pairs ranked by how much replacing [lower, upper] by the exact value can move
    # either row's log-sum-exp, at most.
    gain = jnp.exp(-lower) - jnp.exp(-upper)
    z = jnp.sum(jnp.exp(-upper), axis=1)
    weight = gain / z[:, None] + gain / z[None, :]
    weight = jnp.where(jnp.triu(jnp.ones((n, n), bool), 1), weight, -jnp.inf)
    flat = jax.lax.top_k(weight.reshape(-1), budget)[1]
    rows, cols = flat // n, flat % n
    _, mat_chunk = _chunks(n, k, chunk_size)
    body = functools.partial(_bhattacharyya_pairs, chunk=mat_chunk)
    exact = parallel.shard_rows(body, mesh, (rows, cols), means, covs, half_logdet,
                                pad=True)
    lower = lower.at[rows, cols].set(exact).at[cols, rows].set(exact)
    upper = upper.at[rows, cols].set(exact).at[cols, rows].set(exact)
  h_cond = 0.5 * k * _LOG_2PI_E + jnp.mean(half_logdet)
  part_lower = _pairwise_part(lower)
  mi_lower, mi_upper = jnp.mean(part_lower), jnp.mean(_pairwise_part(kl))
  slack = jnp.maximum(jnp.mean(_pairwise_part(upper) - part_lower), 0.0)
  ok = jnp.isfinite(half_logdet) & jnp.all(jnp.isfinite(means), axis=1)
  bounds = PairwiseBounds(h_cond + mi_lower, h_cond + mi_upper, mi_lower, mi_upper,
                          h_cond, jnp.asarray(budget, jnp.int32),
                          jnp.asarray(num_pairs, jnp.int32), slack)
  return bounds, ok


def pairwise_bounds(means: Array, covs: Array, *, exact_neighbors: int = 8,
                    chunk_size: int | None = None, mesh: Any = None
                    ) -> PairwiseBounds:
  """Certified Kolchinsky–Tracey bounds on ``H(p)``, ``p = (1/n) Σ_i N(μ_i, Σ_i)``.

  ``Ĥ_D = (1/n) Σ_i H(p_i) − (1/n) Σ_i log (1/n) Σ_j exp(−D(p_i‖p_j))`` is an
  upper bound on ``H(p)`` with ``D`` the KL divergence and a lower bound with the
  Bhattacharyya distance ``D_B``. Upper: exact (up to rounding), every pair, from
  ``KL_ij = ½ (tr(Σ_j⁻¹ Σ_i) + Δᵀ Σ_j⁻¹ Δ − k) + ½ log det Σ_j − ½ log det Σ_i``,
  ``Δ = μ_i − μ_j``: the traces are ``⟨Σ_j⁻¹, Σ_i⟩_F``, an ``[n, k²] × [k², n]``
  product, and the Mahalanobis terms products ``Δ Σ_j⁻¹`` on exact differences.
  Lower: ``D_B = ⅛ Δᵀ Σ̄⁻¹ Δ + ½ log det Σ̄ − ¼ log det Σ_i Σ_j``,
  ``Σ̄ = (Σ_i + Σ_j)/2``, is computed exactly (one ``k × k`` Cholesky) for
  ``⌈n · exact_neighbors / 2⌉`` pairs and replaced by a certified ``L_ij ≤ D_B`` on
  the others: ``⅛ ‖Δ‖⁴ / Δᵀ Σ̄ Δ`` for the quadratic term (Cauchy–Schwarz) plus
  lower bounds of the log-det term from ``log det Σ_i − log det Σ_j``,
  ``tr(Σ_j⁻¹ Σ_i) + tr(Σ_i⁻¹ Σ_j)`` and a bound on the eigenvalue spread of
  ``Σ_j⁻¹ Σ_i`` (``_bhattacharyya_interval``; docs/mixture.md). ``Ĥ`` grows with
  every ``D_ij``, so ``h_lower`` is ≤ the exact Bhattacharyya bound. The exact
  pairs are those where the most can be gained: by how much ``[L_ij, U_ij]``
  (``U_ij ≥ D_B``, e.g. ``½ KL_ij``: ``D_B = ½ R_½ ≤ ½ KL``) can move each row's
  sum; the same interval bounds the cost,
  ``lower_slack = (1/n) Σ_i log Σ_j e^{−L′_ij} / Σ_j e^{−U′_ij}`` (primes: exact
  values where known), so the exact bound lies in ``[h_lower, h_lower + lower_slack]``.

  Cost: ``n`` Cholesky factors, inverses and 8 ``k × k`` products each for the
  eigenvalue bounds (``O(n k³)``), ``O(n² k²)`` for the
  traces and quadratic forms (matrix products), ``O(n · exact_neighbors · k³)`` for
  the exact pairs. Memory ``O(n k² + n² + chunk · n k)``: ``[n, k, k]``
  covariances and inverses, a few ``[n, n]`` matrices, one chunk at a time of the
  ``[chunk, n, k]`` differences; never ``[n, n, k]`` or ``[n, n, k, k]``. Compute
  in float64 (``jax.enable_x64``) when ``k`` is in the hundreds: ``tr(Σ_j⁻¹ Σ_i) − k``
  loses ``log10(k · cond Σ)`` digits.

  Args:
    means: component means ``[n, k]``, n ≥ 2.
    covs: component covariances ``[n, k, k]``, symmetric positive definite.
    exact_neighbors: average number of exact ``D_B`` per component (each pair
      serves two); ``≥ n − 1`` makes every pair exact (then ``h_lower`` equals
      ``pairwise_bounds_exact``'s up to rounding and ``lower_slack = 0``).
    chunk_size: components per step of the pair pass and matrices per step of the
      factorisations; ``None``: steps of about 8M elements.
    mesh: optional ``jax.sharding.Mesh``: the pair pass (over ``j``) and the exact
      pairs are split over all its devices (``shard_map``); inputs replicated.

  Returns:
    ``PairwiseBounds``.

  Raises:
    ValueError: shapes that do not match, ``n < 2``, or (outside a trace) a
      covariance that is not numerically positive definite or non-finite input.

  References:
    Kolchinsky & Tracey, "Estimating mixture entropy with pairwise distances",
    Entropy 19(7):361, 2017; van Erven & Harremoës, "Rényi divergence and
    Kullback–Leibler divergence", IEEE Trans. Inf. Theory 60(7), 2014 (monotonicity
    in the order).
  """
  _check_mixture(means, covs)
  _validate.check_count(exact_neighbors, "exact_neighbors", minimum=0)
  if chunk_size is not None:
    _validate.check_count(chunk_size, "chunk_size", minimum=1)
  dtype = jnp.result_type(means, covs)
  bounds, ok = _pairwise_bounds(jnp.asarray(means, dtype), jnp.asarray(covs, dtype),
                                exact_neighbors=exact_neighbors,
                                chunk_size=chunk_size, mesh=mesh)
  _raise_unless_positive_definite(ok, covs)
  return bounds


def kl_divergences(means: Array, covs: Array, *, chunk_size: int | None = None,
                   mesh: Any = None) -> Array:
  """All ``KL(p_i‖p_j)`` of ``p_i = N(μ_i, Σ_i)`` from traces and matrix products.

  ``KL_ij = ½ (⟨Σ_j⁻¹, Σ_i⟩_F + Δᵀ Σ_j⁻¹ Δ − k) + ½ log det Σ_j − ½ log det Σ_i``,
  ``Δ = μ_i − μ_j``; the diagonal is 0. Time ``O(n k³ + n² k²)``, memory
  ``O(n k² + n²)`` (see ``pairwise_bounds``, which uses the same pass).

  Args:
    means: ``[n, k]``, n ≥ 2.
    covs: ``[n, k, k]``, symmetric positive definite.
    chunk_size: as in ``pairwise_bounds``.
    mesh: as in ``pairwise_bounds``.

  Returns:
    ``[n, n]``, row ``i``, column ``j``; nats.
  """
  _check_mixture(means, covs)
  if chunk_size is not None:
    _validate.check_count(chunk_size, "chunk_size", minimum=1)
  dtype = jnp.result_type(means, covs)
  kl, ok = _kl_divergences(jnp.asarray(means, dtype), jnp.asarray(covs, dtype),
                           chunk_size=chunk_size, mesh=mesh)
  _raise_unless_positive_definite(ok, covs)
  return kl


@functools.partial(jax.jit, static_argnames=("chunk_size", "mesh"))
def _kl_divergences(means, covs, *, chunk_size, mesh):
  kl, *_, half_logdet = _kl_terms(means, covs, chunk_size, mesh)
  return kl, jnp.isfinite(half_logdet) & jnp.all(jnp.isfinite(means), axis=1)


def _exact_bounds(means: Array, covs: Array) -> PairwiseBounds:
  n = means.shape[0]
  h_cond = estimators.mixture_conditional_entropy(covs)
  lower = estimators.pairwise_entropy(means, covs, distance="bhattacharyya")
  upper = estimators.pairwise_entropy(means, covs, distance="kl")
  pairs = jnp.asarray(n * (n - 1) // 2, jnp.int32)
  return PairwiseBounds(lower, upper, lower - h_cond, upper - h_cond, h_cond, pairs,
                        pairs, jnp.zeros((), lower.dtype))


def pairwise_bounds_exact(means: Array, covs: Array) -> PairwiseBounds:
  """The Kolchinsky–Tracey bounds with every pairwise divergence exact: the oracle.

  The same bounds as ``pairwise_bounds`` (see there), every ``D_B(p_i, p_j)`` from
  its own Cholesky factor of ``(Σ_i + Σ_j)/2`` and every KL from per-component
  triangular solves (``sslit.estimators.pairwise_entropy``). Time ``O(n² k³)``,
  memory ``O(n k² + n²)`` plus blocks of at most 16M elements: for a few hundred
  components at ``k`` in the hundreds; use ``pairwise_bounds`` beyond.

  Args:
    means: component means ``[n, k]``, n ≥ 2.
    covs: component covariances ``[n, k, k]``, symmetric positive definite.

  Returns:
    ``PairwiseBounds`` with ``exact_pairs = num_pairs`` and ``lower_slack = 0``.

  Raises:
    ValueError: as ``pairwise_bounds``.
  """
  _check_mixture(means, covs)
  dtype = jnp.result_type(means, covs)
  means, covs = jnp.asarray(means, dtype), jnp.asarray(covs, dtype)
  bounds = _exact_bounds(means, covs)
  _raise_unless_positive_definite(
      jnp.isfinite(estimators.gaussian_entropy(covs))
      & jnp.all(jnp.isfinite(means), axis=1), covs)
  return bounds


# ----------------------------------------------------------------------------
# From per-input slopes to the information quantities (what
# ``cpa.representation_information`` returns).


def check_noise_model(sigma: Any, *, output_noise: Any = 0.0,
                      relative_output_noise: Any = 0.0, method: str = "auto",
                      exact_neighbors: Any = 8) -> None:
  """The argument checks of ``information_from_slopes``, on their own.

  For callers that check before computing the slopes (``cpa``). Concrete values
  only: traced ones are let through.

  Args:
    sigma: input-noise standard deviation, > 0 and finite.
    output_noise: ``τ ≥ 0``.
    relative_output_noise: ``ρ ≥ 0``; at most one of the two > 0.
    method: one of ``METHODS``.
    exact_neighbors: integer ``≥ 0``.

  Raises:
    ValueError: naming the argument.
  """
  _validate.check_sigma(sigma)
  _validate.check_choice(method, METHODS, "method")
  _validate.check_count(exact_neighbors, "exact_neighbors", minimum=0)
  _validate.check_positive(output_noise, "output_noise", allow_zero=True)
  _validate.check_positive(relative_output_noise, "relative_output_noise",
                           allow_zero=True)
  try:
    both = float(output_noise) > 0 and float(relative_output_noise) > 0
  except Exception:  # traced: cannot be checked
    both = False
  if both:
    raise ValueError(
        f"give output_noise (absolute τ) or relative_output_noise (τ relative to "
        f"σ times the slopes' scale), not both; got output_noise={output_noise}, "
        f"relative_output_noise={relative_output_noise}.")


def information_from_slopes(means: Array, slope_gram: Array, singular_values: Array,
                            sigma: Any, *, d: int, output_noise: Any = 0.0,
                            relative_output_noise: Any = 0.0, method: str = "auto",
                            exact_neighbors: int = 8,
                            mesh: Any = None) -> dict[str, Array]:
  """The information quantities of SPEC §2–3 from per-input slope statistics.

  The mixture ``(1/n) Σ_n N(μ_n, Σ_n)``, ``Σ_n = σ² A_n A_nᵀ + τ² I_k``, given
  only ``μ_n``, ``A_n A_nᵀ`` and the singular values of ``A_n`` (``[k, d]``), so a
  caller that has the slopes (or computes them per device, as
  ``cpa.representation_information`` does) never passes ``[n, k, d]``.
  ``τ = output_noise + relative_output_noise · σ · s̄``,
  ``s̄² = (1/(n k)) Σ_n ‖A_n‖_F²``. The keys and their meaning are those of
  ``cpa.representation_information`` (docs/cpa.md). Jittable and differentiable;
  the values may be traced.

  Args:
    means: ``μ_n = f(x_n)``, ``[n, k]``, n ≥ 2.
    slope_gram: ``A_n A_nᵀ``, ``[n, k, k]``.
    singular_values: of each ``A_n``, descending, ``[n, min(k, d)]``.
    sigma: input-noise standard deviation (> 0), a scalar.
    d: the input dimension (columns of ``A_n``): the rank tolerance
      ``max(k, d)·eps`` and the number of zero eigenvalues of ``A_n A_nᵀ``.
    output_noise: ``τ ≥ 0``, absolute.
    relative_output_noise: ``ρ ≥ 0``; at most one of the two > 0.
    method: ``"auto"`` (exact up to ``AUTO_EXACT_MAX_N`` inputs), ``"exact"``
      (``pairwise_bounds_exact``) or ``"scalable"`` (``pairwise_bounds``).
    exact_neighbors: for ``"scalable"``, as in ``pairwise_bounds``.
    mesh: for ``"scalable"``, as in ``pairwise_bounds``.

  Returns:
    dict of scalars: ``h_cond``, ``h_lower``, ``h_upper``, ``mi_lower``,
    ``mi_upper``, ``gaussian_surrogate``, ``separation_ratio``, ``min_rank``,
    ``full_rank``, ``sigma``, ``output_noise`` (``τ``), ``exact_pairs``,
    ``num_pairs``, ``lower_slack``.
  """
  _validate.check_batch(means, "means")
  n, k = _validate.shape_of(means)
  m = min(k, d)
  if (_validate.shape_of(slope_gram) != (n, k, k)
      or _validate.shape_of(singular_values) != (n, m)):
    raise ValueError(
        f"slope_gram must be [n, k, k] = {(n, k, k)} and singular_values "
        f"[n, min(k, d)] = {(n, m)} for means {(n, k)} and d = {d}; got "
        f"{_validate.shape_of(slope_gram)} and {_validate.shape_of(singular_values)}.")
  check_noise_model(sigma, output_noise=output_noise,
                    relative_output_noise=relative_output_noise, method=method,
                    exact_neighbors=exact_neighbors)
  aat, s = slope_gram, singular_values
  sigma, tau_abs, rho = (jnp.asarray(v).astype(aat.dtype)
                         for v in (sigma, output_noise, relative_output_noise))
  slope_scale = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(s), axis=-1)) / k)
  tau = tau_abs + rho * sigma * slope_scale
  noisy = tau > 0
  tau_safe = jnp.where(noisy, tau, 1.0)  # keeps the unused branch's gradient finite
  h_rank = _entropy_from_singular_values(s, k, d, sigma, None)
  h = jnp.where(noisy, _noisy_entropy(s, k, sigma, tau_safe), h_rank.entropy)
  h_cond = jnp.mean(h)
  covs = sigma**2 * aat + jnp.where(noisy, tau**2, 0.0) * jnp.eye(k, dtype=aat.dtype)
  # The pairwise part of each bound alone (the bound minus the mean component
  # entropy it was built from, the same Cholesky factors), so mi_* ∈ [0, log n] up
  # to rounding and h_* = h_cond + mi_* uses the exact h_cond.
  if method == "auto":
    method = "exact" if n <= AUTO_EXACT_MAX_N else "scalable"
  if method == "exact":
    bounds = _exact_bounds(means, covs)
  else:
    bounds, _ = _pairwise_bounds(means, covs, exact_neighbors=exact_neighbors,
                                 chunk_size=None, mesh=mesh)
  density = noisy | jnp.all(h_rank.rank == k)
  mu = means - means.mean(0)
  cov_z = mu.T @ mu / n + sigma**2 * aat.mean(0)  # plus τ² I, added exactly below
  return {
      "h_cond": h_cond,
      "h_lower": jnp.where(density, h_cond + bounds.mi_lower, -jnp.inf),
      "h_upper": jnp.where(density, h_cond + bounds.mi_upper, -jnp.inf),
      "mi_lower": jnp.where(density, bounds.mi_lower, jnp.nan),
      "mi_upper": jnp.where(density, bounds.mi_upper, jnp.nan),
      "gaussian_surrogate": _shifted_gaussian_entropy(
          cov_z, jnp.where(noisy, tau, 0.0)),
      "separation_ratio": separation_ratio(means, covs),
      "min_rank": jnp.min(h_rank.rank),
      "full_rank": jnp.all(h_rank.full_rank),
      "sigma": sigma,
      "output_noise": tau,
      "exact_pairs": bounds.exact_pairs,
      "num_pairs": bounds.num_pairs,
      "lower_slack": jnp.where(density, bounds.lower_slack, jnp.nan),
  }
