"""sslit.objectives.lejepa: the Epps-Pulley statistic, SIGReg and the LeJEPA loss against
float64 oracles written from the paper's formulas, the statistic's expectation under
the null, and the loss's invariances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sslit import objectives as obj
from sslit.objectives import lejepa
from tests.reference import objectives as ref


def test_epps_pulley_matches_the_oracle(rng, x64):
  x = rng.normal(size=(40, 5)) * np.array([1.0, 0.5, 2.0, 1.0, 1.0]) + \
      np.array([0.0, 0.0, 0.0, 1.5, 0.0])
  x[:, 4] = rng.uniform(-1.7, 1.7, size=40)
  got = lejepa.epps_pulley(jnp.asarray(x))
  np.testing.assert_allclose(got, ref.epps_pulley(x), rtol=1e-10)
  np.testing.assert_allclose(lejepa.epps_pulley(jnp.asarray(x), num_points=9, t_max=3.0),
                             ref.epps_pulley(x, num_points=9, t_max=3.0), rtol=1e-10)


def test_epps_pulley_expectation_under_the_null(rng, x64):
  # For an N(0, 1) sample E|phi_n(t) - phi(t)|^2 = (1 - phi(t)^2) / n, so
  # E T = int (1 - exp(-t^2)) exp(-t^2/2) dt, the same for every n (on the 17-knot
  # trapezoidal grid: computed below); any other law grows like n.
  t = np.linspace(-5.0, 5.0, 17)
  f = (1 - np.exp(-t * t)) * np.exp(-t * t / 2)
  want = np.sum((f[1:] + f[:-1]) / 2 * np.diff(t))
  stats = np.asarray(lejepa.epps_pulley(jnp.asarray(rng.normal(size=(256, 4000)))))
  assert abs(stats.mean() - want) < 0.05 * want, (stats.mean(), want)
  collapsed = lejepa.epps_pulley(jnp.zeros((256, 1)))  # every sample at 0
  assert float(collapsed[0]) > 50 * want


def test_sigreg_directions_are_unit_and_fresh_per_key():
  a = lejepa.sigreg_directions(jax.random.key(0), 7, 33)
  assert a.shape == (7, 33)
  np.testing.assert_allclose(jnp.linalg.norm(a, axis=0), 1.0, rtol=1e-6)
  b = lejepa.sigreg_directions(jax.random.key(1), 7, 33)
  assert not np.allclose(a, b)


def test_sigreg_matches_the_oracle_and_is_rotation_blind_for_a_gaussian(rng, x64):
  z = rng.normal(size=(32, 6))
  a = np.asarray(lejepa.sigreg_directions(jax.random.key(3), 6, 11), np.float64)
  np.testing.assert_allclose(lejepa.sigreg(jnp.asarray(z), jnp.asarray(a)),
                             ref.sigreg(z, a), rtol=1e-10)
  with pytest.raises(ValueError, match="directions must be"):
    lejepa.sigreg(jnp.asarray(z), jnp.asarray(a[:5]))


def test_lejepa_loss_matches_the_oracle(rng, x64):
  z = rng.normal(size=(4, 12, 5))  # 2 global + 2 local views
  key = jax.random.key(7)
  a = np.asarray(lejepa.sigreg_directions(key, 5, 64), np.float64)
  loss, aux = lejepa.lejepa_loss(jnp.asarray(z), key=key, num_slices=64, lambd=0.2)
  want, inv, reg = ref.lejepa(z, a, lambd=0.2)
  np.testing.assert_allclose(loss, want, rtol=1e-10)
  np.testing.assert_allclose(aux["invariance"], inv, rtol=1e-10)
  np.testing.assert_allclose(aux["sigreg"], reg, rtol=1e-10)
  # The registry's preset is the paper's: lambda 0.05, 256 directions, 17 knots on
  # [-5, 5]; it is called as the all-views method calls it.
  o = obj.get_objective("lejepa")
  assert o.kind == "views"
  a = np.asarray(lejepa.sigreg_directions(key, 5, 256), np.float64)
  np.testing.assert_allclose(o.fn(jnp.asarray(z), key=key)[0], ref.lejepa(z, a)[0],
                             rtol=1e-10)


def test_lejepa_invariances(rng, x64):
  key = jax.random.key(0)
  z = jnp.asarray(rng.normal(size=(3, 16, 4)))
  loss, _ = lejepa.lejepa_loss(z, key=key)
  perm = rng.permutation(16)  # the samples' order
  np.testing.assert_allclose(lejepa.lejepa_loss(z[:, perm], key=key)[0], loss, rtol=1e-10)
  swapped = z[jnp.array([1, 0, 2])]  # the two global views' order
  np.testing.assert_allclose(lejepa.lejepa_loss(swapped, key=key)[0], loss, rtol=1e-10)
  same = jnp.broadcast_to(z[0], z.shape)  # identical views: no invariance loss
  _, aux = lejepa.lejepa_loss(same, key=key)
  assert float(aux["invariance"]) == 0.0


def test_lejepa_gradients_and_bad_input(rng, x64):
  z = jnp.asarray(rng.normal(size=(3, 8, 4)))
  check_grads(lambda z: lejepa.lejepa_loss(z, key=jax.random.key(1), num_slices=8)[0],
              (z,), order=1, modes=["rev"])
  with pytest.raises(ValueError, match="lambd"):
    lejepa.lejepa_loss(z, key=jax.random.key(0), lambd=1.5)
  with pytest.raises(ValueError, match="num_points"):
    lejepa.epps_pulley(z[0], num_points=1)
  with pytest.raises(ValueError, match="num_global"):
    lejepa.lejepa_loss(z, key=jax.random.key(0), num_global=4)
