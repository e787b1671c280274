"""SwAV: prototypes, swapped prediction of Sinkhorn codes, and an optional queue.

``loss_fn(z [m, n, k], prototypes [P, k])`` on the projections of all crops; after
each update the prototype rows are scaled back to unit norm, and during the first
``freeze_prototypes_steps`` steps the prototypes get neither a gradient nor an
update (weight decay included), as the paper's ``freeze_prototypes_niters``.

With a queue (``queue_length`` L > 0) the state is ``{"queue": [2, L, k],
"filled": int32}``: once ``filled == L`` the loss is called with
``queue=queue``; from ``queue_start_step`` on, the two global crops' projections of
the step (before its update) are pushed in front, the oldest ``n`` rows dropping
out (the ``queue_used`` metric says whether it was used).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sslit import models
from sslit.methods.base import Method, Settings, StepOutputs


def has_queue(ema_params: Any) -> bool:
  """Whether the state carries SwAV's queue (static: the pytree's structure)."""
  return isinstance(ema_params, Mapping) and "queue" in ema_params


def push_queue(queue_state: Mapping, z: jax.Array, active: jax.Array) -> dict:
  """SwAV's queue after a step: ``z`` ``[2, n, k]`` in front, the oldest ``n`` rows
  out, ``filled`` counting up to ``L``; unchanged while ``active`` is False."""
  queue, filled = queue_state["queue"], queue_state["filled"]
  length, n = queue.shape[1], z.shape[1]
  pushed = jnp.concatenate([z.astype(queue.dtype), queue[:, :length - n]], axis=1)
  return {"queue": jnp.where(active, pushed, queue),
          "filled": jnp.where(active, jnp.minimum(filled + n, length), filled)}


def _loss(o: StepOutputs):
  z, protos = jnp.stack([out["proj"] for out in o.outs]), o.outs[0]["prototypes"]
  if not has_queue(o.ema_params):
    return o.loss_fn(z, protos)
  queue = o.ema_params["queue"]
  full = o.ema_params["filled"] >= queue.shape[1]
  return jax.lax.cond(full, lambda: o.loss_fn(z, protos, queue=queue),
                      lambda: o.loss_fn(z, protos))


def _init(settings: Settings, params, outputs):
  del params
  if not settings.queue_length:
    return {}
  k = outputs["proj"].shape[-1]  # one queue per global crop
  return {"queue": jnp.zeros((2, int(settings.queue_length), k), jnp.float32),
          "filled": jnp.zeros((), jnp.int32)}


def _update(o: StepOutputs, params, aux):
  del params, aux
  if not has_queue(o.ema_params):
    return o.ema_params, {}
  queue, filled = o.ema_params["queue"], o.ema_params["filled"]
  used = (filled >= queue.shape[1]).astype(jnp.float32)
  z = jax.lax.stop_gradient(jnp.stack([o.outs[0]["proj"], o.outs[1]["proj"]]))
  return ({**o.ema_params, **push_queue(o.ema_params, z,
                                        o.step >= o.settings.queue_start_step)},
          {"queue_used": used})


def _mask(tree, step, settings: Settings):
  """The prototypes' entry zeroed during the first ``freeze_prototypes_steps``."""
  if not settings.freeze_prototypes_steps or "prototypes" not in tree:
    return tree
  p = tree["prototypes"]
  frozen = step < settings.freeze_prototypes_steps
  return {**tree, "prototypes": jnp.where(frozen, jnp.zeros_like(p), p)}


def _heads(projector):
  del projector
  return {"prototypes": True}


SWAV = Method(name="swav", loss=_loss, outputs=("proj", "prototypes"), heads=_heads,
              init_state=_init, update_state=_update, mask_updates=_mask,
              project_params=models.normalize_prototypes,
              options=("queue_length", "freeze_prototypes_steps"))
