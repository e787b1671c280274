"""Optax optimisers and schedules of the training recipes.

``make_schedule`` (linear warm-up, cosine decay, learning rate scaled by the batch
size), ``make_optimizer`` by name (AdamW, LARS, SGD, Adam; weight decay and LARS's
trust ratio masked off biases and normalisation parameters by ``decay_mask``) and
BYOL's target-momentum schedule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["OPTIMIZERS", "make_schedule", "ema_momentum_schedule", "decay_mask",
           "make_optimizer"]

OPTIMIZERS = ("adamw", "lars", "sgd", "adam")


def make_schedule(*, learning_rate: float, batch_size: int, num_steps: int,
                  warmup_steps: int = 0, end_factor: float = 0.0,
                  scale_by_batch: bool = True) -> optax.Schedule:
  """Linear warm-up to the peak, then cosine decay to ``end_factor * peak``.

  ``peak = learning_rate * batch_size / 256`` when ``scale_by_batch`` (the linear
  scaling rule of Goyal et al. 2017, as in SimCLR/VICReg/BYOL), else
  ``learning_rate``.

  Args:
    learning_rate: base learning rate (per 256 examples if ``scale_by_batch``).
    batch_size: global batch size.
    num_steps: total steps (warm-up included).
    warmup_steps: linear warm-up length from 0.
    end_factor: final learning rate as a fraction of the peak.
    scale_by_batch: apply the linear scaling rule.

  Returns:
    An Optax schedule ``step -> learning rate``.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 <= warmup_steps <= num_steps:
    raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}], got {warmup_steps}.")
  peak = learning_rate * (batch_size / 256.0 if scale_by_batch else 1.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(num_steps, warmup_steps + 1), end_value=peak * end_factor)


def ema_momentum_schedule(*, base: float = 0.996, num_steps: int) -> optax.Schedule:
  """BYOL's target momentum: ``tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2``.

  Rises from ``base`` at step 0 to 1 at step ``K = num_steps`` (Grill et al. 2020).
  """
  def schedule(step):
    frac = jnp.clip(step / max(num_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0
  return schedule


def decay_mask(params: Any) -> Any:
  """True for the parameters that get weight decay and LARS adaptation.

  Biases and normalisation scales/offsets (every parameter of rank <= 1) are
  excluded, as in the SimCLR/BYOL/VICReg LARS recipes.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(name: str, *, learning_rate: float | optax.Schedule,
                   weight_decay: float = 0.0, momentum: float = 0.9,
                   trust_coefficient: float = 0.001, b1: float = 0.9, b2: float = 0.999,
                   grad_clip: float | None = None) -> optax.GradientTransformation:
  """An Optax optimiser by name: ``"adamw"``, ``"lars"``, ``"sgd"`` or ``"adam"``.

  Weight decay (AdamW, LARS, SGD) and LARS's trust ratio apply only where
  ``decay_mask`` is True (not to biases and norm parameters).

  Args:
    name: optimiser name.
    learning_rate: a float or a schedule (see ``make_schedule``).
    weight_decay: decoupled (AdamW) or added-to-gradient (LARS, SGD) weight decay.
    momentum: momentum of LARS and SGD.
    trust_coefficient: LARS trust coefficient (eta).
    b1, b2: Adam moments.
    grad_clip: clip the global gradient norm to this value first (None: no clip).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}.")
  if name == "adamw":
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  elif name == "adam":
    tx = optax.adam(learning_rate, b1=b1, b2=b2)
  elif name == "lars":
    tx = optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=momentum)
  else:
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.sgd(learning_rate, momentum=momentum or None))
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx
