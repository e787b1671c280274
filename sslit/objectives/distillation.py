"""Distillation objectives: BYOL, SimSiam and DINO (a target network or branch).

Each predicts a stop-gradient target: BYOL's EMA target through a predictor, SimSiam's
own projections through a predictor, DINO's centred and sharpened EMA teacher over all
crops. No explicit entropy term: collapse is avoided by the predictor and stop-
gradient dynamics, or for DINO by centring (the marginal entropy) and sharpening (the
conditional one). Pure functions of the global batch returning ``(loss, aux)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import sslit._validate as _validate
from sslit.objectives import common

Array = jax.Array
Aux = dict[str, Array]

__all__ = ['byol_loss', 'byol_pair_loss', 'simsiam_loss', 'dino_teacher_temperature', 'dino_loss']


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
  p_a, z_b = common.as_float(p_a), common.as_float(z_b)
  loss = common.cosine_distance(p_a, jax.lax.stop_gradient(z_b))
  return loss, {"invariance": loss}


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
  f, norm = common.as_float, common.l2_normalize

  def neg_cos(p, z):
    return -jnp.mean(jnp.sum(norm(f(p)) * norm(jax.lax.stop_gradient(f(z))), -1))

  loss = (neg_cos(p_a, z_b) + neg_cos(p_b, z_a)) / 2
  return loss, {"invariance": loss}


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
  m, n, k = common.check_views(student, "student", min_views=2)
  g, _, _ = common.check_views(teacher, "teacher")
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
  student = common.as_float(student)
  teacher = jax.lax.stop_gradient(common.as_float(teacher))
  center = jax.lax.stop_gradient(jnp.asarray(center, teacher.dtype))
  q = jax.nn.softmax((teacher - center) / teacher_temperature, axis=-1)
  log_p = jax.nn.log_softmax(student / student_temperature, axis=-1)
  loss = common.swapped_cross_entropy(q, log_p)
  new_center = (center_momentum * center
                + (1.0 - center_momentum) * jnp.mean(teacher, axis=(0, 1)))
  marginal, conditional = common.entropies(q)
  return loss, {"invariance": loss, "marginal_entropy": marginal,
                "conditional_entropy": conditional, "center": new_center}
