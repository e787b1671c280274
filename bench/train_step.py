"""Images/s of one VICReg training step: sslit (JAX) against PyTorch, same run.

The step, identical on both sides: two views of a float batch ([b, H, W, C]; the
second view is the horizontal flip of the first, so no augmentation cost is
measured), backbone + projector in training mode (BatchNorm batch statistics)
on each view, VICReg 25/25/1, gradients, AdamW (lr 1e-3, weight decay 1e-4).
float32. Models:

- ``convnet``: the default model of ``sslit train`` (ConvNet 16-32-64, 2x2
  average pooling, last map pooled to 2x2 bins, projector 1024-1024), 28x28x1.
- ``mlp``: MLP 784-1024-1024-512 with a 1024-1024 projector, 28x28x1.
- ``resnet18``: ResNet-18 with the CIFAR stem, projector 1024-1024, 32x32x3.

sslit is timed through ``sslit.train.make_train_step`` (jitted, state donated;
online probe and statistics off) on one device and on two virtual CPU devices
(data parallel over a ``"data"`` mesh). PyTorch runs with 2 intra-op threads.
Images/s counts one image per example (both views are included in the step).

Usage: ``python bench/train_step.py [--quick] [--models convnet,mlp,resnet18]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if not f.startswith("--xla_force_host_platform_device_count")] +
    ["--xla_force_host_platform_device_count=2"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sslit import models, objectives, parallel, train  # noqa: E402

PROJ = (1024, 1024)
SPECS = {
    "convnet": dict(backbone="convnet", kwargs={"channels": (16, 32, 64)}, shape=(28, 28, 1)),
    "mlp": dict(backbone="mlp", kwargs={"widths": (1024, 1024, 512)}, shape=(28, 28, 1)),
    "resnet18": dict(backbone="resnet18", kwargs={}, shape=(32, 32, 3)),
}


def _flip_views(key, images):
  del key
  return images, images[:, :, ::-1, :]


def bench_jax(name: str, batch: int, iters: int, devices) -> float:
  spec = SPECS[name]
  model = models.build_model(spec["backbone"], backbone_kwargs=spec["kwargs"],
                             projector=PROJ)
  mesh = parallel.make_mesh(devices)
  x = np.random.default_rng(0).random((batch, *spec["shape"]), np.float32)
  v = models.init_variables(model, jax.random.key(0), jnp.asarray(x[:2]))
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
      opt_state=tx.init(v["params"]), ema_params={}, probe_params={}, probe_opt_state={},
      key=jax.random.key(0))
  state = parallel.replicate(state, mesh)
  step = train.make_train_step(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
      objectives.get_objective("vicreg").fn, tx, augment_fn=_flip_views,
      stats_every=10**9)
  step = jax.jit(step, donate_argnums=0)
  b = parallel.shard_batch({"image": x, "label": np.zeros(batch, np.int32)}, mesh)
  for _ in range(2):  # compile + warm-up
    state, m = step(state, b)
  jax.block_until_ready(m["loss"])
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_torch(name: str, batch: int, iters: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  torch.manual_seed(0)
  spec = SPECS[name]

  def projector(d):
    return nn.Sequential(nn.Linear(d, PROJ[0]), nn.BatchNorm1d(PROJ[0]), nn.ReLU(),
                         nn.Linear(PROJ[0], PROJ[1]))

  if name == "convnet":
    layers, c_in = [], 1
    for i, c in enumerate((16, 32, 64)):
      if i:
        layers.append(nn.AvgPool2d(2))
      layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
      c_in = c
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    net = nn.Sequential(*layers, projector(4 * 64))
  elif name == "mlp":
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                        nn.ReLU(), nn.Linear(1024, 512), projector(512))
  else:
    class Block(nn.Module):
      def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
          self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

      def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
      for j in range(2):
        layers.append(Block(cin, c, 2 if i > 0 and j == 0 else 1))
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(*layers, projector(512))

  def vicreg(za, zb):
    n, d = za.shape
    inv = torch.nn.functional.mse_loss(za, zb)
    za = za - za.mean(0)
    zb = zb - zb.mean(0)
    std_a = torch.sqrt(za.var(0) + 1e-4)
    std_b = torch.sqrt(zb.var(0) + 1e-4)
    var = torch.mean(torch.relu(1 - std_a)) / 2 + torch.mean(torch.relu(1 - std_b)) / 2
    ca = za.T @ za / (n - 1)
    cb = zb.T @ zb / (n - 1)
    off = lambda c: (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return 25 * inv + 25 * var + off(ca) + off(cb)

  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
  x = torch.rand(batch, spec["shape"][2], spec["shape"][0], spec["shape"][1])
  net.train()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = vicreg(net(x), net(torch.flip(x, dims=[3])))
    loss.backward()
    opt.step()
    return loss

  for _ in range(2):
    step()
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small batches, few iterations")
  p.add_argument("--models", default="convnet,mlp,resnet18")
  args = p.parse_args(argv)
  sizes = {"convnet": 256, "mlp": 256, "resnet18": 128}
  iters = 10
  if args.quick:
    sizes = {"convnet": 256, "mlp": 256, "resnet18": 32}
    iters = 3
  print(f"jax {jax.__version__}, devices {jax.devices()}, cpu count {os.cpu_count()}")
  print(f"{'model':9s} {'batch':>5s} {'impl':14s} {'ms/step':>9s} {'img/s':>8s} "
        f"{'vs torch':>8s}")
  for name in args.models.split(","):
    b = sizes[name]
    t_torch = bench_torch(name, b, iters)
    rows = [("torch (2 thr)", t_torch)]
    rows.append(("sslit 1 dev", bench_jax(name, b, iters, jax.devices()[:1])))
    rows.append(("sslit 2 dev", bench_jax(name, b, iters, jax.devices()[:2])))
    for impl, t in rows:
      print(f"{name:9s} {b:5d} {impl:14s} {1e3 * t:9.1f} {b / t:8.0f} "
            f"{t_torch / t:7.2f}x", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
