"""Recipe search, base candidate: the first default recipe with every field pinned.

The starting point of ``experiments/recipe_search.py`` (docs/recipe.md): ConvNet
16-32-64 (avg pooling, last map pooled to 2x2 bins: 256-d), projector 1024-1024,
VICReg 25/25/1, "fashion_mnist" augmentation, AdamW lr 1e-3 per 256, weight decay
1e-4, batch 256, 25 warm-up steps then cosine, two virtual CPU devices, no
wall-clock cap (the search counts steps). Other candidates override its fields.

Command: ``python experiments/recipe_search.py --config
experiments/configs/recipe_base.py --steps 400 --reps model,gap``.
Measured (validation split, probe fitted on 20,000 train images), 2-core CPU.
"""

from __future__ import annotations

import ml_collections

from sslit.configs import default


def get_config() -> ml_collections.ConfigDict:
  """The pinned base candidate."""
  c = default.get_config()
  c.name = "recipe_base"
  c.augment = "fashion_mnist"
  c.augment_options = ml_collections.ConfigDict()  # 28x28 views
  c.cpu_devices = 2
  c.model.backbone = "convnet"
  c.model.backbone_kwargs = ml_collections.ConfigDict(
      {"channels": (16, 32, 64), "pool": "avg", "final_pool": "2x2"})
  c.model.projector = (1024, 1024)
  c.model.predictor = False
  c.model.dtype = "float32"
  c.objective = "vicreg"
  c.objective_kwargs = ml_collections.ConfigDict()
  c.batch_size = 256
  c.num_steps = 500
  c.warmup_steps = 25
  c.optimizer = "adamw"
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.end_lr_factor = 0.0
  c.grad_clip = 0.0
  c.max_train_seconds = 0.0
  c.seed = 0
  c.eval.l2 = 1e-4
  c.eval.steps = 300
  c.eval.calibrate = False
  return c
