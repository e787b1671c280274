"""Recipe "px16_p512_2650": recipe_px16_1950 with a 512-512 projector and 2650 steps.

Everything of ``recipe_px16_1950.py`` (ConvNet 16-32-64, 2x2-pooled 256-d
representation, "simclr" views resized to 16x16, VICReg 25/100/1, AdamW at a peak
learning rate of 4e-3, weight decay 1e-4, batch 128, 200 warm-up steps, one CPU
device, BatchNorm statistics calibrated before the probe), with the projector
512-512 instead of 1024-1024 and 2650 steps (5.7 epochs) instead of 1950. Candidate
P512 of docs/recipe.md (rounds 18-20); the main job (``sslit/configs/default.py``)
since 2026-12-07.

Why: on 16x16 views the 1024-1024 projector and VICReg's 1024x1024 covariance are a
third of the step; at 512-512 the step costs 0.73 of R16's, so 2650 steps take the
time of 1950. Its validation margin over the network at random initialisation is
no larger on average than R16's (+2.84 against +2.75 over eight seeds) but spreads
less (standard deviation 0.23 against 0.55), and it was at least 2.38 points on each
of eight further seeds.

Command: ``sslit train --config experiments/configs/recipe_px16_p512_2650.py``
(= ``sslit train``). Measured (2-core AMD EPYC with AVX-512, jax 0.10.2,
2026-12-07; seeds 0 / 1 / 2): linear-probe top-1 on the test split 89.52 / 89.37 /
89.66 %, against 86.76 / 86.79 / 86.97 % for the same network at random
initialisation and 83.88 % for raw pixels (+2.76 / +2.58 / +2.69 points); the whole
command took 129-137 s.
"""

from __future__ import annotations

from experiments.configs import recipe_px16_1950 as r16


def get_config():
  """R16 with a 512-512 projector and 2650 steps."""
  c = r16.get_config()
  c.name = "recipe_px16_p512_2650"
  c.model.projector = (512, 512)
  c.num_steps = 2650
  return c
