"""Benchmark sslit.objectives (and estimators.pairwise_entropy) against PyTorch.

Each row times one training-step's worth of work for one objective: the loss and
its gradient with respect to both inputs (``jax.jit(jax.value_and_grad(...))`` for
sslit, ``torch.autograd.grad`` for the peer), float32, on the same arrays in the
same process. The PyTorch functions implement the same math with the same algorithm
(Gram matrices when n < k, Cholesky for the log-determinant), so the ratio compares
the frameworks, not the formulas; their values are checked against sslit's.

Run:  /work/venv/bin/python bench/objectives.py [--quick] [--large] [--repeats R]
      [--rows NAME,NAME,...]

Timing: warm-up calls (compilation) excluded, ``block_until_ready``, median of
``--repeats`` calls. ``torch.set_num_threads(2)``, ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

# Without this, torch's OpenMP workers spin while waiting and, on a CPU shared with
# other processes (or with XLA's own thread pool in this process), a 1 ms step was
# measured at 150-600 ms. Passive waiting is what a shared machine needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import torch

from sslit import estimators
from sslit import objectives

SIZES = [(256, 128), (1024, 2048)]
LARGE = [(4096, 8192)]


# ----------------------------------------------------------------------------------
# PyTorch peers (same math and algorithm as sslit).


def _t_sum_sq_of_product(a, b):
  n, k = a.shape
  if n < k:
    return torch.sum((a @ a.T) * (b @ b.T))
  c = a.T @ b
  return torch.sum(c * c)


def _t_offdiag_sq_of_cov(zc):
  n = zc.shape[0]
  diag = torch.sum(zc * zc, 0)
  return (_t_sum_sq_of_product(zc, zc) - torch.sum(diag * diag)) / (n - 1) ** 2


def _t_hinge(zc, gamma=1.0, eps=1e-4):
  n = zc.shape[0]
  std = torch.sqrt(torch.sum(zc * zc, 0) / (n - 1) + eps)
  return torch.mean(torch.relu(gamma - std))


def t_vicreg(z_a, z_b):
  k = z_a.shape[1]
  inv = torch.mean((z_a - z_b) ** 2)
  za, zb = z_a - z_a.mean(0), z_b - z_b.mean(0)
  var = _t_hinge(za) / 2 + _t_hinge(zb) / 2
  cov = (_t_offdiag_sq_of_cov(za) + _t_offdiag_sq_of_cov(zb)) / k
  return 25 * inv + 25 * var + cov


def t_vicreg_paper(z_a, z_b):
  k = z_a.shape[1]
  inv = torch.mean((z_a - z_b) ** 2)
  z = torch.cat([z_a, z_b])
  zc = z - z.mean(0)
  return 25 * inv + 25 * _t_hinge(zc) + _t_offdiag_sq_of_cov(zc) / k


def _t_normalize(z):
  return torch.nn.functional.normalize(z, dim=1, eps=1e-12)


def t_infonce(z_a, z_b, temperature=0.1):
  n = z_a.shape[0]
  u = _t_normalize(torch.cat([z_a, z_b]))
  logits = u @ u.T / temperature
  eye = torch.eye(2 * n, dtype=torch.bool)
  lse = torch.logsumexp(logits.masked_fill(eye, float("-inf")), 1)
  pos = torch.sum(u[:n] * u[n:], 1) / temperature
  return -pos.mean() + lse.mean()


def t_barlow(z_a, z_b, lam=0.0051, eps=1e-5):
  n = z_a.shape[0]

  def std(z):
    zc = z - z.mean(0)
    return zc * torch.rsqrt(torch.mean(zc * zc, 0) + eps)

  a, b = std(z_a), std(z_b)
  diag = torch.sum(a * b, 0) / n
  on = torch.sum((1 - diag) ** 2)
  off = _t_sum_sq_of_product(a, b) / n**2 - torch.sum(diag * diag)
  return on + lam * off


def t_byol(p_a, z_b):
  cos = torch.sum(_t_normalize(p_a) * _t_normalize(z_b.detach()), 1)
  return torch.mean(2 - 2 * cos)


def t_logdet(z, beta=1.0):
  n, k = z.shape
  zc = z - z.mean(0)
  s = beta / (n - 1)
  if n < k:
    m = torch.eye(n) + s * (zc @ zc.T)
  else:
    m = torch.eye(k) + s * (zc.T @ zc)
  return torch.sum(torch.log(torch.diagonal(torch.linalg.cholesky(m))))


def t_pairwise(means, var, distance="kl"):
  n, k = means.shape
  sq = torch.sum(means * means, 1)
  d2 = torch.clamp(sq[:, None] + sq[None, :] - 2 * means @ means.T, min=0)
  div = d2 / (2 * var) if distance == "kl" else d2 / (8 * var)
  h = 0.5 * k * math.log(2 * math.pi * math.e * var)
  return h - torch.mean(torch.logsumexp(-div, 1)) + math.log(n)


def t_information(z_a, z_b, entropy):
  k = z_a.shape[1]
  inv = torch.mean((z_a - z_b) ** 2)
  coeff = objectives.DEFAULT_ENTROPY_COEFF[entropy]
  if entropy == "logdet":
    h = (t_logdet(z_a) + t_logdet(z_b)) / 2
    const = 0.0
  else:
    dist = entropy[len("pairwise_"):]
    h = (t_pairwise(z_a, float(k), dist) + t_pairwise(z_b, float(k), dist)) / 2
    const = 0.5 * k * math.log(2 * math.pi * math.e * k)
  return 25 * inv - coeff * (h - const)


def t_simsiam(p_a, p_b, z_a, z_b):
  def neg_cos(p, z):
    return -torch.mean(torch.sum(_t_normalize(p) * _t_normalize(z.detach()), 1))
  return (neg_cos(p_a, z_b) + neg_cos(p_b, z_a)) / 2


def t_moco_v3(q_a, q_b, k_a, k_b, temperature=0.2):
  def ctr(q, k):
    logits = _t_normalize(q) @ _t_normalize(k.detach()).T / temperature
    labels = torch.arange(q.shape[0])
    return torch.nn.functional.cross_entropy(logits, labels) * 2 * temperature
  return ctr(q_a, k_b) + ctr(q_b, k_a)


def _t_swapped_ce(targets, log_probs):
  g, n = targets.shape[:2]
  m = log_probs.shape[0]
  ce = -torch.einsum("gnk,mnk->gm", targets, log_probs) / n
  keep = torch.arange(g)[:, None] != torch.arange(m)[None, :]
  return torch.sum(ce * keep) / (g * (m - 1))


def t_dino(student, teacher, center, ts=0.1, tt=0.07):
  q = torch.softmax((teacher.detach() - center) / tt, -1)
  return _t_swapped_ce(q, torch.log_softmax(student / ts, -1))


def t_sinkhorn(scores, epsilon=0.05, iterations=3):
  n, p = scores.shape
  log_q = scores.detach() / epsilon
  log_q = log_q - torch.logsumexp(log_q.reshape(-1), 0)
  for _ in range(iterations):
    log_q = log_q - torch.logsumexp(log_q, 0, keepdim=True) - math.log(p)
    log_q = log_q - torch.logsumexp(log_q, 1, keepdim=True) - math.log(n)
  return torch.exp(log_q) * n


def t_swav(z, prototypes, temperature=0.1):
  scores = torch.einsum("vnk,pk->vnp", _t_normalize_last(z), prototypes)
  codes = torch.stack([t_sinkhorn(scores[i]) for i in range(2)])
  return _t_swapped_ce(codes, torch.log_softmax(scores / temperature, -1))


def _t_normalize_last(z):
  return torch.nn.functional.normalize(z, dim=-1, eps=1e-12)


def _t_whiten(z):
  n, k = z.shape
  zc = z - z.mean(0)
  chol = torch.linalg.cholesky(zc.T @ zc / (n - 1))
  return torch.linalg.solve_triangular(chol, zc.T, upper=False).T


def t_wmse(z_a, z_b):
  cos = torch.sum(_t_normalize(_t_whiten(z_a)) * _t_normalize(_t_whiten(z_b)), 1)
  return torch.mean(2 - 2 * cos)


def t_mmcr(z_a, z_b):
  u = _t_normalize_last(torch.stack([z_a, z_b]))
  return -torch.sum(torch.linalg.svdvals(u.mean(0)))


def t_knn_log_dist(x):
  n = x.shape[0]
  sq = torch.sum(x * x, 1)
  d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
  d2 = d2.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
  idx = torch.argmin(d2.detach(), 1)
  return torch.log(torch.linalg.vector_norm(x - x[idx], dim=1))


def t_kozachenko_leonenko(x):
  n, d = x.shape
  psi = lambda m: -0.5772156649015329 + math.fsum(1.0 / j for j in range(1, m))
  const = psi(n) - psi(1) + 0.5 * d * math.log(math.pi) - math.lgamma(d / 2 + 1)
  return const + d * torch.mean(t_knn_log_dist(x))


def t_vicreg_koleo(z_a, z_b, coeff=2.5, eps=1e-8):
  inv = torch.mean(2 - 2 * torch.sum(_t_normalize(z_a) * _t_normalize(z_b), 1))

  def koleo(z):
    u = torch.nn.functional.normalize(z, dim=1, eps=eps)
    return -torch.mean(torch.log(torch.exp(t_knn_log_dist(u)) + eps))
  return 25 * inv - coeff * (-koleo(z_a) - koleo(z_b)) / 2


def _sigreg_directions(k, m=256):
  """The directions ``lejepa_loss`` draws from ``jax.random.key(0)``, for the peer."""
  return np.array(objectives.sigreg_directions(jax.random.key(0), k, m))  # writable


def t_lejepa(a, b, directions, lambd=0.05, num_points=17, t_max=5.0):
  z = torch.stack([a, b])
  a_dir = torch.from_numpy(directions)
  t = torch.linspace(-t_max, t_max, num_points)
  phi = torch.exp(-0.5 * t * t)
  inv = torch.mean((z.mean(0, keepdim=True) - z) ** 2)

  def sigreg(x):
    xt = (x @ a_dir)[:, :, None] * t
    err = ((torch.cos(xt).mean(0) - phi) ** 2 + torch.sin(xt).mean(0) ** 2) * phi
    return torch.mean(torch.trapezoid(err, t, dim=-1) * x.shape[0])
  return (1 - lambd) * inv + lambd * (sigreg(a) + sigreg(b)) / 2


def t_align_uniform(a, b, t=2.0):
  u_a, u_b = _t_normalize(a), _t_normalize(b)
  align = torch.mean(torch.sum((u_a - u_b) ** 2, 1))
  unif = lambda u: torch.log(torch.mean(torch.exp(-t * torch.pdist(u) ** 2)))
  return align + (unif(u_a) + unif(u_b)) / 2


def _prototypes(k, p=100):
  c = np.random.default_rng(1).normal(size=(p, k)).astype(np.float32)
  return c / np.linalg.norm(c, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------
# Cases: (name, sslit loss of (a, b), torch loss of (a, b), number of inputs).


def _cases():
  def first(f):
    return lambda a, b: f(a, b)[0]

  return [
      ("vicreg", first(objectives.vicreg_loss), t_vicreg),
      ("vicreg_paper", first(objectives.vicreg_paper_loss), t_vicreg_paper),
      ("infonce", first(objectives.infonce_loss), t_infonce),
      ("barlow_twins", first(objectives.barlow_twins_loss), t_barlow),
      ("byol", first(objectives.byol_loss), t_byol),
      ("vicreg+logdet", first(objectives.get_objective("vicreg+logdet").fn),
       lambda a, b: t_information(a, b, "logdet")),
      ("info pairwise_kl",
       first(objectives.get_objective("information", entropy="pairwise_kl").fn),
       lambda a, b: t_information(a, b, "pairwise_kl")),
      ("vicreg+pairdist", first(objectives.get_objective("vicreg+pairdist").fn),
       lambda a, b: t_information(a, b, "pairwise_bhattacharyya")),
      ("pairwise_entropy",
       lambda a, b: estimators.pairwise_entropy(a, jnp.float32(a.shape[1])),
       lambda a, b: t_pairwise(a, float(a.shape[1]))),
      ("simsiam", lambda a, b: objectives.simsiam_loss(a, b, b, a)[0],
       lambda a, b: t_simsiam(a, b, b, a)),
      ("moco_v3", lambda a, b: objectives.moco_v3_loss(a, b, b, a)[0],
       lambda a, b: t_moco_v3(a, b, b, a)),
      ("dino", lambda a, b: objectives.dino_loss(
          jnp.stack([a, b]), jnp.stack([b, a]), jnp.zeros(a.shape[1]))[0],
       lambda a, b: t_dino(torch.stack([a, b]), torch.stack([b, a]),
                           torch.zeros(a.shape[1]))),
      ("swav (P=100)", lambda a, b: objectives.swav_loss(
          jnp.stack([a, b]), jnp.asarray(_prototypes(a.shape[1])))[0],
       lambda a, b: t_swav(torch.stack([a, b]),
                           torch.from_numpy(_prototypes(a.shape[1])))),
      ("wmse", first(objectives.wmse_loss), t_wmse),
      ("mmcr", first(objectives.mmcr_loss), t_mmcr),
      ("vicreg+koleo", first(objectives.get_objective("vicreg+koleo").fn),
       t_vicreg_koleo),
      ("lejepa", lambda a, b: objectives.lejepa_loss(
          jnp.stack([a, b]), key=jax.random.key(0))[0],
       lambda a, b: t_lejepa(a, b, _sigreg_directions(a.shape[1]))),
      ("align_uniform", first(objectives.alignment_uniformity_loss), t_align_uniform),
      ("kozachenko_leonenko",
       lambda a, b: estimators.kozachenko_leonenko_entropy(a),
       lambda a, b: t_kozachenko_leonenko(a)),
  ]


def _median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def bench_size(n, k, repeats, warmup=1, only=None):
  rng = np.random.default_rng(0)
  a_np = rng.normal(size=(n, k)).astype(np.float32)
  b_np = (a_np + 0.5 * rng.normal(size=(n, k))).astype(np.float32)
  a_j, b_j = jnp.asarray(a_np), jnp.asarray(b_np)
  rows = []
  for name, f_jax, f_torch in _cases():
    if only is not None and name not in only:
      continue
    if name == "wmse" and n <= k:
      print(f"| {name:18s} | {n:5d} | {k:5d} | n/a (whitening needs n > k) |")
      continue
    step = jax.jit(jax.value_and_grad(f_jax, argnums=(0, 1)))

    def run_jax():
      return jax.block_until_ready(step(a_j, b_j))

    a_t = torch.from_numpy(a_np.copy()).requires_grad_(True)
    b_t = torch.from_numpy(b_np.copy()).requires_grad_(True)

    def run_torch():
      loss = f_torch(a_t, b_t)
      grads = torch.autograd.grad(loss, (a_t, b_t), allow_unused=True)
      return loss, grads

    for _ in range(warmup):
      val_j, _ = run_jax()
      val_t, _ = run_torch()
    val_t = float(val_t.detach())
    rel = abs(float(val_j) - val_t) / max(abs(val_t), 1e-6)
    ms_j = _median_ms(run_jax, repeats)
    ms_t = _median_ms(run_torch, repeats)
    rows.append((name, n, k, ms_j, ms_t, ms_t / ms_j, rel))
    print(f"| {name:18s} | {n:5d} | {k:5d} | {ms_j:10.2f} | {ms_t:10.2f} | "
          f"{ms_t / ms_j:6.2f} | {rel:8.1e} |", flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="only the smallest size (256, 128)")
  parser.add_argument("--large", action="store_true",
                      help="also (4096, 8192): minutes per row on a 2-core CPU")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per row (default 20, 5 for k >= 2048)")
  parser.add_argument("--rows", default=None,
                      help="comma-separated row names to run (default: all)")
  args = parser.parse_args(argv)
  rows = None if args.rows is None else set(args.rows.split(","))
  torch.set_num_threads(2)
  sizes = SIZES[:1] if args.quick else SIZES + (LARGE if args.large else [])
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch "
        f"{torch.__version__} (threads {torch.get_num_threads()}), float32, "
        f"loss + gradient w.r.t. both inputs, median ms")
  print("| objective          |     n |     k |   sslit ms |   torch ms | torch/sslit |"
        " rel. diff |")
  print("|---|---|---|---|---|---|---|")
  for n, k in sizes:
    repeats = args.repeats or (20 if k < 2048 else 5 if k < 8192 else 2)
    bench_size(n, k, repeats, only=rows)
  if not args.large and not args.quick:
    print("(4096, 8192) skipped: pass --large (several minutes per row on 2 CPU "
          "cores).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
