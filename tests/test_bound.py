"""Tests of sslit.bound against float64 NumPy oracles, closed forms and invariances."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sslit import bound as B
from tests.reference import bound as ref

TERMS = ("invariance_term", "unlabeled_term", "labeled_term", "complexity_term",
         "confidence_term")
KEYS = TERMS + ("bound", "test_loss", "invariance", "head_norm", "head_norm_fro",
                "residual_unlabeled", "residual_labeled", "rademacher", "loss_range",
                "train_loss")


def _f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _linear_problem(rng, *, m=300, n=200, n_t=200, k=6, c=3, noise=0.5,
                    view_noise=0.05, scale=1.0):
  """Features N(0, I), labels argmax(z A + noise) (a known linear model plus noise)."""
  a = rng.normal(size=(k, c)) * 2.0

  def draw(size):
    z = rng.normal(size=(size, k))
    y = np.argmax(z @ a + noise * rng.normal(size=(size, c)), axis=1)
    return z * scale, y

  z_u, y_u = draw(m)
  z_u_b = z_u + view_noise * scale * rng.normal(size=z_u.shape)
  z_s, y_s = draw(n)
  z_t, y_t = draw(n_t)
  return dict(z_u_a=z_u, z_u_b=z_u_b, z_s=z_s, y_s=y_s, z_t=z_t, y_t=y_t, y_u=y_u,
              c=c)


def _call(p, dtype=jnp.float32, **kw):
  z = [jnp.asarray(p[k], dtype) for k in ("z_u_a", "z_u_b", "z_s")]
  return B.generalization_bound(z[0], z[1], z[2], p["y_s"],
                                jnp.asarray(p["z_t"], dtype), p["y_t"],
                                y_u=p.get("y_u"), **kw)


def _ref(p, **kw):
  c = int(max(p["y_s"].max(), p["y_t"].max(), p["y_u"].max())) + 1
  return ref.bound(p["z_u_a"], p["z_u_b"], p["z_s"], ref.one_hot(p["y_s"], c),
                   p["z_t"], ref.one_hot(p["y_t"], c),
                   None if p.get("y_u") is None else ref.one_hot(p["y_u"], c), **kw)


# --- SPEC §6 numbers -----------------------------------------------------------


def test_spec_invariance():
  z_a, z_b = ref.spec_pair()
  np.testing.assert_allclose(float(B.invariance(*_f32(z_a, z_b))), 1.363675, atol=2e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_spec_residual_one_hot(bias):
  # y = i mod 2 encoded one-hot [8, 2]: the RMS residual ‖P Y‖_F/√n is 0.705854.
  z_a, _ = ref.spec_pair()
  y = ref.one_hot(np.arange(8) % 2, 2)
  rms = float(B.label_residual(*_f32(z_a, y), bias=bias)) / math.sqrt(8)
  np.testing.assert_allclose(rms, 0.705854, atol=2e-6)
  # The scalar 0/1 encoding gives a different number: the SPEC's is the one-hot one.
  scalar = ref.label_residual(z_a, (np.arange(8) % 2)[:, None], bias=bias) / math.sqrt(8)
  assert abs(scalar - 0.705854) > 0.1


def test_spec_collapse_residual():
  y = ref.one_hot(np.arange(8) % 2, 2)
  rms = float(B.label_residual(*_f32(np.ones((8, 1)), y))) / math.sqrt(8)
  np.testing.assert_allclose(rms, math.sqrt(0.5), atol=1e-6)


# --- projector and least squares ----------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_projector_properties_and_residual(rng, x64, bias):
  z = rng.normal(size=(30, 5)) + 2.0
  y = ref.one_hot(rng.integers(0, 3, 30), 3)
  p = ref.projector(z, bias=bias)
  x = ref.design(z, bias)
  np.testing.assert_allclose(p, p.T, atol=1e-12)
  np.testing.assert_allclose(p @ p, p, atol=1e-12)
  np.testing.assert_allclose(p @ x, 0.0, atol=1e-11)
  w, b = B.least_squares_head(jnp.asarray(z), jnp.asarray(y), bias=bias)
  resid = y - (np.asarray(z) @ np.asarray(w) + np.asarray(b))
  np.testing.assert_allclose(resid, p @ y, atol=1e-10)         # residual = P Y
  np.testing.assert_allclose(x.T @ resid, 0.0, atol=1e-10)     # orthogonal to [Z, 1]
  w_ref, b_ref = ref.head(z, y, bias=bias)
  np.testing.assert_allclose(w, w_ref, atol=1e-10)
  np.testing.assert_allclose(b, b_ref, atol=1e-10)
  np.testing.assert_allclose(B.label_residual(jnp.asarray(z), jnp.asarray(y), bias=bias),
                             ref.label_residual(z, y, bias=bias), rtol=1e-10)


def test_bias_column_matters(rng, x64):
  # Features whose span misses the constant vector: the bias lowers the residual.
  z = rng.normal(size=(40, 3))
  y = ref.one_hot((rng.random(40) < 0.8).astype(int), 2)
  r0 = float(B.label_residual(jnp.asarray(z), jnp.asarray(y)))
  r1 = float(B.label_residual(jnp.asarray(z), jnp.asarray(y), bias=True))
  np.testing.assert_allclose(r0, ref.label_residual(z, y), rtol=1e-10)
  np.testing.assert_allclose(r1, ref.label_residual(z, y, bias=True), rtol=1e-10)
  assert r1 < r0 - 0.1


def test_rank_deficient_matches_pinv(rng, x64):
  base = rng.normal(size=(25, 2))
  z = np.hstack([base, base @ rng.normal(size=(2, 3))])   # rank 2 of 5 columns
  y = ref.one_hot(rng.integers(0, 2, 25), 2)
  w, _ = B.least_squares_head(jnp.asarray(z), jnp.asarray(y))
  np.testing.assert_allclose(w, ref.head(z, y)[0], atol=1e-8)  # minimum-norm solution


@pytest.mark.parametrize("bias", [False, True])
def test_collapse_gives_largest_residual(rng, bias):
  # Nested representations Z_r = first r columns: the residual can only shrink as the
  # span grows; the collapsed one (constant rows with a bias, zero rows without) is
  # the largest possible residual, ‖Y − Ȳ‖_F resp. ‖Y‖_F.
  n, c = 60, 4
  y = ref.one_hot(rng.integers(0, c, n), c)
  yj = jnp.asarray(y, jnp.float32)
  full = y @ rng.normal(size=(c, 8)) + rng.normal(size=(n, 8)) + 1.0
  collapsed = np.tile(rng.normal(size=(1, 8)), (n, 1)) if bias else np.zeros((n, 8))
  # Zeroed columns keep one shape (one compilation) while nesting the spans.
  zs = [collapsed] + [full * (np.arange(8) < r) for r in (1, 2, 4, 8)]
  res = [float(B.label_residual(jnp.asarray(z, jnp.float32), yj, bias=bias)) for z in zs]
  worst = np.linalg.norm(y - y.mean(0)) if bias else np.linalg.norm(y)
  np.testing.assert_allclose(res[0], worst, rtol=1e-5)
  assert all(a >= b - 1e-5 for a, b in zip(res, res[1:]))
  assert res[0] > res[-1] + 1.0
  # Any random representation stays at or below the collapsed residual.
  for _ in range(5):
    z = rng.normal(size=(n, 8)) * rng.exponential(size=8)
    assert float(B.label_residual(jnp.asarray(z, jnp.float32), yj, bias=bias)) <= res[0] + 1e-5


def test_zero_residual_for_linear_labels(rng):
  n, c = 50, 3
  ids = rng.integers(0, c, n)
  y = ref.one_hot(ids, c)
  mix = rng.normal(size=(c + 4, c + 4))
  z = np.hstack([y, rng.normal(size=(n, 4))]) @ mix         # Y = Z · mix⁻¹[:, :C]
  r = float(B.label_residual(*_f32(z, y))) / math.sqrt(n)
  assert r < 1e-4
  r_ref = ref.label_residual(z, y) / math.sqrt(n)
  assert r_ref < 1e-10


# --- the bound ----------------------------------------------------------------


def test_bound_matches_reference_and_holds(rng, x64):
  p = _linear_problem(rng)
  out = _call(p, jnp.float64)
  want = _ref(p)
  for key in KEYS:
    np.testing.assert_allclose(float(out[key]), want[key], rtol=1e-9, err_msg=key)
  assert set(KEYS) | {"holds"} <= set(out)
  np.testing.assert_allclose(float(out["bound"]), sum(float(out[t]) for t in TERMS),
                             rtol=1e-12)
  assert bool(out["holds"]) and want["bound"] >= want["test_loss"]


@pytest.mark.parametrize("noise,view_noise,seed", [(0.1, 0.01, 1), (1.0, 0.3, 2),
                                                    (3.0, 1.0, 3)])
def test_bound_holds_linear_model_plus_noise(noise, view_noise, seed):
  p = _linear_problem(np.random.default_rng(seed), noise=noise, view_noise=view_noise)
  out = _call(p)
  assert bool(out["holds"]), {k: float(v) for k, v in out.items()}
  # The labeled term bounds the training loss (Cauchy–Schwarz), an exact step.
  assert float(out["train_loss"]) <= float(out["labeled_term"]) + 1e-6
  # More label noise: larger residuals and a larger bound, as the test loss grows.
  if seed == 3:
    quiet = _call(_linear_problem(np.random.default_rng(seed), noise=0.1,
                                  view_noise=view_noise))
    assert float(out["residual_labeled"]) > float(quiet["residual_labeled"])
    assert float(out["test_loss"]) > float(quiet["test_loss"])


def test_unknown_unlabeled_labels_take_worst_case(rng):
  p = _linear_problem(rng)
  known = _call(p)
  p.pop("y_u")
  out = _call(p)
  # ‖P Y_U‖_F ≤ ‖Y_U‖_F = √m for one-hot rows: the term takes its worst case, 2.
  np.testing.assert_allclose(float(out["unlabeled_term"]), 2.0, rtol=1e-6)
  assert float(out["bound"]) >= float(known["bound"])
  for key in ("labeled_term", "invariance_term", "test_loss"):
    np.testing.assert_allclose(float(out[key]), float(known[key]), rtol=1e-6)


def test_rademacher_closed_form_dominates_monte_carlo(rng):
  # R̂ = E_ε sup_{‖A‖_F≤B} (1/m) Σ_j ε_j ‖Aᵀ d_j‖; a lower estimate (sup over many
  # random A, average over ε) must not exceed the closed-form upper bound.
  m, k, c, b = 40, 3, 2, 1.7
  d = rng.normal(size=(m, k))
  upper = float(B.rademacher_complexity(*_f32(d, np.zeros_like(d)), head_norm=b,
                                        num_outputs=c))
  np.testing.assert_allclose(upper, math.sqrt(2 * c) * b * np.sqrt((d**2).sum()) / m,
                             rtol=1e-6)
  a = rng.normal(size=(4000, k, c))
  a *= b / np.linalg.norm(a, axis=(1, 2), keepdims=True)
  norms = np.linalg.norm(np.einsum("jk,akc->ajc", d, a), axis=2)      # [A, m]
  eps = rng.choice([-1.0, 1.0], size=(200, m))
  lower = np.mean(np.max(eps @ norms.T, axis=1)) / m
  assert 0 < lower <= upper


def test_confidence_term_formula():
  q = float(B.confidence_term(2.0, m=100, n=25, delta=0.1))
  want = 2.0 * (math.sqrt(math.log(20) / 200) + math.sqrt(math.log(20) / 50))
  np.testing.assert_allclose(q, want, rtol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scale", [1e-3, 0.37, 1e3])
def test_scale_invariance(scale, bias):
  rng = np.random.default_rng(3)
  p = _linear_problem(rng, noise=1.0, view_noise=0.2)
  base = _call(p, bias=bias)
  scaled = dict(p, **{k: p[k] * scale for k in ("z_u_a", "z_u_b", "z_s", "z_t")})
  out = _call(scaled, bias=bias)
  for key in KEYS:
    if key in ("invariance",):
      np.testing.assert_allclose(float(out[key]), scale * float(base[key]), rtol=1e-4)
    elif key in ("head_norm", "head_norm_fro"):
      np.testing.assert_allclose(float(out[key]), float(base[key]) / scale, rtol=1e-4)
    else:
      np.testing.assert_allclose(float(out[key]), float(base[key]), rtol=1e-4,
                                 err_msg=key)
  assert bool(out["holds"]) == bool(base["holds"])


def test_verdict_false_under_distribution_shift_and_scale_invariant(rng):
  # Labels exactly linear on S and U, identical views: the bound is small; held-out
  # labels from another rule: the measured loss exceeds it, at every feature scale.
  p = _linear_problem(rng, m=2000, n=2000, noise=0.0, view_noise=0.0)
  for key in ("z_u_a", "z_s"):
    ids = p["y_u" if key == "z_u_a" else "y_s"]
    p[key] = np.hstack([ref.one_hot(ids, p["c"]), p[key]])
  p["z_u_b"] = p["z_u_a"].copy()
  p["z_t"] = np.hstack([ref.one_hot((p["y_t"] + 1) % p["c"], p["c"]), p["z_t"]])
  for scale in (1e-2, 1.0, 50.0):
    q = dict(p, **{k: p[k] * scale for k in ("z_u_a", "z_u_b", "z_s", "z_t")})
    out = _call(q)
    assert not bool(out["holds"]), {k: float(v) for k, v in out.items()}
    assert float(out["test_loss"]) > 1.0 > float(out["bound"])


def test_float32_agrees_with_float64(rng, x64):
  p = _linear_problem(rng)
  out32 = _call(p, jnp.float32)
  out64 = _call(p, jnp.float64)
  assert out32["bound"].dtype == jnp.float32 and out64["bound"].dtype == jnp.float64
  for key in KEYS:
    np.testing.assert_allclose(float(out32[key]), float(out64[key]), rtol=2e-4,
                               err_msg=key)


def test_jit_equals_eager(rng):
  p = _linear_problem(rng)
  args = [jnp.asarray(p[k], jnp.float32) for k in ("z_u_a", "z_u_b", "z_s")]
  z_t = jnp.asarray(p["z_t"], jnp.float32)

  def f(a, b_, s, ys, t, yt, yu):
    return B.generalization_bound(a, b_, s, ys, t, yt, y_u=yu, num_classes=p["c"])

  labels = [jnp.asarray(p[k]) for k in ("y_s", "y_t", "y_u")]
  jitted = jax.jit(f)(*args, labels[0], z_t, labels[1], labels[2])
  with jax.disable_jit():
    eager = f(*args, labels[0], z_t, labels[1], labels[2])
  for key in KEYS:
    np.testing.assert_allclose(float(jitted[key]), float(eager[key]), rtol=1e-4,
                               err_msg=key)


def test_sharded_equals_unsharded(rng):
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))
  p = _linear_problem(rng)
  plain = _call(p)
  z = {k: jax.device_put(jnp.asarray(p[k], jnp.float32), rows)
       for k in ("z_u_a", "z_u_b", "z_s", "z_t")}
  y = {k: jax.device_put(jnp.asarray(ref.one_hot(p[k], p["c"]), jnp.float32), rows)
       for k in ("y_s", "y_t", "y_u")}
  assert len(z["z_s"].sharding.device_set) == 2
  sharded = B.generalization_bound(z["z_u_a"], z["z_u_b"], z["z_s"], y["y_s"], z["z_t"],
                                   y["y_t"], y_u=y["y_u"])
  for key in KEYS:
    np.testing.assert_allclose(float(sharded[key]), float(plain[key]), rtol=1e-5,
                               err_msg=key)
  np.testing.assert_allclose(B.invariance(z["z_u_a"], z["z_u_b"]),
                             B.invariance(*_f32(p["z_u_a"], p["z_u_b"])), rtol=1e-6)
  np.testing.assert_allclose(B.label_residual(z["z_s"], y["y_s"], bias=True),
                             B.label_residual(*_f32(p["z_s"], ref.one_hot(p["y_s"], p["c"])),
                                              bias=True), rtol=1e-5)


# --- a small trained model on digits -----------------------------------------


def _vicreg(z_a, z_b):
  try:
    from sslit.objectives import vicreg_loss
  except ImportError:  # stand-in with the VICReg paper's terms and weights 25/25/1
    def vicreg_loss(z_a, z_b):
      inv = jnp.mean((z_a - z_b) ** 2)
      std = lambda z: jnp.sqrt(jnp.var(z, axis=0, ddof=1) + 1e-4)
      var = jnp.mean(jax.nn.relu(1 - std(z_a))) + jnp.mean(jax.nn.relu(1 - std(z_b)))
      def cov(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (z.shape[0] - 1)
        return (jnp.sum(c**2) - jnp.sum(jnp.diag(c) ** 2)) / z.shape[1]
      return 25 * inv + 25 * var + cov(z_a) + cov(z_b), {}
  return vicreg_loss(z_a, z_b)[0]


def test_bound_holds_on_trained_digits_model():
  from sklearn.datasets import load_digits
  x, labels = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  order = np.random.default_rng(0).permutation(len(x))
  x, labels = x[order], labels[order]
  x_u, x_s, x_t = x[:900], x[900:1350], x[1350:]
  y_u, y_s, y_t = labels[:900], labels[900:1350], labels[1350:]

  key = jax.random.key(0)
  k1, k2, key = jax.random.split(key, 3)
  params = {
      "w1": jax.random.normal(k1, (64, 128)) / 8.0, "b1": jnp.zeros(128),
      "w2": jax.random.normal(k2, (128, 32)) / math.sqrt(128), "b2": jnp.zeros(32),
  }

  def f(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

  def views(key, x):
    ka, kb = jax.random.split(key)
    noise = lambda k: 0.2 * jax.random.normal(k, x.shape)
    return x + noise(ka), x + noise(kb)

  xu = jnp.asarray(x_u)

  @jax.jit
  def step(params, mom, key):
    key, kv, kb = jax.random.split(key, 3)
    idx = jax.random.randint(kb, (256,), 0, xu.shape[0])
    x_a, x_b = views(kv, xu[idx])
    loss, g = jax.value_and_grad(lambda p: _vicreg(f(p, x_a), f(p, x_b)))(params)
    mom = jax.tree.map(lambda m_, g_: 0.9 * m_ + g_, mom, g)
    params = jax.tree.map(lambda p_, m_: p_ - 0.01 * m_, params, mom)
    return params, mom, key, loss

  mom = jax.tree.map(jnp.zeros_like, params)
  losses = []
  for _ in range(300):
    params, mom, key, loss = step(params, mom, key)
    losses.append(float(loss))
  assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:5])   # it trained

  u_a, u_b = views(jax.random.key(1), xu)
  out = B.generalization_bound(f(params, u_a), f(params, u_b), f(params, jnp.asarray(x_s)),
                               y_s, f(params, jnp.asarray(x_t)), y_t, y_u=y_u)
  assert bool(out["holds"]), {k: float(v) for k, v in out.items()}
  assert float(out["test_loss"]) < 0.9          # the head learned something
  assert float(out["train_loss"]) <= float(out["labeled_term"]) + 1e-6


# --- bad input ----------------------------------------------------------------


def _good(rng):
  p = _linear_problem(rng, m=20, n=10, n_t=10)
  return [jnp.asarray(p[k], jnp.float32) for k in ("z_u_a", "z_u_b", "z_s")], p


def test_bad_input(rng):
  (za, zb, zs), p = _good(rng)
  zt = jnp.asarray(p["z_t"], jnp.float32)
  ys, yt = p["y_s"], p["y_t"]
  with pytest.raises(ValueError, match="y_s must have one row per example of z_s"):
    B.generalization_bound(za, zb, zs, ys[:-1], zt, yt)
  with pytest.raises(ValueError, match="z_u_a and z_u_b must have the same shape"):
    B.generalization_bound(za, zb[:-1], zs, ys, zt, yt)
  with pytest.raises(ValueError, match="z_t has k=5"):
    B.generalization_bound(za, zb, zs, ys, zt[:, :5], yt)
  with pytest.raises(ValueError, match="y_u must have one row per example of z_u_a"):
    B.generalization_bound(za, zb, zs, ys, zt, yt, y_u=p["y_u"][:3])
  bad = np.eye(3)[ys].astype(np.float32)
  bad[2] = [0.5, 0.5, 0.0]
  with pytest.raises(ValueError, match="y_s of shape .* is not one-hot: row 2"):
    B.generalization_bound(za, zb, zs, bad, zt, yt)
  two = np.eye(3)[ys].astype(np.float32)
  two[0] = [1, 1, 0]
  with pytest.raises(ValueError, match="not one-hot: row 0"):
    B.generalization_bound(za, zb, zs, two, zt, yt)
  with pytest.raises(TypeError, match="y_s .* must hold integer class ids"):
    B.generalization_bound(za, zb, zs, ys.astype(np.float32), zt, yt)
  with pytest.raises(ValueError, match="outside"):
    B.generalization_bound(za, zb, zs, ys, zt, yt, num_classes=2)
  with pytest.raises(ValueError, match="disagree on the number of classes"):
    B.generalization_bound(za, zb, zs, np.eye(3)[ys], zt, np.eye(4)[yt])
  for delta in (0.0, 1.0, 1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"delta must lie in the open interval \(0, 1\)"):
      B.generalization_bound(za, zb, zs, ys, zt, yt, delta=delta)
  with pytest.raises(TypeError, match="z_s must have a floating dtype"):
    B.generalization_bound(za, zb, jnp.asarray(p["z_s"], jnp.int32), ys, zt, yt)
  with pytest.raises(TypeError, match="share one float dtype"):
    B.generalization_bound(za, zb, zs.astype(jnp.bfloat16), ys, zt, yt)
  with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in \['z_s'\]"):
    B.generalization_bound(za, zb, zs.at[3, 1].set(jnp.nan), ys, zt, yt)
  with pytest.raises(ValueError, match=r"z must be \[n, k\]"):
    B.label_residual(zs[0], jnp.ones((10, 3)))
  with pytest.raises(ValueError, match="y has 9 rows"):
    B.label_residual(zs, jnp.ones((9, 3)))
  with pytest.raises(ValueError, match="rcond must be > 0"):
    B.least_squares_head(zs, jnp.ones((10, 3)), rcond=-1.0)
  with pytest.raises(ValueError, match="delta must lie"):
    B.confidence_term(1.0, m=10, n=10, delta=2.0)
