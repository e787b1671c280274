"""Input throughput: JPEG decode on worker processes (grain, torch) against the decode limit.

Default (``python bench/input.py --data-dir DIR``, DIR made by
``bench/make_jpeg_set.py``): on the synthetic ImageNet-like JPEG set (~400x350, ~90
KB each), images per second delivered ready on the device (read + decode + resize to
``--image-size`` + batch + ``jax.device_put``, blocked) of

1. today's reader without workers: ``sslit.data.batch_iterator`` over the streamed
   split (one array_record read per batch, decode in a Python loop);
2. grain (``sslit.loader.grain_batches``) with 0, 1, 2, ... worker processes;
3. PyTorch's ``DataLoader`` (spawned workers, same counts) over the same records with
   the same decode function (``sslit.sources.DecodeExample``: PIL decode, bilinear
   resize of the shorter side, centre crop) and the same batches;
4. the limit: one process decoding and resizing pre-read records in a tight loop,
   times the cores;

plus the resident memory (RSS) of each worker process, and the in-memory path
(fill the cache once, then gather) at a small image size, where it is the default.

``--fashion-mnist`` runs the older measurement of the in-memory Fashion-MNIST input
against VICReg steps (bench/RESULTS_input.md, second part):

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

Usage: ``python bench/input.py --data-dir DIR [--image-size 224] [--batch-size 64]
[--workers 0,1,2] [--batches 30]``; ``python bench/input.py --fashion-mnist [--quick]``.
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


def fashion_mnist_main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fashion-mnist", action="store_true")
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


def _children_rss_mb() -> dict[int, float]:
  """Resident memory (MB) of this process's child processes, from /proc."""
  out = {}
  me = os.getpid()
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      if ppid != me:
        continue
      with open(f"/proc/{entry}/status") as f:
        for line in f:
          if line.startswith("VmRSS:"):
            out[int(entry)] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
      continue
  return out


def _decode_rate(decode, raw: list) -> tuple[float, float]:
  """``decode`` over pre-read records in a tight loop (after 8 warm-up): images per
  wall second and per CPU second of this process."""
  for r in raw[:8]:
    decode(r)
  t, c = time.perf_counter(), time.process_time()
  for _ in range(2):
    for r in raw:
      decode(r)
  return 2 * len(raw) / (time.perf_counter() - t), 2 * len(raw) / (time.process_time() - c)


def _self_rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _cpu_seconds() -> dict[int, float]:
  """CPU seconds (user + system) so far of this process (all threads) and its children."""
  tick = os.sysconf("SC_CLK_TCK")
  out = {os.getpid(): time.process_time()}
  for pid in _children_rss_mb():
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      out[pid] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, IndexError):
      continue
  return out


def _delivered(batches, n_batches: int, warmup: int, b: int, cores: int):
  """A reader's images/s delivered on the device: wall clock and CPU time.

  Returns ``(wall images/s, CPU ms per image over all its processes, images/s
  projected on ``cores`` idle cores, children's RSS in MB)``. The projection is
  ``n / max(total CPU / cores, busiest process's CPU)``: on a machine shared with
  other jobs the wall clock measures the scheduler's share, while the CPU time each
  process spent is what the work costs.
  """
  import jax
  it = iter(batches)
  for _ in range(warmup):  # worker start-up and first batches are not timed
    jax.device_put(np.asarray(next(it)["image"])).block_until_ready()
  cpu0, t = _cpu_seconds(), time.perf_counter()
  for _ in range(n_batches):
    jax.device_put(np.asarray(next(it)["image"])).block_until_ready()
  wall, cpu1 = time.perf_counter() - t, _cpu_seconds()
  rss = _children_rss_mb()
  used = [cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0]
  n = n_batches * b
  projected = n / max(sum(used) / cores, max(used))
  return n / wall, 1e3 * sum(used) / n, projected, rss


class _TorchRecords:
  """A torch map-style data set over the same raw records and decoder."""

  def __init__(self, source, decode):
    self.source, self.decode = source, decode

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    image, label = self.decode(self.source[i])
    return {"image": image, "label": label}


def _torch_batches(ds, b: int, workers: int, order: np.ndarray):
  import warnings

  import torch
  # PIL's arrays are read-only; torch warns once that it wraps them as they are.
  warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
  loader = torch.utils.data.DataLoader(
      _TorchRecords(*ds.records), batch_size=b, sampler=order.tolist(),
      num_workers=workers, drop_last=True,
      multiprocessing_context="spawn" if workers else None,
      prefetch_factor=2 if workers else None, persistent_workers=False)
  for batch in loader:
    yield {"image": batch["image"].numpy(), "label": batch["label"].numpy()}


