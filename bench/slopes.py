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

All modes are built in one process, warmed up (compilation), then timed in R
interleaved rounds (every mode once per round, so a shared machine's load drifts
over all modes alike). Peak memory is measured separately, one subprocess per mode
(peak RSS of its first call above the state before it). Reported: ms per sample
(best of R), samples/s,
GFLOP/s counted on the masked chain's flops (the least work that gives the exact
slopes), the fraction of the float32 matmul peak measured in the same run, and the
peak resident memory above the process's state before the warm-up. Every mode's
slopes are checked against jax:masked on the same inputs (max |ΔA|).

``--resnet`` adds ResNet-18 (CIFAR stem, eval-mode BN, 512-d representation,
``sslit.models``) against the same network written with ``torch.nn.functional`` on
the same (Flax-initialised) weights and BN statistics: reverse mode
(``--resnet-fwd``: forward mode too, 3072 tangents per sample: slow).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping

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


def build_jax(mode, batch):
  """A no-argument callable computing the slopes (blocking) for one JAX mode."""
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
    return lambda: np.asarray(f(layers, x).block_until_ready()[:2])
  if mode == "jax:matmul":
    a = jnp.asarray(np.random.default_rng(2).standard_normal((4096, 1024)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).standard_normal((1024, 1024)), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    return lambda: (f(a, b).block_until_ready(), None)[1]
  f = jax.jit(lambda x: cpa.jacobian(fn, x, mode=mode.split(":")[1]))
  return lambda: np.asarray(f(x).block_until_ready()[:2])


def build_torch(mode, batch):
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
    return lambda: (a @ b, None)[1]
  if mode == "torch:masked":
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
        out = (mid.reshape(-1, w1.shape[1]) @ w1.T).reshape(x.shape[0], -1,
                                                            w1.shape[0])
      return out[:2].numpy()
    return call
  tf = torch.func.jacrev(fn) if mode == "torch:jacrev" else torch.func.jacfwd(fn)
  vf = torch.func.vmap(tf)

  def call():
    with torch.no_grad():
      return vf(x)[:2].numpy()
  return call


def _resnet_setup(batch):
  import jax
  import jax.numpy as jnp
  from sslit import models
  model = models.build_model("resnet18", projector=None)
  x = np.random.default_rng(1).standard_normal((batch, 32, 32, 3)).astype(np.float32)
  variables = models.init_variables(model, jax.random.key(0), jnp.asarray(x))
  return model, variables, x


def build_resnet(mode, batch):
  """sslit.cpa.jacobian on sslit.models' ResNet-18 (CIFAR stem), eval mode."""
  import jax
  import jax.numpy as jnp
  from sslit import cpa, models
  model, variables, x = _resnet_setup(batch)
  x = jnp.asarray(x)
  apply_fn = models.make_apply_fn(model, "rep")

  def slopes(variables, x):
    fn = lambda v: apply_fn(variables, v[None])[0]
    return cpa.jacobian(fn, x, mode=mode.split(":")[1])

  f = jax.jit(slopes)
  return lambda: np.asarray(f(variables, x).block_until_ready()[:1])


def build_resnet_torch(mode, batch):
  """The same ResNet-18 with the same (Flax-initialised) weights, in torch."""
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(2)
  _, variables, x = _resnet_setup(batch)
  params = variables["params"]["backbone"]
  stats = variables["batch_stats"]["backbone"]
  t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())
  convs = {name: t(np.asarray(p["kernel"]).transpose(3, 2, 0, 1))
           for name, p in _walk(params) if "kernel" in p}
  bns = {name: (t(p["scale"]), t(p["bias"]), t(_get(stats, name)["mean"]),
                t(_get(stats, name)["var"]))
         for name, p in _walk(params) if "scale" in p}

  def bn(h, name):
    scale, bias, mean, var = bns[name]
    inv = scale / torch.sqrt(var + 1e-5)
    return h * inv[:, None, None] + (bias - mean * inv)[:, None, None]

  def fn(v):  # v [32, 32, 3] (NHWC, flattened like JAX's input)
    h = v.permute(2, 0, 1)[None]
    h = torch.relu(bn(F.conv2d(h, convs["stem_conv"], padding=1), "stem_bn"))
    for i in range(4):
      for j in range(2):
        name = f"layer{i + 1}_{j}"
        stride = 2 if i > 0 and j == 0 else 1
        y = F.conv2d(h, convs[f"{name}/conv1"], stride=stride, padding=1)
        y = torch.relu(bn(y, f"{name}/bn1"))
        y = bn(F.conv2d(y, convs[f"{name}/conv2"], padding=1), f"{name}/bn2")
        r = h
        if f"{name}/downsample_conv" in convs:
          r = bn(F.conv2d(h, convs[f"{name}/downsample_conv"], stride=stride),
                 f"{name}/downsample_bn")
        h = torch.relu(r + y)
    return h.mean(dim=(2, 3))[0]

  xt = torch.from_numpy(x)
  jac = torch.func.jacrev(fn) if mode.endswith("jacrev") else torch.func.jacfwd(fn)
  vf = torch.func.vmap(jac)

  def call():
    with torch.no_grad():
      return vf(xt)[:1].reshape(1, 512, -1).numpy()
  return call


