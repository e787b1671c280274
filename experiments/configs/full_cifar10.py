"""Full scale (accelerators): VICReg, ResNet-18 with the CIFAR stem, CIFAR-10.

The solo-learn recipe the specification's sanity targets come from (SPEC §7.3:
VICReg 92.07 % linear top-1 on CIFAR-10 after 1000 epochs): ResNet-18 with the
CIFAR stem (3x3 stride-1, no max-pool; 512-d representation), projector
2048-2048-2048, VICReg 25/25/1, the "vicreg" augmentation preset, LARS (learning
rate 0.3 per 256 examples, weight decay 1e-4, biases and norm parameters excluded),
batch 256, 1000 epochs (195,000 steps) with 10 warm-up epochs and a cosine decay,
bfloat16 compute.

Needs tfds CIFAR-10 prepared in the tfds data dir (``tfds build cifar10
--file_format=array_record`` on a machine with network access, or
``--config.data_dir``). Not run here (no accelerator in CI); the smoke and cpu scales
exercise the same code. Measured on one H100 (bench/RESULTS_train_step_gpu.md): the
ResNet-18 VICReg step at batch 512 in bfloat16 takes 14 ms, about 1.4 s per epoch,
so 1000 epochs are about 25 minutes of steps.

Command: ``sslit train --config experiments/configs/full_cifar10.py``.
"""

from __future__ import annotations

import ml_collections

from sslit.configs import default

_EPOCH_STEPS = 50_000 // 256


def get_config() -> ml_collections.ConfigDict:
  """The full-scale CIFAR-10 configuration (the default's fields)."""
  c = default.get_config()
  c.name = "full_cifar10"
  c.dataset = "cifar10"
  c.augment = "vicreg"
  c.augment_options = ml_collections.ConfigDict()  # 32x32 views
  c.cpu_devices = 0
  c.model.backbone = "resnet18"
  c.model.backbone_kwargs = ml_collections.ConfigDict({"cifar_stem": True})
  c.model.projector = (2048, 2048, 2048)
  c.model.dtype = "bfloat16"
  c.batch_size = 256
  c.num_steps = 1000 * _EPOCH_STEPS
  c.objective_kwargs = ml_collections.ConfigDict()  # VICReg 25/25/1, the paper's
  c.warmup_steps = 10 * _EPOCH_STEPS
  c.optimizer = "lars"
  c.learning_rate = 0.3
  c.weight_decay = 1e-4
  c.log_every = 100
  c.checkpoint_every = 10 * _EPOCH_STEPS
  c.monitor_every = 50 * _EPOCH_STEPS
  c.monitor_examples = 1024
  c.eval.batch_size = 1000
  c.eval.knn_k = (20, 200)
  c.eval.calibrate = False  # views of the images' size
  return c
