"""Float64 NumPy oracles for sslit.bound (slow, obvious; never imports sslit).

Forms the projector ``P = I − Z Z⁺`` explicitly with ``numpy.linalg.pinv`` (an SVD),
the opposite of the code under test (Gram matrix, never P).
"""

from __future__ import annotations

import numpy as np


def spec_pair() -> tuple[np.ndarray, np.ndarray]:
  """SPEC §6 oracle features: z_a[i,j] = sin(0.7i+1.3j)+0.1j, z_b[i,j] = cos(0.5i−0.9j)."""
  i = np.arange(8, dtype=np.float64)[:, None]
  j = np.arange(4, dtype=np.float64)[None, :]
  return np.sin(0.7 * i + 1.3 * j) + 0.1 * j, np.cos(0.5 * i - 0.9 * j)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
  out = np.zeros((len(y), num_classes))
  out[np.arange(len(y)), y] = 1.0
  return out


def design(z: np.ndarray, bias: bool) -> np.ndarray:
  z = np.asarray(z, np.float64)
  return np.hstack([z, np.ones((z.shape[0], 1))]) if bias else z


def projector(z: np.ndarray, *, bias: bool = False) -> np.ndarray:
  """``P = I − X X⁺`` with ``X = [Z, 1]`` if bias else ``Z``."""
  x = design(z, bias)
  return np.eye(x.shape[0]) - x @ np.linalg.pinv(x)


def label_residual(z, y, *, bias=False) -> float:
  return float(np.linalg.norm(projector(z, bias=bias) @ np.asarray(y, np.float64)))


def head(z, y, *, bias=False):
  """Minimum-norm least-squares head; returns (w [k, C], b [C])."""
  coef = np.linalg.pinv(design(z, bias)) @ np.asarray(y, np.float64)
  if bias:
    return coef[:-1], coef[-1]
  return coef, np.zeros(coef.shape[1])


def invariance(z_a, z_b) -> float:
  return float(np.mean(np.linalg.norm(np.asarray(z_a, np.float64) - z_b, axis=1)))


def bound(z_u_a, z_u_b, z_s, y_s, z_t, y_t, y_u=None, *, delta=0.05, bias=False):
  """All terms of the bound, by the formulas of docs/bound.md, in float64."""
  z_u_a, z_u_b, z_s, z_t = (np.asarray(a, np.float64) for a in (z_u_a, z_u_b, z_s, z_t))
  m, n = len(z_u_a), len(z_s)
  c_out = y_s.shape[1]
  w, b = head(z_s, y_s, bias=bias)
  spec = np.linalg.norm(w, 2)
  fro = np.linalg.norm(w)
  inv = invariance(z_u_a, z_u_b)
  res_u = np.sqrt(m) if y_u is None else label_residual(z_u_a, y_u, bias=bias)
  res_s = label_residual(z_s, y_s, bias=bias)
  d = z_u_a - z_u_b
  rad = np.sqrt(2 * c_out) * fro * np.sqrt(np.sum(d * d)) / m
  mu = z_s.mean(0) if bias else np.zeros(z_s.shape[1])
  radius = max(np.linalg.norm(a - mu, axis=1).max() for a in (z_s, z_u_a, z_u_b))
  offset = np.linalg.norm(y_s.mean(0)) if bias else 0.0
  c = max(spec * radius + offset + 1.0, spec * np.linalg.norm(d, axis=1).max())
  q = c * (np.sqrt(np.log(2 / delta) / (2 * m)) + np.sqrt(np.log(2 / delta) / (2 * n)))
  terms = {
      "invariance_term": spec * inv,
      "unlabeled_term": 2 * res_u / np.sqrt(m),
      "labeled_term": res_s / np.sqrt(n),
      "complexity_term": 2 * rad,
      "confidence_term": q,
  }
  out = dict(terms)
  out["bound"] = sum(terms.values())
  out["test_loss"] = float(np.mean(np.linalg.norm(z_t @ w + b - y_t, axis=1)))
  out["train_loss"] = float(np.mean(np.linalg.norm(z_s @ w + b - y_s, axis=1)))
  out.update(invariance=inv, head_norm=spec, head_norm_fro=fro, loss_range=c,
             residual_unlabeled=res_u / np.sqrt(m), residual_labeled=res_s / np.sqrt(n),
             rademacher=rad * np.sqrt(m))
  return out
