"""Float64 NumPy oracles for ``sslit.objectives`` (slow and obvious on purpose).

Written from the formulas (SPEC.md section 4 and the reference implementations of
VICReg, SimCLR, Barlow Twins and BYOL; for SimSiam, MoCo v3, DINO, SwAV, W-MSE, MMCR
and KoLeo from the equations and pseudo-code of their papers) with explicit loops
where a loop is the clearest statement, and without importing sslit: a reference must not share code
with what it checks. Every function returns a dict of float64 scalars: ``loss`` and
one entry per term, named as in the ``aux`` dicts of ``sslit.objectives``.
"""

from __future__ import annotations

import numpy as np


def _cov(z):
  """Unbiased covariance, by the definition, one entry at a time."""
  z = np.asarray(z, np.float64)
  n, k = z.shape
  mu = z.sum(0) / n
  c = np.zeros((k, k))
  for i in range(k):
    for j in range(k):
      c[i, j] = np.sum((z[:, i] - mu[i]) * (z[:, j] - mu[j])) / (n - 1)
  return c


def _offdiag_sq_sum(c):
  k = c.shape[0]
  return sum(c[i, j] ** 2 for i in range(k) for j in range(k) if i != j)


def _hinge(c, gamma, eps):
  std = np.sqrt(np.diag(c) + eps)
  return np.mean(np.maximum(0.0, gamma - std))


def vicreg(z_a, z_b, *, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, gamma=1.0,
           eps=1e-4):
  """VICReg, official-code conventions (Bardes et al. 2022, facebookresearch/vicreg)."""
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  k = z_a.shape[1]
  inv = np.mean((z_a - z_b) ** 2)
  c_a, c_b = _cov(z_a), _cov(z_b)
  var = _hinge(c_a, gamma, eps) / 2 + _hinge(c_b, gamma, eps) / 2
  cov = _offdiag_sq_sum(c_a) / k + _offdiag_sq_sum(c_b) / k
  loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
  return dict(loss=loss, invariance=inv, variance=var, covariance=cov)


def vicreg_paper(z_a, z_b, *, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,
                 gamma=1.0, eps=1e-4):
  """VICReg written with the covariance of the stacked batch [Z; Z'] (2n rows)."""
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  k = z_a.shape[1]
  inv = np.mean((z_a - z_b) ** 2)
  c = _cov(np.concatenate([z_a, z_b], axis=0))
  var = _hinge(c, gamma, eps)
  cov = _offdiag_sq_sum(c) / k
  loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
  return dict(loss=loss, invariance=inv, variance=var, covariance=cov)


def infonce(z_a, z_b, *, temperature=0.1):
  """SimCLR NT-Xent: 2n anchors, one positive, 2n - 2 negatives each, cosine."""
  z = np.concatenate([np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)])
  m = z.shape[0]
  n = m // 2
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  pos_terms, lse_terms = [], []
  for i in range(m):
    p = (i + n) % m
    s = [float(u[i] @ u[j]) / temperature for j in range(m) if j != i]
    top = max(s)
    lse = top + np.log(sum(np.exp(v - top) for v in s))
    pos_terms.append(-float(u[i] @ u[p]) / temperature)
    lse_terms.append(lse)
  inv, lse = np.mean(pos_terms), np.mean(lse_terms)
  return dict(loss=inv + lse, invariance=inv, log_sum_exp=lse)


def barlow_twins(z_a, z_b, *, lambda_offdiag=0.0051, eps=1e-5):
  """Barlow Twins: batch-standardised views (biased variance, BatchNorm style)."""
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  n, k = z_a.shape

  def standardise(z):
    mu = z.mean(0)
    var = ((z - mu) ** 2).mean(0)
    return (z - mu) / np.sqrt(var + eps)

  a, b = standardise(z_a), standardise(z_b)
  c = np.zeros((k, k))
  for i in range(k):
    for j in range(k):
      c[i, j] = np.sum(a[:, i] * b[:, j]) / n
  on = sum((1 - c[i, i]) ** 2 for i in range(k))
  off = _offdiag_sq_sum(c)
  return dict(loss=on + lambda_offdiag * off, on_diagonal=on, off_diagonal=off)


