"""Pieces shared by the objectives of several topics: dtype, norms, distances, checks.

Public names (used across the topic modules of ``sslit.objectives``), not re-exported
from ``sslit.objectives``: they are helpers, not losses.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import sslit._validate as _validate
import sslit.estimators as estimators

Array = jax.Array

# Row norms below this are treated as this (keeps the gradient of z / |z| finite at
# z = 0, as torch.nn.functional.normalize does).
NORM_EPS = 1e-12


def as_float(z: Array) -> Array:
  """Compute statistics in at least float32 (bfloat16/float16 inputs are upcast)."""
  z = jnp.asarray(z)
  return z.astype(jnp.promote_types(z.dtype, jnp.float32))


def l2_normalize(z: Array) -> Array:
  """Rows of ``z`` scaled to unit norm (norms below ``NORM_EPS`` count as it)."""
  return estimators.l2_normalize(z, eps=NORM_EPS)


def mse(z_a: Array, z_b: Array) -> Array:
  """``mean (z_a - z_b)^2`` over all entries."""
  return jnp.mean(jnp.square(z_a - z_b))


def cosine_distance(p: Array, z: Array) -> Array:
  """Batch mean of ``2 - 2 cos(p_i, z_i)``."""
  cos = jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)
  return jnp.mean(2.0 - 2.0 * cos)


def check_coeffs(**coeffs: Any) -> None:
  """A ValueError naming any coefficient that is negative (None: not given)."""
  for name, value in coeffs.items():
    if value is None:
      continue
    _validate.check_positive(value, name, allow_zero=True)


def check_views(x: Any, name: str, *, min_views: int = 1) -> tuple[int, int, int]:
  """Check stacked views ``[m, n, k]``; return ``(m, n, k)``."""
  _validate.check_rank(x, 3, name, layout="[num_views, n, k]")
  _validate.check_float(x, name)
  m, n, k = _validate.shape_of(x)
  if m < min_views or n < 1:
    raise ValueError(f"{name} of shape {(m, n, k)} needs at least {min_views} views "
                     f"and 1 sample.")
  return m, n, k


def check_num_global(num_global: Any, m: int, name: str) -> int:
  """``num_global`` checked to be an int in ``[1, m]`` with ``m >= 2`` views."""
  if not isinstance(num_global, int) or not 1 <= num_global <= m or m < 2:
    raise ValueError(f"num_global must be an int in [1, {m}] and {name} needs at "
                     f"least 2 views, got num_global={num_global!r} and {m} views.")
  return num_global


def entropies(probs: Array) -> tuple[Array, Array]:
  """``(H(mean p), mean H(p))`` of rows ``probs [..., K]``, nats."""
  flat = probs.reshape(-1, probs.shape[-1])
  def h(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
  return h(jnp.mean(flat, axis=0)), jnp.mean(h(flat))


def swapped_cross_entropy(targets: Array, log_probs: Array) -> Array:
  """Mean over pairs ``(i, v)``, ``v != i``, of ``mean_n -sum_K t_i log p_v``.

  ``targets [g, n, K]`` belong to the first ``g`` of the ``m`` views of
  ``log_probs [m, n, K]``; a target never predicts its own view.
  """
  g, n = targets.shape[0], targets.shape[1]
  m = log_probs.shape[0]
  ce = -jnp.einsum("gnk,mnk->gm", targets, log_probs) / n
  keep = jnp.arange(g)[:, None] != jnp.arange(m)[None, :]
  return jnp.sum(jnp.where(keep, ce, 0.0)) / (g * (m - 1))
