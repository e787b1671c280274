"""Recipe candidate "b128_simclr": recipe_b128 with the "simclr" augmentation preset.

ConvNet 16-32-64 (avg pooling, last map pooled to 2x2 bins: 256-d), projector
1024-1024, VICReg 25/25/1, augmentation preset "simclr" (crop 0.08-1, flip, jitter
p=0.8 with brightness/contrast 0.8 (saturation/hue are identities on grayscale),
Gaussian blur p=0.5), AdamW learning_rate 8e-3 per 256 examples (peak 4e-3 at batch
128), weight decay 1e-4, 50 warm-up steps then cosine to 0, batch 128, 1600 steps
(3.4 epochs), one CPU device. The best candidate of docs/recipe.md.

Command: ``sslit train --config experiments/configs/recipe_b128_simclr.py``.
Expected (2-core CPU, jax 0.10.2; seeds 0 / 1): linear-probe top-1 on the test split
88.95 / 88.84 % against 86.76 / 86.79 % for the same network at random
initialisation (BatchNorm calibrated) and 83.88 % for raw pixels; the whole command
211 s (load average 0.6-1.9). All candidates: docs/recipe.md.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import recipe_b128 as b128


def get_config() -> ml_collections.ConfigDict:
  """The b128_simclr candidate."""
  c = b128.get_config()
  c.name = "recipe_b128_simclr"
  c.augment = "simclr"
  return c
