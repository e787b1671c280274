"""Recipe "px16_1950": recipe_std100_900 trained on 16x16 views for 1950 steps.

Everything of ``recipe_std100_900.py`` (ConvNet 16-32-64, 2x2-pooled 256-d
representation, projector 1024-1024, "simclr" views, VICReg 25/100/1, AdamW at a
peak learning rate of 4e-3, weight decay 1e-4, batch 128, 200 warm-up steps, one
CPU device), with the views' random resized crops resized to 16x16 pixels instead
of 28x28 (``augment_options.image_size``), 1950 steps (4.2 epochs) instead of 900,
and the trained network's BatchNorm statistics calibrated on unaugmented 28x28
training images before the probe (``eval.calibrate``), as the random-init
baseline's are. Candidate R16 of docs/recipe.md (seventeenth round); the main job
(``sslit/configs/default.py``) on 2026-12-07 from 03:50 to 04:44 UTC.

Why: the ConvNet pools its last map to 2x2 bins whatever its size, so it trains on
small views and is probed on the full images. A 16x16 step costs about 0.45 of a
28x28 one, so 1950 steps take the time of 900; training on smaller views than the
test images also undoes part of the enlargement of the random resized crops. On
the validation split (four seeds) the margin over the network at random
initialisation rose from +1.83 to +2.51 points.

Command: ``sslit train --config experiments/configs/recipe_px16_1950.py``
(= ``sslit train``). Measured (2-core AMD EPYC with AVX-512, jax 0.10.2,
2026-12-07; seeds 0 / 1 / 2): linear-probe top-1 on the test split 89.60 / 89.08 /
88.96 %, against 86.76 / 86.79 / 86.97 % for the same network at random
initialisation and 83.88 % for raw pixels; the whole command took 148-151 s.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import recipe_std100_900 as f9


def get_config() -> ml_collections.ConfigDict:
  """F9 on 16x16 views, 1950 steps, probed with calibrated statistics."""
  c = f9.get_config()
  c.name = "recipe_px16_1950"
  c.augment_options = ml_collections.ConfigDict({"image_size": 16})
  c.num_steps = 1950
  c.eval.calibrate = True
  return c
