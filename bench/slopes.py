"""Per-sample slopes: sslit.cpa against torch.func on identical weights.

Usage:
  /work/venv/bin/python bench/slopes.py [--quick] [--batch B] [--reps R] [--resnet]

MLP 784-1024-1024-512 (ReLU, float32, He-initialised from one NumPy seed, the same
weights in both frameworks), slopes of a batch of B inputs ``[B, 512, 784]``:

  jax:fwd / jax:rev      sslit.cpa.jacobian(fn, x, mode=...)  (jax.jacfwd / jacrev)
  jax:masked             sslit.cpa.mlp_jacobian(layers, x)    (masked-weight product)
  jax:masked-0.6         the same with capacity=0.6 (inactive ReLU units dropped)
  torch:jacrev/jacfwd    torch.func.vmap(torch.func.jacrev / jacfwd)(f)(x), 2 threads
  torch:masked           the same masked-weight product written in torch

Each mode runs in its own subprocess (so peak memory is its own): one warm-up call
(compilation), then R timed calls. Reported: ms per sample (best of R), samples/s,
GFLOP/s counted on the masked chain's flops (the least work that gives the exact
slopes), the fraction of the float32 matmul peak measured in the same run, and the
peak resident memory above the process's state before the warm-up. Every mode's
slopes are checked against jax:masked on the same inputs.

``--resnet`` adds ResNet-18 (CIFAR stem, eval-mode BN, 512-d representation,
``sslit.models``), JAX modes only (no torch port of the Flax weights).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = (784, 1024, 1024, 512)
JAX_MODES = ("jax:masked", "jax:masked-0.6", "jax:rev", "jax:fwd")
TORCH_MODES = ("torch:jacrev", "torch:jacfwd", "torch:masked")


def weights(seed: int = 0):
  rng = np.random.default_rng(seed)
  return [((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
           (0.1 * rng.standard_normal(b)).astype(np.float32))
          for a, b in zip(SIZES[:-1], SIZES[1:])]


def inputs(batch: int, seed: int = 1):
  return np.random.default_rng(seed).standard_normal((batch, SIZES[0])).astype(
      np.float32)


def chain_flops() -> float:
  """Flops of A = W3ᵀ D2 W2ᵀ D1 W1ᵀ in the cheapest order, per sample."""
  k, h2, h1, d = SIZES[::-1]
  return 2.0 * min(k * h2 * h1 + k * h1 * d, h2 * h1 * d + k * h2 * d)


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_timed(call, reps):
  t0 = time.perf_counter()
  out = call()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t0)
  return out, compile_s, times


def worker_jax(mode, batch, reps, dump):
  import jax
  import jax.numpy as jnp
  from sslit import cpa
  layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights()]
  x = jnp.asarray(inputs(batch))

  def fn(v):
    h = v
    for i, (w, b) in enumerate(layers):
      h = h @ w + b
      if i < len(layers) - 1:
        h = jax.nn.relu(h)
    return h

  if mode.startswith("jax:masked"):
    cap = float(mode.split("-")[1]) if "-" in mode else None
    f = jax.jit(lambda layers, x: cpa.mlp_jacobian(layers, x, capacity=cap))
    call = lambda: f(layers, x).block_until_ready()
  elif mode == "jax:matmul":
    a = jnp.asarray(np.random.default_rng(2).standard_normal((4096, 1024)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).standard_normal((1024, 1024)), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    call = lambda: f(a, b).block_until_ready()
  else:
    f = jax.jit(lambda x: cpa.jacobian(fn, x, mode=mode.split(":")[1]))
    call = lambda: f(x).block_until_ready()
  before = rss_mb()
  out, compile_s, times = run_timed(call, reps)
  if dump and mode != "jax:matmul":
    np.save(dump, np.asarray(out[:2]))
  return compile_s, times, peak_mb() - before


def worker_torch(mode, batch, reps, dump):
  import torch
  torch.set_num_threads(2)
  layers = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in weights()]
  x = torch.from_numpy(inputs(batch))

  def fn(v):
    h = v
    for i, (w, b) in enumerate(layers):
      h = h @ w + b
      if i < len(layers) - 1:
        h = torch.relu(h)
    return h

  if mode == "torch:matmul":
    a = torch.from_numpy(np.random.default_rng(2).standard_normal((4096, 1024)).astype(
        np.float32))
    b = torch.from_numpy(np.random.default_rng(3).standard_normal((1024, 1024)).astype(
        np.float32))
    call = lambda: a @ b
  elif mode == "torch:masked":
    (w1, b1), (w2, b2), (w3, _) = layers

    def call():
      with torch.no_grad():
        h1 = x @ w1 + b1
        m1 = (h1 > 0).to(x.dtype)
        m2 = ((torch.relu(h1) @ w2 + b2) > 0).to(x.dtype)
        left = w3.T[None] * m2[:, None, :]                      # [n, k, h2]
        mid = (left.reshape(-1, w2.shape[1]) @ w2.T).reshape(x.shape[0], -1,
                                                             w2.shape[0])
        mid = mid * m1[:, None, :]
        return (mid.reshape(-1, w1.shape[1]) @ w1.T).reshape(x.shape[0], -1,
                                                             w1.shape[0])
  else:
    tf = torch.func.jacrev(fn) if mode == "torch:jacrev" else torch.func.jacfwd(fn)
    vf = torch.func.vmap(tf)

    def call():
      with torch.no_grad():
        return vf(x)
  before = rss_mb()
  out, compile_s, times = run_timed(call, reps)
  if dump and mode != "torch:matmul":
    np.save(dump, out[:2].numpy())
  return compile_s, times, peak_mb() - before


def worker_resnet(mode, batch, reps, dump):
  import jax
  import jax.numpy as jnp
  from sslit import cpa, models
  model = models.build_model("resnet18", projector=None)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 32, 32, 3)),
                  jnp.float32)
  variables = models.init_variables(model, jax.random.key(0), x)
  apply_fn = models.make_apply_fn(model, "rep")

  def slopes(variables, x):
    fn = lambda v: apply_fn(variables, v[None])[0]
    return cpa.jacobian(fn, x, mode=mode.split(":")[1])

  f = jax.jit(slopes)
  call = lambda: f(variables, x).block_until_ready()
  before = rss_mb()
  out, compile_s, times = run_timed(call, reps)
  return compile_s, times, peak_mb() - before


def spawn(mode, batch, reps, dump, env):
  cmd = [sys.executable, __file__, "--worker", mode, "--batch", str(batch),
         "--reps", str(reps), "--dump", dump]
  res = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if res.returncode != 0:
    raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument("--resnet", action="store_true")
  ap.add_argument("--resnet-batch", type=int, default=2)
  ap.add_argument("--worker", default=None)
  ap.add_argument("--dump", default="")
  args = ap.parse_args()

  if args.worker:
    kind = args.worker.split(":")[0]
    work = {"jax": worker_jax, "torch": worker_torch, "resnet": worker_resnet}[kind]
    compile_s, times, peak = work(args.worker, args.batch, args.reps, args.dump)
    print(json.dumps({"compile_s": compile_s, "times": times, "peak_mb": peak}))
    return

  batch = args.batch or (8 if args.quick else 64)
  reps = args.reps or (2 if args.quick else 3)
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device: the machine's cores, no fake split
  env["JAX_PLATFORMS"] = "cpu"
  flops = chain_flops()
  print(f"# MLP {'-'.join(map(str, SIZES))}, float32, batch {batch}, best of {reps}; "
        f"masked-chain flops/sample = {flops / 1e9:.3f} GFLOP; cores = {os.cpu_count()}, "
        f"load avg = {os.getloadavg()[0]:.1f}")
  peaks = {}
  for mode in ("jax:matmul", "torch:matmul"):
    r = spawn(mode, batch, max(reps, 5), "", env)
    peaks[mode] = 2 * 4096 * 1024 * 1024 / min(r["times"]) / 1e9
    print(f"{mode:14s} float32 GEMM 4096x1024x1024: {peaks[mode]:7.1f} GFLOP/s")
  peak = max(peaks.values())

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for mode in JAX_MODES + TORCH_MODES:
      dump = os.path.join(tmp, mode.replace(":", "_") + ".npy")
      r = spawn(mode, batch, reps, dump, env)
      best = min(r["times"])
      rows.append((mode, best / batch, r["compile_s"], r["peak_mb"], dump))
    want = np.load(rows[0][4])
    print(f"\n{'mode':14s} {'ms/sample':>10s} {'samples/s':>10s} {'GFLOP/s':>8s} "
          f"{'% peak':>7s} {'1st call s':>10s} {'peak MB':>8s} {'max|ΔA|':>9s}")
    for mode, sec, comp, mem, dump in rows:
      err = float(np.max(np.abs(np.load(dump) - want)))
      print(f"{mode:14s} {sec * 1e3:10.2f} {1 / sec:10.1f} {flops / sec / 1e9:8.1f} "
            f"{100 * flops / sec / 1e9 / peak:6.1f}% {comp:10.2f} {mem:8.0f} {err:9.1e}")
  t = {m: s for m, s, *_ in rows}
  torch_best = min(t[m] for m in ("torch:jacrev", "torch:jacfwd"))
  print(f"\nratios (time of peer / time of sslit; >1 means sslit is faster):")
  print(f"  best torch.func mode / jax:masked-0.6 = "
        f"{torch_best / t['jax:masked-0.6']:.2f}")
  print(f"  best torch.func mode / jax:masked = {torch_best / t['jax:masked']:.2f}")
  print(f"  best torch.func mode / jax:rev    = {torch_best / t['jax:rev']:.2f}")
  print(f"  torch:jacfwd / jax:fwd            = {t['torch:jacfwd'] / t['jax:fwd']:.2f}")
  print(f"  torch:masked / jax:masked         = {t['torch:masked'] / t['jax:masked']:.2f}")
  print(f"  matmul peak used: {peak:.1f} GFLOP/s ({max(peaks, key=peaks.get)})")

  if args.resnet:
    print("\n# ResNet-18 (CIFAR stem, 32x32x3 -> 512), float32, "
          f"batch {args.resnet_batch}, JAX only")
    for mode in ("resnet:rev", "resnet:fwd"):
      r = spawn(mode, args.resnet_batch, 1, "", env)
      sec = min(r["times"]) / args.resnet_batch
      print(f"{mode:14s} {sec * 1e3:10.1f} ms/sample  1st call {r['compile_s']:.1f} s  "
            f"peak {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
  main()