def byol(p_a, z_b):
  """BYOL regression loss 2 - 2 cos, batch mean."""
  p_a = np.asarray(p_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  cos = [p @ z / (np.linalg.norm(p) * np.linalg.norm(z)) for p, z in zip(p_a, z_b)]
  loss = np.mean([2 - 2 * c for c in cos])
  return dict(loss=loss, invariance=loss)


def logdet_entropy(z, *, beta=1.0):
  """LogDet entropy 1/2 log det(I + beta C), C the unbiased covariance."""
  c = _cov(z)
  sign, val = np.linalg.slogdet(np.eye(c.shape[0]) + beta * c)
  assert sign > 0
  return 0.5 * val


def pairwise_entropy_isotropic(means, var, *, distance="kl"):
  """Kolchinsky-Tracey estimate for an equal-weight mixture N(means[i], var I).

  H = H(component) - (1/n) sum_i log (1/n) sum_j exp(-D_ij), self-pairs included;
  D_KL = |mu_i - mu_j|^2 / (2 var), D_Bhattacharyya = |mu_i - mu_j|^2 / (8 var).
  """
  mu = np.asarray(means, np.float64)
  n, k = mu.shape
  h_comp = 0.5 * k * np.log(2 * np.pi * np.e * var)
  denom = {"kl": 2.0, "bhattacharyya": 8.0}[distance]
  total = 0.0
  for i in range(n):
    s = sum(np.exp(-np.sum((mu[i] - mu[j]) ** 2) / (denom * var)) for j in range(n))
    total += np.log(s / n)
  return h_comp - total / n


def koleo(z, *, eps=1e-8):
  """DINOv2's KoLeo: -mean_i log(min_{j != i} |u_i - u_j| + eps), u = z / |z|."""
  z = np.asarray(z, np.float64)
  u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), eps)
  n = len(u)
  rho = [min(np.linalg.norm(u[i] - u[j]) for j in range(n) if j != i)
         for i in range(n)]
  return -np.mean(np.log(np.array(rho) + eps))


def _entropies(e_a, e_b, entropy, beta, pairwise_variance):
  k = e_a.shape[1]
  if entropy == "koleo":
    return -koleo(e_a), -koleo(e_b), 0.0
  if entropy == "logdet":
    return logdet_entropy(e_a, beta=beta), logdet_entropy(e_b, beta=beta), 0.0
  dist = entropy[len("pairwise_"):]
  var = float(k) if pairwise_variance is None else pairwise_variance
  return (pairwise_entropy_isotropic(e_a, var, distance=dist),
          pairwise_entropy_isotropic(e_b, var, distance=dist),
          0.5 * k * np.log(2 * np.pi * np.e * var))


def byol_information(p_a, p_b, t_a, t_b, z_a, z_b, *, entropy="logdet",
                     sim_coeff=1.0, entropy_coeff, beta=1.0, pairwise_variance=None,
                     normalize=True):
  """BYOL (both directions) minus the mean entropy of the online projections."""
  inv = byol(p_a, t_b)["loss"] + byol(p_b, t_a)["loss"]
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  k = z_a.shape[1]
  if normalize:
    z_a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True) * np.sqrt(k)
    z_b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True) * np.sqrt(k)
  h_a, h_b, const = _entropies(z_a, z_b, entropy, beta, pairwise_variance)
  ent = (h_a + h_b) / 2
  return dict(loss=sim_coeff * inv - entropy_coeff * (ent - const), invariance=inv,
              entropy=ent, entropy_a=h_a, entropy_b=h_b)


