"""Tests for sslit.mixture: the scalable pairwise bounds against the exact ones,
NumPy pair-by-pair oracles and a Monte-Carlo entropy (tests/reference/mixture.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslit import cpa, mixture
from tests.reference import hlo
from tests.reference import mixture as ref

_TOL = 1e-9  # relative rounding allowance of float64 comparisons
# One mixture shape and one exact_neighbors throughout: each compiled program is
# reused by every test (compiling dominates these tests' time).
N, K, NEIGHBORS = 11, 3, 3


def heteroscedastic(rng, n=N, k=K, *, spread=1.0, scale_sd=1.0):
  """Means ``[n, k]`` and covariances ``[n, k, k]``: random factors times random
  per-component scales (``exp(N(0, scale_sd²))``) plus a small ridge."""
  a = rng.normal(size=(n, k, k)) * np.exp(scale_sd * rng.normal(size=(n, 1, 1)))
  covs = a @ a.transpose(0, 2, 1) / k + 1e-2 * np.eye(k)
  return spread * rng.normal(size=(n, k)), covs


def assert_brackets(scalable, exact):
  """scalable_lower ≤ exact_lower ≤ exact_upper ≤ scalable_upper, slack honest."""
  lo, hi = float(scalable.h_lower), float(scalable.h_upper)
  tol = _TOL * max(1.0, abs(float(exact.h_lower)))
  assert lo <= float(exact.h_lower) + tol
  assert float(exact.h_lower) <= float(exact.h_upper) + tol
  assert float(exact.h_upper) <= hi + tol
  np.testing.assert_allclose(hi, exact.h_upper, rtol=_TOL)  # the KL bound is exact
  assert float(exact.h_lower) <= lo + float(scalable.lower_slack) + tol
  assert 0.0 <= float(scalable.lower_slack)


@pytest.mark.parametrize("seed,layout", [(0, "random"), (1, "random"),
                                         (2, "near_duplicates"), (3, "separated"),
                                         (4, "identical_isotropic")])
def test_scalable_brackets_exact(x64, seed, layout):
  rng = np.random.default_rng(seed)
  n, k = N, K
  means, covs = heteroscedastic(rng)
  if layout == "near_duplicates":  # pairs of components 1e-9 apart
    means[1::2] = means[:-1:2] + 1e-9 * rng.normal(size=(n // 2, k))
  elif layout == "separated":
    means *= 100.0
  elif layout == "identical_isotropic":  # L_ij = D_B exactly: rounding decides
    covs = np.broadcast_to(0.3 * np.eye(k), (n, k, k)).copy()
    means[:, 1:] = 0.0
  exact = mixture.pairwise_bounds_exact(means, covs)
  assert int(exact.exact_pairs) == int(exact.num_pairs) == n * (n - 1) // 2
  np.testing.assert_allclose(exact.h_lower,
                             ref.pairwise_bound(means, covs, ref.bhattacharyya),
                             rtol=_TOL)
  np.testing.assert_allclose(exact.h_upper, ref.pairwise_bound(means, covs, ref.kl),
                             rtol=_TOL)
  previous = -np.inf
  for neighbors in (0, NEIGHBORS):
    got = mixture.pairwise_bounds(means, covs, exact_neighbors=neighbors)
    assert_brackets(got, exact)
    assert int(got.exact_pairs) == min(-(-n * neighbors // 2), n * (n - 1) // 2)
    assert float(got.h_lower) >= previous - _TOL  # more exact pairs: no looser
    previous = float(got.h_lower)
  every = mixture.pairwise_bounds(means, covs, exact_neighbors=n - 1)
  for field in ("h_lower", "h_upper", "mi_lower", "mi_upper", "h_cond"):
    np.testing.assert_allclose(getattr(every, field), getattr(exact, field),
                               rtol=_TOL, atol=1e-12, err_msg=field)
  assert int(every.exact_pairs) == int(every.num_pairs)
  assert float(every.lower_slack) == 0.0
  if layout == "separated":  # both bounds reach mean H(p_i) + log n
    np.testing.assert_allclose(got.mi_lower, np.log(n), rtol=1e-9)


def test_kl_by_traces_equals_direct_kl(x64):
  means, covs = heteroscedastic(np.random.default_rng(5), scale_sd=2.0)
  np.testing.assert_allclose(mixture.kl_divergences(means, covs),
                             ref.divergences(means, covs, ref.kl), rtol=1e-10,
                             atol=1e-12)


def test_bounds_bracket_monte_carlo(x64):
  means, covs = heteroscedastic(np.random.default_rng(6), spread=0.2)
  h_mc, se = ref.entropy_mc(0, means, covs, 2000)
  exact = mixture.pairwise_bounds_exact(means, covs)
  got = mixture.pairwise_bounds(means, covs, exact_neighbors=NEIGHBORS)
  assert float(got.h_lower) <= float(exact.h_lower) <= h_mc + 4 * se
  assert h_mc - 4 * se <= float(exact.h_upper) <= float(got.h_upper) + 1e-12
  # Not vacuous: the mixture overlaps, so the bounds are well inside [h_cond, +log n].
  assert float(exact.mi_upper) < np.log(N) - 0.1 and float(exact.mi_lower) > 0.5


def test_relu_network_slopes(x64, rng, monkeypatch):
  """representation_information's scalable bounds bracket the exact ones on the
  mixture a random ReLU network's slopes make (Σ_n = σ² A_n A_nᵀ + τ² I)."""
  sizes = [5, 16, 16, K]
  layers = [(jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2 / a)),
             jnp.asarray(rng.normal(size=b) * 0.1)) for a, b in zip(sizes, sizes[1:])]

  def fn(v):
    for i, (w, b) in enumerate(layers):
      v = v @ w + b
      v = jax.nn.relu(v) if i < len(layers) - 1 else v
    return v

  x = jnp.asarray(rng.normal(size=(N, 5)))
  kw = dict(sigma=0.3, relative_output_noise=0.1, exact_neighbors=NEIGHBORS)
  info = cpa.representation_information(fn, x, method="scalable", **kw)
  a = np.asarray(cpa.jacobian(fn, x))
  tau = float(info["output_noise"])
  covs = 0.3**2 * a @ a.transpose(0, 2, 1) + tau**2 * np.eye(K)
  exact = mixture.pairwise_bounds_exact(jax.vmap(fn)(x), covs)
  assert_brackets(mixture.PairwiseBounds(
      info["h_lower"], info["h_upper"], info["mi_lower"], info["mi_upper"],
      info["h_cond"], info["exact_pairs"], info["num_pairs"], info["lower_slack"]),
                  exact)
  np.testing.assert_allclose(info["h_cond"], exact.h_cond, rtol=_TOL)
  assert int(info["exact_pairs"]) == -(-N * NEIGHBORS // 2)
  assert int(info["num_pairs"]) == N * (N - 1) // 2
  # method="auto": the exact bounds up to AUTO_EXACT_MAX_N inputs, scalable above.
  monkeypatch.setattr(mixture, "AUTO_EXACT_MAX_N", N - 1)
  auto = cpa.representation_information(fn, x, **kw)
  np.testing.assert_allclose(auto["h_lower"], info["h_lower"], rtol=1e-12)


def test_chunk_size_jit_and_sharding_do_not_change_the_result(x64):
  means, covs = heteroscedastic(np.random.default_rng(7))  # N odd: padded on 2
  want = mixture.pairwise_bounds(means, covs, exact_neighbors=NEIGHBORS)
  # Chunks of 2 (with a remainder), the pairs split over 2 devices, under jit: each
  # changes how the pairs are visited, none may change the numbers.
  if len(jax.devices()) >= 2:  # tests/conftest.py sets 2 fake CPU devices
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    runs = {"jit, mesh, chunk_size=2": jax.jit(lambda m, c: mixture.pairwise_bounds(
        m, c, exact_neighbors=NEIGHBORS, chunk_size=2, mesh=mesh))}
  else:
    runs = {"chunk_size=2": lambda m, c: mixture.pairwise_bounds(
        m, c, exact_neighbors=NEIGHBORS, chunk_size=2)}
  for name, run in runs.items():
    for field, value in zip(want._fields, run(means, covs)):
      np.testing.assert_allclose(value, getattr(want, field), rtol=1e-12,
                                 err_msg=f"{field}, {name}")


def test_bad_input_errors(x64):
  means, covs = heteroscedastic(np.random.default_rng(9))
  for fn in (mixture.pairwise_bounds, mixture.pairwise_bounds_exact,
             mixture.kl_divergences):
    with pytest.raises(ValueError, match=r"\(11, 3, 3\) for means of shape "
                                         r"\(11, 3\), got covs of shape \(11, 2, 2\)"):
      fn(means, covs[:, :2, :2])
    with pytest.raises(ValueError, match=r"got covs of shape \(3, 3, 3\)"):
      fn(means, covs[:3])
    with pytest.raises(ValueError, match=r"n=1 \(shape \(1, 3\)\); at least 2"):
      fn(means[:1], covs[:1])
    with pytest.raises(ValueError, match=r"means must be \[n, k\], got shape \(3,\)"):
      fn(means[0], covs)
  # Value checks run after the (compiled) computation: two of the three suffice.
  for fn in (functools.partial(mixture.pairwise_bounds, exact_neighbors=NEIGHBORS),
             mixture.pairwise_bounds_exact):
    for index, value in ((2, 0.0), (1, -np.eye(3))):  # zero, negative definite
      bad = covs.copy()
      bad[index] = value
      # Either check names the component: the mixture's own (not positive definite)
      # or the estimators' (a variance on the diagonal <= 0), whichever runs first.
      with pytest.raises(ValueError, match=rf"covs\[{index}(\] .*shape \(11, 3, 3\).*"
                                           r"positive definite|, 0, 0\] = )"):
        fn(means, bad)
    nan_means = means.copy()
    nan_means[3, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
      fn(nan_means, covs)
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="exact_neighbors"):
      mixture.pairwise_bounds(means, covs, exact_neighbors=bad)
  with pytest.raises(ValueError, match="chunk_size"):
    mixture.pairwise_bounds(means, covs, chunk_size=0)
  x = jnp.ones((5, 3))
  with pytest.raises(ValueError, match="method"):
    cpa.representation_information(lambda v: v, x, sigma=0.1, method="fast")
  with pytest.raises(ValueError, match="exact_neighbors"):
    cpa.representation_information(lambda v: v, x, sigma=0.1, exact_neighbors=-2)


def test_every_factorisation_sees_one_matrix(rng):
  # jaxlib 0.10's batched LAPACK kernels can deadlock XLA:CPU (parallel.per_matrix):
  # no compiled program here hands a LAPACK kernel more than one matrix.
  means, covs = (jnp.asarray(a, jnp.float32) for a in heteroscedastic(rng))
  a = jnp.asarray(rng.normal(size=(2, 3, K, 5)), jnp.float32)
  calls = {
      "pairwise_bounds": lambda: mixture.pairwise_bounds(
          means, covs, exact_neighbors=NEIGHBORS, chunk_size=4),
      "pairwise_bounds_exact": lambda: mixture.pairwise_bounds_exact(means, covs),
      "kl_divergences": lambda: mixture.kl_divergences(means, covs, chunk_size=4),
      "conditional_entropy": lambda: mixture.conditional_entropy(a, 0.5),
      "separation_ratio": lambda: mixture.separation_ratio(means, covs),
  }
  for name, call in calls.items():
    text = jax.jit(call).lower().compile().as_text()
    assert "lapack_" in text, name
    assert hlo.batched_lapack_calls(text) == [], name


def test_information_from_slopes_against_the_exact_bounds(x64, rng):
  # Oracle: the exact bounds and Gaussian entropies of Σ_n = σ² A_n A_nᵀ + τ² I
  # built here from the slopes; slope statistics as a caller computes them.
  n, k, d, sigma, tau = 7, 3, 5, 0.3, 0.05
  a = rng.normal(size=(n, k, d))
  means = rng.normal(size=(n, k))
  gram = a @ a.transpose(0, 2, 1)
  s = np.linalg.svd(a, compute_uv=False)
  info = mixture.information_from_slopes(means, gram, s, sigma, d=d,
                                         output_noise=tau, method="exact")
  covs = sigma**2 * gram + tau**2 * np.eye(k)
  exact = mixture.pairwise_bounds_exact(means, covs)
  h = [0.5 * np.linalg.slogdet(2 * np.pi * np.e * c)[1] for c in covs]
  np.testing.assert_allclose(info["h_cond"], np.mean(h), rtol=1e-10)
  for key in ("h_lower", "h_upper", "mi_lower", "mi_upper"):
    np.testing.assert_allclose(info[key], getattr(exact, key), rtol=1e-9, err_msg=key)
  np.testing.assert_allclose(info["output_noise"], tau, rtol=1e-12)
  with pytest.raises(ValueError, match="singular_values"):
    mixture.information_from_slopes(means, gram, s[:, :2], sigma, d=d)
  with pytest.raises(ValueError, match="not both"):
    mixture.check_noise_model(sigma, output_noise=0.1, relative_output_noise=0.1)
