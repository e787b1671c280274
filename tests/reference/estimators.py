"""Float64 NumPy/SciPy oracles for ``sslit.estimators`` (slow and obvious).

Derivations deliberately differ from the code under test: covariances with
``np.cov``, determinants with ``slogdet`` of the ``k × k`` matrix (never the Gram
form), divergences pair by pair in explicit loops, the Chernoff coefficient from
the Gaussian log-partition function in natural parameters, Monte-Carlo densities
from ``scipy.stats.multivariate_normal``.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats


def _cov(z):
  return np.atleast_2d(np.cov(np.asarray(z, np.float64), rowvar=False, ddof=1))


def _logdet(a):
  sign, ld = np.linalg.slogdet(a)
  assert sign > 0, "reference expects a positive-definite matrix"
  return ld


def gaussian_entropy(cov):
  cov = np.asarray(cov, np.float64)
  flat = cov.reshape(-1, cov.shape[-1], cov.shape[-1])
  out = [stats.multivariate_normal(mean=np.zeros(c.shape[0]), cov=c).entropy()
         for c in flat]
  return np.array(out).reshape(cov.shape[:-2])


def logdet_entropy(z, beta=1.0):
  k = np.shape(z)[1]
  return 0.5 * _logdet(np.eye(k) + beta * _cov(z))


def gaussian_mutual_information(cov, split):
  cov = np.asarray(cov, np.float64)
  a, b = cov[:split, :split], cov[split:, split:]
  return 0.5 * (_logdet(a) + _logdet(b) - _logdet(cov))


def barlow_gaussian_mi(rho):
  rho = np.asarray(rho, np.float64)
  return -0.5 * np.sum(np.log(1.0 - rho**2))


def gaussian_surrogate_entropy(z):
  c = _cov(z)
  k = c.shape[0]
  if np.linalg.matrix_rank(c) < k:
    return -np.inf
  return 0.5 * (k * np.log(2 * np.pi * np.e) + _logdet(c))


def correlation_logdet(z):
  c = _cov(z)
  if np.linalg.matrix_rank(c) < c.shape[0]:
    return -np.inf
  d = 1.0 / np.sqrt(np.diag(c))
  return _logdet(c * d[:, None] * d[None, :])


def effective_rank(z):
  z = np.asarray(z, np.float64)
  s = np.linalg.svd(z - z.mean(0), compute_uv=False)
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def full_covs(covs, n, k):
  """Any accepted covariance form as an explicit ``[n, k, k]`` array."""
  covs = np.asarray(covs, np.float64)
  if covs.ndim == 0:
    covs = np.full(n, covs)
  if covs.ndim == 1:
    return covs[:, None, None] * np.eye(k)[None]
  return covs


def kl(m0, c0, m1, c1):
  """KL(N(m0, c0) ‖ N(m1, c1)), textbook formula."""
  k = len(m0)
  inv1 = np.linalg.inv(c1)
  d = m1 - m0
  return 0.5 * (np.trace(inv1 @ c0) + d @ inv1 @ d - k + _logdet(c1) - _logdet(c0))


def _log_partition(eta, lam):
  """Log-normaliser of exp(ηᵀx − ½ xᵀΛx) (natural parameters of a Gaussian)."""
  k = len(eta)
  return 0.5 * (eta @ np.linalg.solve(lam, eta) - _logdet(lam) + k * np.log(2 * np.pi))


def chernoff(m0, c0, m1, c1, alpha):
  """−log ∫ p0^α p1^(1−α) from the log-partition function of the Gaussian family."""
  lam0, lam1 = np.linalg.inv(c0), np.linalg.inv(c1)
  eta0, eta1 = lam0 @ m0, lam1 @ m1
  log_integral = (_log_partition(alpha * eta0 + (1 - alpha) * eta1,
                                 alpha * lam0 + (1 - alpha) * lam1)
                  - alpha * _log_partition(eta0, lam0)
                  - (1 - alpha) * _log_partition(eta1, lam1))
  return -log_integral


def pairwise_entropy(means, covs, distance="kl", alpha=0.5):
  means = np.asarray(means, np.float64)
  n, k = means.shape
  c = full_covs(covs, n, k)
  if distance == "bhattacharyya":
    alpha = 0.5
  h = np.mean([gaussian_entropy(ci) for ci in c])
  total = 0.0
  for i in range(n):
    terms = []
    for j in range(n):
      if distance == "kl":
        d = kl(means[i], c[i], means[j], c[j])
      else:
        d = chernoff(means[i], c[i], means[j], c[j], alpha)
      terms.append(-d)
    total += special.logsumexp(terms) - np.log(n)
  return h - total / n


def mixture_log_density(x, means, covs):
  """log p(x) of the equal-weight mixture at points x [m, k]."""
  means = np.asarray(means, np.float64)
  n, k = means.shape
  c = full_covs(covs, n, k)
  comps = np.stack([stats.multivariate_normal(means[j], c[j]).logpdf(x)
                    for j in range(n)], axis=-1)
  return special.logsumexp(comps, axis=-1) - np.log(n)


def mixture_entropy_mc(seed, means, covs, num_samples):
  """(estimate, standard error) from iid draws of the mixture."""
  rng = np.random.default_rng(seed)
  means = np.asarray(means, np.float64)
  n, k = means.shape
  c = full_covs(covs, n, k)
  comp = rng.integers(0, n, size=num_samples)
  chol = np.linalg.cholesky(c)
  eps = rng.standard_normal((num_samples, k))
  x = means[comp] + np.einsum("mab,mb->ma", chol[comp], eps)
  lp = mixture_log_density(x, means, covs)
  return -lp.mean(), lp.std() / np.sqrt(num_samples)


def mixture_conditional_entropy(covs, k):
  covs = np.asarray(covs, np.float64)
  n = 1 if covs.ndim == 0 else covs.shape[0]
  return float(np.mean(gaussian_entropy(full_covs(covs, n, k))))


def kozachenko_leonenko(x, k=1):
  """Kozachenko-Leonenko estimate (Kraskov et al. 2004, eq. 20, Euclidean norm):
  psi(n) - psi(k) + log c_d + (d/n) sum log eps_i, eps_i twice the distance to the
  k-th neighbour and c_d = pi^{d/2} / Gamma(1 + d/2) / 2^d."""
  x = np.asarray(x, np.float64)
  n, d = x.shape
  log_eps = []
  for i in range(n):
    dist = np.sort(np.sqrt(np.sum((x - x[i]) ** 2, axis=1)))
    log_eps.append(np.log(2 * dist[k]))  # dist[0] = 0 is the point itself
  log_cd = 0.5 * d * np.log(np.pi) - special.gammaln(1 + d / 2) - d * np.log(2)
  return special.digamma(n) - special.digamma(k) + log_cd + d * np.mean(log_eps)
