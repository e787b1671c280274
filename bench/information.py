"""Pairwise mixture-entropy bounds: the exact O(n² k³) path against the scalable one.

Usage:
  python bench/information.py [--sizes 48,256,1000,2000] [--exact-sizes 48,128]
      [--k 256] [--neighbors 8] [--sigma 0.5] [--timeout 600] [--append]

The mixture is the one ``cpa.representation_information`` builds for a random
He-initialised ReLU MLP 64-512-512-k (float64): means ``f(x_n)`` and covariances
``Σ_n = σ² A_n A_nᵀ + τ² I_k`` from the per-input slopes ``A_n`` (rank 64 < k, so
``τ = 0.1 σ s̄`` as ``relative_output_noise=0.1`` sets it), ``x_n ~ N(0, I)``,
``σ = --sigma``. For each (path, n) a fresh subprocess builds the mixture (not timed),
then calls ``sslit.mixture.pairwise_bounds_exact`` or ``pairwise_bounds`` once:
seconds include compilation; peak memory is that subprocess's ``ru_maxrss`` (the
whole process: Python, JAX and the ``[n, k, k]`` covariances, 8 n k² bytes, included).
Exact runs are only made for ``--exact-sizes``: the others would take hours here.
Writes bench/RESULTS_information.md (``--append``: adds a section to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RHO, D_IN, WIDTH = 0.1, 64, 512


def child(method: str, n: int, k: int, neighbors: int, sigma: float) -> dict:
  """One configuration, in its own process: build the mixture, time one call."""
  from sslit import parallel
  parallel.serialize_cpu_lapack()  # jaxlib < 0.11 CPU LAPACK hang (docs/cpa.md)
  import jax
  import jax.numpy as jnp
  import numpy as np
  jax.config.update("jax_enable_x64", True)
  from sslit import cpa, mixture

  rng = np.random.default_rng(0)
  sizes = (D_IN, WIDTH, WIDTH, k)
  layers = [(jnp.asarray(rng.standard_normal((a, b)) * np.sqrt(2 / a)),
             jnp.asarray(0.1 * rng.standard_normal(b))) for a, b in zip(sizes, sizes[1:])]

  def fn(v):
    for i, (w, b) in enumerate(layers):
      v = v @ w + b
      v = jax.nn.relu(v) if i < len(layers) - 1 else v
    return v

  x = jnp.asarray(rng.standard_normal((n, D_IN)))
  a = cpa.jacobian(fn, x, chunk_size=256)

  @jax.jit
  def build(x, a):
    tau = RHO * sigma * jnp.sqrt(jnp.mean(jnp.sum(a**2, axis=(1, 2))) / k)
    covs = sigma**2 * jnp.einsum("nkd,nld->nkl", a, a) + tau**2 * jnp.eye(k)
    return jax.vmap(fn)(x), covs

  means, covs = jax.block_until_ready(build(x, a))
  del a
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  if method == "exact":
    out = mixture.pairwise_bounds_exact(means, covs)
  else:
    out = mixture.pairwise_bounds(means, covs, exact_neighbors=neighbors)
  out = jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  res = {name: float(v) for name, v in zip(out._fields, out)}
  res.update(method=method, n=n, k=k, neighbors=neighbors, seconds=seconds,
             rss_before_mib=rss_before,
             peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             covs_mib=8 * n * k * k / 2**20)
  return res


def run_child(method: str, n: int, k: int, neighbors: int, sigma: float,
              timeout: float) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", method, str(n), str(k),
         str(neighbors), str(sigma)]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"method": method, "n": n, "k": k, "neighbors": neighbors,
            "skipped": f"killed after {timeout:.0f} s"}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {"method": method, "n": n, "k": k, "neighbors": neighbors,
            "skipped": f"failed (rc {proc.returncode}): {proc.stderr[-300:]}"}
  res = json.loads(lines[-1])
  res["process_seconds"] = time.perf_counter() - start
  return res


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} CPUs"
  except OSError:
    return f"{platform.processor() or '?'}, {os.cpu_count()} CPUs"


def table(rows: list[dict]) -> str:
  head = ("| path | n | k | exact pairs / all | s (incl. compile) | peak RSS MiB "
          "| [n,k,k] MiB | h_lower | h_upper | lower_slack | mi_lower / mi_upper |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
  out = [head]
  for r in rows:
    path = "exact" if r["method"] == "exact" else f"scalable ({r['neighbors']})"
    if "skipped" in r:
      out.append(f"| {path} | {r['n']} | {r['k']} | | {r['skipped']} | | | | | | |")
      continue
    out.append(
        f"| {path} | {r['n']} | {r['k']} | {r['exact_pairs']:.0f} / "
        f"{r['num_pairs']:.0f} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | "
        f"{r['covs_mib']:.0f} | {r['h_lower']:.6f} | {r['h_upper']:.6f} | "
        f"{r['lower_slack']:.2e} | {r['mi_lower']:.4f} / {r['mi_upper']:.4f} |")
  return "\n".join(out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--child", nargs=5, metavar=("METHOD", "N", "K", "NEIGHBORS", "SIGMA"),
                 help=argparse.SUPPRESS)
  p.add_argument("--sizes", default="48,256,1000,2000",
                 help="n for the scalable path (comma-separated)")
  p.add_argument("--exact-sizes", default="48,128",
                 help="n for the exact O(n² k³) path (comma-separated)")
  p.add_argument("--k", type=int, default=256)
  p.add_argument("--neighbors", default="8",
                 help="exact_neighbors of the scalable path (comma-separated)")
  p.add_argument("--sigma", type=float, default=0.5, help="input-noise σ")
  p.add_argument("--append", action="store_true",
                 help="add a section to --out instead of rewriting it")
  p.add_argument("--timeout", type=float, default=600.0,
                 help="seconds per configuration before it is killed")
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS_information.md"))
  args = p.parse_args()
  if args.child:
    method, n, k, neighbors, sigma = args.child
    print(json.dumps(child(method, int(n), int(k), int(neighbors), float(sigma))),
          flush=True)
    return
  sizes = [int(s) for s in args.sizes.split(",") if s]
  exact_sizes = [int(s) for s in args.exact_sizes.split(",") if s]
  neighbors = [int(s) for s in args.neighbors.split(",") if s]
  rows = []
  for n in sorted(set(sizes) | set(exact_sizes)):
    runs = [("exact", 0)] if n in exact_sizes else []
    runs += [("scalable", m) for m in neighbors] if n in sizes else []
    for method, m in runs:
      rows.append(run_child(method, n, args.k, m, args.sigma, args.timeout))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  text = table(rows)
  print(text)
  cmd = "python bench/information.py " + " ".join(sys.argv[1:])
  head = "" if args.append else "# Pairwise mixture-entropy bounds: exact vs scalable\n\n"
  with open(args.out, "a" if args.append else "w") as f:
    f.write(f"{head}## σ = {args.sigma}, k = {args.k}\n\nCommand: `{cmd.strip()}`\n\n"
            f"CPU: {cpu_model()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. No GPU.\n\n"
            f"{text}\n\n")


if __name__ == "__main__":
  main()
