"""Smoke run: a tiny MLP trained with VICReg on the bundled 8x8 digits, seconds.

Used by the tests (CLI end to end, kill-and-resume). Command:
``sslit train --config smoke --workdir /tmp/sslit-smoke``.
No expected accuracy: it checks that the whole pipeline runs.
"""

from __future__ import annotations

import ml_collections

from sslit.configs import default


def get_config() -> ml_collections.ConfigDict:
  """The smoke configuration (the default's fields, tiny values)."""
  c = default.get_config()
  c.name = "smoke"
  c.dataset = "digits"
  c.augment = "none"
  c.augment_options = ml_collections.ConfigDict()  # the 8x8 images as they are
  c.cpu_devices = 1
  c.model.backbone = "mlp"
  c.model.backbone_kwargs = ml_collections.ConfigDict({"widths": (64, 32)})
  c.model.projector = (64, 64)
  c.batch_size = 64
  c.num_steps = 30
  c.objective_kwargs = ml_collections.ConfigDict()  # VICReg 25/25/1 (the main job: 25/100/1)
  c.warmup_steps = 5
  c.log_every = 10
  c.monitor_every = 15
  c.monitor_examples = 128
  c.checkpoint_every = 10
  c.eval.steps = 50
  c.eval.baselines = ("raw", "random")
  c.eval.calibration_batches = 2
  c.eval.calibrate = False
  c.eval.batch_size = 256
  return c
