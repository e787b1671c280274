"""Float64 NumPy oracles for ``sslit.mixture`` (slow, obvious, sharing no code with it).

Everything pair by pair in explicit loops: divergences from ``np.linalg.solve`` and
``slogdet`` of the ``k × k`` matrices (no traces, no Cholesky factors of the pairs),
and a Monte-Carlo entropy from a sampler and log-density written here.
"""

from __future__ import annotations

import numpy as np


def _logdet(a):
  sign, value = np.linalg.slogdet(a)
  assert sign > 0, "the oracle expects positive-definite covariances"
  return value


def kl(m0, c0, m1, c1):
  """``KL(N(m0, c0) ‖ N(m1, c1))``."""
  k = len(m0)
  d = np.asarray(m1, np.float64) - m0
  return 0.5 * (np.trace(np.linalg.solve(c1, c0)) + d @ np.linalg.solve(c1, d) - k
                + _logdet(c1) - _logdet(c0))


def bhattacharyya(m0, c0, m1, c1):
  """``−log ∫ √(p q)`` for two Gaussians."""
  c = 0.5 * (np.asarray(c0, np.float64) + c1)
  d = np.asarray(m1, np.float64) - m0
  return (d @ np.linalg.solve(c, d) / 8 + 0.5 * _logdet(c)
          - 0.25 * _logdet(c0) - 0.25 * _logdet(c1))


def divergences(means, covs, divergence):
  """``[n, n]`` matrix of ``divergence(p_i, p_j)``."""
  n = len(means)
  return np.array([[divergence(means[i], covs[i], means[j], covs[j])
                    for j in range(n)] for i in range(n)])


def pairwise_bound(means, covs, divergence):
  """Kolchinsky–Tracey ``mean_i H(p_i) − mean_i log mean_j exp(−D_ij)``."""
  means, covs = np.asarray(means, np.float64), np.asarray(covs, np.float64)
  n, k = means.shape
  h = np.mean([0.5 * (k * np.log(2 * np.pi * np.e) + _logdet(c)) for c in covs])
  d = divergences(means, covs, divergence)
  rows = [np.log(np.mean(np.exp(-(r - r.min())))) - r.min() for r in d]
  return h - np.mean(rows)


def sample(rng, means, covs, per_component):
  """``per_component`` draws from every component (stratified), ``[n · m, k]``."""
  out = []
  for m, c in zip(np.asarray(means, np.float64), np.asarray(covs, np.float64)):
    w, v = np.linalg.eigh(c)
    root = v * np.sqrt(np.maximum(w, 0.0))
    out.append(m + rng.standard_normal((per_component, len(m))) @ root.T)
  return np.concatenate(out)


def log_density(z, means, covs):
  """``log (1/n) Σ_j N(z; μ_j, Σ_j)`` for rows of ``z [m, k]``."""
  means, covs = np.asarray(means, np.float64), np.asarray(covs, np.float64)
  n, k = means.shape
  logs = []
  for m, c in zip(means, covs):
    d = z - m
    quad = np.einsum("ia,ia->i", d, np.linalg.solve(c, d.T).T)
    logs.append(-0.5 * (quad + _logdet(c) + k * np.log(2 * np.pi)))
  logs = np.stack(logs)
  top = logs.max(axis=0)
  return top + np.log(np.mean(np.exp(logs - top), axis=0))


def entropy_mc(seed, means, covs, per_component):
  """Monte-Carlo ``H(p) = −E log p(z)`` and its standard error."""
  z = sample(np.random.default_rng(seed), means, covs, per_component)
  n = len(means)
  # Stratified: the estimate is the mean of the n per-component means.
  per = -log_density(z, means, covs).reshape(n, per_component)
  return per.mean(), np.sqrt(np.sum(per.var(axis=1, ddof=1)) / per_component) / n
