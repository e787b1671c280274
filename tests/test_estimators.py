"""Tests of sslit.estimators against closed forms, float64 references and invariances."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import integrate

from sslit import estimators as est
from tests.reference import estimators as ref
from tests.reference import hlo

LOG_2PI_E = math.log(2 * math.pi * math.e)
SHAPES = [(2, 3), (5, 8), (12, 4), (7, 7)]  # includes n < k, n = 2, n = k
DISTANCES = ["kl", "bhattacharyya", "chernoff"]


def z_a(dtype=np.float32):
  i = np.arange(8)[:, None]
  j = np.arange(4)[None, :]
  return (np.sin(0.7 * i + 1.3 * j) + 0.1 * j).astype(dtype)


def random_spd(rng, n, k, *, spread=1.0):
  """n random well-conditioned SPD matrices [n, k, k] with varied scales."""
  a = rng.normal(size=(n, k, k))
  scales = np.exp(spread * rng.uniform(-1, 1, size=(n, 1, 1)))
  return scales * (a @ np.swapaxes(a, -1, -2) / k + 0.3 * np.eye(k))


def key(seed):
  # Threefry bit generation takes about a second to compile on a small CPU; the
  # RBG generator compiles in a tenth of that. The SPEC-table test keeps the default.
  return jax.random.key(seed, impl="rbg")


def square_means(s):
  return s * np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64)


# ----------------------------------------------------------------------------------
# SPEC §5 numbers.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spec_logdet_and_pairwise_oracles(dtype):
  with jax.enable_x64(dtype == np.float64):
    z = z_a(dtype)
    np.testing.assert_allclose(est.logdet_entropy(z, beta=1.0), 0.750650, atol=2e-6)
    assert est.gaussian_surrogate_entropy(z) == -np.inf  # rank 2
    n, k = z.shape
    for var, want in [(1.0, 6.804993), (0.1, 3.126151)]:
      forms = [var, np.full(n, var, dtype), np.broadcast_to(var * np.eye(k, dtype=dtype),
                                                            (n, k, k))]
      for covs in forms:
        got = est.pairwise_entropy(z, covs, distance="kl")
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, atol=2e-6 if dtype == np.float64 else 1e-5)


SPEC_TABLE = {  # s: (MC, Bhattacharyya, KL), H(Z|n) = -1.7673, variance 0.01
    0.0: (-1.7664, -1.7673, -1.7673),
    0.5: (-0.4171, -0.4670, -0.3810),
    1.0: (-0.3820, -0.3810, -0.3810),
    3.0: (-0.3804, -0.3810, -0.3810),
}


@pytest.mark.parametrize("s", sorted(SPEC_TABLE))
def test_spec_mixture_table(s, x64):
  mc_spec, bhat, kl = SPEC_TABLE[s]
  means = square_means(s)
  np.testing.assert_allclose(est.mixture_conditional_entropy(0.01, k=2), -1.7673,
                             atol=1e-4)
  np.testing.assert_allclose(est.pairwise_entropy(means, 0.01, distance="bhattacharyya"),
                             bhat, atol=1e-4)
  np.testing.assert_allclose(est.pairwise_entropy(means, 0.01, distance="kl"), kl,
                             atol=1e-4)
  # Monte Carlo: the SPEC's MC values are themselves noisy; compare both to the
  # reference's own estimate with a standard error from an independent run.
  truth, se = ref.mixture_entropy_mc(1, means, 0.01, 40000)
  mc = est.mixture_entropy_mc(jax.random.key(int(10 * s)), means, 0.01, num_samples=5000)
  assert abs(mc - truth) < 4 * se * math.sqrt(1 + 40000 / 20000)  # both runs' errors
  assert abs(mc_spec - truth) < 0.01


# ----------------------------------------------------------------------------------
# Float64 references on random inputs.


@pytest.mark.parametrize("n,k", SHAPES)
def test_batch_estimators_match_reference(n, k, rng, x64):
  z = rng.normal(size=(n, k)) * rng.uniform(0.5, 2.0, size=k)
  for beta in (0.0, 0.3, 1.0, 5.0):
    np.testing.assert_allclose(est.logdet_entropy(z, beta=beta),
                               ref.logdet_entropy(z, beta), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(est.effective_rank(z), ref.effective_rank(z), rtol=1e-10)
  np.testing.assert_allclose(est.gaussian_surrogate_entropy(z),
                             ref.gaussian_surrogate_entropy(z), rtol=1e-10)
  np.testing.assert_allclose(est.correlation_logdet(z), ref.correlation_logdet(z),
                             rtol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_gaussian_helpers_match_reference(k, rng, x64):
  covs = random_spd(rng, 3, k)
  np.testing.assert_allclose(est.gaussian_entropy(covs), ref.gaussian_entropy(covs),
                             rtol=1e-12)
  batched = covs.reshape(3, 1, k, k)
  assert est.gaussian_entropy(batched).shape == (3, 1)
  np.testing.assert_allclose(est.mixture_conditional_entropy(covs),
                             ref.mixture_conditional_entropy(covs, k), rtol=1e-12)
  var = rng.uniform(0.1, 3.0, size=4)
  np.testing.assert_allclose(est.mixture_conditional_entropy(var, k=k),
                             ref.mixture_conditional_entropy(var, k), rtol=1e-12)
  np.testing.assert_allclose(est.mixture_conditional_entropy(0.7, k=k),
                             ref.mixture_conditional_entropy(0.7, k), rtol=1e-12)
  if k > 1:
    for split in range(1, k):
      np.testing.assert_allclose(
          est.gaussian_mutual_information(covs[0], split=split),
          ref.gaussian_mutual_information(covs[0], split), rtol=1e-10, atol=1e-12)
  rho = rng.uniform(-0.95, 0.95, size=k)
  np.testing.assert_allclose(est.barlow_gaussian_mi(rho), ref.barlow_gaussian_mi(rho),
                             rtol=1e-12)


@pytest.mark.parametrize("n,k", [(2, 3), (5, 2)])
@pytest.mark.parametrize("form", ["scalar", "each", "full"])
def test_pairwise_matches_reference(n, k, form, rng, x64):
  means = rng.normal(size=(n, k))
  covs = {"scalar": 0.4, "each": rng.uniform(0.2, 2.0, size=n),
          "full": random_spd(rng, n, k)}[form]
  for distance, alpha in [("kl", 0.5), ("bhattacharyya", 0.5), ("chernoff", 0.3),
                          ("chernoff", 0.8)]:
    got = est.pairwise_entropy(means, covs, distance=distance, alpha=alpha)
    want = ref.pairwise_entropy(means, covs, distance, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=f"{distance} {alpha}")


def test_mc_matches_quadrature_1d(x64):
  means = np.array([[-1.0], [0.2], [0.5]])
  covs = np.array([0.3, 0.05, 1.2])
  dens = lambda x: np.mean(np.exp(-(x - means[:, 0])**2 / (2 * covs))
                           / np.sqrt(2 * np.pi * covs))
  exact = integrate.quad(lambda x: -dens(x) * np.log(dens(x)), -15, 15, limit=200)[0]
  mc = est.mixture_entropy_mc(key(3), means, covs, num_samples=20000)
  _, se = ref.mixture_entropy_mc(0, means, covs, 60000)
  assert abs(mc - exact) < 4 * se  # se: iid draws as many as the stratified ones
  # A full [n, 1, 1] form draws the same samples and must give the same number.
  mc_full = est.mixture_entropy_mc(key(3), means, covs[:, None, None],
                                   num_samples=20000)
  np.testing.assert_allclose(mc_full, mc, rtol=1e-12)


# ----------------------------------------------------------------------------------
# Bounds and exactness.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_sandwich_mc_heteroscedastic(seed, x64):
  rng = np.random.default_rng(seed)
  n, k = 5, 3
  means = rng.normal(size=(n, k)) * 1.5
  covs = random_spd(rng, n, k, spread=1.5) * 0.5
  upper = est.pairwise_entropy(means, covs, distance="kl")
  lower = est.pairwise_entropy(means, covs, distance="bhattacharyya")
  lower_c = est.pairwise_entropy(means, covs, distance="chernoff", alpha=0.3)
  truth, se = ref.mixture_entropy_mc(seed, means, covs, 40000)
  mc = est.mixture_entropy_mc(key(seed), means, covs, num_samples=8000)
  assert abs(mc - truth) < 5 * se * math.sqrt(2)
  assert lower <= truth + 4 * se and lower_c <= truth + 4 * se
  assert truth <= upper + 4 * se
  assert lower < upper  # components overlap here: the bounds are not both exact
  h_cond = est.mixture_conditional_entropy(covs)
  assert h_cond <= lower and upper <= h_cond + math.log(n) + 1e-12


@pytest.mark.parametrize("distance", DISTANCES)
def test_bounds_exact_coincident_and_separated(distance, rng, x64):
  n, k = 4, 3
  cov = random_spd(rng, 1, k)[0]
  covs = np.broadcast_to(cov, (n, k, k))
  mu = rng.normal(size=(1, k))
  coincident = est.pairwise_entropy(np.repeat(mu, n, 0), covs, distance=distance,
                                    alpha=0.3)
  np.testing.assert_allclose(coincident, ref.gaussian_entropy(cov), rtol=1e-12)
  covs_h = random_spd(rng, n, k)
  far = est.pairwise_entropy(1e4 * rng.normal(size=(n, k)), covs_h, distance=distance,
                             alpha=0.3)
  np.testing.assert_allclose(far, np.mean(ref.gaussian_entropy(covs_h)) + math.log(n),
                             rtol=1e-12)


# ----------------------------------------------------------------------------------
# Closed forms and invariances.


@pytest.mark.parametrize("a", [0.1, -2.0, 7.0])
def test_gaussian_entropy_scaling(a, rng, x64):
  k = 4
  cov = random_spd(rng, 1, k)[0]
  np.testing.assert_allclose(est.gaussian_entropy(a * a * cov),
                             est.gaussian_entropy(cov) + k * math.log(abs(a)), rtol=1e-12)
  np.testing.assert_allclose(est.gaussian_entropy(np.eye(k)), 0.5 * k * LOG_2PI_E,
                             rtol=1e-14)
  # The pairwise divergences are affine invariant: the mixture estimate scales too.
  means = rng.normal(size=(5, k))
  covs = random_spd(rng, 5, k)
  for distance in DISTANCES:
    np.testing.assert_allclose(
        est.pairwise_entropy(a * means, a * a * covs, distance=distance),
        est.pairwise_entropy(means, covs, distance=distance) + k * math.log(abs(a)),
        rtol=1e-10)


@pytest.mark.parametrize("rho", [-0.9, 0.0, 0.3, 0.99])
def test_bivariate_mutual_information(rho, x64):
  want = -0.5 * math.log(1 - rho * rho)
  for s1, s2 in [(1.0, 1.0), (0.3, 5.0)]:
    cov = np.array([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])
    np.testing.assert_allclose(est.gaussian_mutual_information(cov, split=1), want,
                               atol=1e-12)
  np.testing.assert_allclose(est.barlow_gaussian_mi(rho), want, atol=1e-12)
  np.testing.assert_allclose(est.barlow_gaussian_mi(np.array([rho, rho, 0.0])),
                             2 * want, atol=1e-12)


def test_effective_rank_and_correlation_closed_forms(rng, x64):
  # Orthogonal columns with equal norms: effective rank = rank = 3, R = I.
  q, _ = np.linalg.qr(rng.normal(size=(10, 3)))
  q = q - q.mean(0)  # keep columns centred; re-orthonormalise them
  q, _ = np.linalg.qr(q)
  np.testing.assert_allclose(est.effective_rank(q), 3.0, rtol=1e-10)
  np.testing.assert_allclose(est.correlation_logdet(q * [1.0, 5.0, 0.1]), 0.0, atol=1e-10)
  assert est.effective_rank(np.ones((6, 4))) == 0.0  # full collapse
  z = rng.normal(size=(20, 4))
  scale = np.array([3.0, 0.2, 1.0, 10.0])
  np.testing.assert_allclose(est.correlation_logdet(z * scale + 2.0),
                             est.correlation_logdet(z), rtol=1e-10)
  assert est.correlation_logdet(z) < 0
  z_const = z.copy()
  z_const[:, 1] = 4.0
  assert est.correlation_logdet(z_const) == -np.inf
  assert est.gaussian_surrogate_entropy(z_const) == -np.inf
  # Gaussian surrogate = gaussian_entropy of the unbiased covariance.
  np.testing.assert_allclose(est.gaussian_surrogate_entropy(z),
                             est.gaussian_entropy(np.cov(z, rowvar=False)), rtol=1e-10)


def test_covariance_forms_agree(rng, x64):
  n, k = 6, 3
  means = rng.normal(size=(n, k))
  var = 0.7
  forms = [var, np.full(n, var), np.broadcast_to(var * np.eye(k), (n, k, k))]
  each = rng.uniform(0.2, 2.0, size=n)
  forms_each = [each, each[:, None, None] * np.eye(k)]
  # (Every form and distance is also checked against the reference separately.)
  vals = [est.pairwise_entropy(means, c, distance="kl") for c in forms]
  np.testing.assert_allclose(vals, vals[0], rtol=1e-12)
  vals = [est.pairwise_entropy(means, c, distance="chernoff", alpha=0.3)
          for c in forms_each]
  np.testing.assert_allclose(vals[1], vals[0], rtol=1e-12)
  k0 = key(0)
  mcs = [est.mixture_entropy_mc(k0, means, c, num_samples=50) for c in forms]
  np.testing.assert_allclose(mcs, mcs[0], rtol=1e-12)
  conds = [est.mixture_conditional_entropy(c, k=k) for c in forms]
  np.testing.assert_allclose(conds, conds[0], rtol=1e-12)


def test_permutation_invariance(rng, x64):
  means = rng.normal(size=(6, 3))
  covs = random_spd(rng, 6, 3)
  perm = rng.permutation(6)
  for distance in DISTANCES:
    np.testing.assert_allclose(est.pairwise_entropy(means[perm], covs[perm],
                                                    distance=distance),
                               est.pairwise_entropy(means, covs, distance=distance),
                               rtol=1e-12)
  z = rng.normal(size=(9, 5))
  np.testing.assert_allclose(est.logdet_entropy(z[rng.permutation(9)]),
                             est.logdet_entropy(z), rtol=1e-12)


# ----------------------------------------------------------------------------------
# Transformations: jit, vmap, dtypes, gradients.


def test_jit_equals_eager(rng):
  z = rng.normal(size=(6, 9)).astype(np.float32)
  covs = random_spd(rng, 6, 9).astype(np.float32)
  cases = [
      (lambda z: est.logdet_entropy(z, beta=0.5), (z,)),
      (est.effective_rank, (z,)),
      (est.gaussian_surrogate_entropy, (z.T[:, :4],)),
      (est.correlation_logdet, (z.T[:, :4],)),
      (est.gaussian_entropy, (covs,)),
      (lambda m: est.pairwise_entropy(m, 0.5), (z,)),
      (lambda c: est.gaussian_mutual_information(c, split=4), (covs,)),
      (lambda m, c: est.mixture_entropy_mc(key(1), m, c, num_samples=7,
                                           chunk_size=5), (z, 0.3)),
  ]
  for fn, args in cases:
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=2e-5, atol=1e-5)


def test_vmap(rng, x64):
  zs = rng.normal(size=(3, 5, 4))
  np.testing.assert_allclose(jax.vmap(est.logdet_entropy)(zs),
                             [est.logdet_entropy(z) for z in zs], rtol=1e-12)
  np.testing.assert_allclose(jax.vmap(est.effective_rank)(zs),
                             [est.effective_rank(z) for z in zs], rtol=1e-12)
  covs = random_spd(rng, 3, 4)
  for distance in ("kl",):
    batched = jax.vmap(lambda m, c: est.pairwise_entropy(m, c, distance=distance))
    got = batched(zs, np.broadcast_to(covs[:, None], (3, 5, 4, 4)))
    want = [est.pairwise_entropy(z, np.broadcast_to(c, (5, 4, 4)), distance=distance)
            for z, c in zip(zs, covs)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
  var = np.array([0.2, 1.0, 3.0])
  np.testing.assert_allclose(jax.vmap(est.pairwise_entropy)(zs, var),
                             [est.pairwise_entropy(z, v) for z, v in zip(zs, var)],
                             rtol=1e-12)
  # One key for every mixture: RBG bits are only vmap-invariant when unbatched.
  got = jax.vmap(lambda m: est.mixture_entropy_mc(key(0), m, 0.3, num_samples=20))(zs)
  want = [est.mixture_entropy_mc(key(0), z, 0.3, num_samples=20) for z in zs]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_float32_close_to_float64(rng):
  z64 = rng.normal(size=(10, 6))
  means64 = rng.normal(size=(8, 4))
  covs64 = random_spd(rng, 8, 4)
  fns = [
      (lambda z, m, c: est.logdet_entropy(z), 1e-5),
      (lambda z, m, c: est.effective_rank(z), 1e-5),
      (lambda z, m, c: est.gaussian_surrogate_entropy(z), 1e-5),
      (lambda z, m, c: est.correlation_logdet(z), 1e-4),
      (lambda z, m, c: est.pairwise_entropy(m, 0.3), 1e-5),
      (lambda z, m, c: est.pairwise_entropy(m, c, distance="kl"), 1e-5),
      (lambda z, m, c: est.pairwise_entropy(m, c, distance="chernoff", alpha=0.2), 1e-5),
      (lambda z, m, c: est.mixture_conditional_entropy(c), 1e-5),
  ]
  args32 = [a.astype(np.float32) for a in (z64, means64, covs64)]
  for fn, tol in fns:
    got = fn(*args32)
    assert got.dtype == jnp.float32
    with jax.enable_x64(True):
      want = fn(z64, means64, covs64)
      assert want.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("n,k", [(3, 5), (6, 4)])
def test_gradients_logdet(n, k, rng, x64):
  z = rng.normal(size=(n, k))
  check_grads(lambda z: est.logdet_entropy(z, beta=0.7), (z,), order=1,
              modes=("fwd", "rev"))


def test_gradients_pairwise(rng, x64):
  n, k = 4, 3
  z = rng.normal(size=(n, k))
  var = rng.uniform(0.3, 2.0, size=n)
  covs = random_spd(rng, n, k)
  check_grads(lambda m, s: est.pairwise_entropy(m, s), (z, 0.5), order=1,
              modes=("rev",))
  check_grads(lambda m, v: est.pairwise_entropy(m, v, distance="chernoff", alpha=0.3),
              (z, var), order=1, modes=("rev",))
  for distance in ("kl", "chernoff"):
    check_grads(lambda m, c: est.pairwise_entropy(m, c, distance=distance, alpha=0.3),
                (z, covs), order=1, modes=("rev",))


def test_gradients_finite_at_collapse(x64):
  z = np.ones((4, 6))
  for fn in (est.logdet_entropy, lambda z: est.pairwise_entropy(z, 0.1),
             lambda z: est.pairwise_entropy(z, 0.1, distance="bhattacharyya")):
    g = jax.grad(fn)(z)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, 0.0, atol=1e-12)  # stationary by symmetry


# ----------------------------------------------------------------------------------
# Memory: the isotropic path never forms [n, n, k].


def _intermediate_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, "shape", ()))
    for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
      yield from _intermediate_shapes(sub)
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None and hasattr(inner, "eqns"):
        yield from _intermediate_shapes(inner)
      elif hasattr(param, "eqns"):
        yield from _intermediate_shapes(param)


def _largest_intermediate(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return max(math.prod(s) for s in _intermediate_shapes(jaxpr))


@pytest.mark.parametrize("distance", DISTANCES)
def test_isotropic_path_memory(distance):
  n, k = 12, 7
  means = jnp.zeros((n, k))
  for covs in (0.5, jnp.ones(n)):
    largest = _largest_intermediate(
        lambda m: est.pairwise_entropy(m, covs, distance=distance), means)
    assert largest <= max(n * n, n * k), largest
  # The inspection itself can fail: a naive pairwise difference is caught.
  naive = lambda m: jnp.sum(jnp.square(m[:, None] - m[None]))
  assert _largest_intermediate(naive, means) == n * n * k


# ----------------------------------------------------------------------------------
# Bad input.


def test_bad_input():
  z = jnp.ones((5, 3))
  with pytest.raises(ValueError, match=r"\[n, k\].*\(5,\)"):
    est.logdet_entropy(jnp.ones(5))
  with pytest.raises(ValueError, match="n=1"):
    est.logdet_entropy(jnp.ones((1, 3)))
  with pytest.raises(TypeError, match="int32"):
    est.logdet_entropy(jnp.ones((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="beta"):
    est.logdet_entropy(z, beta=-1.0)
  with pytest.raises(ValueError, match="distance 'euclid'"):
    est.pairwise_entropy(z, 1.0, distance="euclid")
  with pytest.raises(ValueError, match=r"\(4,\).*n=5"):
    est.pairwise_entropy(z, jnp.ones(4))
  with pytest.raises(ValueError, match=r"\(5, 2, 2\).*\[5, 3, 3\]"):
    est.pairwise_entropy(z, jnp.ones((5, 2, 2)))
  with pytest.raises(ValueError, match=r"\(3, 3\).*covs\[None\]"):
    est.pairwise_entropy(z, jnp.eye(3))
  with pytest.raises(TypeError, match="int32"):
    est.pairwise_entropy(z, jnp.ones(5, jnp.int32))
  with pytest.raises(TypeError, match="int32"):
    est.pairwise_entropy(jnp.ones((5, 3), jnp.int32), 1.0)
  with pytest.raises(ValueError, match="covs must be > 0"):
    est.pairwise_entropy(z, 0.0)
  with pytest.raises(ValueError, match="alpha"):
    est.pairwise_entropy(z, 1.0, distance="chernoff", alpha=1.5)
  with pytest.raises(ValueError, match=r"\[\.\.\., k, k\].*\(3, 4\)"):
    est.gaussian_entropy(jnp.ones((3, 4)))
  with pytest.raises(TypeError, match="int32"):
    est.gaussian_entropy(jnp.eye(3, dtype=jnp.int32))
  with pytest.raises(ValueError, match=r"split.*\[1, 2\]"):
    est.gaussian_mutual_information(jnp.eye(3), split=3)
  with pytest.raises(ValueError, match="k \\(the dimension"):
    est.mixture_conditional_entropy(jnp.ones(4))
  with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\[2, 4, 4\]"):
    est.mixture_conditional_entropy(jnp.ones((2, 3, 3)), k=4)
  with pytest.raises(TypeError, match="key"):
    est.mixture_entropy_mc(0, z, 1.0, num_samples=3)
  with pytest.raises(ValueError, match="num_samples"):
    est.mixture_entropy_mc(jax.random.key(0), z, 1.0, num_samples=0)
  with pytest.raises(ValueError, match=r"\[n, k\].*\(2, 3, 4\)"):
    est.effective_rank(jnp.ones((2, 3, 4)))
  with pytest.raises(ValueError, match="n=1"):
    est.gaussian_surrogate_entropy(jnp.ones((1, 4)))
  with pytest.raises(TypeError, match="int"):
    est.correlation_logdet(jnp.ones((6, 2), jnp.int32))
  with pytest.raises(TypeError, match="int"):
    est.barlow_gaussian_mi(jnp.zeros(3, jnp.int32))


def test_blocked_evaluation_matches(rng, x64):
  # Rows of pairs one at a time for full covariances, and Monte-Carlo densities in
  # chunks of 5 samples (42 padded to 45), give the unblocked numbers.
  n, k = 7, 3
  means = rng.normal(size=(n, k))
  covs = random_spd(rng, n, k)
  for distance in ("kl", "bhattacharyya"):
    np.testing.assert_allclose(est.pairwise_entropy(means, covs, distance=distance),
                               ref.pairwise_entropy(means, covs, distance), rtol=1e-10)
  whole = est.mixture_entropy_mc(key(2), means, covs, num_samples=6)
  chunked = est.mixture_entropy_mc(key(2), means, covs, num_samples=6, chunk_size=5)
  np.testing.assert_allclose(chunked, whole, rtol=1e-12)


def test_sharded_equals_unsharded(rng):
  # Objectives call these on a batch-sharded global batch inside the training step.
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  z = rng.normal(size=(8, 5)).astype(np.float32)
  spec = jax.sharding.PartitionSpec("data")
  z_sharded = jax.device_put(z, jax.sharding.NamedSharding(mesh, spec))
  for fn in (est.logdet_entropy, lambda z: est.pairwise_entropy(z, 0.5)):
    np.testing.assert_allclose(jax.jit(fn)(z_sharded), fn(z), rtol=1e-5)


# ----------------------------------------------------------------------------------
# Non-positive variances (a concrete value raises, a traced one cannot be checked).


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_component_variances_raise(bad):
  z = jnp.ones((4, 2))
  each = np.ones(4)
  each[2] = bad
  full = np.tile(np.eye(2), (4, 1, 1))
  full[1, 1, 1] = bad
  for fn in [lambda c: est.pairwise_entropy(z, c),
             lambda c: est.mixture_entropy_mc(key(0), z, c, num_samples=1),
             lambda c: est.mixture_conditional_entropy(c, k=2)]:
    with pytest.raises(ValueError, match=rf"covs.*covs\[2\] = {bad}"):
      fn(jnp.asarray(each))
    with pytest.raises(ValueError, match=rf"covs.*covs\[1, 1, 1\] = {bad}"):
      fn(jnp.asarray(full))
  with pytest.raises(ValueError, match="covs must be > 0"):
    est.pairwise_entropy(z, jnp.float32(bad))


def test_traced_variances_still_jit(rng):
  means = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  var = jnp.asarray(rng.uniform(0.5, 2.0, size=5), jnp.float32)
  jitted = jax.jit(lambda v: est.pairwise_entropy(means, v))(var)
  np.testing.assert_allclose(jitted, est.pairwise_entropy(means, var), rtol=1e-6)


# ----------------------------------------------------------------------------------
# Kozachenko-Leonenko and KoLeo.


@pytest.mark.parametrize("k", [1, 3])
def test_kozachenko_leonenko_matches_reference(k, rng, x64):
  x = rng.normal(size=(40, 3)) * np.array([1.0, 0.3, 2.0])
  np.testing.assert_allclose(est.kozachenko_leonenko_entropy(x, k=k),
                             ref.kozachenko_leonenko(x, k=k), rtol=1e-10)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) + np.diag(np.full(40, np.inf))
  np.testing.assert_allclose(est.nearest_neighbor_distances(x, k=k),
                             np.sort(d, axis=1)[:, k - 1], rtol=1e-10)


def _rms_errors(sample, truth, sizes, seeds=3):
  out = []
  for n in sizes:
    errs = [float(est.kozachenko_leonenko_entropy(
        sample(np.random.default_rng(s), n).astype(np.float32))) - truth
            for s in range(seeds)]
    out.append(math.sqrt(np.mean(np.square(errs))))
  return out


def test_kozachenko_leonenko_converges_to_closed_forms():
  # Gaussian N(0, S) in 2-D: H = 1/2 log det(2 pi e S); uniform on a 3-D box of sides
  # a: H = sum log a. The error (RMS over 3 seeds) shrinks from n = 500 to n = 4000.
  cov = np.array([[1.0, 0.6], [0.6, 2.0]])
  chol = np.linalg.cholesky(cov)
  gauss = _rms_errors(lambda r, n: r.normal(size=(n, 2)) @ chol.T,
                      0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1], [500, 4000])
  sides = np.array([1.0, 2.0, 0.5])
  box = _rms_errors(lambda r, n: r.uniform(size=(n, 3)) * sides,
                    float(np.sum(np.log(sides))), [500, 4000])
  for (e500, e4000), tol in [(gauss, 0.05), (box, 0.08)]:
    assert e4000 < 0.7 * e500 and e4000 < tol, (gauss, box)


def test_koleo_matches_reference_and_is_scale_free(rng, x64):
  z = rng.normal(size=(9, 4))
  np.testing.assert_allclose(est.koleo_loss(z), _ref_koleo(z), rtol=1e-10)
  np.testing.assert_allclose(est.koleo_loss(3.0 * z), est.koleo_loss(z), rtol=1e-10)
  g = jax.grad(lambda x: est.koleo_loss(x))(jnp.ones((4, 3)))  # all rows equal
  assert np.all(np.isfinite(g))


def _ref_koleo(z):
  from tests.reference import objectives as ref_obj  # pylint: disable=g-import-not-at-top
  return ref_obj.koleo(z)


def test_nearest_neighbor_bad_input():
  with pytest.raises(ValueError, match="n=2"):
    est.kozachenko_leonenko_entropy(jnp.ones((2, 3)), k=2)
  with pytest.raises(ValueError, match="k must be a positive int"):
    est.nearest_neighbor_distances(jnp.ones((4, 3)), k=0)


def test_batches_of_matrices_are_factored_one_at_a_time(rng):
  # jaxlib 0.10's batched LAPACK kernels can deadlock XLA:CPU when two run at once
  # (sslit.parallel.per_matrix): none of these programs hands one > 1 matrix.
  n, k = 6, 4
  means = jnp.asarray(rng.normal(size=(n, k)), jnp.float32)
  covs = jnp.asarray(random_spd(rng, n, k), jnp.float32)
  calls = {
      "gaussian_entropy": lambda: est.gaussian_entropy(covs),
      "gaussian_mutual_information": lambda: est.gaussian_mutual_information(
          covs, split=2),
      "mixture_conditional_entropy": lambda: est.mixture_conditional_entropy(covs),
      "pairwise_entropy kl": lambda: est.pairwise_entropy(means, covs),
      "pairwise_entropy bhattacharyya": lambda: est.pairwise_entropy(
          means, covs, distance="bhattacharyya"),
  }
  for name, call in calls.items():
    text = jax.jit(call).lower().compile().as_text()
    assert "lapack_" in text, name
    assert hlo.batched_lapack_calls(text) == [], name
