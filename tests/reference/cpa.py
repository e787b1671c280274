"""Float64 NumPy oracles for sslit.cpa (slow, obvious, sharing no code with it)."""

from __future__ import annotations

import numpy as np

from tests.reference import estimators as ref_est


def activation(h, kind, negative_slope=0.01):
  if kind == "relu":
    return np.maximum(h, 0.0)
  if kind == "leaky_relu":
    return np.where(h > 0, h, negative_slope * h)
  if kind == "abs":
    return np.abs(h)
  raise ValueError(kind)


def activation_slope(h, kind, negative_slope=0.01):
  if kind == "relu":
    return (h > 0).astype(np.float64)
  if kind == "leaky_relu":
    return np.where(h > 0, 1.0, negative_slope)
  if kind == "abs":
    return np.sign(h)
  raise ValueError(kind)


def mlp_forward(layers, x, kind):
  """Output and list of pre-activations (hidden layers) of one input ``x [d]``."""
  h = np.asarray(x, np.float64)
  pres = []
  for i, (w, b) in enumerate(layers):
    z = h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    if i < len(layers) - 1:
      pres.append(z)
      h = activation(z, kind)
  return z, pres


def mlp_slope(layers, x, kind):
  """``W_Lᵀ D_{L-1} ... D_1 W_1ᵀ`` multiplied left to right, ``[k, d]``."""
  _, pres = mlp_forward(layers, x, kind)
  a = np.asarray(layers[-1][0], np.float64).T
  for pre, (w, _) in zip(reversed(pres), reversed(layers[:-1])):
    a = (a * activation_slope(pre, kind)[None, :]) @ np.asarray(w, np.float64).T
  return a


def mlp_pattern(layers, x, kind):
  """Sign pattern (bool vector) of one input."""
  _, pres = mlp_forward(layers, x, kind)
  return np.concatenate([p > 0 for p in pres])


def count_unique(patterns):
  return len({bytes(np.packbits(np.asarray(p, bool))) for p in patterns})


def conditional_entropy(a, sigma, rtol=1e-9):
  """½ log pdet(2πe σ² A Aᵀ) from the eigenvalues of A Aᵀ above ``rtol·max``."""
  a = np.asarray(a, np.float64)
  ev = np.linalg.eigvalsh(a @ a.T)
  keep = ev[ev > rtol * ev.max()]
  r = keep.size
  return 0.5 * r * np.log(2 * np.pi * np.e * sigma**2) + 0.5 * np.log(keep).sum(), r


def output_covariance(a, cov_x):
  a = np.asarray(a, np.float64)
  return a @ np.asarray(cov_x, np.float64) @ a.T


def separation_ratio(means, covs):
  means = np.asarray(means, np.float64)
  n = means.shape[0]
  dists = [np.linalg.norm(means[i] - means[j]) for i in range(n)
           for j in range(i + 1, n)]
  covs = np.asarray(covs, np.float64)
  if covs.ndim == 0:
    var = float(covs)
  elif covs.ndim == 1:
    var = covs.max()
  else:
    var = max(np.linalg.eigvalsh(c).max() for c in covs)
  return np.median(dists) / np.sqrt(var)


def representation_information(means, slopes, sigma, output_noise=0.0,
                               relative_output_noise=0.0):
  """The mixture quantities with Σ_n = σ² A_n A_nᵀ + τ² I built explicitly (τ > 0).

  ``h_cond`` from ``slogdet`` of each ``2πe Σ_n``; the Kolchinsky–Tracey bounds pair
  by pair (``tests.reference.estimators``); τ from ``relative_output_noise`` as
  ``ρ σ sqrt(mean_n ‖A_n‖_F² / k)``.
  """
  means = np.asarray(means, np.float64)
  a = np.asarray(slopes, np.float64)
  n, k = means.shape
  tau = output_noise
  if relative_output_noise:
    tau = relative_output_noise * sigma * np.sqrt(
        np.mean([np.sum(ai**2) for ai in a]) / k)
  assert tau > 0, "the explicit oracle needs positive-definite covariances"
  covs = np.stack([sigma**2 * ai @ ai.T + tau**2 * np.eye(k) for ai in a])
  h_cond = np.mean([0.5 * np.linalg.slogdet(2 * np.pi * np.e * c)[1] for c in covs])
  h_lower = ref_est.pairwise_entropy(means, covs, "bhattacharyya")
  h_upper = ref_est.pairwise_entropy(means, covs, "kl")
  mu = means - means.mean(0)
  cov_z = mu.T @ mu / n + covs.mean(0)
  return {
      "h_cond": h_cond,
      "h_lower": h_lower,
      "h_upper": h_upper,
      "mi_lower": h_lower - h_cond,
      "mi_upper": h_upper - h_cond,
      "gaussian_surrogate": 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov_z)[1],
      "separation_ratio": separation_ratio(means, covs),
      "output_noise": tau,
  }
