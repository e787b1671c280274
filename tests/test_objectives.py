"""sslit.objectives: SPEC numbers, float64 NumPy oracles, gradients, invariances."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sslit import objectives as obj
from tests.reference import objectives as ref

# (sslit function, reference, keyword options) for every two-view objective.
PAIR_CASES = {
    "vicreg": (obj.vicreg_loss, ref.vicreg, {}),
    "vicreg_gamma2": (obj.vicreg_loss, ref.vicreg,
                      dict(sim_coeff=3.0, std_coeff=2.0, cov_coeff=0.5, gamma=2.0)),
    "vicreg_paper": (obj.vicreg_paper_loss, ref.vicreg_paper, {}),
    "infonce": (obj.infonce_loss, ref.infonce, {}),
    "infonce_t05": (obj.infonce_loss, ref.infonce, dict(temperature=0.5)),
    "barlow": (obj.barlow_twins_loss, ref.barlow_twins, {}),
    "barlow_l1": (obj.barlow_twins_loss, ref.barlow_twins, dict(lambda_offdiag=1.0)),
    "byol": (obj.byol_loss, ref.byol, {}),
}

# Options of the information family checked against the reference.
INFO_CASES = {
    "logdet": dict(entropy="logdet"),
    "logdet_beta_keep": dict(entropy="logdet", beta=0.3, keep_variance_covariance=True),
    "kl": dict(entropy="pairwise_kl"),
    "bhat_var": dict(entropy="pairwise_bhattacharyya", pairwise_variance=0.7),
    "kl_sqdist_norm": dict(entropy="pairwise_kl", invariance="squared_distance",
                           normalize=True),
    "logdet_cos_norm": dict(entropy="logdet", invariance="cosine", normalize=True,
                            entropy_coeff=0.5),
    "koleo_cos": dict(entropy="koleo", invariance="cosine"),
}

SHAPES = [(8, 4), (2, 5), (5, 12), (17, 3)]
# Option variants (left out of the gradient checks, which take the defaults).
VARIANTS = {"vicreg_gamma2", "infonce_t05", "barlow_l1", "bhat_var", "logdet_cos_norm",
            "kl_sqdist_norm"}


_JIT_CACHE = {}


def _jitted(fn, **opts):
  """One jitted function per (fn, options): compiled programs are reused across tests
  (jit = eager is tested on its own, below)."""
  key = (fn, tuple(sorted(opts.items())))
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(functools.partial(fn, **opts))
  return _JIT_CACHE[key]


def _objective(name):
  """The jitted ``fn`` of a registered objective."""
  key = ("objective", name)
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(obj.get_objective(name).fn)
  return _JIT_CACHE[key]


def _views(rng, n, k, dtype=np.float64):
  z_a = rng.normal(size=(n, k))
  z_b = z_a + 0.7 * rng.normal(size=(n, k)) + 0.3
  return z_a.astype(dtype), z_b.astype(dtype)


def _info_ref(z_a, z_b, opts):
  opts = dict(opts)
  opts.setdefault("sim_coeff", 25.0)
  opts.setdefault("entropy_coeff", obj.DEFAULT_ENTROPY_COEFF[opts["entropy"]])
  return ref.information(z_a, z_b, **opts)


def _assert_matches(loss, aux, expected, rtol=1e-10, atol=1e-10, case=""):
  np.testing.assert_allclose(float(loss), expected["loss"], rtol=rtol, atol=atol,
                             err_msg=f"{case} loss")
  assert set(aux) | {"loss"} == set(expected), case
  for name, value in aux.items():
    np.testing.assert_allclose(float(value), expected[name], rtol=rtol, atol=atol,
                               err_msg=f"{case} {name}")


# ---------------------------------------------------------------------------------
# SPEC numbers.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spec_vicreg_oracle(dtype, x64):
  z_a, z_b = ref.spec_views()
  loss, aux = _jitted(obj.vicreg_loss)(z_a.astype(dtype), z_b.astype(dtype))
  tol = 1e-6 if dtype == np.float64 else 2e-6
  np.testing.assert_allclose(float(loss), 21.855908, rtol=tol)
  np.testing.assert_allclose(float(aux["invariance"]), 0.561411, rtol=tol, atol=1e-6)
  np.testing.assert_allclose(float(aux["variance"]), 0.282244, rtol=tol, atol=1e-6)
  np.testing.assert_allclose(float(aux["covariance"]), 0.764546, rtol=tol, atol=1e-6)
  # The total is the weighted sum of the terms (the quoted terms are rounded).
  np.testing.assert_allclose(
      float(loss), 25 * aux["invariance"] + 25 * aux["variance"] + aux["covariance"],
      rtol=1e-6)


def test_spec_entropy_numbers_through_information_loss(x64):
  z_a, z_b = ref.spec_views()
  _, aux = _jitted(obj.information_loss)(z_a, z_b)
  np.testing.assert_allclose(float(aux["entropy_a"]), 0.750650, atol=1e-6)
  for var, want in [(1.0, 6.804993), (0.1, 3.126151)]:
    _, aux = _jitted(obj.information_loss, entropy="pairwise_kl",
                     pairwise_variance=var)(z_a, z_b)
    np.testing.assert_allclose(float(aux["entropy_a"]), want, atol=1e-6)


def test_reference_reproduces_spec():
  # The oracle itself must agree with the SPEC before it is used as one.
  z_a, z_b = ref.spec_views()
  r = ref.vicreg(z_a, z_b)
  np.testing.assert_allclose([r["loss"], r["invariance"], r["variance"],
                              r["covariance"]],
                             [21.855908, 0.561411, 0.282244, 0.764546], atol=1e-6)
  np.testing.assert_allclose(ref.logdet_entropy(z_a), 0.750650, atol=1e-6)
  np.testing.assert_allclose(ref.pairwise_entropy_isotropic(z_a, 1.0), 6.804993,
                             atol=1e-6)


# ---------------------------------------------------------------------------------
# Float64 references on several shapes (including n < k and n = 2).


def _all_cases_fn(table, base=None):
  """One jitted program evaluating every case of ``table`` (one compile per shape)."""
  def run(z_a, z_b):
    out = {}
    for case, entry in table.items():
      fn, opts = (entry[0], entry[2]) if base is None else (base, entry)
      out[case] = fn(z_a, z_b, **opts)
    return out
  return jax.jit(run)


_PAIR_ALL = _all_cases_fn(PAIR_CASES)
_INFO_ALL = _all_cases_fn(INFO_CASES, base=obj.information_loss)


@pytest.mark.parametrize("shape", SHAPES)
def test_pair_objectives_match_reference(shape, rng, x64):
  z_a, z_b = _views(rng, *shape)
  results = _PAIR_ALL(z_a, z_b)
  for case, (_, reference, opts) in PAIR_CASES.items():
    loss, aux = results[case]
    assert loss.dtype == jnp.float64
    _assert_matches(loss, aux, reference(z_a, z_b, **opts), case=case)


@pytest.mark.parametrize("shape", SHAPES)
def test_information_loss_matches_reference(shape, rng, x64):
  z_a, z_b = _views(rng, *shape)
  results = _INFO_ALL(z_a, z_b)
  for case, opts in INFO_CASES.items():
    loss, aux = results[case]
    _assert_matches(loss, aux, _info_ref(z_a, z_b, opts), rtol=1e-9, atol=1e-9,
                    case=case)


@pytest.mark.parametrize("entropy", obj.ENTROPY_ESTIMATORS)
@pytest.mark.parametrize("shape", [(8, 4), (2, 5)])
def test_byol_information_matches_reference(entropy, shape, rng, x64):
  p_a, p_b, t_a, t_b, z_a, z_b = (rng.normal(size=shape) for _ in range(6))
  loss, aux = _jitted(obj.byol_information_loss, entropy=entropy)(
      p_a, p_b, t_a, t_b, z_a, z_b)
  want = ref.byol_information(
      p_a, p_b, t_a, t_b, z_a, z_b, entropy=entropy,
      entropy_coeff=obj.DEFAULT_BYOL_ENTROPY_COEFF[entropy])
  _assert_matches(loss, aux, want, rtol=1e-9, atol=1e-9)


def test_vicreg_paper_differs_from_code_convention(rng, x64):
  # Same invariance; different variance/covariance unless the views coincide.
  z_a, z_b = _views(rng, 16, 5)
  code_fn, paper_fn = _jitted(obj.vicreg_loss), _jitted(obj.vicreg_paper_loss)
  _, code = code_fn(z_a, z_b)
  _, paper = paper_fn(z_a, z_b)
  np.testing.assert_allclose(code["invariance"], paper["invariance"], rtol=1e-12)
  assert abs(float(code["covariance"]) - float(paper["covariance"])) > 1e-3
  # With z_a == z_b the pooled covariance is (n - 1)/(2n - 1) * 2 times the
  # per-branch one: C_pool = C * 2(n - 1)/(2n - 1).
  n = 16
  _, code = code_fn(z_a, z_a)
  _, paper = paper_fn(z_a, z_a)
  f = 2 * (n - 1) / (2 * n - 1)
  np.testing.assert_allclose(float(paper["covariance"]),
                             float(code["covariance"]) / 2 * f**2, rtol=1e-10)


# ---------------------------------------------------------------------------------
# Gradients.


def _pair_fns():
  fns = {name: functools.partial(fn, **opts)
         for name, (fn, _, opts) in PAIR_CASES.items()
         if name != "byol" and name not in VARIANTS}
  for name in ["logdet_beta_keep", "kl_sqdist_norm", "bhat_var", "koleo_cos"]:
    fns["information_" + name] = functools.partial(obj.information_loss,
                                                   **INFO_CASES[name])
  return fns


PAIR_FNS = _pair_fns()


def test_check_grads_pair(rng, x64):
  # One program returning every objective's loss: check_grads draws a random
  # cotangent per output, so each objective's gradient is checked (one compile).
  names = sorted(PAIR_FNS)
  z_a, z_b = _views(rng, 8, 4)
  f = jax.jit(lambda a, b: {name: PAIR_FNS[name](a, b)[0] for name in names})
  check_grads(f, (z_a, z_b), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_check_grads_byol_and_stop_gradient(rng, x64):
  p_a, z_b = _views(rng, 8, 4)
  fn = _jitted(obj.byol_loss)
  check_grads(lambda p: fn(p, z_b)[0], (p_a,), order=1, modes=["rev"], atol=1e-5,
              rtol=1e-5)
  g = jax.grad(lambda z: fn(p_a, z)[0])(z_b)
  np.testing.assert_array_equal(g, 0.0)


def test_check_grads_byol_kind(rng, x64):
  names = ["byol", "byol+logdet", "byol+pairdist"]
  fns = {name: obj.get_objective(name).fn for name in names}
  p_a, p_b, t_a, t_b, z_a, z_b = (rng.normal(size=(8, 4)) for _ in range(6))
  f = jax.jit(lambda pa, pb, za, zb: {
      name: fn(pa, pb, t_a, t_b, za, zb)[0] for name, fn in fns.items()})
  check_grads(f, (p_a, p_b, z_a, z_b), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
  # No gradient reaches the target projections.
  g = jax.jit(jax.grad(
      lambda ta, tb: sum(fn(p_a, p_b, ta, tb, z_a, z_b)[0] for fn in fns.values()),
      argnums=(0, 1)))(t_a, t_b)
  for gi in g:
    np.testing.assert_array_equal(gi, 0.0)


CANONICAL = sorted({obj.get_objective(n).name for n in obj.list_objectives()})


def _prototypes(p, k, dtype=jnp.float32):
  c = np.cos(np.arange(p)[:, None] * 1.7 + np.arange(k)[None, :] * 0.9)
  return jnp.asarray(c / np.linalg.norm(c, axis=1, keepdims=True), dtype)


def _call(o, a, b):
  """Call objective ``o`` with inputs of its kind built from two ``[n, k]`` views."""
  if o.kind == "pair":
    return o.fn(a, b)
  if o.kind == "byol":
    return o.fn(a, b, b, a, a, b)
  if o.kind in ("simsiam", "moco"):
    return o.fn(a, b, b, a)
  if o.kind == "dino":
    return o.fn(jnp.stack([a, b, 0.5 * a]), jnp.stack([b, a]),
                jnp.zeros(a.shape[1], a.dtype))
  if o.kind == "views":
    return o.fn(jnp.stack([a, b, 0.5 * a]), key=jax.random.key(0))
  assert o.kind == "swav", o.kind
  return o.fn(jnp.stack([a, b, 0.5 * a]), _prototypes(6, a.shape[1], a.dtype))


def _scalars(aux):
  return {k: v for k, v in aux.items() if k != "center"}


@jax.jit
def _all_objectives(z_a, z_b):
  """Loss, aux and input gradients of every canonical objective, in one program."""
  out = {}
  for name in CANONICAL:
    o = obj.get_objective(name)
    if name == "wmse":  # whitening a collapsed batch needs eps > 0 (tested below)
      o = obj.get_objective(name, eps=1e-3)
    f = lambda a, b, o=o: _call(o, a, b)
    (loss, aux), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(z_a, z_b)
    out[name] = (loss, _scalars(aux), grads)
  return out


@pytest.mark.parametrize("row", ["zeros", "constant"])
def test_finite_gradients_at_total_collapse(row):
  n, k = 8, 4
  base = np.zeros(k) if row == "zeros" else np.linspace(-1.0, 2.0, k)
  z = jnp.asarray(np.tile(base, (n, 1)), jnp.float32)
  for name, (loss, aux, grads) in _all_objectives(z, z).items():
    assert np.isfinite(loss), name
    assert all(np.isfinite(v) for v in aux.values()), name
    for g in grads:
      assert np.all(np.isfinite(g)), name


def test_finite_gradients_n_less_than_k_logdet(rng):
  grad = jax.jit(jax.grad(lambda a, b: obj.information_loss(a, b)[0], argnums=(0, 1)))
  z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(rng, 4, 64))
  # Random (rank n - 1 covariance) and rank-one batches, n < k.
  low_rank = jnp.outer(jnp.arange(4.0), jnp.ones(64))
  for a, b in [(z_a, z_b), (low_rank, low_rank + 0.1)]:
    assert all(np.all(np.isfinite(x)) for x in grad(a, b))


# ---------------------------------------------------------------------------------
# Invariances.


@pytest.mark.parametrize("name", ["vicreg", "vicreg_paper", "simclr", "barlow_twins",
                                  "information", "vicreg+pairdist", "byol",
                                  "byol+logdet", "byol+pairdist"])
def test_row_permutation_invariance(name, rng, x64):
  o = obj.get_objective(name)
  fn = _objective(name)
  perm = rng.permutation(8)
  if o.kind == "pair":
    args = _views(rng, 8, 4)
  else:
    args = tuple(rng.normal(size=(8, 4)) for _ in range(6))
  loss, aux = fn(*args)
  loss_p, aux_p = fn(*(x[perm] for x in args))
  np.testing.assert_allclose(loss_p, loss, rtol=1e-10)
  for key in aux:
    np.testing.assert_allclose(aux_p[key], aux[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vicreg", "vicreg_paper", "simclr", "barlow_twins",
                                  "information", "vicreg+pairdist"])
def test_view_swap_symmetry(name, rng, x64):
  fn = _objective(name)
  z_a, z_b = _views(rng, 8, 4)
  np.testing.assert_allclose(fn(z_b, z_a)[0], fn(z_a, z_b)[0], rtol=1e-10)


@pytest.mark.parametrize("name", ["byol", "byol+logdet"])
def test_byol_kind_view_swap_symmetry(name, rng, x64):
  fn = _objective(name)
  p_a, p_b, t_a, t_b, z_a, z_b = (rng.normal(size=(8, 4)) for _ in range(6))
  np.testing.assert_allclose(fn(p_b, p_a, t_b, t_a, z_b, z_a)[0],
                             fn(p_a, p_b, t_a, t_b, z_a, z_b)[0], rtol=1e-10)


def test_byol_loss_is_scale_free_and_asymmetric_in_gradient(rng, x64):
  p_a, z_b = _views(rng, 8, 4)
  fn = _jitted(obj.byol_loss)
  np.testing.assert_allclose(fn(3.0 * p_a, 0.5 * z_b)[0], fn(p_a, z_b)[0],
                             rtol=1e-12)


def test_jit_equals_eager(rng):
  z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(rng, 8, 4))
  jitted = _all_objectives(z_a, z_b)
  for name in CANONICAL:
    o = obj.get_objective(name, **({"eps": 1e-3} if name == "wmse" else {}))
    loss, aux = _call(o, z_a, z_b)
    aux = _scalars(aux)
    np.testing.assert_allclose(jitted[name][0], loss, rtol=2e-5, atol=1e-5,
                               err_msg=name)
    assert set(jitted[name][1]) == set(aux)


def test_sharded_equals_unsharded(rng):
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(rng, 8, 12))
  sa, sb = jax.device_put(z_a, sharding), jax.device_put(z_b, sharding)
  for name in ["vicreg", "simclr", "vicreg+logdet"]:
    fn = jax.jit(obj.get_objective(name).fn)
    np.testing.assert_allclose(fn(sa, sb)[0], fn(z_a, z_b)[0], rtol=1e-5,
                               atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------
# Scale: what keeps the information family from running away.


def test_logdet_family_has_finite_minimiser_in_scale(rng, x64):
  z_a = rng.normal(size=(20, 4))
  z_b = z_a + 0.05 * rng.normal(size=(20, 4))
  c = np.exp(np.linspace(np.log(0.01), np.log(1e3), 60))
  fn = _jitted(obj.information_loss)
  losses = np.array([float(fn(s * z_a, s * z_b)[0]) for s in c])
  best = int(np.argmin(losses))
  assert 0 < best < len(c) - 1
  # Closed form of the same curve: 25 c^2 mse - 1/2 sum log(1 + c^2 lambda_i), mean
  # over the branches, lambda the eigenvalues of the unbiased covariance.
  mse = np.mean((z_a - z_b) ** 2)
  lam = [np.linalg.eigvalsh(np.cov(z.T)) for z in (z_a, z_b)]
  closed = [25 * s**2 * mse - 0.25 * sum(np.sum(np.log1p(s**2 * l)) for l in lam)
            for s in c]
  np.testing.assert_allclose(losses, closed, rtol=1e-8, atol=1e-8)


def test_pairwise_entropy_is_bounded_by_log_n(rng, x64):
  # Far-separated rows: the estimate reaches H(Z|n) + log n and cannot grow further.
  n, k = 10, 3
  z_a, z_b = _views(rng, n, k)
  for entropy in ["pairwise_kl", "pairwise_bhattacharyya"]:
    _, aux = _jitted(obj.information_loss, entropy=entropy)(1e4 * z_a, 1e4 * z_b)
    h_comp = 0.5 * k * np.log(2 * np.pi * np.e * k)
    np.testing.assert_allclose(aux["entropy_a"], h_comp + np.log(n), rtol=1e-10)


def test_normalize_makes_entropy_scale_free(rng, x64):
  z_a, z_b = _views(rng, 8, 4)
  for entropy in obj.ENTROPY_ESTIMATORS:
    fn = _jitted(obj.information_loss, entropy=entropy, normalize=True)
    _, aux1 = fn(z_a, z_b)
    _, aux2 = fn(50 * z_a, 50 * z_b)
    np.testing.assert_allclose(aux2["entropy"], aux1["entropy"], rtol=1e-10)


def test_low_precision_inputs_are_upcast(rng):
  z_a, z_b = (jnp.asarray(z, jnp.bfloat16) for z in _views(rng, 8, 4))
  fn = _jitted(obj.vicreg_loss)
  loss, _ = fn(z_a, z_b)
  assert loss.dtype == jnp.float32
  want = fn(z_a.astype(jnp.float32), z_b.astype(jnp.float32))[0]
  np.testing.assert_allclose(loss, want, rtol=1e-6)


# ---------------------------------------------------------------------------------
# Bad input.

ALL_PAIR = [obj.vicreg_loss, obj.vicreg_paper_loss, obj.infonce_loss,
            obj.barlow_twins_loss, obj.byol_loss, obj.information_loss]


@pytest.mark.parametrize("fn", ALL_PAIR, ids=lambda f: f.__name__)
def test_bad_input(fn):
  ok = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"\[n, k\].*\(12,\)"):
    fn(jnp.ones(12), jnp.ones(12))
  with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 5\)"):
    fn(ok, jnp.ones((4, 5)))
  with pytest.raises(ValueError, match=r"n=1.*\(1, 3\)"):
    fn(jnp.ones((1, 3)), jnp.ones((1, 3)))
  with pytest.raises(TypeError, match="int32"):
    fn(jnp.ones((4, 3), jnp.int32), ok)


def test_bad_options():
  z = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="entropy.*logdet"):
    obj.information_loss(z, z, entropy="knn")
  with pytest.raises(ValueError, match="invariance.*mse"):
    obj.information_loss(z, z, invariance="l1")
  with pytest.raises(ValueError, match="temperature"):
    obj.infonce_loss(z, z, temperature=0.0)
  with pytest.raises(ValueError, match="pairwise_variance"):
    obj.information_loss(z, z, entropy="pairwise_kl", pairwise_variance=-1.0)
  with pytest.raises(ValueError, match=r"z_a.*\(5, 3\).*p_a.*\(4, 3\)"):
    obj.byol_information_loss(z, z, z, z, jnp.ones((5, 3)), jnp.ones((5, 3)))
  with pytest.raises(ValueError, match=r"p_b.*\(4, 3\).*t_a.*\(4, 2\)"):
    obj.byol_pair_loss(z, z, jnp.ones((4, 2)), z)


# ---------------------------------------------------------------------------------
# Registry.


def test_registry_round_trip_and_kinds(rng):
  names = obj.list_objectives()
  for required in ["vicreg", "vicreg_paper", "simclr", "infonce", "barlow_twins",
                   "barlow", "byol", "information", "vicreg+logdet",
                   "vicreg+pairdist", "byol+logdet", "byol+pairdist"]:
    assert required in names
  z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(rng, 8, 4))
  for name in names:
    o = obj.get_objective(name)
    assert isinstance(o, obj.Objective)
    assert o.kind in obj.KIND_STATE
    again = obj.get_objective(o.name, **o.fn.keywords)
    assert again.name == o.name and again.kind == o.kind
    np.testing.assert_array_equal(_call(again, z_a, z_b)[0], _call(o, z_a, z_b)[0])
  assert obj.get_objective("infonce").name == "simclr"
  assert obj.get_objective("barlow").name == "barlow_twins"
  assert obj.get_objective("mocov3").name == "moco_v3"
  kinds = {n: obj.get_objective(n).kind for n in names}
  assert {n for n, k in kinds.items() if k == "byol"} == {
      "byol", "byol+logdet", "byol+pairdist", "byol+koleo"}
  assert {n: kinds[n] for n in ["simsiam", "moco_v3", "dino", "swav", "wmse", "mmcr",
                                "vicreg+koleo"]} == {
      "simsiam": "simsiam", "moco_v3": "moco", "dino": "dino", "swav": "swav",
      "wmse": "pair", "mmcr": "pair", "vicreg+koleo": "pair"}
  assert obj.KIND_STATE["moco"] == ("ema", "predictor")
  assert obj.KIND_STATE["simsiam"] == ("predictor",)


def test_registry_presets_and_overrides(rng):
  z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(rng, 8, 4))
  o = obj.get_objective("vicreg", sim_coeff=1.0, gamma=2.0)
  np.testing.assert_array_equal(
      o.fn(z_a, z_b)[0], obj.vicreg_loss(z_a, z_b, sim_coeff=1.0, gamma=2.0)[0])
  o = obj.get_objective("vicreg+pairdist", entropy="pairwise_kl")
  np.testing.assert_array_equal(
      o.fn(z_a, z_b)[0], obj.information_loss(z_a, z_b, entropy="pairwise_kl")[0])
  assert obj.get_objective("vicreg+logdet").fn.keywords["entropy"] == "logdet"
  assert obj.get_objective("byol+pairdist").fn.keywords["entropy"].startswith(
      "pairwise")


def test_registry_errors():
  with pytest.raises(ValueError, match="unknown objective 'vicregg'.*vicreg"):
    obj.get_objective("vicregg")
  with pytest.raises(ValueError, match="temprature.*temperature"):
    obj.get_objective("simclr", temprature=0.2)
  with pytest.raises(ValueError, match="entropy.*logdet"):
    obj.get_objective("vicreg+logdet", entropy="knn")


# ---------------------------------------------------------------------------------
# SimSiam, MoCo v3, DINO, SwAV, W-MSE, MMCR.


def _extra_inputs(rng, n, k, num_views=3, num_protos=6):
  """Float64 inputs for every new objective: four [n, k] arrays, stacked views."""
  p_a, p_b, z_a, z_b = (rng.normal(size=(n, k)) for _ in range(4))
  views = rng.normal(size=(num_views, n, k))
  teacher = views[:2] + 0.3 * rng.normal(size=(2, n, k))
  center = 0.1 * rng.normal(size=k)
  protos = rng.normal(size=(num_protos, k))
  protos /= np.linalg.norm(protos, axis=1, keepdims=True)
  queue = rng.normal(size=(2, 3 * n, k))  # SwAV's queue: 3 earlier batches per crop
  return dict(p_a=p_a, p_b=p_b, z_a=z_a, z_b=z_b, views=views, teacher=teacher,
              center=center, protos=protos, queue=queue)


# name -> (jax call, reference call) on the inputs of _extra_inputs.
EXTRA_CASES = {
    "simsiam": (lambda x: obj.simsiam_loss(x["p_a"], x["p_b"], x["z_a"], x["z_b"]),
                lambda x: ref.simsiam(x["p_a"], x["p_b"], x["z_a"], x["z_b"])),
    "moco_v3": (lambda x: obj.moco_v3_loss(x["p_a"], x["p_b"], x["z_a"], x["z_b"]),
                lambda x: ref.moco_v3(x["p_a"], x["p_b"], x["z_a"], x["z_b"])),
    "dino": (lambda x: obj.dino_loss(x["views"], x["teacher"], x["center"]),
             lambda x: ref.dino(x["views"], x["teacher"], x["center"])),
    "dino_warm": (
        lambda x: obj.dino_loss(x["views"], x["teacher"][:1], x["center"],
                                teacher_temperature=0.04, center_momentum=0.5),
        lambda x: ref.dino(x["views"], x["teacher"][:1], x["center"],
                           teacher_temperature=0.04, center_momentum=0.5)),
    "swav": (lambda x: obj.swav_loss(x["views"], x["protos"]),
             lambda x: ref.swav(x["views"], x["protos"])),
    "swav_queue": (lambda x: obj.swav_loss(x["views"], x["protos"], queue=x["queue"]),
                   lambda x: ref.swav(x["views"], x["protos"], queue=x["queue"])),
    "swav_1global": (
        lambda x: obj.swav_loss(x["views"], x["protos"], num_global=1,
                                sinkhorn_iterations=5, epsilon=0.1),
        lambda x: ref.swav(x["views"], x["protos"], num_global=1,
                           sinkhorn_iterations=5, epsilon=0.1)),
    "mmcr": (lambda x: obj.mmcr_loss(x["z_a"], x["z_b"]),
             lambda x: ref.mmcr(x["z_a"], x["z_b"])),
    "mmcr_3views_local": (
        lambda x: obj.mmcr_loss(x["z_a"], x["z_b"], x["p_a"], local_coeff=0.3),
        lambda x: ref.mmcr(x["z_a"], x["z_b"], x["p_a"], local_coeff=0.3)),
}


@jax.jit
def _extra_all(x):
  return {name: fn(x) for name, (fn, _) in EXTRA_CASES.items()}


def test_extra_objectives_match_reference(rng, x64):
  # One shape, n < k (n > k: the gradient test); each compile costs seconds.
  x = _extra_inputs(rng, 5, 7)
  results = _extra_all(x)
  for name, (_, reference) in EXTRA_CASES.items():
    loss, aux = results[name]
    want = reference(x)
    if "center" in want:
      np.testing.assert_allclose(aux.pop("center"), want.pop("center"), rtol=1e-12)
    _assert_matches(loss, aux, want, rtol=1e-9, atol=1e-10, case=name)


@pytest.mark.parametrize("whitening_size,eps", [(None, 0.0), (6, 0.1)])
def test_wmse_matches_reference(whitening_size, eps, rng, x64):
  z_a, z_b = _views(rng, 12, 4)
  fn = _jitted(obj.wmse_loss, whitening_size=whitening_size, eps=eps)
  loss, aux = fn(z_a, z_b)
  _assert_matches(loss, aux, ref.wmse(z_a, z_b, whitening_size=whitening_size,
                                      eps=eps), rtol=1e-9, atol=1e-10)


def _numeric_grad(f, x, h=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return g


# name -> (loss as a function of the one input that gets a gradient, its reference).
def _grad_cases(x):
  return {
      "simsiam": (lambda p: obj.simsiam_loss(p, x["p_b"], x["z_a"], x["z_b"])[0],
                  lambda p: ref.simsiam(p, x["p_b"], x["z_a"], x["z_b"])["loss"]),
      "moco_v3": (lambda q: obj.moco_v3_loss(q, x["p_b"], x["z_a"], x["z_b"])[0],
                  lambda q: ref.moco_v3(q, x["p_b"], x["z_a"], x["z_b"])["loss"]),
      "dino": (lambda s: obj.dino_loss(s, x["teacher"], x["center"])[0],
               lambda s: ref.dino(s, x["teacher"], x["center"])["loss"]),
      "swav": (lambda v: obj.swav_loss(v, x["protos"])[0],
               lambda v: ref.swav(v, x["protos"], code_views=x["views"])["loss"]),
      "swav_queue": (lambda v: obj.swav_loss(v, x["protos"], queue=x["queue"])[0],
                     lambda v: ref.swav(v, x["protos"], code_views=x["views"],
                                        queue=x["queue"])["loss"]),
      "mmcr": (lambda z: obj.mmcr_loss(z, x["z_b"], local_coeff=0.3)[0],
               lambda z: ref.mmcr(z, x["z_b"], local_coeff=0.3)["loss"]),
      "wmse": (lambda z: obj.wmse_loss(z, x["p_a"])[0],
               lambda z: ref.wmse(z, x["p_a"])["loss"]),
  }


def test_extra_gradients_match_reference(rng, x64):
  # The gradient of each loss against central differences of the float64 oracle
  # (not of the function under test), on the input that receives a gradient.
  x = _extra_inputs(rng, 5, 3)
  inputs = {"simsiam": x["p_a"], "moco_v3": x["p_a"], "dino": x["views"],
            "swav": x["views"], "swav_queue": x["views"], "mmcr": x["z_a"],
            "wmse": x["z_a"]}
  cases = _grad_cases(x)
  grads = jax.jit(lambda ins: {name: jax.grad(cases[name][0])(ins[name])
                               for name in cases})(inputs)
  for name, (_, reference) in cases.items():
    np.testing.assert_allclose(grads[name], _numeric_grad(reference, inputs[name]),
                               rtol=1e-5, atol=1e-7, err_msg=name)


def test_extra_stop_gradients(rng, x64):
  x = _extra_inputs(rng, 5, 3)
  g = jax.jit(lambda z_a, z_b, teacher, center: (
      jax.grad(lambda a, b: obj.simsiam_loss(x["p_a"], x["p_b"], a, b)[0],
               argnums=(0, 1))(z_a, z_b),
      jax.grad(lambda a, b: obj.moco_v3_loss(x["p_a"], x["p_b"], a, b)[0],
               argnums=(0, 1))(z_a, z_b),
      jax.grad(lambda t, c: obj.dino_loss(x["views"], t, c)[0],
               argnums=(0, 1))(teacher, center)))(
                   x["z_a"], x["z_b"], x["teacher"], x["center"])
  for gi in jax.tree.leaves(g):
    np.testing.assert_array_equal(gi, 0.0)


def test_extra_invariances(rng, x64):
  # Row permutation of every input that has a batch axis, and the view swaps.
  x = _extra_inputs(rng, 5, 7)  # the shape compiled by the reference test
  perm = rng.permutation(5)
  xp = {k: (v if k in ("center", "protos", "queue") else v[:, perm] if v.ndim == 3
            else v[perm]) for k, v in x.items()}  # the queue holds other batches
  swap = dict(x, p_a=x["p_b"], p_b=x["p_a"], z_a=x["z_b"], z_b=x["z_a"],
              views=x["views"][[1, 0, 2]], teacher=x["teacher"][::-1])
  base, permuted, swapped = _extra_all(x), _extra_all(xp), _extra_all(swap)
  for name in EXTRA_CASES:
    np.testing.assert_allclose(permuted[name][0], base[name][0], rtol=1e-10,
                               err_msg=f"{name} permutation")
  for name in ["simsiam", "moco_v3", "dino", "swav", "mmcr"]:
    np.testing.assert_allclose(swapped[name][0], base[name][0], rtol=1e-10,
                               err_msg=f"{name} swap")
  z_a, z_b = _views(rng, 12, 4)
  fn = _jitted(obj.wmse_loss)
  np.testing.assert_allclose(fn(z_b, z_a)[0], fn(z_a, z_b)[0], rtol=1e-10)
  # Whitening removes each view's own affine scale and shift.
  np.testing.assert_allclose(fn(3.0 * z_a + 1.0, 0.5 * z_b - 2.0)[0],
                             fn(z_a, z_b)[0], rtol=1e-9)
  np.testing.assert_allclose(fn(z_a[::-1], z_b[::-1])[0], fn(z_a, z_b)[0],
                             rtol=1e-10)


def test_dino_teacher_temperature_schedule():
  sched = jax.jit(lambda s: obj.dino_teacher_temperature(s, warmup_steps=100))
  np.testing.assert_allclose([float(sched(s)) for s in [0, 50, 100, 1000]],
                             [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  assert float(obj.dino_teacher_temperature(3, warmup_steps=0)) == pytest.approx(0.07)
  # The schedule feeds dino_loss as a traced temperature.
  x = _extra_inputs(np.random.default_rng(1), 4, 3)
  step_loss = jax.jit(lambda s: obj.get_objective("dino").fn(
      x["views"], x["teacher"], x["center"],
      teacher_temperature=obj.dino_teacher_temperature(s, warmup_steps=10))[0])
  want = ref.dino(x["views"], x["teacher"], x["center"], teacher_temperature=0.04)
  np.testing.assert_allclose(step_loss(0), want["loss"], rtol=1e-5)


def test_sinkhorn_marginals(rng, x64):
  scores = np.tanh(rng.normal(size=(12, 4)))
  q = _jitted(obj.sinkhorn_knopp, epsilon=1.0, num_iterations=50)(scores)
  np.testing.assert_allclose(np.sum(q, axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(np.sum(q, axis=0), 12 / 4, rtol=1e-6)
  np.testing.assert_allclose(_jitted(obj.sinkhorn_knopp)(scores),
                             ref.sinkhorn(scores), rtol=1e-10)


def test_swav_sharded_equals_unsharded(rng):
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
  on_batch = NamedSharding(mesh, PartitionSpec(None, "data"))
  x = {k: jnp.asarray(v, jnp.float32) for k, v in _extra_inputs(rng, 8, 5).items()}
  fn = jax.jit(lambda views: (
      obj.swav_loss(views, x["protos"]),
      obj.sinkhorn_knopp(jnp.einsum("nk,pk->np", views[0], x["protos"]))))
  sharded = fn(jax.device_put(x["views"], on_batch))
  single = fn(x["views"])
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # The normalisation is global: codes of each half alone are different.
  halves = np.concatenate([obj.sinkhorn_knopp(s) for s in np.split(
      np.einsum("nk,pk->np", x["views"][0], x["protos"]), 2)])
  assert np.max(np.abs(halves - np.asarray(single[1]))) > 1e-3


def test_mmcr_closed_form(x64):
  # Identical views on orthonormal rows: every centroid has norm 1 and C = I_n; each
  # sample's [2, k] view matrix [u; u] has the one singular value sqrt(2).
  z = np.eye(5)[:3] * np.array([[2.0], [0.5], [3.0]])
  loss, aux = _jitted(obj.mmcr_loss)(z, z)
  np.testing.assert_allclose([loss, aux["centroid_norm"], aux["local_nuclear_norm"]],
                             [-3.0, 1.0, np.sqrt(2.0)], rtol=1e-12)
  # float32 through the Gram eigenvalues stays close to float64.
  z_a, z_b = _views(np.random.default_rng(3), 64, 16)
  want = ref.mmcr(z_a, z_b)["loss"]
  got = _jitted(obj.mmcr_loss)(z_a.astype(np.float32), z_b.astype(np.float32))[0]
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_wmse_collapse_needs_eps():
  z = jnp.ones((8, 3))
  plain, shrunk = jax.jit(lambda z: (obj.wmse_loss(z, z)[0],
                                     obj.wmse_loss(z, z, eps=1e-3)[0]))(z)
  assert not np.isfinite(float(plain)) and np.isfinite(float(shrunk))


def test_extra_bad_input():
  ok, v3 = jnp.ones((4, 3)), jnp.ones((3, 4, 3))
  with pytest.raises(ValueError, match=r"p_a.*\(4, 3\).*z_b.*\(4, 2\)"):
    obj.simsiam_loss(ok, ok, ok, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match=r"q_a.*\(4, 3\).*k_b.*\(5, 3\)"):
    obj.moco_v3_loss(ok, ok, ok, jnp.ones((5, 3)))
  with pytest.raises(ValueError, match="temperature"):
    obj.moco_v3_loss(ok, ok, ok, ok, temperature=0.0)
  with pytest.raises(ValueError, match=r"teacher.*\(4, 4, 3\).*student.*\(3, 4, 3\)"):
    obj.dino_loss(v3, jnp.ones((4, 4, 3)), jnp.zeros(3))
  with pytest.raises(ValueError, match=r"center.*\(3,\).*\(4,\)"):
    obj.dino_loss(v3, v3[:2], jnp.zeros(4))
  with pytest.raises(ValueError, match=r"student.*\[num_views, n, k\].*\(4, 3\)"):
    obj.dino_loss(ok, v3, jnp.zeros(3))
  with pytest.raises(ValueError, match=r"prototypes.*\(6, 2\)"):
    obj.swav_loss(v3, jnp.ones((6, 2)))
  with pytest.raises(ValueError, match="num_global"):
    obj.swav_loss(v3, jnp.ones((6, 3)), num_global=4)
  with pytest.raises(ValueError, match=r"queue must be \[num_global, L, k\].*\(2, 8, 2\)"):
    obj.swav_loss(v3, jnp.ones((6, 3)), queue=jnp.ones((2, 8, 2)))
  with pytest.raises(ValueError, match=r"whitening_size.*\(4, 3\)"):
    obj.wmse_loss(ok, ok, whitening_size=3)
  with pytest.raises(ValueError, match=r"whitening_size.*\(3, 4\)"):
    obj.wmse_loss(ok.T, ok.T)
  with pytest.raises(ValueError, match=r"view 2.*\(5, 3\)"):
    obj.mmcr_loss(ok, ok, jnp.ones((5, 3)))
  with pytest.raises(ValueError, match="warmup_steps"):
    obj.dino_teacher_temperature(0, warmup_steps=-1)
