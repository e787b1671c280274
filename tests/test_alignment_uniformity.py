"""sslit.objectives.alignment_uniformity against a float64 oracle from Wang & Isola's
definitions, its invariances, and its relation to the project's pairwise entropy
estimate (docs/objectives.md)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslit import estimators
from sslit import objectives as obj
from tests.reference import objectives as ref


@pytest.mark.parametrize("alpha, t, weight", [(2.0, 2.0, 1.0), (1.5, 0.7, 0.3)])
def test_matches_the_oracle(alpha, t, weight, rng, x64):
  z_a, z_b = rng.normal(size=(10, 5)), rng.normal(size=(10, 5))
  loss, aux = obj.alignment_uniformity_loss(jnp.asarray(z_a), jnp.asarray(z_b),
                                            alpha=alpha, t=t, uniformity_weight=weight)
  want, align, unif = ref.alignment_uniformity(z_a, z_b, alpha=alpha, t=t,
                                               uniformity_weight=weight)
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  np.testing.assert_allclose(aux["alignment"], align, rtol=1e-10)
  np.testing.assert_allclose(aux["uniformity"], unif, rtol=1e-10)
  assert obj.get_objective("align_uniform").kind == "pair"


def test_invariances_and_extremes(rng, x64):
  z_a, z_b = (jnp.asarray(rng.normal(size=(12, 4))) for _ in range(2))
  loss, _ = obj.alignment_uniformity_loss(z_a, z_b)
  perm = rng.permutation(12)
  np.testing.assert_allclose(obj.alignment_uniformity_loss(z_a[perm], z_b[perm])[0],
                             loss, rtol=1e-10)
  np.testing.assert_allclose(obj.alignment_uniformity_loss(z_b, z_a)[0], loss, rtol=1e-10)
  np.testing.assert_allclose(obj.alignment_uniformity_loss(3.0 * z_a, 0.5 * z_b)[0],
                             loss, rtol=1e-10)  # the rows are normalised
  # Collapse: every distance 0, uniformity log 1 = 0, its maximum; identical views
  # align perfectly.
  same = jnp.ones((6, 3))
  _, aux = obj.alignment_uniformity_loss(same, same)
  assert float(aux["uniformity"]) == pytest.approx(0.0, abs=1e-12)
  assert float(aux["alignment"]) == 0.0
  grads = jax.grad(lambda a: obj.alignment_uniformity_loss(a, same)[0])(same)
  assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("t", [0.5, 2.0])
def test_uniformity_lower_bounds_the_bhattacharyya_pairwise_estimate(t, rng, x64):
  # With the self-pairs included, U' = log(1/n + (n - 1)/n exp(U)) and, for the
  # mixture of N(u_i, s^2 I) with s^2 = 1/(8 t) (Bhattacharyya distance t |d|^2),
  # the pairwise estimate minus H(component) is -mean_i log mean_j exp(-t d_ij^2)
  # >= -U' (Jensen), with equality when every row sees the same kernel mass.
  def gap(u):
    n, k = u.shape
    unif = float(obj.uniformity(jnp.asarray(u), t=t))
    with_self = math.log(1 / n + (n - 1) / n * math.exp(unif))
    var = 1.0 / (8.0 * t)
    h = float(estimators.pairwise_entropy(jnp.asarray(u), var, distance="bhattacharyya"))
    return (h - 0.5 * k * math.log(2 * math.pi * math.e * var)) - (-with_self)

  u = rng.normal(size=(16, 3))
  assert gap(u / np.linalg.norm(u, axis=1, keepdims=True)) > 1e-3
  angles = 2 * np.pi * np.arange(7) / 7  # a regular heptagon: equal row masses
  assert abs(gap(np.stack([np.cos(angles), np.sin(angles)], 1))) < 1e-10