def information(z_a, z_b, *, entropy="logdet", sim_coeff, entropy_coeff,
                keep_variance_covariance=False, std_coeff=25.0, cov_coeff=1.0,
                gamma=1.0, eps=1e-4, invariance="mse", beta=1.0,
                pairwise_variance=None, normalize=False):
  """The information-theoretic family: sim * invariance - ent * (H_a + H_b) / 2."""
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  n, k = z_a.shape
  if invariance == "mse":
    inv = np.mean((z_a - z_b) ** 2)
  elif invariance == "squared_distance":
    inv = np.mean(np.sum((z_a - z_b) ** 2, axis=1))
  else:  # cosine
    inv = byol(z_a, z_b)["loss"]
  if normalize:
    e_a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True) * np.sqrt(k)
    e_b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True) * np.sqrt(k)
  else:
    e_a, e_b = z_a, z_b
  h_a, h_b, const = _entropies(e_a, e_b, entropy, beta, pairwise_variance)
  ent = (h_a + h_b) / 2
  out = dict(invariance=inv, entropy=ent, entropy_a=h_a, entropy_b=h_b)
  # The loss drops the z-independent component entropy of the pairwise estimate.
  loss = sim_coeff * inv - entropy_coeff * (ent - const)
  if keep_variance_covariance:
    v = vicreg(z_a, z_b, gamma=gamma, eps=eps)
    loss += std_coeff * v["variance"] + cov_coeff * v["covariance"]
    out.update(variance=v["variance"], covariance=v["covariance"])
  out["loss"] = loss
  return out


def _unit(x):
  return x / np.linalg.norm(x)


def _log_softmax(x):
  top = np.max(x)
  return x - top - np.log(np.sum(np.exp(x - top)))


def simsiam(p_a, p_b, z_a, z_b):
  """SimSiam (Chen & He 2021, Algorithm 1): L = D(p1, z2)/2 + D(p2, z1)/2,
  D(p, z) = -<p/|p|, z/|z|>, batch mean."""
  def d(p, z):
    return np.mean([-_unit(pi) @ _unit(zi) for pi, zi in
                    zip(np.asarray(p, np.float64), np.asarray(z, np.float64))])
  loss = d(p_a, z_b) / 2 + d(p_b, z_a) / 2
  return dict(loss=loss, invariance=loss)


def moco_v3(q_a, q_b, k_a, k_b, *, temperature=0.2):
  """MoCo v3 (Chen, Xie, He 2021, Algorithm 1): ctr(q1, k2) + ctr(q2, k1),
  ctr = CrossEntropy(q k^T / t, labels = arange(n)) * 2t."""
  def ctr(q, k):
    q = [_unit(v) for v in np.asarray(q, np.float64)]
    k = [_unit(v) for v in np.asarray(k, np.float64)]
    pos, lse = [], []
    for i, qi in enumerate(q):
      logits = np.array([qi @ kj / temperature for kj in k])
      pos.append(-logits[i])
      lse.append(logits[i] - _log_softmax(logits)[i])
    return np.mean(pos), np.mean(lse)
  (i1, l1), (i2, l2) = ctr(q_a, k_b), ctr(q_b, k_a)
  inv, lse = i1 + i2, l1 + l2
  return dict(loss=2 * temperature * (inv + lse), invariance=inv, log_sum_exp=lse)


def _row_entropies(probs):
  """(H(mean p), mean H(p)) over a list of distributions."""
  probs = np.asarray(probs)
  h = lambda p: -sum(x * np.log(x) for x in p if x > 0)
  return h(probs.mean(0)), np.mean([h(p) for p in probs])


def dino(student, teacher, center, *, student_temperature=0.1,
         teacher_temperature=0.07, center_momentum=0.9):
  """DINO (Caron et al. 2021, Algorithm 1 and the multi-crop loss of its code):
  every teacher (global) crop iq against every student crop v != iq."""
  student = np.asarray(student, np.float64)
  teacher = np.asarray(teacher, np.float64)
  center = np.asarray(center, np.float64)
  g, n, _ = teacher.shape
  m = student.shape[0]
  q = np.array([[np.exp(_log_softmax((teacher[i, r] - center) / teacher_temperature))
                 for r in range(n)] for i in range(g)])
  total, terms = 0.0, 0
  for iq in range(g):
    for v in range(m):
      if v == iq:
        continue
      total += np.mean([-q[iq, r] @ _log_softmax(student[v, r] / student_temperature)
                        for r in range(n)])
      terms += 1
  loss = total / terms
  new_center = (center_momentum * center
                + (1 - center_momentum) * teacher.reshape(g * n, -1).mean(0))
  marginal, conditional = _row_entropies(q.reshape(g * n, -1))
  return dict(loss=loss, invariance=loss, marginal_entropy=marginal,
              conditional_entropy=conditional, center=new_center)


