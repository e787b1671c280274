"""Input pipeline throughput: data source -> host batches -> two augmented views on device.

Measures, in one run on one machine:

1. building Fashion-MNIST into a fresh tfds data dir (array_record), once;
2. filling the in-memory cache of the train split from the array_record files;
3. host batches/s of ``sslit.data.batch_iterator`` (in-memory gather, and streaming
   with one ``data_source`` read per batch);
4. the whole input: host batch -> ``jax.device_put`` -> jitted
   ``sslit.augment.two_views`` (preset "fashion_mnist", 28x28), blocked per step,
   and ``two_views`` alone on a device-resident batch (to attribute the cost);
5. the peers: jitted VICReg training steps (25/25/1) of MLPs (784-1024-1024 with a
   1024-1024 projector, and a small 784-256-256-256), SGD update, batch 256 x 2
   views, on the same device; their images/s is what training consumes.

The ratio (input images/s) / (step images/s) is the goal's number (>= 5).

Usage: ``/work/venv/bin/python bench/input.py [--quick] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _rate(fn, n_items: int, repeats: int) -> float:
  """Items per second of ``fn`` (best of ``repeats`` timed calls after a warm-up)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return n_items / best


def vicreg_mlp_step(batch_size: int, image_dim: int, widths=(1024, 1024, 1024, 1024)):
  """A jitted VICReg step of an MLP (the peer that consumes the input)."""
  import jax
  import jax.numpy as jnp

  sizes = [image_dim, *widths]
  keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
  params = [(jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a),
             jnp.zeros((b,), jnp.float32)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def embed(params, x):
    h = x.reshape(x.shape[0], -1)
    for i, (w, b) in enumerate(params):
      h = h @ w + b
      if i < len(params) - 1:
        h = jax.nn.relu(h)
    return h

  def vicreg(z_a, z_b):
    n, k = z_a.shape
    inv = jnp.mean(jnp.sum((z_a - z_b) ** 2, -1)) / k

    def var_cov(z):
      z = z - z.mean(0)
      std = jnp.sqrt(z.var(0, ddof=1) + 1e-4)
      cov = z.T @ z / (n - 1)
      off = cov - jnp.diag(jnp.diag(cov))
      return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(off ** 2) / k

    va, ca = var_cov(z_a)
    vb, cb = var_cov(z_b)
    return 25.0 * inv + 25.0 * (va + vb) + (ca + cb)

  @jax.jit
  def step(params, x_a, x_b):
    loss, grads = jax.value_and_grad(
        lambda p: vicreg(embed(p, x_a), embed(p, x_b)))(params)
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    return params, loss

  x = jnp.asarray(np.random.default_rng(0).random((batch_size, image_dim), np.float32))
  return step, params, x


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--data-dir", default=None,
                      help="tfds data dir (default: a fresh temporary one, so the "
                           "build is measured)")
  parser.add_argument("--batch-size", type=int, default=256)
  args = parser.parse_args(argv)

  import jax
  from sslit import data

  steps = 20 if args.quick else 100
  repeats = 2 if args.quick else 3
  b = args.batch_size
  print(f"jax {jax.__version__}, devices {jax.devices()}, batch {b}, "
        f"{os.cpu_count()} CPUs visible")

  tmp = None
  data_dir = args.data_dir
  if data_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="sslit_bench_")
    data_dir = tmp.name
  t = time.perf_counter()
  try:
    data.build_fashion_mnist(data_dir)
    name = "fashion_mnist"
  except data.DatasetNotFoundError as e:
    print(f"Fashion-MNIST not installed ({e}); benchmarking digits instead.")
    data.build_digits(data_dir)
    name = "digits"
  t_build = time.perf_counter() - t
  print(f"build {name} into {data_dir}: {t_build:.2f} s "
        f"(0 if it was already prepared there)")

  train = data.load(name, "train", data_dir=data_dir)
  t = time.perf_counter()
  train.cache()
  t_fill = time.perf_counter() - t
  print(f"in-memory cache fill of {len(train)} images: {t_fill:.2f} s "
        f"({len(train) / t_fill:,.0f} images/s)")

  def host_loop(ds):
    def run():
      it = data.batch_iterator(ds, b, seed=0, start_step=1000)
      for _ in range(steps):
        next(it)
    return run

  r_mem = _rate(host_loop(train), steps * b, repeats)
  stream = data.load(name, "train", data_dir=data_dir, in_memory=False)
  r_stream = _rate(host_loop(stream), steps * b, max(1, repeats // 2))
  print(f"host batches, in-memory gather:        {r_mem:14,.0f} images/s")
  print(f"host batches, array_record per batch:  {r_stream:14,.0f} images/s")

  r_aug = None
  try:
    from sslit import augment
    cfg_a, cfg_b = augment.preset("fashion_mnist", image_size=train.image_shape[:2])
    views = jax.jit(lambda key, x: augment.two_views(key, x, cfg_a, cfg_b))
  except Exception as e:  # noqa: BLE001  (the colleague module may be absent)
    print(f"sslit.augment unavailable ({type(e).__name__}: {e}); input = data only")
    views = None

  if views is not None:
    root = jax.random.key(0)

    def full_loop():
      it = data.batch_iterator(train, b, seed=0)
      out = None
      for s in range(steps):
        batch = next(it)
        x = jax.device_put(batch["image"])
        out = views(jax.random.fold_in(root, s), x)
        out[1].block_until_ready()
      return out

    r_aug = _rate(full_loop, steps * b, repeats)
    x_dev = jax.device_put(train.get(np.arange(b))[0])

    def views_only():
      out = None
      for s in range(steps):
        out = views(jax.random.fold_in(root, s), x_dev)
        out[1].block_until_ready()

    r_views = _rate(views_only, steps * b, repeats)
    print(f"two_views alone, batch on device:      {r_views:14,.0f} images/s")
    print(f"data -> device -> two_views (jitted):  {r_aug:14,.0f} images/s")

  r_in = r_aug if r_aug is not None else r_mem
  for widths in ((1024, 1024, 1024, 1024), (256, 256, 256)):
    step, params, x = vicreg_mlp_step(b, int(np.prod(train.image_shape)), widths)

    def step_loop():
      p = params
      for _ in range(max(2, steps // 4)):
        p, loss = step(p, x, x)
      loss.block_until_ready()

    r_step = _rate(step_loop, max(2, steps // 4) * b, repeats)
    label = "-".join(str(w) for w in widths)
    print(f"peer: VICReg MLP {int(np.prod(train.image_shape))}-{label} step, batch {b}: "
          f"{r_step:,.0f} images/s ({1e3 * b / r_step:.1f} ms/step); "
          f"ratio input / step: {r_in / r_step:.1f}x (goal >= 5x)")
  if tmp is not None:
    tmp.cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