def jpeg_main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", required=True,
                      help="tfds data dir of bench/make_jpeg_set.py's set")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batches", type=int, default=30, help="timed batches per reader")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2,
                      help="every reader is measured once per round; the median is kept")
  parser.add_argument("--skip-torch", action="store_true")
  args = parser.parse_args(argv)

  import jax
  from sslit import data, loader
  b, size = args.batch_size, args.image_size
  workers = [int(w) for w in args.workers.split(",")]
  cores = len(os.sched_getaffinity(0))
  cpu = "unknown CPU"
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  ds = data.load("jpeg_set", "train", data_dir=args.data_dir, image_size=size,
                 in_memory=False)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {cpu}, {cores} cores "
        f"usable, load average {os.getloadavg()[0]:.1f}; {len(ds)} JPEGs -> {size}x{size}, "
        f"batch {b}, {args.batches} timed batches after {args.warmup}")
  n_need = (args.batches + args.warmup) * b
  if n_need > len(ds):
    raise SystemExit(f"the set has {len(ds)} images, fewer than the {n_need} needed")

  # The limit: decode + resize of pre-read records in a tight loop, one process, and
  # (as a check on a shared machine, where more processes get more of the CPU) the
  # same loop in one spawned process per core at once.
  source, decode = ds.records
  raw = source.__getitems__(list(range(128)))
  order = data.epoch_permutation(len(ds), seed=0, epoch=0)
  results: dict[str, list] = {}

  def record(name, wall, cpu_ms, projected, rss=None, local=None):
    # ``local``: the limit measured right before and after this reader (the CPU's
    # speed per CPU second drifts on a shared machine): % of the limit uses it.
    local = local if local is not None else projected
    results.setdefault(name, []).append((wall, cpu_ms, projected, 100 * projected / local,
                                         rss))
    mem = f"; worker RSS MB {sorted(round(v) for v in rss.values())}" if rss else ""
    print(f"  {name}: {wall:7.1f} images/s (wall), {cpu_ms:6.2f} CPU ms/image, "
          f"{projected:7.1f} images/s projected on {cores} idle cores "
          f"({100 * projected / local:.0f} % of the limit measured beside it){mem}",
          flush=True)

  def beside(measure):
    """A reader's figures with the limit measured just before and after it."""
    before = _decode_rate(decode, raw)[1]
    got = measure()
    after = _decode_rate(decode, raw)[1]
    return (*got, cores * (before + after) / 2)

  import multiprocessing
  for r in range(args.rounds):
    print(f"round {r + 1} of {args.rounds} (load average {os.getloadavg()[0]:.1f})")
    wall, per_cpu = _decode_rate(decode, raw)
    record("limit: one process decode+resize x cores", wall * cores, 1e3 / per_cpu,
           per_cpu * cores)
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
      got = pool.starmap(_decode_rate, [(decode, raw)] * cores)
    record(f"{cores} processes decode+resize at once", sum(w for w, _ in got),
           1e3 / np.mean([c for _, c in got]), sum(c for _, c in got), None,
           per_cpu * cores)
    record("today's reader (batch_iterator, streamed, no workers)", *beside(
        lambda: _delivered(data.batch_iterator(ds, b, seed=0), args.batches, args.warmup,
                           b, cores)))
    for w in workers:
      it = loader.grain_batches(ds, b, workers=w, seed=0)
      record(f"grain, {w} workers",
             *beside(lambda: _delivered(it, args.batches, args.warmup, b, cores)))
      it.close()
      if not args.skip_torch:
        it = _torch_batches(ds, b, w, order)
        record(f"torch DataLoader + PIL, {w} workers",
               *beside(lambda: _delivered(it, args.batches, args.warmup, b, cores)))
        it.close()
  rows = [(name, *(float(np.median([g[i] for g in got])) for i in range(4)), got[-1][4])
          for name, got in results.items()]

  # The in-memory path at a small size, where it is the default: fill, then gather.
  small = data.load("jpeg_set", "test", data_dir=args.data_dir, image_size=32)
  t = time.perf_counter()
  small.cache()
  fill = time.perf_counter() - t
  rate = _delivered(data.batch_iterator(small, b, seed=0), 200, 5, b, cores)[0]
  it = loader.grain_batches(data.load("jpeg_set", "test", data_dir=args.data_dir,
                                      image_size=32, in_memory=False), b,
                            workers=max(workers), seed=0)
  g_rate = _delivered(it, min(args.batches, len(small) // b - args.warmup),
                      args.warmup, b, cores)[0]
  it.close()
  print(f"32x32, {len(small)} images: in-memory fill {fill:.1f} s "
        f"({len(small) / fill:.0f} images/s, once), then gather {rate:,.0f} images/s; "
        f"grain {max(workers)} workers {g_rate:.0f} images/s")
  print(f"\nmain process RSS {_self_rss_mb():.0f} MB")
  print(f"\nmedian of {args.rounds} rounds; load average now {os.getloadavg()[0]:.1f}")
  print(f"\n| reader | images/s on device, wall clock (shared machine) | CPU ms per "
        f"image, all its processes | images/s projected on {cores} idle cores | % of "
        f"the limit measured beside it | RSS of each child process (MB) |")
  print("|---|---|---|---|---|---|")
  for name, wall, cpu_ms, projected, percent, rss in rows:
    mem = ", ".join(str(round(v)) for v in sorted(rss.values())) if rss else "–"
    print(f"| {name} | {wall:.0f} | {cpu_ms:.2f} | {projected:.0f} | {percent:.0f} % | "
          f"{mem} |")
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  return fashion_mnist_main(argv) if "--fashion-mnist" in argv else jpeg_main(argv)


if __name__ == "__main__":
  sys.exit(main())