def _walk(tree, prefix=""):
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    if any(isinstance(v, Mapping) for v in value.values()):
      yield from _walk(value, path)
    else:
      yield path, value


def _get(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


BUILDERS = {"jax": build_jax, "torch": build_torch, "resnet": build_resnet,
            "resnettorch": build_resnet_torch}


def memory_worker(mode, batch):
  """Peak RSS (MB) of one (first) call above the state before it, in this process."""
  call = BUILDERS[mode.split(":")[0]](mode, batch)
  before = rss_mb()
  t0 = time.perf_counter()
  call()
  first = time.perf_counter() - t0
  return {"peak_mb": peak_mb() - before, "first_call_s": first}


def spawn(mode, batch, env):
  cmd = [sys.executable, __file__, "--worker", mode, "--batch", str(batch)]
  res = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if res.returncode != 0:
    raise RuntimeError(f"{mode} failed:\n{res.stderr[-3000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def round_robin(calls, reps):
  """Best time per call over ``reps`` rounds, the modes interleaved in each round."""
  best = {m: float("inf") for m in calls}
  for _ in range(reps):
    for m, call in calls.items():
      t0 = time.perf_counter()
      call()
      best[m] = min(best[m], time.perf_counter() - t0)
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument("--no-memory", action="store_true",
                  help="skip the per-mode subprocesses that measure peak memory")
  ap.add_argument("--resnet", action="store_true")
  ap.add_argument("--resnet-batch", type=int, default=1)
  ap.add_argument("--resnet-reps", type=int, default=1)
  ap.add_argument("--resnet-only", action="store_true", help="skip the MLP part")
  ap.add_argument("--resnet-fwd", action="store_true",
                  help="also forward mode for ResNet-18 (d = 3072 tangents: slow)")
  ap.add_argument("--worker", default=None)
  args = ap.parse_args()

  if args.worker:
    print(json.dumps(memory_worker(args.worker, args.batch)))
    return

  os.environ.pop("XLA_FLAGS", None)  # one CPU device over the machine's cores
  os.environ["JAX_PLATFORMS"] = "cpu"
  if args.resnet_only:
    args.resnet = True
  batch = args.batch or (8 if args.quick else 64)
  reps = args.reps or (3 if args.quick else 5)
  flops = chain_flops()
  if not args.resnet_only:
    mlp_part(args, batch, reps, flops)
  if args.resnet:
    resnet_part(args)


def mlp_part(args, batch, reps, flops):
  print(f"# MLP {'-'.join(map(str, SIZES))}, float32, batch {batch}, best of {reps} "
        f"interleaved rounds; masked-chain flops/sample = {flops / 1e9:.3f} GFLOP; "
        f"cores = {os.cpu_count()}, load avg = {os.getloadavg()[0]:.1f}")
  mem = {}
  if not args.no_memory:
    # First, while this process is small: a child's ru_maxrss starts from the
    # parent's high-water mark (Linux keeps it across fork and exec).
    env = dict(os.environ)
    for m in JAX_MODES + TORCH_MODES:
      mem[m] = spawn(m, batch, env)["peak_mb"]
  modes = ("jax:matmul", "torch:matmul") + JAX_MODES + TORCH_MODES
  calls = {m: BUILDERS[m.split(":")[0]](m, batch) for m in modes}
  first, slopes = {}, {}
  for m, call in calls.items():  # warm-up: compilation, first-call costs
    t0 = time.perf_counter()
    slopes[m] = call()
    first[m] = time.perf_counter() - t0
  best = round_robin(calls, reps)
  gemm = 2 * 4096 * 1024 * 1024
  peaks = {m: gemm / best[m] / 1e9 for m in ("jax:matmul", "torch:matmul")}
  for m, p in peaks.items():
    print(f"{m:14s} float32 GEMM 4096x1024x1024: {p:7.1f} GFLOP/s")
  peak = max(peaks.values())
  want = slopes["jax:masked"]
  print(f"\n{'mode':14s} {'ms/sample':>10s} {'samples/s':>10s} {'GFLOP/s':>8s} "
        f"{'% peak':>7s} {'1st call s':>10s} {'peak MB':>8s} {'max|ΔA|':>9s}")
  for m in JAX_MODES + TORCH_MODES:
    sec = best[m] / batch
    err = float(np.max(np.abs(slopes[m] - want)))
    print(f"{m:14s} {sec * 1e3:10.2f} {1 / sec:10.1f} {flops / sec / 1e9:8.1f} "
          f"{100 * flops / sec / 1e9 / peak:6.1f}% {first[m]:10.2f} "
          f"{mem.get(m, float('nan')):8.0f} {err:9.1e}")
  t = best
  torch_best = min(t[m] for m in ("torch:jacrev", "torch:jacfwd"))
  print("\nratios (time of peer / time of sslit; >1 means sslit is faster):")
  for m in ("jax:masked-0.6", "jax:masked", "jax:rev", "jax:fwd"):
    print(f"  best torch.func mode / {m:15s} = {torch_best / t[m]:.2f}")
  print(f"  torch:jacrev / jax:rev             = {t['torch:jacrev'] / t['jax:rev']:.2f}")
  print(f"  torch:jacfwd / jax:fwd             = {t['torch:jacfwd'] / t['jax:fwd']:.2f}")
  print(f"  torch:masked / jax:masked          = "
        f"{t['torch:masked'] / t['jax:masked']:.2f}")
  print(f"  matmul peak used: {peak:.1f} GFLOP/s ({max(peaks, key=peaks.get)}); "
        f"load avg now {os.getloadavg()[0]:.1f}")



def resnet_part(args):
  rb = args.resnet_batch
  print(f"\n# ResNet-18 (CIFAR stem, 32x32x3 -> 512, eval BN), float32, batch {rb}, "
        f"best of {args.resnet_reps} interleaved rounds; load avg "
        f"{os.getloadavg()[0]:.1f}")
  rmodes = ("resnet:rev", "resnettorch:jacrev")
  if args.resnet_fwd:
    rmodes += ("resnet:fwd", "resnettorch:jacfwd")
  rcalls = {m: BUILDERS[m.split(":")[0]](m, rb) for m in rmodes}
  rfirst, rout = {}, {}
  for m, call in rcalls.items():
    t0 = time.perf_counter()
    rout[m] = call()
    rfirst[m] = time.perf_counter() - t0
  rbest = round_robin(rcalls, args.resnet_reps)
  for m in rmodes:
    err = float(np.max(np.abs(rout[m] - rout["resnet:rev"])))
    print(f"{m:20s} {rbest[m] / rb:8.2f} s/sample  1st call {rfirst[m]:6.1f} s  "
          f"max|ΔA| vs resnet:rev {err:.1e}")
  print(f"  resnettorch:jacrev / resnet:rev = "
        f"{rbest['resnettorch:jacrev'] / rbest['resnet:rev']:.2f}")


if __name__ == "__main__":
  main()
