"""Alignment and uniformity on the hypersphere (Wang & Isola 2020).

Alignment: positive pairs close, ``mean_i |u_a[i] - u_b[i]|^alpha`` on unit-norm
rows. Uniformity: the log of the mean Gaussian potential ``exp(-t |u_i - u_j|^2)``
over the batch's pairs, minimised by spreading the rows over the sphere. In the
information-theoretic reading (SPEC section 3) alignment is the invariance and minus
the uniformity an entropy estimate: with the self-pairs included it is the Rényi
order-2 entropy of a Gaussian kernel density on the batch, up to a constant, and a
lower bound on the Bhattacharyya pairwise estimate of ``sslit.estimators`` at a
matched bandwidth (docs/objectives.md).

This module imports only jax and the math modules of sslit.

References:
  Wang, Isola. Understanding Contrastive Representation Learning through Alignment
  and Uniformity on the Hypersphere. ICML 2020.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ["uniformity", "alignment_uniformity_loss"]


def uniformity(u: Array, *, t: float = 2.0) -> Array:
  r"""Wang & Isola's uniformity: ``log mean_{i < j} exp(-t |u_i - u_j|^2)``.

  The mean runs over the ``n (n - 1) / 2`` distinct pairs of rows (``pdist``); the
  log of the mean is a ``logsumexp``, so it stays finite for large ``t``.

  Args:
    u: rows ``[n, k]``, ``n >= 2``, normally of unit norm (used as given).
    t: the potential's scale (the paper: 2).

  Returns:
    Scalar, ``<= 0``; lower is more uniform.
  """
  _validate.check_batch(u, "u")
  _validate.check_positive(t, "t")
  u = common.as_float(u)
  n = u.shape[0]
  sq = jnp.sum(u * u, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (u @ u.T), 0.0)
  off = ~jnp.eye(n, dtype=bool)
  lse = jax.nn.logsumexp(jnp.where(off, -t * d2, -jnp.inf))
  return lse - math.log(n * (n - 1))  # every pair twice over the log of twice


def alignment_uniformity_loss(z_a: Array, z_b: Array, *, alpha: float = 2.0,
                              t: float = 2.0, uniformity_weight: float = 1.0
                              ) -> tuple[Array, Aux]:
  r"""Alignment plus uniformity of the two views' unit-norm embeddings.

  With ``u = z / |z|`` row by row,

  ``alignment = mean_i |u_a[i] - u_b[i]|^alpha``,
  ``uniformity = (U(u_a) + U(u_b)) / 2`` with ``U`` :func:`uniformity` and
  ``loss = alignment + uniformity_weight * uniformity``

  (the paper's ``L_align + lambda L_uniform``, uniformity of each view averaged as
  in its reference code).

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    alpha: exponent of the alignment distance (the paper: 2).
    t: scale of the uniformity's Gaussian potential (the paper: 2).
    uniformity_weight: ``lambda`` (the paper: 1).

  Returns:
    ``(loss, aux)``, aux with the unweighted ``alignment`` and ``uniformity``.

  Cost: O(n^2 k) time, O(n^2) memory.
  """
  _validate.check_pair(z_a, z_b)
  _validate.check_positive(alpha, "alpha")
  common.check_coeffs(uniformity_weight=uniformity_weight)
  u_a = common.l2_normalize(common.as_float(z_a))
  u_b = common.l2_normalize(common.as_float(z_b))
  sq = jnp.sum(jnp.square(u_a - u_b), axis=1)
  # |d|^alpha = (|d|^2)^(alpha / 2), with a zero gradient where d = 0 exactly.
  safe = jnp.where(sq > 0, sq, 1.0)
  align = jnp.mean(jnp.where(sq > 0, safe ** (alpha / 2), 0.0))
  unif = (uniformity(u_a, t=t) + uniformity(u_b, t=t)) / 2
  return align + uniformity_weight * unif, {"alignment": align, "uniformity": unif}
