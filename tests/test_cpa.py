"""Tests for sslit.cpa: slopes, regions, noise model, information quantities.

Oracles: the masked-weight product in float64 NumPy (tests/reference/cpa.py),
central finite differences, fwd = rev = auto, chunked = unchunked, jit = eager,
sharded (2 fake CPU devices) = single device, and SPEC §2's identities by Monte Carlo.
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslit import cpa
from tests.reference import cpa as ref
from tests.reference import hlo

_ACTS = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda h: jnp.where(h > 0, h, 0.01 * h),
    "abs": jnp.abs,
    "gelu": jax.nn.gelu,
}


def make_mlp(rng, sizes, kind="relu", dtype=jnp.float64):
  """A He-initialised MLP: (layers, fn, pre_fn) with pre_fn -> (z, {name: pre})."""
  layers = [(jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2 / a), dtype),
             jnp.asarray(rng.normal(size=b) * 0.1, dtype))
            for a, b in zip(sizes[:-1], sizes[1:])]
  act = _ACTS[kind]

  def pre_fn(v):
    h = v.reshape(-1)
    pres = {}
    for i, (w, b) in enumerate(layers):
      z = h @ w + b
      if i < len(layers) - 1:
        pres[f"layer{i}"] = z
        h = act(z)
    return z, pres

  return layers, (lambda v: pre_fn(v)[0]), pre_fn


def make_convnet(rng, dtype=jnp.float64):
  """conv3x3(1->4) -> ReLU -> 2x2 max-pool (argmax recorded) -> dense(64->5)."""
  kern = jnp.asarray(rng.normal(size=(3, 3, 1, 4)) * np.sqrt(2 / 9), dtype)
  bias = jnp.asarray(rng.normal(size=4) * 0.1, dtype)
  dense = jnp.asarray(rng.normal(size=(64, 5)) * np.sqrt(2 / 64), dtype)

  def pre_fn(v):  # v [8, 8, 1]
    h = jax.lax.conv_general_dilated(
        v[None], kern, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + bias
    a = jax.nn.relu(h)
    win = a.reshape(4, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3).reshape(4, 4, 4, 4)
    idx = jnp.argmax(win, axis=-1).astype(jnp.int32)
    pooled = jnp.max(win, axis=-1)
    return pooled.reshape(-1) @ dense, {"conv": h, "pool": idx}

  return (lambda v: pre_fn(v)[0]), pre_fn


def np_layers(layers):
  return [(np.asarray(w), np.asarray(b)) for w, b in layers]


# ----------------------------------------------------------------------------
# Slopes.


@pytest.mark.parametrize("kind,sizes", [
    ("relu", [5, 7, 3]),
    ("relu", [6, 16, 16, 16, 4]),
    ("leaky_relu", [5, 12, 9, 8]),
    ("abs", [4, 10, 10, 6]),
])
def test_slopes_equal_masked_weight_product(x64, rng, kind, sizes):
  layers, fn, _ = make_mlp(rng, sizes, kind)
  x = jnp.asarray(rng.normal(size=(6, sizes[0])))
  want = np.stack([ref.mlp_slope(np_layers(layers), xi, kind) for xi in np.asarray(x)])
  for mode in ("fwd", "rev", "auto"):
    np.testing.assert_allclose(cpa.jacobian(fn, x, mode=mode), want, atol=1e-12)
  fast = cpa.mlp_jacobian(layers, x, activation=kind)
  np.testing.assert_allclose(fast, want, atol=1e-12)
  # Compacted path (capacity fits the active units) and its dense fallback.
  active = max(max(int(np.sum(p != 0)) for p in ref.mlp_forward(np_layers(layers), xi,
                                                                kind)[1])
               for xi in np.asarray(x))
  for cap in (1.0, min(1.0, (active + 1) / min(sizes[1:-1])), 0.2):
    np.testing.assert_allclose(
        cpa.mlp_jacobian(layers, x, activation=kind, capacity=cap, chunk_size=4),
        want, atol=1e-12)


def test_mlp_jacobian_chunked_float32_and_image_input(rng):
  layers, fn, _ = make_mlp(rng, [12, 20, 30, 9], "relu", jnp.float32)
  x = jnp.asarray(rng.normal(size=(7, 3, 4)), jnp.float32)  # flattened to d = 12
  want = np.stack([ref.mlp_slope(np_layers(layers), xi.ravel(), "relu")
                   for xi in np.asarray(x)])
  np.testing.assert_allclose(cpa.mlp_jacobian(layers, x, chunk_size=3), want,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cpa.jacobian(fn, x, mode="rev", chunk_size=3), want,
                             rtol=1e-5, atol=1e-5)


def test_chunked_equals_unchunked_and_jit_equals_eager(rng):
  fn, _ = make_convnet(rng, jnp.float32)
  x = jnp.asarray(rng.normal(size=(7, 8, 8, 1)), jnp.float32)
  full = cpa.jacobian(fn, x)
  assert full.shape == (7, 5, 64)
  for chunk in (1, 3, 7, 100):  # 3 leaves a remainder
    np.testing.assert_allclose(cpa.jacobian(fn, x, chunk_size=chunk), full, atol=1e-6)
  jitted = jax.jit(lambda x: cpa.jacobian(fn, x, mode="rev", chunk_size=2))(x)
  np.testing.assert_allclose(jitted, full, atol=1e-5)


def test_conv_maxpool_slopes_equal_central_differences(x64, rng):
  fn, _ = make_convnet(rng)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 1)))
  a = cpa.jacobian(fn, x, mode="auto")
  h = 1e-6
  eye = np.eye(64).reshape(64, 8, 8, 1)
  for i in range(3):
    plus = jax.vmap(fn)(x[i][None] + h * eye)
    minus = jax.vmap(fn)(x[i][None] - h * eye)
    fd = np.asarray((plus - minus) / (2 * h)).T  # [k, d]
    np.testing.assert_allclose(a[i], fd, atol=1e-7)


def test_smooth_activation_gives_first_order_slope(x64, rng):
  layers, fn, _ = make_mlp(rng, [5, 8, 3], "gelu")
  x = jnp.asarray(rng.normal(size=(4, 5)))
  a, b = cpa.local_affine(fn, x)
  h = 1e-6
  eye = np.eye(5)
  fd = np.stack([np.asarray((jax.vmap(fn)(xi + h * eye) - jax.vmap(fn)(xi - h * eye))
                            / (2 * h)).T for xi in x])
  np.testing.assert_allclose(a, fd, atol=1e-8)
  # The tangent plane is wrong at second order: residual(2δ) ≈ 4 residual(δ).
  u = jnp.asarray(rng.normal(size=(4, 5)))
  def resid(s):
    xp = x + s * u
    return np.linalg.norm(jax.vmap(fn)(xp) - jnp.einsum("nkd,nd->nk", a, xp) - b,
                          axis=1)
  ratio = resid(2e-3) / resid(1e-3)
  np.testing.assert_allclose(ratio, 4.0, rtol=0.02)


def test_sharded_equals_single_device(rng):
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  layers, fn, pre_fn = make_mlp(rng, [6, 16, 16, 4], "relu", jnp.float32)
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  assert len(xs.sharding.device_set) == 2
  want = cpa.jacobian(fn, x)
  got = jax.jit(lambda x: cpa.jacobian(fn, x, chunk_size=2))(xs)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(cpa.jacobian(fn, xs, mode="rev"), want, atol=1e-6)
  per_device = cpa.jacobian(fn, xs, chunk_size=3, mesh=mesh)  # 4 per device
  np.testing.assert_allclose(per_device, want, atol=1e-6)
  with pytest.raises(ValueError, match="divisible by the mesh size 2"):
    cpa.jacobian(fn, x[:7], mesh=mesh)
  np.testing.assert_allclose(cpa.mlp_jacobian(layers, xs), want, atol=1e-6)
  np.testing.assert_array_equal(cpa.region_ids(pre_fn, xs), cpa.region_ids(pre_fn, x))
  info = cpa.representation_information(fn, x, sigma=0.1)
  info_s = jax.jit(lambda x: cpa.representation_information(fn, x, sigma=0.1))(xs)
  info_m = cpa.representation_information(fn, xs, sigma=0.1, mesh=mesh, chunk_size=3)
  for key in info:
    np.testing.assert_allclose(info_s[key], info[key], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info_m[key], info[key], rtol=1e-5, atol=1e-5)
  noisy = cpa.representation_information(fn, x, sigma=0.1, relative_output_noise=0.1)
  noisy_m = cpa.representation_information(fn, xs, sigma=0.1, relative_output_noise=0.1,
                                           mesh=mesh, chunk_size=3)
  for key in noisy:
    np.testing.assert_allclose(noisy_m[key], noisy[key], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Offsets and regions.


def test_local_affine_exact_inside_region_and_slope_changes_outside(x64, rng):
  layers, fn, pre_fn = make_mlp(rng, [5, 12, 12, 3], "relu")
  nl = np_layers(layers)
  x = jnp.asarray(rng.normal(size=(6, 5)))
  a, b = cpa.local_affine(fn, x)
  np.testing.assert_allclose(jax.vmap(fn)(x), jnp.einsum("nkd,nd->nk", a, x) + b,
                             atol=1e-12)
  delta = jnp.asarray(rng.normal(size=(6, 5))) * 1e-5
  for i in range(6):
    assert (ref.mlp_pattern(nl, x[i] + delta[i], "relu")
            == ref.mlp_pattern(nl, x[i], "relu")).all()
  xp = x + delta
  np.testing.assert_allclose(jax.vmap(fn)(xp), jnp.einsum("nkd,nd->nk", a, xp) + b,
                             atol=1e-12)
  # A large step changes the pattern, and then the slope.
  far = x + 3.0 * jnp.asarray(rng.normal(size=(6, 5)))
  changed = [not (ref.mlp_pattern(nl, far[i], "relu")
                  == ref.mlp_pattern(nl, x[i], "relu")).all() for i in range(6)]
  assert any(changed)
  np.testing.assert_array_equal(~np.asarray(cpa.same_region(pre_fn, x, far)), changed)
  a_far = cpa.jacobian(fn, far)
  for i in np.flatnonzero(changed):
    want = ref.mlp_slope(nl, far[i], "relu")
    np.testing.assert_allclose(a_far[i], want, atol=1e-12)
    assert not np.allclose(a_far[i], a[i])


def test_region_codes_pack_sign_bits_and_argmax():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 40)), jnp.float32)
  pre = lambda v: {"s": v, "i": jnp.arange(3, dtype=jnp.int32) + (v[0] > 0)}
  codes = np.asarray(cpa.region_ids(pre, x))
  assert codes.dtype == np.uint32 and codes.shape == (5, 2 + 3)
  for row, v in zip(codes, np.asarray(x)):
    # Leaves in key order: "i" (ints) and "s" (signs); bits come first in the code.
    bits = np.packbits(np.pad(v > 0, (0, 24)), bitorder="little").view(np.uint32)
    np.testing.assert_array_equal(row[:2], bits)
    np.testing.assert_array_equal(row[2:], np.arange(3) + (v[0] > 0))


def test_count_regions_matches_reference_patterns(rng):
  layers, _, pre_fn = make_mlp(rng, [3, 8, 8, 2], "relu", jnp.float32)
  base = rng.normal(size=(40, 3))
  x = np.concatenate([base, base[:10], base[:5] + 1e-7]).astype(np.float32)
  want = ref.count_unique([ref.mlp_pattern(np_layers(layers), v, "relu") for v in x])
  assert 1 < want < len(x)
  assert int(cpa.count_regions(pre_fn, jnp.asarray(x))) == want
  perm = rng.permutation(len(x))
  assert int(cpa.count_regions(pre_fn, jnp.asarray(x[perm]), chunk_size=7)) == want
  # A plain pytree (no (z, pre) pair) is accepted too.
  plain = lambda v: list(pre_fn(v)[1].values())
  assert int(cpa.count_regions(plain, jnp.asarray(x))) == want


def test_count_codes_equals_numpy_unique(rng):
  for w in (1, 3, 50):
    codes = rng.integers(0, 2, size=(300, w)).astype(np.uint32)
    want = len(np.unique(codes, axis=0))
    assert int(cpa.count_codes(jnp.asarray(codes))) == want
    assert int(jax.jit(cpa.count_codes)(jnp.asarray(codes))) == want


def test_conv_regions_see_maxpool_argmax(rng):
  _, pre_fn = make_convnet(rng, jnp.float32)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
  codes = cpa.region_ids(pre_fn, x)
  assert codes.shape == (4, 8 * 8 * 4 // 32 + 4 * 4 * 4)
  np.testing.assert_array_equal(codes[:, -64:],
                                np.asarray(jax.vmap(pre_fn)(x)[1]["pool"]).reshape(4, -1))
  assert np.asarray(cpa.same_region(pre_fn, x, x)).all()


def test_boundary_distance_is_exact_for_mlps(x64, rng):
  layers, _, pre_fn = make_mlp(rng, [4, 10, 10, 10, 3], "leaky_relu")
  nl = np_layers(layers)
  x = jnp.asarray(rng.normal(size=(6, 4)))
  u = jnp.asarray(rng.normal(size=(6, 4)))
  dist, per = cpa.boundary_distance(pre_fn, x, u, per_neuron=True)
  np.testing.assert_allclose(dist, np.min(np.concatenate(
      [np.asarray(t) for t in per], axis=1), axis=1))
  unit = np.asarray(u) / np.linalg.norm(u, axis=1, keepdims=True)
  for i in range(6):
    p0 = ref.mlp_pattern(nl, x[i], "leaky_relu")
    inside = ref.mlp_pattern(nl, x[i] + (1 - 1e-7) * dist[i] * unit[i], "leaky_relu")
    outside = ref.mlp_pattern(nl, x[i] + (1 + 1e-7) * dist[i] * unit[i], "leaky_relu")
    assert (inside == p0).all()
    assert not (outside == p0).all()
  shared = cpa.boundary_distance(pre_fn, x, u[0])
  np.testing.assert_allclose(shared[0], dist[0])


# ----------------------------------------------------------------------------
# The Gaussian-mixture picture.


def test_output_covariance_forms(x64, rng):
  a = rng.normal(size=(3, 4, 6))
  diag = rng.uniform(0.5, 2.0, size=6)
  m = rng.normal(size=(6, 6))
  full = m @ m.T
  for noise, cov_x in ((0.3, 0.3 * np.eye(6)), (diag, np.diag(diag)), (full, full)):
    got = cpa.output_covariance(jnp.asarray(a), jnp.asarray(noise))
    want = np.stack([ref.output_covariance(ai, cov_x) for ai in a])
    np.testing.assert_allclose(got, want, rtol=1e-12)
  per = jnp.asarray([0.1, 0.2, 0.3])
  want = np.stack([ref.output_covariance(ai, s * np.eye(6)) for ai, s in zip(a, per)])
  np.testing.assert_allclose(cpa.output_covariance(jnp.asarray(a), per), want,
                             rtol=1e-12)


def test_conditional_entropy_full_and_rank_deficient(x64, rng):
  sigma = 0.05
  full = rng.normal(size=(5, 3, 7))              # k < d
  tall = rng.normal(size=(5, 6, 4))              # k > d: rank 4
  dup = rng.normal(size=(5, 4, 7))
  dup[:, 3] = dup[:, 0] - 2 * dup[:, 1]          # rank 3 < k = 4 < d
  for a, rank in ((full, 3), (tall, 4), (dup, 3)):
    got = cpa.conditional_entropy(jnp.asarray(a), sigma)
    for i in range(5):
      h, r = ref.conditional_entropy(a[i], sigma)
      assert r == rank
      np.testing.assert_allclose(got.entropy[i], h, rtol=1e-9)
    np.testing.assert_array_equal(got.rank, rank)
    np.testing.assert_array_equal(got.full_rank, rank == a.shape[1])
  # σ scaling law: H(σ') − H(σ) = r log(σ'/σ).
  h1 = cpa.conditional_entropy(jnp.asarray(tall), 0.1).entropy
  h2 = cpa.conditional_entropy(jnp.asarray(tall), 0.2).entropy
  np.testing.assert_allclose(h2 - h1, 4 * np.log(2.0), rtol=1e-10)


def test_separation_ratio_matches_reference(x64, rng):
  means = rng.normal(size=(9, 3))
  covs = np.stack([m @ m.T for m in rng.normal(size=(9, 3, 3))])
  for c in (0.25, rng.uniform(0.1, 1.0, size=9), covs):
    np.testing.assert_allclose(cpa.separation_ratio(jnp.asarray(means), jnp.asarray(c)),
                               ref.separation_ratio(means, c), rtol=1e-10)


def test_invariance_is_a_jacobian_norm_monte_carlo(x64, rng):
  # SPEC §2: E‖f(x) − f(x′)‖² = 2σ² ‖A_n‖_F² for two noisy views of one input.
  _, fn, _ = make_mlp(rng, [6, 32, 32, 4], "relu")
  x = jnp.asarray(rng.normal(size=(3, 6)))
  a = cpa.jacobian(fn, x)
  sigma, m = 1e-4, 4000
  key_a, key_b = jax.random.split(jax.random.key(0))
  xa = x[:, None] + sigma * jax.random.normal(key_a, (3, m, 6), jnp.float64)
  xb = x[:, None] + sigma * jax.random.normal(key_b, (3, m, 6), jnp.float64)
  diff = jax.vmap(jax.vmap(fn))(xa) - jax.vmap(jax.vmap(fn))(xb)
  lhs = np.mean(np.sum(np.asarray(diff)**2, axis=-1), axis=1)
  rhs = 2 * sigma**2 * np.sum(np.asarray(a)**2, axis=(1, 2))
  np.testing.assert_allclose(lhs, rhs, rtol=0.08)


def test_noise_model_check_gaussian_law_and_stay_fraction(x64, rng):
  _, fn, pre_fn = make_mlp(rng, [8, 32, 32, 4], "relu")
  x = jnp.asarray(rng.normal(size=(8, 8)))
  res = cpa.noise_model_check(jax.random.key(1), fn, x, sigmas=[1e-5, 1e-2, 0.5],
                              num_samples=400, pre_fn=pre_fn, chunk_size=4)
  assert res["stay"].shape == (3, 8) and res["pvalues"].shape == (3, 8, 4)
  stay = res["stay_mean"]
  assert stay[0] > 0.995 and stay[0] >= stay[1] >= stay[2] and stay[2] < 0.5
  # Under A1 the output law is N(f(x), σ² A Aᵀ): Monte-Carlo-sized errors only.
  assert res["cov_error_median"][0] < 0.25
  assert res["mean_error_median"][0] < 4 / math.sqrt(400)
  assert res["normal_reject_rate"][0] < 0.2
  # Far outside A1 (σ = 0.5) the affine-Gaussian model is visibly wrong.
  assert res["cov_error_median"][2] > res["cov_error_median"][0]
  no_pre = cpa.noise_model_check(jax.random.key(1), fn, x[:2], sigmas=[1e-3],
                                 num_samples=20)
  assert np.isnan(no_pre["stay"]).all()


@pytest.mark.parametrize("method", ["exact", "scalable"])
def test_representation_information_sigma_grid(x64, rng, method):
  """A grid of σ (slopes computed once) equals one call per σ, value by value."""
  _, fn, _ = make_mlp(rng, [5, 16, 16, 3], "relu")
  x = jnp.asarray(rng.normal(size=(10, 5)))
  sigmas = [0.05, 1.0, 4.0]
  grid = cpa.representation_information(fn, x, sigma=sigmas, relative_output_noise=0.1,
                                        method=method, exact_neighbors=2)
  for i, s in enumerate(sigmas):
    one = cpa.representation_information(fn, x, sigma=s, relative_output_noise=0.1,
                                         method=method, exact_neighbors=2)
    for key, value in one.items():
      np.testing.assert_allclose(grid[key][i], value, rtol=1e-12, err_msg=key)
  # The larger σ overlaps the components more: less information (a real change).
  assert grid["mi_upper"][2] < grid["mi_upper"][0]
  with pytest.raises(ValueError, match="sigma"):
    cpa.representation_information(fn, x, sigma=[0.1, -1.0])


def test_representation_information(x64, rng):
  layers, fn, _ = make_mlp(rng, [5, 16, 16, 3], "relu")
  nl = np_layers(layers)
  x = jnp.asarray(rng.normal(size=(12, 5)))
  sigma = 0.05
  info = cpa.representation_information(fn, x, sigma=sigma)
  a = [ref.mlp_slope(nl, xi, "relu") for xi in np.asarray(x)]
  means = np.stack([ref.mlp_forward(nl, xi, "relu")[0] for xi in np.asarray(x)])
  covs = np.stack([sigma**2 * ai @ ai.T for ai in a])
  np.testing.assert_allclose(
      info["h_cond"], np.mean([ref.conditional_entropy(ai, sigma)[0] for ai in a]),
      rtol=1e-9)
  mu = means - means.mean(0)
  cov_z = mu.T @ mu / 12 + covs.mean(0)
  np.testing.assert_allclose(info["gaussian_surrogate"],
                             0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov_z)[1],
                             rtol=1e-9)
  np.testing.assert_allclose(info["separation_ratio"],
                             ref.separation_ratio(means, covs), rtol=1e-9)
  assert -1e-9 <= info["mi_lower"] <= info["mi_upper"] <= np.log(12) + 1e-9
  assert info["h_lower"] <= info["gaussian_surrogate"]
  assert bool(info["full_rank"]) and int(info["min_rank"]) == 3
  chunked = cpa.representation_information(fn, x, sigma=sigma, chunk_size=5,
                                           mode="rev")
  for key in info:
    np.testing.assert_allclose(chunked[key], info[key], rtol=1e-9)
  # Tiny noise: components separate, I -> log n. One region, large noise: I -> 0.
  tiny = cpa.representation_information(fn, x, sigma=1e-6)
  np.testing.assert_allclose(tiny["mi_lower"], np.log(12), rtol=1e-6)
  same = x[0] + 1e-7 * jnp.asarray(rng.normal(size=(6, 5)))
  blur = cpa.representation_information(fn, same, sigma=1.0)
  assert blur["mi_upper"] < 1e-6


def _mlp_with_slopes(rng, sizes, dead=0):
  """MLP (``dead`` hidden units of the first layer never active) and its float64
  reference slopes and outputs on 10 standard-normal inputs."""
  layers, fn, _ = make_mlp(rng, sizes, "relu")
  if dead:
    w, b = layers[0]
    layers[0] = (w, b.at[:dead].set(-100.0))  # fn reads the same list
  x = jnp.asarray(rng.normal(size=(10, sizes[0])))
  nl = np_layers(layers)
  a = np.stack([ref.mlp_slope(nl, xi, "relu") for xi in np.asarray(x)])
  means = np.stack([ref.mlp_forward(nl, xi, "relu")[0] for xi in np.asarray(x)])
  return fn, x, a, means


@pytest.mark.parametrize("sizes,dead", [([3, 16, 6], 0),   # k = 6 > d = 3: rank 3
                                        ([8, 6, 6], 2)])   # 2 of 6 hidden units dead
def test_output_noise_rank_deficient_equals_explicit_oracle(x64, rng, sizes, dead):
  fn, x, a, means = _mlp_with_slopes(rng, sizes, dead)
  k = sizes[-1]
  ranks = [np.linalg.matrix_rank(ai) for ai in a]
  assert max(ranks) < k
  sigma = 0.5
  # τ = 0: no density in R^k. The bounds say so (−inf / NaN), never a stray number.
  bare = cpa.representation_information(fn, x, sigma=sigma)
  assert not bool(bare["full_rank"]) and int(bare["min_rank"]) == min(ranks)
  assert bare["h_lower"] == -np.inf and bare["h_upper"] == -np.inf
  assert np.isnan(bare["mi_lower"]) and np.isnan(bare["mi_upper"])
  assert np.isfinite(bare["h_cond"]) and float(bare["output_noise"]) == 0.0
  # τ > 0: Σ_n = σ² A Aᵀ + τ² I built explicitly, bounds pair by pair in NumPy.
  for kw in ({"output_noise": 0.3}, {"relative_output_noise": 0.1}):
    info = cpa.representation_information(fn, x, sigma=sigma, **kw)
    want = ref.representation_information(means, a, sigma, **kw)
    for key, value in want.items():
      assert np.isfinite(info[key]), key
      np.testing.assert_allclose(info[key], value, rtol=1e-9, err_msg=key)
    assert 0 <= info["mi_lower"] <= info["mi_upper"] <= np.log(10)
    assert info["h_upper"] <= info["gaussian_surrogate"] + 1e-9
    assert int(info["min_rank"]) == min(ranks)  # the slopes' rank, not Σ_n's


def test_output_noise_limits_and_scaling(x64, rng):
  layers, fn, _ = make_mlp(rng, [5, 16, 16, 3], "relu")
  x = jnp.asarray(rng.normal(size=(12, 5)))
  sigma, n, k = 0.3, 12, 3
  base = cpa.representation_information(fn, x, sigma=sigma)
  assert bool(base["full_rank"])
  # τ → 0 on full-rank slopes recovers the τ = 0 numbers (error O(τ²/σ²s²)).
  for tau in (1e-4, 1e-6):
    near = cpa.representation_information(fn, x, sigma=sigma, output_noise=tau)
    for key in ("h_cond", "h_lower", "h_upper", "mi_lower", "mi_upper",
                "gaussian_surrogate", "separation_ratio"):
      np.testing.assert_allclose(near[key], base[key], rtol=1e3 * tau**2 / sigma**2,
                                 atol=1e3 * tau**2 / sigma**2, err_msg=key)
  # MI bounds in [0, log n], ordered, and going from log n (τ small against the
  # means' spread) to 0 (τ large): the KT bounds' two exact limits.
  taus = [1e-3, 0.1, 1.0, 10.0, 1e4]
  mis = []
  for tau in taus:
    info = cpa.representation_information(fn, x, sigma=1e-3, output_noise=tau)
    assert -1e-12 <= info["mi_lower"] <= info["mi_upper"] + 1e-12
    assert info["mi_upper"] <= np.log(n) + 1e-12
    assert info["h_lower"] <= info["h_upper"] + 1e-12
    np.testing.assert_allclose(info["h_lower"] - info["h_cond"], info["mi_lower"],
                               rtol=1e-12, atol=1e-12)
    mis.append((float(info["mi_lower"]), float(info["mi_upper"])))
  np.testing.assert_allclose(mis[0], np.log(n), rtol=1e-6)
  np.testing.assert_allclose(mis[-1], 0.0, atol=1e-6)
  assert all(a[1] >= b[1] for a, b in zip(mis, mis[1:]))
  # Huge τ: h_cond is the k-dim entropy of τ² I to first order.
  np.testing.assert_allclose(info["h_cond"], 0.5 * k * np.log(2 * np.pi * np.e * 1e8),
                             rtol=1e-9)
  # relative_output_noise is scale-equivariant: f → c f leaves the MI unchanged and
  # shifts every entropy by k log c.
  c = 7.0
  rel = cpa.representation_information(fn, x, sigma=sigma, relative_output_noise=0.5)
  scaled = cpa.representation_information(lambda v: c * fn(v), x, sigma=sigma,
                                          relative_output_noise=0.5)
  np.testing.assert_allclose(scaled["output_noise"], c * rel["output_noise"], rtol=1e-12)
  for key in ("mi_lower", "mi_upper", "separation_ratio"):
    np.testing.assert_allclose(scaled[key], rel[key], rtol=1e-9, err_msg=key)
  for key in ("h_cond", "h_lower", "h_upper", "gaussian_surrogate"):
    np.testing.assert_allclose(scaled[key], rel[key] + k * np.log(c), rtol=1e-9,
                               err_msg=key)


def test_output_noise_jit_and_gradient(x64, rng):
  _, fn, _ = make_mlp(rng, [3, 8, 5], "relu")  # k = 5 > d = 3
  x = jnp.asarray(rng.normal(size=(6, 3)))

  def h_cond(tau):
    return cpa.representation_information(fn, x, sigma=0.2, output_noise=tau)["h_cond"]

  eager = cpa.representation_information(fn, x, sigma=0.2, output_noise=0.05)
  jitted = jax.jit(lambda t: cpa.representation_information(
      fn, x, sigma=0.2, output_noise=t))(0.05)
  for key in eager:
    np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-12, err_msg=key)
  eps = 1e-6
  fd = (h_cond(0.05 + eps) - h_cond(0.05 - eps)) / (2 * eps)
  np.testing.assert_allclose(jax.jit(jax.grad(h_cond))(0.05), fd, rtol=1e-6)


def test_with_sslit_models_preactivations(rng):
  models = pytest.importorskip("sslit.models")
  model = models.build_model("mlp", backbone_kwargs={"widths": (12, 10, 4)},
                             projector=None)
  x = jnp.asarray(rng.normal(size=(6, 3, 3, 1)), jnp.float32)
  variables = models.init_variables(model, jax.random.key(0), x)
  fn = models.single_input_fn(model, variables)
  pre_fn = models.preactivation_fn(model, variables)
  params = variables["params"]["backbone"]
  layers = [(params[f"dense{i}"]["kernel"], params[f"dense{i}"]["bias"])
            for i in range(3)]
  np.testing.assert_allclose(cpa.jacobian(fn, x), cpa.mlp_jacobian(layers, x),
                             atol=1e-5)
  want = ref.count_unique([ref.mlp_pattern(np_layers(layers), v.ravel(), "relu")
                           for v in np.asarray(x)])
  assert int(cpa.count_regions(pre_fn, x)) == want


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_input_errors(rng):
  _, fn, pre_fn = make_mlp(rng, [4, 6, 3], "relu", jnp.float32)
  x = jnp.ones((5, 4), jnp.float32)
  with pytest.raises(ValueError, match="1-D output"):
    cpa.jacobian(lambda v: fn(v)[:, None], x)
  with pytest.raises(ValueError, match="1-D array"):
    cpa.jacobian(lambda v: (fn(v), fn(v)), x)
  with pytest.raises(ValueError, match=r"x must be a batch \[n, \.\.\.\] of rank >= 2"):
    cpa.jacobian(fn, jnp.ones(4))
  with pytest.raises(TypeError, match="x must have a floating dtype"):
    cpa.jacobian(fn, jnp.ones((5, 4), jnp.int32))
  for bad in (0, -2, 1.5):
    with pytest.raises(ValueError, match="chunk_size"):
      cpa.jacobian(fn, x, chunk_size=bad)
  with pytest.raises(ValueError, match="mode"):
    cpa.jacobian(fn, x, mode="central")
  for bad in (-1.0, float("nan"), float("inf")):
    for name in ("output_noise", "relative_output_noise"):
      with pytest.raises(ValueError, match=name):
        cpa.representation_information(fn, x, sigma=0.1, **{name: bad})
  with pytest.raises(ValueError, match="output_noise .* relative_output_noise.* not both"):
    cpa.representation_information(fn, x, sigma=0.1, output_noise=0.1,
                                   relative_output_noise=0.1)
  for bad in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="sigma"):
      cpa.conditional_entropy(jnp.ones((2, 3)), bad)
    with pytest.raises(ValueError, match="sigma"):
      cpa.representation_information(fn, x, sigma=bad)
    with pytest.raises(ValueError, match="sigmas"):
      cpa.noise_model_check(jax.random.key(0), fn, x, sigmas=[1e-3, bad])
  with pytest.raises(ValueError, match="num_samples"):
    cpa.noise_model_check(jax.random.key(0), fn, x, sigmas=[1e-3], num_samples=5)
  with pytest.raises(ValueError, match="noise"):
    cpa.output_covariance(jnp.ones((2, 3, 4)), jnp.ones(5))
  with pytest.raises(ValueError, match="noise"):
    cpa.output_covariance(jnp.ones((2, 3, 4)), -1.0)
  with pytest.raises(ValueError, match=r"layers\[1\]"):
    cpa.mlp_jacobian([(jnp.ones((4, 6)), jnp.ones(6)), (jnp.ones((5, 3)), jnp.ones(3))],
                     x)
  with pytest.raises(ValueError, match="capacity"):
    cpa.mlp_jacobian([(jnp.ones((4, 6)), jnp.ones(6))], x, capacity=1.5)
  with pytest.raises(ValueError, match="activation"):
    cpa.mlp_jacobian([(jnp.ones((4, 6)), jnp.ones(6))], x, activation="tanh")
  with pytest.raises(ValueError, match="direction"):
    cpa.boundary_distance(pre_fn, x, jnp.ones(3))
  with pytest.raises(ValueError, match="x_other"):
    cpa.same_region(pre_fn, x, jnp.ones((4, 4)))
  with pytest.raises(ValueError, match="covs"):
    cpa.separation_ratio(jnp.ones((4, 2)), jnp.ones(3))
  with pytest.raises(ValueError, match="codes"):
    cpa.count_codes(jnp.ones(4, jnp.uint32))


# ----------------------------------------------------------------------------
# Calls that return: jaxlib 0.10's batched LAPACK kernels block XLA:CPU's thread
# pool (sslit.parallel.per_matrix), two at once deadlock a 2-core machine.


@pytest.mark.parametrize("method,sigma,chunk_size,sharded", [
    ("scalable", 0.5, 5, False), ("exact", 0.5, None, False),
    ("auto", [0.5, 1.0], 4, False), ("scalable", 0.5, 3, True)])
def test_representation_information_factors_one_matrix_at_a_time(
    rng, method, sigma, chunk_size, sharded):
  if sharded and len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  mesh = (jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
          if sharded else None)
  _, fn, _ = make_mlp(rng, [10, 16, 6], "relu", jnp.float32)
  x = jnp.asarray(rng.normal(size=(12, 10)), jnp.float32)
  run = jax.jit(lambda x: cpa.representation_information(
      fn, x, sigma=sigma, relative_output_noise=0.1, method=method,
      chunk_size=chunk_size, mesh=mesh, exact_neighbors=2))
  text = run.lower(x).compile().as_text()
  assert "lapack_" in text  # the program factors matrices (SVD, Cholesky, eigh)
  assert hlo.batched_lapack_calls(text) == []


_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The call of the report, on a ReLU MLP d-h-k (784-512-256 there), for each n given.
_CALL = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from sslit import cpa
d, h, k = (int(v) for v in sys.argv[1:4])
for n in (int(v) for v in sys.argv[4:]):
  rng = np.random.default_rng(3)
  v1 = jnp.asarray(rng.normal(size=(d, h)) * np.sqrt(2 / d), jnp.float32)
  v2 = jnp.asarray(rng.normal(size=(h, k)) * np.sqrt(2 / h), jnp.float32)
  net = lambda x: jax.nn.relu(x @ v1) @ v2
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  start = time.perf_counter()
  r = cpa.representation_information(net, x, sigma=0.5, relative_output_noise=0.1,
                                     mode="rev", chunk_size=100)
  print(n, float(r["mi_lower"]), float(r["mi_upper"]),
        round(time.perf_counter() - start, 1), flush=True)
"""


def _returns_in_a_fresh_process(sizes, ns, timeout):
  """Runs ``_CALL`` in a new Python (sslit's own XLA flags, one CPU device)."""
  env = {key: v for key, v in os.environ.items() if key != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(_ROOT)
  cmd = [sys.executable, "-c", _CALL, *map(str, sizes), *map(str, ns)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_ROOT,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    done = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    pytest.fail(f"representation_information on d-h-k = {sizes} did not return "
                f"within {timeout} s (n, mi_lower, mi_upper, s done: {done!r})")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split() for line in proc.stdout.splitlines()]
  assert [int(r[0]) for r in rows] == list(ns)
  for n, lower, upper, _ in rows:
    assert 0 <= float(lower) <= float(upper) <= math.log(int(n)) + 1e-4, (n, lower, upper)


def test_representation_information_returns_for_every_n():
  # The report's n (500, 1000 and 1200 hung, 2000 did not) on a smaller network.
  _returns_in_a_fresh_process((98, 64, 32), (500, 1000, 1200, 2000), timeout=600)


@pytest.mark.slow
def test_representation_information_returns_at_the_reported_size():
  _returns_in_a_fresh_process((784, 512, 256), (1000,), timeout=900)