def sinkhorn(scores, *, epsilon=0.05, num_iterations=3):
  """SwAV's Sinkhorn-Knopp (Caron et al. 2020, Algorithm 1 / distributed_sinkhorn),
  in the exp domain with Q of shape [P, n] as in the paper; returns [n, P]."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T
  p, n = q.shape
  q /= q.sum()
  for _ in range(num_iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= p
    q /= q.sum(axis=0, keepdims=True)
    q /= n
  return (q * n).T


def swav(z, prototypes, *, num_global=2, temperature=0.1, epsilon=0.05,
         sinkhorn_iterations=3, code_views=None, queue=None):
  """SwAV swapped prediction with multi-crop (Caron et al. 2020, section 3.1).

  ``code_views``: the views the codes are computed from (default ``z``); passing
  fixed ones holds the codes constant, as SwAV's stop-gradient does. ``queue``
  ``[num_global, L, k]``: as in the paper's main_swav.py, the queue's scores are
  put before the batch's, Sinkhorn runs over both, and the last n codes are kept.
  """
  z = np.asarray(z, np.float64)
  c = np.asarray(prototypes, np.float64)
  m, n, _ = z.shape
  scores = np.array([[c @ _unit(z[v, r]) for r in range(n)] for v in range(m)])
  cz = z if code_views is None else np.asarray(code_views, np.float64)
  loss = 0.0
  for i in range(num_global):
    code_scores = np.array([c @ _unit(cz[i, r]) for r in range(n)])
    if queue is not None:
      past = np.asarray(queue, np.float64)[i]
      code_scores = np.concatenate(
          [np.array([c @ _unit(row) for row in past]), code_scores])
    q = sinkhorn(code_scores, epsilon=epsilon,
                 num_iterations=sinkhorn_iterations)[-n:]
    sub = 0.0
    for v in range(m):
      if v != i:
        sub += np.mean([-q[r] @ _log_softmax(scores[v, r] / temperature)
                        for r in range(n)])
    loss += sub / (m - 1)
  loss /= num_global
  probs = [np.exp(_log_softmax(s / temperature)) for s in scores.reshape(m * n, -1)]
  marginal, conditional = _row_entropies(probs)
  return dict(loss=loss, invariance=loss, marginal_entropy=marginal,
              conditional_entropy=conditional)


def wmse(z_a, z_b, *, whitening_size=None, eps=0.0):
  """W-MSE (Ermolov et al. 2021): W = L^{-1}, L L^T the (shrunk) covariance of each
  group of rows, per view; loss = mean |x_a/|x_a| - x_b/|x_b||^2."""
  def whiten(z):
    z = np.asarray(z, np.float64)
    n, k = z.shape
    w = whitening_size or n
    out = np.zeros_like(z)
    for start in range(0, n, w):
      g = z[start:start + w]
      cov = (1 - eps) * _cov(g) + eps * np.eye(k)
      out[start:start + w] = (g - g.mean(0)) @ np.linalg.inv(np.linalg.cholesky(cov)).T
    return out
  x_a, x_b = whiten(z_a), whiten(z_b)
  loss = np.mean([np.sum((_unit(a) - _unit(b)) ** 2) for a, b in zip(x_a, x_b)])
  return dict(loss=loss, invariance=loss)


def mmcr(*views, local_coeff=0.0):
  """MMCR (Yerxa et al. 2023): -|C|_* + lambda mean_i |Z_i|_*, C the centroids."""
  u = np.array([[_unit(r) for r in np.asarray(v, np.float64)] for v in views])
  m, n, _ = u.shape
  cent = u.mean(0)
  nuc = np.sum(np.linalg.svd(cent, compute_uv=False))
  local = np.mean([np.sum(np.linalg.svd(u[:, i], compute_uv=False))
                   for i in range(n)])
  return dict(loss=-nuc + local_coeff * local, nuclear_norm=nuc,
              local_nuclear_norm=local,
              centroid_norm=np.mean(np.linalg.norm(cent, axis=1)))


def spec_views():
  """The SPEC section 4 example: 8 x 4 views."""
  i = np.arange(8)[:, None]
  j = np.arange(4)[None, :]
  return np.sin(0.7 * i + 1.3 * j) + 0.1 * j, np.cos(0.5 * i - 0.9 * j)


# ---------------------------------------------------------------------------------
# LeJEPA / SIGReg (Balestriero & LeCun 2025, arXiv 2511.08544), from the formulas:
# T = n * int |phi_n(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt on [-t_max, t_max], trapezoids.


def epps_pulley(x, *, num_points=17, t_max=5.0):
  """Per column of ``x [n, M]``, with the complex empirical characteristic function
  and the trapezoidal rule written out interval by interval."""
  x = np.asarray(x, np.float64)
  n, m = x.shape
  t = np.array([-t_max + 2.0 * t_max * j / (num_points - 1) for j in range(num_points)])
  out = np.zeros(m)
  for col in range(m):
    f = []
    for tj in t:
      ecf = np.mean(np.exp(1j * tj * x[:, col]))
      gauss = np.exp(-tj * tj / 2)
      f.append(abs(ecf - gauss) ** 2 * gauss)
    integral = sum((t[j + 1] - t[j]) * (f[j] + f[j + 1]) / 2
                   for j in range(num_points - 1))
    out[col] = n * integral
  return out


def sigreg(z, directions, *, num_points=17, t_max=5.0):
  z, a = np.asarray(z, np.float64), np.asarray(directions, np.float64)
  return float(np.mean(epps_pulley(z @ a, num_points=num_points, t_max=t_max)))


def lejepa(z, directions, *, num_global=2, lambd=0.05, num_points=17, t_max=5.0):
  """``(loss, invariance, sigreg)`` of stacked views ``z [m, n, k]``, loops over views
  and samples."""
  z = np.asarray(z, np.float64)
  m, n, _ = z.shape
  inv = 0.0
  for i in range(n):
    c = sum(z[g, i] for g in range(num_global)) / num_global
    inv += sum(np.mean((c - z[v, i]) ** 2) for v in range(m))
  inv /= m * n
  reg = np.mean([sigreg(z[v], directions, num_points=num_points, t_max=t_max)
                 for v in range(m)])
  return (1 - lambd) * inv + lambd * reg, inv, reg


# ---------------------------------------------------------------------------------
# Alignment and uniformity (Wang & Isola 2020), from the paper's definitions.


def uniformity(u, *, t=2.0):
  """``log`` of the mean over pairs ``i < j`` of ``exp(-t |u_i - u_j|^2)``."""
  u = np.asarray(u, np.float64)
  n = u.shape[0]
  vals = [np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
  return float(np.log(np.mean(vals)))


def alignment_uniformity(z_a, z_b, *, alpha=2.0, t=2.0, uniformity_weight=1.0):
  """``(loss, alignment, uniformity)`` on unit-norm rows, loops over samples."""
  unit = lambda z: np.stack([r / np.linalg.norm(r) for r in np.asarray(z, np.float64)])
  u_a, u_b = unit(z_a), unit(z_b)
  align = np.mean([np.linalg.norm(u_a[i] - u_b[i]) ** alpha for i in range(len(u_a))])
  unif = (uniformity(u_a, t=t) + uniformity(u_b, t=t)) / 2
  return align + uniformity_weight * unif, align, unif
