"""Contrastive objectives: SimCLR's NT-Xent (InfoNCE) and MoCo v3.

The positive logit is a von Mises-Fisher invariance term, the log-sum-exp over the
negatives (or momentum keys) a kernel-density estimate of the entropy on the sphere.
Pure functions of the global batch returning ``(loss, aux)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ['infonce_loss', 'moco_v3_loss']


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
  z_a, z_b = common.as_float(z_a), common.as_float(z_b)
  n = z_a.shape[0]
  u = common.l2_normalize(jnp.concatenate([z_a, z_b], axis=0))
  logits = (u @ u.T) / temperature
  self_mask = jnp.eye(2 * n, dtype=bool)
  lse = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=1)
  # Both anchors of a pair share the same positive similarity.
  pos = jnp.sum(u[:n] * u[n:], axis=1) / temperature
  inv = -jnp.mean(pos)
  log_sum_exp = jnp.mean(lse)
  return inv + log_sum_exp, {"invariance": inv, "log_sum_exp": log_sum_exp}


def moco_v3_loss(q_a: Array, q_b: Array, k_a: Array, k_b: Array, *,
                 temperature: float = 0.2) -> tuple[Array, Aux]:
  r"""MoCo v3: symmetric InfoNCE of the queries against the momentum keys.

  With unit-norm rows ``q`` (online predictor outputs) and ``k`` (momentum encoder
  outputs, stop-gradient), ``ctr(q, k) = mean_i [-q_i.k_i / t + log sum_j
  exp(q_i.k_j / t)]`` over the ``n`` keys of the global batch (positive included),
  and

  ``loss = 2 t (ctr(q_a, k_b) + ctr(q_b, k_a))``

  (the paper's ``2 tau`` scaling, which makes the gradient scale free of ``t``).

  Args:
    q_a: queries of view a, ``[n, k]``, float, ``n >= 2``.
    q_b: queries of view b, ``[n, k]``.
    k_a: momentum keys of view a, ``[n, k]`` (no gradient flows into them).
    k_b: momentum keys of view b, ``[n, k]``.
    temperature: softmax temperature ``t`` (the paper's 0.2).

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (sum over the two directions of the
    mean ``-q_i.k_i / t``) and ``log_sum_exp`` (sum of the mean log-sum-exp);
    ``loss = 2 t (invariance + log_sum_exp)``.

  Cost: O(n^2 k) time, O(n^2) memory.

  References:
    Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision
    Transformers. ICCV 2021.
  """
  _validate.check_pair(q_a, k_b, names=("q_a", "k_b"))
  _validate.check_pair(q_b, k_a, names=("q_b", "k_a"))
  _validate.check_same_shape(q_a, q_b, "q_a", "q_b")
  _validate.check_positive(temperature, "temperature")
  f, norm = common.as_float, common.l2_normalize

  def ctr(q, k):
    q, k = norm(f(q)), norm(jax.lax.stop_gradient(f(k)))
    logits = q @ k.T / temperature
    pos = jnp.sum(q * k, axis=-1) / temperature
    return -jnp.mean(pos), jnp.mean(jax.nn.logsumexp(logits, axis=-1))

  (inv_ab, lse_ab), (inv_ba, lse_ba) = ctr(q_a, k_b), ctr(q_b, k_a)
  inv, lse = inv_ab + inv_ba, lse_ab + lse_ba
  return 2 * temperature * (inv + lse), {"invariance": inv, "log_sum_exp": lse}
