"""Clustering objectives: SwAV and its Sinkhorn-Knopp codes.

Swapped prediction of equipartitioned cluster codes: the cross-entropy is the
invariance term, the equipartition constraint fixes the marginal of the codes at
uniform (the maximal entropy ``log P``). Pure functions of the global batch
returning ``(loss, aux)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ['sinkhorn_knopp', 'swav_loss']


def sinkhorn_knopp(scores: Array, *, epsilon: float = 0.05,
                   num_iterations: int = 3) -> Array:
  r"""SwAV's codes: Sinkhorn-Knopp equipartition of ``n`` samples over ``P`` prototypes.

  ``Q ∝ exp(scores / epsilon)``, normalised to total mass 1, then
  ``num_iterations`` times: every prototype (column) scaled to mass ``1/P``, then
  every sample (row) to mass ``1/n``; returned times ``n`` so that each row sums
  to 1. Computed in the log domain (``logsumexp`` instead of sums of ``exp``): the
  same numbers without overflow for small ``epsilon``. The column sums run over
  the *global* batch: sharded over devices under ``jax.jit`` they are all-reduced,
  so the codes equal the single-device ones.

  Args:
    scores: ``[n, P]`` similarities of embeddings to prototypes.
    epsilon: entropic regularisation (smaller: harder assignments).
    num_iterations: Sinkhorn iterations.

  Returns:
    ``[n, P]`` codes, rows summing to 1, columns to about ``n / P``; constant
    (no gradient).

  References:
    Caron et al. Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments. NeurIPS 2020. Cuturi. Sinkhorn Distances. NeurIPS 2013.
  """
  _validate.check_batch(scores, "scores", min_n=1)
  _validate.check_positive(epsilon, "epsilon")
  if not isinstance(num_iterations, int) or num_iterations < 1:
    raise ValueError(f"num_iterations must be a positive int, got "
                     f"{num_iterations!r}.")
  n, p = _validate.shape_of(scores)
  log_q = jax.lax.stop_gradient(common.as_float(scores)) / epsilon
  log_q = log_q - jax.nn.logsumexp(log_q)

  def iteration(_, log_q):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(p)
    return log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - math.log(n)

  # A loop, not unrolled: the compile time stays flat in num_iterations.
  log_q = jax.lax.fori_loop(0, num_iterations, iteration, log_q)
  return jnp.exp(log_q) * n


def swav_loss(z: Array, prototypes: Array, *, queue: Array | None = None,
              num_global: int = 2, temperature: float = 0.1, epsilon: float = 0.05,
              sinkhorn_iterations: int = 3) -> tuple[Array, Aux]:
  r"""SwAV: swapped prediction of Sinkhorn codes from prototype scores.

  Rows of ``z`` are scaled to unit norm, ``s[v] = z[v] C^T`` (``C`` the prototypes),
  the codes of the global crops ``q_i = sinkhorn_knopp(s[i])`` (no gradient), and

  ``loss = mean_{(i, v), v != i} mean_n [-sum_P q_i log softmax(s[v] / t)]``

  (each global crop's code is predicted from every other crop).

  Args:
    z: projector outputs of all crops, ``[m, n, k]``, the ``num_global`` global
      crops first, ``m >= 2``.
    prototypes: ``[P, k]``, rows of unit norm (the trainer re-normalises them after
      every update, as the paper does; they are used as given here).
    queue: None, or ``[num_global, L, k]`` embeddings of earlier batches, one queue
      per global crop (the paper's queue for small batches; rows scaled to unit
      norm here). The codes of crop ``i`` are then the last ``n`` rows of
      ``sinkhorn_knopp(concat(queue[i] C^T, s[i]))``: the equipartition runs over
      ``L + n`` samples, and only the batch's codes enter the loss. The queue gets
      no gradient. The trainer keeps and fills it (``FitOptions.queue_length``).
    num_global: crops whose codes are computed (``crops_for_assign``).
    temperature: softmax temperature of the predictions.
    epsilon: Sinkhorn's entropic regularisation.
    sinkhorn_iterations: Sinkhorn iterations.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss),
    ``marginal_entropy`` ``H(mean p)`` and ``conditional_entropy`` ``mean H(p)`` of the
    predicted assignments ``p = softmax(s / t)`` over all crops (nats).

  Cost: O(m n k P + g m n P), plus O(g L (k + 1) P) with a queue.

  References:
    Caron, Misra, Mairal, Goyal, Bojanowski, Joulin. Unsupervised Learning of
    Visual Features by Contrasting Cluster Assignments. NeurIPS 2020.
  """
  m, _, k = common.check_views(z, "z", min_views=2)
  common.check_num_global(num_global, m, "z")
  _validate.check_rank(prototypes, 2, "prototypes", layout="[P, k]")
  _validate.check_float(prototypes, "prototypes")
  if _validate.shape_of(prototypes)[1] != k:
    raise ValueError(f"prototypes must be [P, k] with k = {k} for z "
                     f"{_validate.shape_of(z)}, got {_validate.shape_of(prototypes)}.")
  _validate.check_positive(temperature, "temperature")
  if queue is not None:
    _validate.check_rank(queue, 3, "queue", layout="[num_global, L, k]")
    _validate.check_float(queue, "queue")
    g, length, qk = _validate.shape_of(queue)
    if g != num_global or qk != k or length < 1:
      raise ValueError(f"queue must be [num_global, L, k] = [{num_global}, L >= 1, "
                       f"{k}], got {_validate.shape_of(queue)}.")
  return _swav_core(z, prototypes, queue, temperature, epsilon, num_global=num_global,
                    sinkhorn_iterations=sinkhorn_iterations)


@jax.jit(static_argnames=("num_global", "sinkhorn_iterations"))
def _swav_core(z, prototypes, queue, temperature, epsilon, *, num_global,
               sinkhorn_iterations):
  u = common.l2_normalize(common.as_float(z))
  c = common.as_float(prototypes)
  scores = jnp.einsum("vnk,pk->vnp", u, c)
  code_scores = [scores[i] for i in range(num_global)]
  if queue is not None:  # the queue's scores first, then the batch's (kept below)
    q_scores = jnp.einsum("glk,pk->glp", common.l2_normalize(
        jax.lax.stop_gradient(common.as_float(queue))), c)
    code_scores = [jnp.concatenate([q_scores[i], s]) for i, s in enumerate(code_scores)]
  n = scores.shape[1]
  codes = jnp.stack([
      sinkhorn_knopp(s, epsilon=epsilon, num_iterations=sinkhorn_iterations)[-n:]
      for s in code_scores])
  log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
  loss = common.swapped_cross_entropy(codes, log_p)
  marginal, conditional = common.entropies(jnp.exp(log_p))
  return loss, {"invariance": loss, "marginal_entropy": marginal,
                "conditional_entropy": conditional}
