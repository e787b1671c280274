"""DINO: a student and an EMA teacher, their logits over all crops, and a centre.

``loss_fn(student [m, n, K], teacher [2, n, K], center [K],
teacher_temperature=t_t)``: the student's logits of all ``m = 2 + V`` views
(``out["dino"]``, the weight-normalised head, when the model has one; else
``out["proj"]``), the teacher's of the two global views only. The state is
``{"params": teacher, "center": [K]}``: after the update the teacher follows
``tau_t teacher + (1 - tau_t) params`` and the centre becomes ``aux["center"]``.
The teacher temperature follows ``sslit.objectives.dino_teacher_temperature`` over
``FitOptions.teacher_temperature_warmup_steps`` (None: 30 % of the run) unless the
objective's keywords fix it.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp

from sslit import objectives
from sslit.methods.base import Method, StepOutputs, ema, momentum_metrics


def dino_logits_output(outputs: Mapping) -> str:
  """Which model output holds DINO's logits: the weight-normalised head when the
  model has one (``"dino"``), else the projector's last layer (``"proj"``)."""
  return "dino" if "dino" in outputs else "proj"


def _loss(o: StepOutputs):
  output = dino_logits_output(o.outs[0])
  student = jnp.stack([out[output] for out in o.outs])
  teacher = jnp.stack(o.target(o.ema_params["params"], [0, 1], output))
  kw = {}
  if o.settings.teacher_temperature_fn is not None:
    kw["teacher_temperature"] = o.settings.teacher_temperature_fn(o.step)
  return o.loss_fn(student, teacher, o.ema_params["center"], **kw)


def _init(settings, params, outputs):
  del settings
  k = outputs[dino_logits_output(outputs)].shape[-1]
  return {"params": params, "center": jnp.zeros((k,), jnp.float32)}


def _update(o: StepOutputs, params, aux):
  tau, metrics = momentum_metrics(o)
  if o.settings.teacher_temperature_fn is not None:
    metrics["teacher_temperature"] = o.settings.teacher_temperature_fn(o.step)
  return {"params": ema(tau, o.ema_params["params"], params),
          "center": aux["center"]}, metrics


def _target(ema_params):
  return ema_params.get("params") if isinstance(ema_params, Mapping) else None


def _heads(projector):
  del projector
  return {"dino_head": True}


def _configure(loss_fn, options) -> dict:
  """The teacher temperature schedule, unless the objective fixes the temperature."""
  if "teacher_temperature" in getattr(loss_fn, "keywords", {}):
    return {}
  warmup = options.teacher_temperature_warmup_steps
  warmup = options.num_steps * 3 // 10 if warmup is None else int(warmup)
  return {"teacher_temperature_fn": lambda step: objectives.dino_teacher_temperature(
      step, warmup_steps=warmup)}


DINO = Method(name="dino", loss=_loss, outputs=("proj",), heads=_heads, momentum=True,
              init_state=_init, update_state=_update, target=_target,
              configure=_configure)
