"""Benchmark: sslit.bound.generalization_bound against NumPy/SciPy, same formulas.

    /work/venv/bin/python bench/bound.py            # m = n = 50,000, k = 2048, C = 10
    /work/venv/bin/python bench/bound.py --quick    # m = n = 5,000, k = 256

Every implementation runs in its own child process on the same float32 data (same
seed): wall time of the whole bound (both least-squares fits, the head's norms, every
term, the held-out loss) and the extra peak resident memory over the inputs (Linux
VmHWM, reset after the data are built). Peers, in the same run on the same machine:

- ``numpy-gram``: NumPy, the same algorithm as sslit (Gram matrix, eigh, one
  refinement step), float32;
- ``scipy-lstsq``: the obvious SciPy route, ``scipy.linalg.lstsq`` (QR with pivoting,
  ``gelsy``, same singular-value cut-off ``cond``) for both fits, float32.

JAX is timed on its first call (compilation included, outside the memory window) and
on the following calls (best reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

IMPLS = ("jax", "numpy-gram", "scipy-lstsq")


def make_data(m, n, n_t, k, c, seed=0):
  """Features with a decaying spectrum (σ_j from 1 to e⁻³, condition ≈ 20, so every
  solver keeps every direction and all peers compute the same numbers), labels from a
  linear model plus noise, second views = first + noise."""
  rng = np.random.default_rng(seed)
  spectrum = np.exp(-3.0 * np.arange(k) / k).astype(np.float32)
  head = rng.standard_normal((k, c), dtype=np.float32)

  def draw(size):
    z = rng.standard_normal((size, k), dtype=np.float32) * spectrum
    y = np.argmax(z @ head + 3.0 * rng.standard_normal((size, c), dtype=np.float32), 1)
    return z, y

  z_u, y_u = draw(m)
  z_u_b = z_u + np.float32(0.1) * rng.standard_normal((m, k), dtype=np.float32)
  z_s, y_s = draw(n)
  z_t, y_t = draw(n_t)
  return z_u, z_u_b, z_s, y_s, z_t, y_t, y_u


def _one_hot(y, c):
  out = np.zeros((len(y), c), np.float32)
  out[np.arange(len(y)), y] = 1.0
  return out


def numpy_bound(z_u_a, z_u_b, z_s, y_s, z_t, y_t, y_u, *, delta=0.05, solver):
  """SPEC §6 / docs/bound.md formulas in NumPy/SciPy (no bias), float32."""
  import scipy.linalg

  c_out = int(max(y_s.max(), y_t.max(), y_u.max())) + 1
  ys, yt, yu = (_one_hot(y, c_out) for y in (y_s, y_t, y_u))
  m, n = len(z_u_a), len(z_s)
  eps = np.finfo(np.float32).eps

  def fit(z, y):
    # The same singular-value cut-off as sslit's default (a pseudo-inverse).
    rcond = max(max(z.shape) * eps, 10 * np.sqrt(eps))
    if solver == "scipy-lstsq":
      return scipy.linalg.lstsq(z, y, cond=rcond, lapack_driver="gelsy",
                                check_finite=False)[0]
    lam, vec = np.linalg.eigh(z.T @ z)
    keep = lam > rcond**2 * lam.max()
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0).astype(np.float32)
    solve = lambda r: vec @ (inv[:, None] * (vec.T @ r))
    w = solve(z.T @ y)
    return w + solve(z.T @ (y - z @ w))

  w = fit(z_s, ys)
  spec = np.linalg.norm(w, 2)
  fro = np.linalg.norm(w)
  d = z_u_a - z_u_b
  dn = np.linalg.norm(d, axis=1)
  inv_ = dn.mean()
  res_u = np.linalg.norm(yu - z_u_a @ fit(z_u_a, yu))
  res_s = np.linalg.norm(ys - z_s @ w)
  rad = np.sqrt(2 * c_out) * fro * np.sqrt(np.sum(dn**2)) / m
  radius = max(np.linalg.norm(a, axis=1).max() for a in (z_s, z_u_a, z_u_b))
  c = max(spec * radius + 1.0, spec * dn.max())
  q = c * (np.sqrt(np.log(2 / delta) / (2 * m)) + np.sqrt(np.log(2 / delta) / (2 * n)))
  bound = spec * inv_ + 2 * res_u / np.sqrt(m) + res_s / np.sqrt(n) + 2 * rad + q
  test_loss = np.linalg.norm(z_t @ w - yt, axis=1).mean()
  return float(bound), float(test_loss)


def _reset_peak():
  try:
    with open("/proc/self/clear_refs", "w") as fh:
      fh.write("5")
    return True
  except OSError:
    return False


def _mem_kib(field):
  with open("/proc/self/status") as fh:
    for line in fh:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return -1


def child(args):
  impl = args.child
  data = make_data(args.m, args.n, args.n_t, args.k, args.c)
  if impl == "jax":
    import jax
    import jax.numpy as jnp
    from sslit import bound as B

    z_u_a, z_u_b, z_s, y_s, z_t, y_t, y_u = data
    arrs = [jnp.asarray(a) for a in (z_u_a, z_u_b, z_s, z_t)]
    jax.block_until_ready(arrs)
    del data, z_u_a, z_u_b, z_s, z_t

    def run():
      out = B.generalization_bound(arrs[0], arrs[1], arrs[2], y_s, arrs[3], y_t, y_u=y_u)
      out = jax.block_until_ready(out)
      return float(out["bound"]), float(out["test_loss"])
  else:
    def run():
      return numpy_bound(*data, solver=impl)
  times = []
  if impl == "jax":  # first call (compilation included), outside the memory window
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  base = _mem_kib("VmRSS")
  reset = _reset_peak()
  for _ in range(args.repeats if impl == "jax" else args.peer_repeats):
    t0 = time.perf_counter()
    bound, test_loss = run()
    times.append(time.perf_counter() - t0)
  peak = _mem_kib("VmHWM")
  print(json.dumps(dict(impl=impl, times=times, bound=bound, test_loss=test_loss,
                        extra_peak_mib=(peak - base) / 1024 if reset else None,
                        inputs_rss_mib=base / 1024)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--child", choices=IMPLS)
  for name in ("m", "n", "n_t", "k", "c"):
    parser.add_argument(f"--{name}", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed JAX calls after the first")
  parser.add_argument("--peer_repeats", type=int, default=None)
  parser.add_argument("--impls", default=",".join(IMPLS),
                      help=f"comma-separated subset of {IMPLS}")
  args = parser.parse_args()
  sizes = (dict(m=5_000, n=5_000, n_t=2_000, k=256, c=10, repeats=3, peer_repeats=3)
           if args.quick else
           dict(m=50_000, n=50_000, n_t=10_000, k=2048, c=10, repeats=2,
                peer_repeats=1))
  for key, val in sizes.items():
    if getattr(args, key) is None:
      setattr(args, key, val)
  if args.child:
    child(args)
    return
  print(f"bound benchmark: m={args.m} n={args.n} n_t={args.n_t} k={args.k} C={args.c}, "
        f"float32; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}")
  results = {}
  for impl in args.impls.split(","):
    cmd = [sys.executable, __file__, "--child", impl] + [
        f"--{k}={getattr(args, k)}"
        for k in ("m", "n", "n_t", "k", "c", "repeats", "peer_repeats")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      print(f"{impl}: failed\n{proc.stderr[-2000:]}")
      continue
    results[impl] = r = json.loads(proc.stdout.strip().splitlines()[-1])
    best = min(r["times"][1:] if impl == "jax" else r["times"])
    r["best"] = best
    mem = "n/a" if r["extra_peak_mib"] is None else f"{r['extra_peak_mib']:.0f} MiB"
    extra = f", first call {r['times'][0]:.2f} s" if impl == "jax" else ""
    print(f"{impl:12s} {best:8.2f} s{extra}; extra peak memory {mem} (inputs "
          f"{r['inputs_rss_mib']:.0f} MiB RSS); bound {r['bound']:.5f}, test loss "
          f"{r['test_loss']:.5f}")
  if "jax" in results:
    for peer in IMPLS[1:]:
      if peer in results:
        p, j = results[peer], results["jax"]
        print(f"ratio {peer} / jax time: {p['best'] / j['best']:.2f}x; bound rel. diff "
              f"{abs(p['bound'] - j['bound']) / abs(p['bound']):.1e}")


if __name__ == "__main__":
  main()
