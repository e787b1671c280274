"""More self-supervised objectives: SimSiam, MoCo v3, DINO, SwAV, W-MSE, MMCR.

The methods SSL papers compare against, written like :mod:`sslit.objectives` (which
re-exports every public name of this module and registers them in
``get_objective``): pure functions of the **global** batch returning ``(loss, aux)``,
hyperparameters keyword-only with the papers' defaults, shapes checked statically.
Under ``jax.jit`` with batch-sharded inputs every batch reduction (InfoNCE keys,
DINO's centre, SwAV's Sinkhorn sums, W-MSE's covariance, MMCR's centroid matrix) is
a global one; the compiler inserts the all-reduces.

Multi-view inputs are stacked ``[m, n, ...]``: view ``v`` of sample ``i`` is
``x[v, i]``; for DINO and SwAV the first ``num_global`` views are the global crops.

Information-theoretic reading (``I(Z; X') >= H(Z) + E log q(z | x')``):

* SimSiam: cosine to a stop-gradient target through a predictor (invariance);
  no entropy term, collapse is avoided by the stop-gradient/predictor dynamics.
* MoCo v3: InfoNCE against momentum keys: positive logit = von Mises-Fisher
  invariance, log-sum-exp over the keys = kernel density entropy estimate.
* DINO: cross-entropy teacher -> student (invariance of the cluster assignment);
  centring raises the entropy of the marginal assignment, sharpening lowers the
  conditional one: together ``I = H(marginal) - H(conditional)``.
* SwAV: swapped cross-entropy (invariance); the Sinkhorn equipartition constraint
  fixes the marginal of the codes at uniform, the maximal entropy ``log P``.
* W-MSE: cosine of whitened views (invariance); whitening is the hard constraint
  ``Cov Z = I`` (the Gaussian entropy surrogate at its maximum for a fixed scale).
* MMCR: nuclear norm of the per-sample view centroids: large when centroids are
  long (views agree: invariance) and spread over many directions (entropy).

This module imports only jax, numpy and the math modules of sslit.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

import sslit._validate as _validate

Array = jax.Array
Aux = dict[str, Array]

__all__ = [
    "simsiam_loss", "moco_v3_loss", "dino_loss", "dino_teacher_temperature",
    "sinkhorn_knopp", "swav_loss", "wmse_loss", "mmcr_loss",
]


# ----------------------------------------------------------------------------------
# Shared pieces (the element-wise helpers are those of sslit.objectives).


def _check_views(x: Any, name: str, *, min_views: int = 1) -> tuple[int, int, int]:
  """Check stacked views ``[m, n, k]``; return ``(m, n, k)``."""
  _validate.check_rank(x, 3, name, layout="[num_views, n, k]")
  _validate.check_float(x, name)
  m, n, k = _validate.shape_of(x)
  if m < min_views or n < 1:
    raise ValueError(f"{name} of shape {(m, n, k)} needs at least {min_views} views "
                     f"and 1 sample.")
  return m, n, k


def _check_num_global(num_global: Any, m: int, name: str) -> int:
  if not isinstance(num_global, int) or not 1 <= num_global <= m or m < 2:
    raise ValueError(f"num_global must be an int in [1, {m}] and {name} needs at "
                     f"least 2 views, got num_global={num_global!r} and {m} views.")
  return num_global


def _entropies(probs: Array) -> tuple[Array, Array]:
  """``(H(mean p), mean H(p))`` of rows ``probs [..., K]``, nats."""
  flat = probs.reshape(-1, probs.shape[-1])
  def h(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
  return h(jnp.mean(flat, axis=0)), jnp.mean(h(flat))


def _swapped_cross_entropy(targets: Array, log_probs: Array) -> Array:
  """Mean over pairs ``(i, v)``, ``v != i``, of ``mean_n -sum_K t_i log p_v``.

  ``targets [g, n, K]`` belong to the first ``g`` of the ``m`` views of
  ``log_probs [m, n, K]``; a target never predicts its own view.
  """
  g, n = targets.shape[0], targets.shape[1]
  m = log_probs.shape[0]
  ce = -jnp.einsum("gnk,mnk->gm", targets, log_probs) / n
  keep = jnp.arange(g)[:, None] != jnp.arange(m)[None, :]
  return jnp.sum(jnp.where(keep, ce, 0.0)) / (g * (m - 1))


# ----------------------------------------------------------------------------------
# SimSiam and MoCo v3.


def simsiam_loss(p_a: Array, p_b: Array, z_a: Array, z_b: Array
                 ) -> tuple[Array, Aux]:
  r"""SimSiam: symmetrised negative cosine to a stop-gradient target.

  ``loss = -(mean_i cos(p_a[i], sg(z_b[i])) + mean_i cos(p_b[i], sg(z_a[i]))) / 2``,
  in ``[-1, 1]``. ``z`` are the projector outputs of the *same* network (no EMA),
  ``p`` the predictor applied to them.

  Args:
    p_a: predictor outputs of view a, ``[n, k]``, float, ``n >= 2``.
    p_b: predictor outputs of view b, ``[n, k]``.
    z_a: projector outputs of view a, ``[n, k]`` (no gradient flows into them).
    z_b: projector outputs of view b, ``[n, k]``.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss).

  References:
    Chen, He. Exploring Simple Siamese Representation Learning. CVPR 2021.
  """
  _validate.check_pair(p_a, z_b, names=("p_a", "z_b"))
  _validate.check_pair(p_b, z_a, names=("p_b", "z_a"))
  _validate.check_same_shape(p_a, p_b, "p_a", "p_b")
  f, norm = _obj._as_float, _obj._l2_normalize

  def neg_cos(p, z):
    return -jnp.mean(jnp.sum(norm(f(p)) * norm(jax.lax.stop_gradient(f(z))), -1))

  loss = (neg_cos(p_a, z_b) + neg_cos(p_b, z_a)) / 2
  return loss, {"invariance": loss}


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
  f, norm = _obj._as_float, _obj._l2_normalize

  def ctr(q, k):
    q, k = norm(f(q)), norm(jax.lax.stop_gradient(f(k)))
    logits = q @ k.T / temperature
    pos = jnp.sum(q * k, axis=-1) / temperature
    return -jnp.mean(pos), jnp.mean(jax.nn.logsumexp(logits, axis=-1))

  (inv_ab, lse_ab), (inv_ba, lse_ba) = ctr(q_a, k_b), ctr(q_b, k_a)
  inv, lse = inv_ab + inv_ba, lse_ab + lse_ba
  return 2 * temperature * (inv + lse), {"invariance": inv, "log_sum_exp": lse}


# ----------------------------------------------------------------------------------
# DINO.


def dino_teacher_temperature(step: Any, *, warmup_steps: int, start: float = 0.04,
                             end: float = 0.07) -> Array:
  r"""DINO's teacher temperature schedule: linear warm-up, then constant.

  ``t(step) = start + (end - start) * min(step / warmup_steps, 1)``. The reference
  code steps it once per epoch (``np.linspace(start, end, warmup_epochs)``, 30
  epochs); pass ``warmup_steps = 30 * steps_per_epoch`` for the same ramp per step.

  Args:
    step: the training step, an int or a traced integer scalar.
    warmup_steps: length of the ramp (``0``: ``end`` from the start).
    start: temperature at step 0.
    end: temperature after the warm-up.

  Returns:
    float32 scalar.

  References:
    Caron et al. Emerging Properties in Self-Supervised Vision Transformers. ICCV
    2021.
  """
  if not isinstance(warmup_steps, int) or warmup_steps < 0:
    raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}.")
  _validate.check_positive(start, "start")
  _validate.check_positive(end, "end")
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(warmup_steps, 1), 0.0, 1.0)
  return jnp.float32(start) + jnp.float32(end - start) * frac


def dino_loss(student: Array, teacher: Array, center: Array, *,
              student_temperature: float = 0.1, teacher_temperature: Any = 0.07,
              center_momentum: float = 0.9) -> tuple[Array, Aux]:
  r"""DINO: cross-entropy from the centred, sharpened teacher to the student.

  With ``q_i = softmax((sg(teacher[i]) - center) / t_t)`` for the ``g`` global
  crops and ``log p_v = log_softmax(student[v] / t_s)`` for all ``m`` crops,

  ``loss = mean_{(i, v), v != i} mean_n [-sum_K q_i log p_v]``

  (each teacher crop predicts every *other* student crop; the first ``g`` student
  crops are the teacher's crops). The new centre is
  ``center' = center_momentum * center + (1 - center_momentum) * mean(teacher)``,
  the mean over the ``g n`` teacher rows of the global batch.

  Args:
    student: student head outputs (logits) of all crops, ``[m, n, K]``, global
      crops first, ``m >= 2``.
    teacher: EMA-teacher head outputs of the global crops, ``[g, n, K]``,
      ``1 <= g <= m`` (no gradient flows into them).
    center: the running centre, ``[K]`` (training state; zeros at the start).
    student_temperature: ``t_s``.
    teacher_temperature: ``t_t``; may be a traced scalar, e.g.
      :func:`dino_teacher_temperature` of the step (0.04 -> 0.07).
    center_momentum: EMA momentum of the centre.

  Returns:
    ``(loss, aux)``, aux with ``invariance`` (equal to the loss),
    ``marginal_entropy`` ``H(mean q)`` and ``conditional_entropy`` ``mean H(q)`` of
    the teacher's distributions (nats), and ``center``: the new centre ``[K]``, the
    one entry that is not a scalar (keep it as state, do not log it).

  Cost: O(g m n K).

  References:
    Caron et al. Emerging Properties in Self-Supervised Vision Transformers. ICCV
    2021.
  """
  m, n, k = _check_views(student, "student", min_views=2)
  g, _, _ = _check_views(teacher, "teacher")
  if _validate.shape_of(teacher)[1:] != (n, k) or g > m:
    raise ValueError(f"teacher must be [g, n, K] with g <= m for student [m, n, K], "
                     f"got teacher: {_validate.shape_of(teacher)} and student: "
                     f"{(m, n, k)}.")
  if _validate.shape_of(center) != (k,):
    raise ValueError(f"center must have shape (K,) = ({k},) for student "
                     f"{(m, n, k)}, got {_validate.shape_of(center)}.")
  _validate.check_positive(student_temperature, "student_temperature")
  _validate.check_positive(teacher_temperature, "teacher_temperature")
  if not 0.0 <= float(center_momentum) <= 1.0:
    raise ValueError(f"center_momentum must lie in [0, 1], got {center_momentum}.")
  return _dino_core(student, teacher, center, student_temperature,
                    teacher_temperature, center_momentum)


# The public functions check their inputs in Python, then call a jitted core: an
# eager call compiles one program instead of dispatching op by op.
@jax.jit
def _dino_core(student, teacher, center, student_temperature, teacher_temperature,
               center_momentum):
  student = _obj._as_float(student)
  teacher = jax.lax.stop_gradient(_obj._as_float(teacher))
  center = jax.lax.stop_gradient(jnp.asarray(center, teacher.dtype))
  q = jax.nn.softmax((teacher - center) / teacher_temperature, axis=-1)
  log_p = jax.nn.log_softmax(student / student_temperature, axis=-1)
  loss = _swapped_cross_entropy(q, log_p)
  new_center = (center_momentum * center
                + (1.0 - center_momentum) * jnp.mean(teacher, axis=(0, 1)))
  marginal, conditional = _entropies(q)
  return loss, {"invariance": loss, "marginal_entropy": marginal,
                "conditional_entropy": conditional, "center": new_center}


# ----------------------------------------------------------------------------------
# SwAV.


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
  log_q = jax.lax.stop_gradient(_obj._as_float(scores)) / epsilon
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
  m, _, k = _check_views(z, "z", min_views=2)
  _check_num_global(num_global, m, "z")
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
  u = _obj._l2_normalize(_obj._as_float(z))
  c = _obj._as_float(prototypes)
  scores = jnp.einsum("vnk,pk->vnp", u, c)
  code_scores = [scores[i] for i in range(num_global)]
  if queue is not None:  # the queue's scores first, then the batch's (kept below)
    q_scores = jnp.einsum("glk,pk->glp", _obj._l2_normalize(
        jax.lax.stop_gradient(_obj._as_float(queue))), c)
    code_scores = [jnp.concatenate([q_scores[i], s]) for i, s in enumerate(code_scores)]
  n = scores.shape[1]
  codes = jnp.stack([
      sinkhorn_knopp(s, epsilon=epsilon, num_iterations=sinkhorn_iterations)[-n:]
      for s in code_scores])
  log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
  loss = _swapped_cross_entropy(codes, log_p)
  marginal, conditional = _entropies(jnp.exp(log_p))
  return loss, {"invariance": loss, "marginal_entropy": marginal,
                "conditional_entropy": conditional}


# ----------------------------------------------------------------------------------
# Explicit entropy surrogates: W-MSE and MMCR.


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
  z_a, z_b = _obj._as_float(z_a), _obj._as_float(z_b)
  loss = _obj._cosine_distance(_whiten(z_a, w, eps), _whiten(z_b, w, eps))
  return loss, {"invariance": loss}


def _gram_spectrum(x: Array) -> tuple[Array, Array, bool]:
  """Singular values of ``[..., p, q]`` from the smaller Gram matrix, and its
  eigenvectors (``V`` when the Gram is ``x^T x``, ``U`` when it is ``x x^T``)."""
  p, q = x.shape[-2:]
  xt = jnp.swapaxes(x, -1, -2)
  right = q <= p
  lam, vecs = jnp.linalg.eigh(xt @ x if right else x @ xt)
  return jnp.sqrt(jnp.maximum(lam, 0.0)), vecs, right


@jax.custom_jvp
def _nuclear_norm(x: Array) -> Array:
  """``|x|_* = sum of singular values`` of ``[..., p, q]`` matrices.

  From the eigenvalues of the ``min(p, q)``-sized Gram matrix: on XLA:CPU an SVD of
  a 256 x 128 matrix cost 10-50x this ``eigh``. The Gram squares the condition
  number, so singular values below ``sqrt(eps) s_max`` are not resolved; their sum is
  what the nuclear norm needs, not each of them.
  """
  return jnp.sum(_gram_spectrum(x)[0], axis=-1)


@_nuclear_norm.defjvp
def _nuclear_norm_jvp(primals, tangents):
  # d|x|_* = <U V^T, dx>, U V^T = x V diag(1/s) V^T (or U diag(1/s) U^T x). Zero
  # singular values are left out: that is a subgradient, so the gradient stays
  # finite at collapse.
  (x,), (dx,) = primals, tangents
  s, vecs, right = _gram_spectrum(x)
  inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)[..., None, :]
  proj = (vecs * inv) @ jnp.swapaxes(vecs, -1, -2)
  polar = x @ proj if right else proj @ x
  return jnp.sum(s, axis=-1), jnp.sum(polar * dx, axis=(-2, -1))


def mmcr_loss(z_a: Array, z_b: Array, *more_views: Array,
              local_coeff: float = 0.0) -> tuple[Array, Aux]:
  r"""MMCR: minus the nuclear norm of the matrix of per-sample view centroids.

  Rows scaled to unit norm, ``c_i = mean_v z_v[i]``, ``C = [c_1; ...; c_n]``
  (``[n, k]``) and

  ``loss = -|C|_* + local_coeff * mean_i |[z_1[i]; ...; z_m[i]]|_*``

  (``|.|_*`` the nuclear norm, the sum of singular values). ``|c_i| <= 1`` with
  equality iff the views of sample ``i`` agree, and ``|C|_*`` is largest when the
  centroids are also orthogonal: invariance and spread in one term.

  Args:
    z_a: embeddings of the first view, ``[n, k]``, float, ``n >= 2``.
    z_b: embeddings of the second view, ``[n, k]``.
    *more_views: further views ``[n, k]`` (the paper uses up to 16).
    local_coeff: weight of the per-sample nuclear norm (``lambda``; 0 in the
      paper's main experiments).

  Returns:
    ``(loss, aux)``, aux with ``nuclear_norm`` (``|C|_*``), ``local_nuclear_norm``
    and ``centroid_norm`` (``mean_i |c_i|``, the invariance part).

  Cost: O(n k min(n, k) + min(n, k)^3): the singular values come from the eigenvalues
  of the smaller Gram matrix and the gradient ``U V^T`` from its eigenvectors (a
  custom JVP); see ``_nuclear_norm`` for the float32 resolution this trades.

  References:
    Yerxa, Kuang, Simoncelli, Chung. Learning Efficient Coding of Natural Images
    with Maximum Manifold Capacity Representations. NeurIPS 2023.
  """
  views = (z_a, z_b) + tuple(more_views)
  for v, z in enumerate(views[1:], start=1):
    _validate.check_pair(views[0], z, names=("z_a", f"view {v}"))
  _obj._check_coeffs(local_coeff=local_coeff)
  u = _obj._l2_normalize(jnp.stack([_obj._as_float(z) for z in views]))
  centroids = jnp.mean(u, axis=0)
  nuclear = _nuclear_norm(centroids)
  per_sample = jnp.swapaxes(u, 0, 1)  # [n, m, k]
  local = jnp.mean(_nuclear_norm(per_sample))
  if not local_coeff:  # only reported
    local = jax.lax.stop_gradient(local)
  centroid_norm = jnp.mean(jnp.linalg.norm(centroids, axis=-1))
  return -nuclear + local_coeff * local, {"nuclear_norm": nuclear,
                                          "local_nuclear_norm": local,
                                          "centroid_norm": centroid_norm}


# Imported last: sslit.objectives imports this module at its top and its helpers are
# only looked up when a loss runs, so either module may be imported first.
from sslit import objectives as _obj  # noqa: E402  pylint: disable=wrong-import-position
