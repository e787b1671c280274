"""Tests for sslit.evaluate: oracles are scikit-learn, slow NumPy references and
direct application of the network."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sslit import data, features
from sslit import monitor as monitor_lib
from sslit import evaluate as ev
from tests.reference import evaluate as ref


# --------------------------------------------------------------------------- #
# Stand-ins
# --------------------------------------------------------------------------- #


class TinyNet(nn.Module):
  """Dense → BatchNorm → ReLU → Dense, returning rep and proj like SSLModel."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape(x.shape[0], -1)
    h = nn.Dense(6)(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    rep = nn.relu(h)
    return {"rep": rep, "proj": nn.Dense(3)(rep)}


class ArrayDataset:
  """The parts of sslit.data.Dataset that evaluate uses."""

  def __init__(self, images, labels, num_classes):
    self.images, self.labels, self.num_classes = images, labels, num_classes
    self.mean = np.asarray([0.4], np.float32)
    self.std = np.asarray([0.25], np.float32)

  def __len__(self):
    return len(self.labels)

  def get(self, indices):
    return self.images[indices], self.labels[indices]


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(10, 4, 4, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, size=10).astype(np.int32)
  model = TinyNet()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 4, 4, 1)), train=False)
  # Non-trivial running statistics so eval-mode BatchNorm is not the identity.
  variables = {**variables, "batch_stats": jax.tree.map(
      lambda s: s + 0.3, variables["batch_stats"])}
  return model, variables, images, labels


def _apply_rep(variables, x):
  return TinyNet().apply(variables, x, train=False)["rep"]


def _blobs(rng, n, d, k, scale=1.0):
  centers = rng.normal(size=(k, d)) * scale
  y = rng.integers(0, k, n)
  return centers[y] + rng.normal(size=(n, d)), y.astype(np.int32)


# --------------------------------------------------------------------------- #
# preprocess / extract_features
# --------------------------------------------------------------------------- #


def test_preprocess_matches_reference_for_uint8_and_float(rng):
  images = rng.integers(0, 256, size=(3, 2, 2, 3), dtype=np.uint8)
  mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
  want = ref.preprocess(images, mean, std)
  np.testing.assert_allclose(data.preprocess(images, mean, std), want, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(
      data.preprocess(images.astype(np.float32) / 255.0, mean, std), want, rtol=1e-5,
      atol=1e-5)


def test_extract_features_equals_direct_apply_with_padding(tiny):
  model, variables, images, labels = tiny
  ds = ArrayDataset(images, labels, 3)
  direct = model.apply(variables, ref.preprocess(images, ds.mean, ds.std).astype(
      np.float32), train=False)["rep"]
  # 10 examples in batches of 4: the last batch has 2 real rows and 2 padding rows.
  feats, labs = features.extract_features(_apply_rep, variables, ds, batch_size=4)
  assert isinstance(feats, np.ndarray) and feats.shape == (10, 6)
  np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labs, labels)
  # Plain arrays with explicit statistics, a dict output, and max_examples.
  feats2, labs2 = features.extract_features(
      lambda v, x: model.apply(v, x, train=False), variables, (images, labels),
      batch_size=3, max_examples=7, mean=ds.mean, std=ds.std, output="rep")
  np.testing.assert_allclose(feats2, direct[:7], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labs2, labels[:7])
  # Several outputs of one pass: a dict, each equal to the direct application.
  both, labs3 = features.extract_features(
      lambda v, x: model.apply(v, x, train=False), variables, ds, batch_size=4,
      output=["proj", "rep"])
  direct_all = model.apply(variables, ref.preprocess(images, ds.mean, ds.std).astype(
      np.float32), train=False)
  assert sorted(both) == ["proj", "rep"] and both["proj"].shape == (10, 3)
  for k in ("rep", "proj"):
    np.testing.assert_allclose(both[k], direct_all[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labs3, labels)


def test_extract_features_sharded_equals_unsharded(tiny):
  model, variables, images, labels = tiny
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices")
  mesh = jax.make_mesh((2,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  ds = ArrayDataset(images, labels, 3)
  want, _ = features.extract_features(_apply_rep, variables, ds, batch_size=4)
  got, _ = features.extract_features(_apply_rep, variables, ds, batch_size=4,
                               sharding=sharding)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_raw_pixel_features(tiny):
  _, _, images, labels = tiny
  ds = ArrayDataset(images, labels, 3)
  feats, labs = features.raw_pixel_features(ds, batch_size=4)
  want = ref.preprocess(images, ds.mean, ds.std).reshape(10, -1)
  np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labs, labels)


# --------------------------------------------------------------------------- #
# Linear probe
# --------------------------------------------------------------------------- #


def _sklearn_fit(x, y, l2):
  n = x.shape[0]
  clf = LogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=20000)
  return clf.fit(x, y)


@pytest.mark.parametrize("standardize", [False, True])
def test_linear_probe_matches_sklearn(x64, rng, standardize):
  x, y = _blobs(rng, 240, 5, 3, scale=1.0)
  x = x * np.array([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
  xt, yt = _blobs(np.random.default_rng(5), 90, 5, 3)
  l2 = 3e-3
  res = ev.linear_probe(x, y, xt, yt, num_classes=3, l2=l2, steps=500, tol=1e-10,
                        standardize=standardize, return_params=True, return_correct=True)
  if standardize:
    mu, sd = x.mean(0), x.std(0)
    xs, xts = (x - mu) / sd, (xt - mu) / sd
  else:
    xs, xts = x, xt
  clf = _sklearn_fit(xs, y, l2)
  w, b = (np.asarray(p) for p in res["params"])
  np.testing.assert_allclose(w, clf.coef_.T, atol=1e-6)
  # The bias is determined up to a common shift (softmax invariance).
  np.testing.assert_allclose(b - b.mean(), clf.intercept_ - clf.intercept_.mean(),
                             atol=1e-6)
  assert res["top1"] == pytest.approx(100 * clf.score(xts, yt))
  assert res["train_top1"] == pytest.approx(100 * clf.score(xs, y))
  # Per-example correctness: sklearn's predictions on each test example.
  np.testing.assert_array_equal(res["correct"], clf.predict(xts) == yt)
  # The reported loss is sklearn's objective divided by C·n.
  p = clf.predict_proba(xs)
  want_loss = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.5 * l2 * np.sum(
      clf.coef_ ** 2)
  assert res["loss"] == pytest.approx(want_loss, rel=1e-8)


def test_linear_probe_float32_and_select_l2(rng):
  # One float32 problem for both checks (one compilation of the solver).
  x, y = _blobs(rng, 400, 6, 3, scale=2.0)
  fit = np.random.default_rng(0).permutation(400)[40:]
  xs = x[fit]
  res = ev.linear_probe(xs.astype(np.float32), y[fit], xs.astype(np.float32), y[fit],
                        num_classes=3, l2=1e-2, return_params=True)
  z = (xs - xs.mean(0)) / xs.std(0)
  clf = _sklearn_fit(z, y[fit], 1e-2)
  np.testing.assert_allclose(np.asarray(res["params"][0]), clf.coef_.T, atol=2e-3)
  assert abs(res["top1"] - 100 * clf.score(z, y[fit])) <= 1.0
  # select_l2 holds out 10% of the training set (never any test data): a huge L2
  # drives W to ~0, predicting by the bias alone (≤ the majority-class rate).
  sel = ev.select_l2(x.astype(np.float32), y, num_classes=3, l2_grid=(1e2, 1e-4),
                     steps=100)
  assert sel["l2"] == 1e-4
  assert set(sel["val_top1"]) == {1e2, 1e-4}
  majority = 100 * np.bincount(y).max() / len(y)
  assert sel["val_top1"][1e2] <= majority + 10
  assert sel["val_top1"][1e-4] > sel["val_top1"][1e2]


# --------------------------------------------------------------------------- #
# kNN
# --------------------------------------------------------------------------- #


def test_knn_matches_reference(x64, rng):
  x, y = _blobs(rng, 120, 5, 7, scale=0.7)
  xt, yt = _blobs(np.random.default_rng(3), 37, 5, 7, scale=0.7)
  # chunk_size 8 does not divide 37: the padded last chunk must not matter.
  res = ev.knn_evaluate(x, y, xt, yt, num_classes=7, ks=(1, 5, 20), chunk_size=8)
  for k in (1, 5, 20):
    want, votes = ref.knn_predict(x, y, xt, num_classes=7, k=k, temperature=0.07)
    assert res[f"knn{k}_top1"] == pytest.approx(100 * np.mean(want == yt))
    top5 = np.argsort(-votes, axis=1, kind="stable")[:, :5]
    assert res[f"knn{k}_top5"] == pytest.approx(
        100 * np.mean(np.any(top5 == yt[:, None], axis=1)))
  want, _ = ref.knn_predict(x, y, xt, num_classes=7, k=20, temperature=0.07)
  single = ev.knn_evaluate(x, y, xt, yt, num_classes=7, ks=(20,), temperature=0.07,
                           chunk_size=8, return_predictions=True)
  np.testing.assert_array_equal(single["predictions"][20], want)
  assert single["knn20_top1"] == res["knn20_top1"]


def test_knn_float32_chunking_invariant(rng):
  x, y = _blobs(rng, 200, 16, 5)
  xt, _ = _blobs(rng, 50, 16, 5)
  x, xt = x.astype(np.float32), xt.astype(np.float32)
  yt = np.zeros(len(xt), np.int64)
  a = ev.knn_evaluate(x, y, xt, yt, num_classes=5, ks=(10,), chunk_size=7,
                      return_predictions=True)["predictions"][10]
  b = ev.knn_evaluate(x, y, xt, yt, num_classes=5, ks=(10,), chunk_size=64,
                      return_predictions=True)["predictions"][10]
  np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- #
# BatchNorm calibration
# --------------------------------------------------------------------------- #


class DenseBN(nn.Module):

  @nn.compact
  def __call__(self, x, *, train: bool):
    h = nn.Dense(5)(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)


def test_calibrate_batch_stats_is_average_of_batch_statistics(rng):
  model = DenseBN()
  variables = model.init(jax.random.key(1), jnp.zeros((2, 3, 3, 1)), train=False)
  images = rng.integers(0, 256, size=(40, 3, 3, 1), dtype=np.uint8)
  batches = [images[:16], images[16:32], images[32:]]   # unequal last batch
  mean, std = np.array([0.5]), np.array([0.3])
  out = features.calibrate_batch_stats(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables,
      batches, mean=mean, std=std)
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
  bias = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
  h = [ref.preprocess(b, mean, std).reshape(len(b), -1) @ kernel + bias for b in batches]
  want_mean, want_var = ref.batchnorm_batch_stats(h)
  stats = out["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], want_var, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["params"]["Dense_0"]["kernel"], kernel.astype(
      np.float32))
  # Eval mode now normalises with the data's statistics: mean ≈ 0, var ≈ 1 overall.
  z = model.apply(out, ref.preprocess(images, mean, std).astype(np.float32),
                  train=False)
  assert np.all(np.abs(np.asarray(z).mean(0)) < 1e-3)


def test_calibrated_variables_ignore_the_incoming_running_statistics(rng):
  # A trained network's running statistics are replaced, not blended, and its
  # parameters kept: the same numbers from any incoming batch_stats.
  model = DenseBN()
  variables = model.init(jax.random.key(1), jnp.zeros((2, 3, 3, 1)), train=False)
  ds = ArrayDataset(rng.integers(0, 256, size=(64, 3, 3, 1), dtype=np.uint8),
                    np.zeros(64, np.int64), 2)
  kw = dict(num_batches=3, batch_size=16)
  stale = jax.tree.map(lambda a: a + 7.0, variables["batch_stats"])
  a = features.calibrated_variables(model, variables, ds, **kw)
  b = features.calibrated_variables(model, {**variables, "batch_stats": stale}, ds, **kw)
  chex.assert_trees_all_close(a["batch_stats"], b["batch_stats"], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(b["params"], variables["params"])
  assert not np.allclose(a["batch_stats"]["BatchNorm_0"]["var"], 1.0)  # calibrated


def test_calibrate_without_batch_stats_is_identity():
  variables = {"params": {"w": jnp.ones(3)}}
  assert features.calibrate_batch_stats(lambda v, x: (x, {}), variables, []) is variables


# --------------------------------------------------------------------------- #
# Evaluators
# --------------------------------------------------------------------------- #


def test_probe_evaluator_equals_offline_knn(tiny):
  _, variables, images, labels = tiny
  ds = ArrayDataset(images, labels, 3)
  evaluator = ev.make_probe_evaluator(_apply_rep, ds, ds, num_train=None,
                                      num_test=None, ks=(3,), linear=True,
                                      batch_size=4)
  got = evaluator(0, variables)
  feats, labs = features.extract_features(_apply_rep, variables, ds, batch_size=4)
  want = ev.knn_evaluate(feats, labs, feats, labs, num_classes=3, ks=(3,))
  assert got["probe/knn3_top1"] == want["knn3_top1"]
  assert 0.0 <= got["probe/linear_top1"] <= 100.0


def _mlp_map(variables, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"])
  return {"rep": h, "proj": h @ variables["w2"]}


def _views(key, images):
  x = images.astype(jnp.float32) / 255.0
  noise = 0.05 * jax.random.normal(key, x.shape)
  return jnp.clip(x + noise, 0, 1), x[:, :, ::-1]


def test_monitor_records_finite_quantities(rng):
  pytest.importorskip("sslit.estimators")
  pytest.importorskip("sslit.objectives")
  pytest.importorskip("sslit.bound")
  images = rng.integers(0, 256, size=(64, 4, 4, 1), dtype=np.uint8)
  labels = (np.arange(64) % 4).astype(np.int32)
  ds = ArrayDataset(images, labels, 4)
  variables = {"w1": jnp.asarray(rng.normal(size=(16, 5)) / 4, jnp.float32),
               "w2": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)}
  monitor = monitor_lib.make_monitor(_mlp_map, ds, num_examples=64, augment=_views,
                            batch_size=16, bandwidth=0.5)
  out = monitor(10, variables)
  expected = ["effective_rank", "std_mean", "entropy_gaussian", "entropy_logdet",
              "entropy_pairwise_kl", "entropy_pairwise_bhattacharyya",
              "entropy_conditional", "mi_pairwise_kl", "mi_pairwise_bhattacharyya",
              "pairwise_var", "logdet_corr", "vicreg/loss",
              "vicreg/invariance", "vicreg/variance", "vicreg/covariance",
              "bound/bound", "bound/test_loss"]
  k = 5
  for o in ("rep", "proj"):
    for name in expected:
      key = f"monitor/{o}/{name}"
      assert key in out, key
      assert isinstance(out[key], float) and math.isfinite(out[key]), (key, out[key])
    p = f"monitor/{o}/"
    # Closed forms and orderings the estimates must satisfy.
    assert 1.0 <= out[p + "effective_rank"] <= k + 1e-4
    assert out[p + "entropy_conditional"] == pytest.approx(
        0.5 * k * math.log(2 * math.pi * math.e * out[p + "pairwise_var"]), rel=1e-4)
    assert 0 <= out[p + "mi_pairwise_bhattacharyya"] <= out[p + "mi_pairwise_kl"]
    assert (out[p + "entropy_conditional"] - 1e-4 <=
            out[p + "entropy_pairwise_bhattacharyya"] <=
            out[p + "entropy_pairwise_kl"] + 1e-4 <=
            out[p + "entropy_conditional"] + math.log(64) + 1e-3)
    assert out[p + "bound/bound"] >= out[p + "bound/test_loss"]
  # Fixed subset and fixed views: the same variables give the same numbers.
  assert monitor(11, variables) == out


def test_monitor_with_non_finite_embeddings_raises_naming_them(rng):
  """The bound is computed compiled; a non-finite one is still refused, naming the
  non-finite inputs, not recorded."""
  images = rng.integers(0, 256, size=(64, 4, 4, 1), dtype=np.uint8)
  ds = ArrayDataset(images, (np.arange(64) % 4).astype(np.int32), 4)
  w1 = rng.normal(size=(16, 5)) / 4
  w1[3, 2] = np.nan  # one unit of every embedding is NaN
  variables = {"w1": jnp.asarray(w1, jnp.float32),
               "w2": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)}
  monitor = monitor_lib.make_monitor(_mlp_map, ds, num_examples=64, augment=_views,
                                     batch_size=16, float64_determinants=False)
  with pytest.raises(ValueError, match=r"bound is not finite.*z_u_a"):
    monitor(0, variables)


def test_monitor_reports_singular_determinants_as_undefined(rng):
  """n <= k: the Gaussian surrogate and log det R are undefined, never -inf."""
  images = rng.integers(0, 256, size=(8, 4, 4, 1), dtype=np.uint8)
  labels = (np.arange(8) % 2).astype(np.int32)
  ds = ArrayDataset(images, labels, 2)
  w = jnp.asarray(rng.normal(size=(16, 12)), jnp.float32)  # 12 > 8 examples
  monitor = monitor_lib.make_monitor(lambda v, x: x.reshape(x.shape[0], -1) @ v, ds,
                                     num_examples=8, augment=None)
  out = monitor(0, w)
  assert "monitor/rep/entropy_gaussian" not in out
  assert "monitor/rep/logdet_corr" not in out
  assert "n=8 examples in k=12 dimensions" in out["monitor/rep/undefined"]
  assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))
  # With n > k both are back, finite.
  out = monitor_lib.make_monitor(lambda v, x: x.reshape(x.shape[0], -1) @ v[:, :4],
                                 ds, num_examples=8, augment=None)(0, w)
  assert math.isfinite(out["monitor/rep/entropy_gaussian"])
  assert "monitor/rep/undefined" not in out


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_bad_input_errors(rng):
  x = rng.normal(size=(10, 3)).astype(np.float32)
  y = np.arange(10) % 2
  with pytest.raises(ValueError, match="same length"):
    ev.linear_probe(x, y[:9], x, y, num_classes=2)
  with pytest.raises(ValueError, match=r"test_y must lie in \[0, num_classes=2\)"):
    ev.linear_probe(x, y, x, y + 1, num_classes=2)
  with pytest.raises(ValueError, match="train_y must lie"):
    ev.knn_evaluate(x, y - 1, x, y, num_classes=2)
  with pytest.raises(ValueError, match="same feature dimension"):
    ev.knn_evaluate(x, y, x[:, :2], y, num_classes=2)
  with pytest.raises(ValueError, match="integer"):
    ev.linear_probe(x, y.astype(np.float32), x, y, num_classes=2)
  with pytest.raises(ValueError, match="k must be in"):
    ev.knn_evaluate(x, y, x, y, num_classes=2, ks=(11,))
  bad = x.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="train_x contains NaN"):
    ev.linear_probe(bad, y, x, y, num_classes=2)
  with pytest.raises(ValueError, match="val_fraction"):
    ev.select_l2(x, y, num_classes=2, val_fraction=1.5)
  with pytest.raises(ValueError, match="images and labels must have the same length"):
    features.extract_features(_apply_rep, {}, (np.zeros((4, 2, 2, 1), np.uint8), y))
  with pytest.raises(TypeError, match="dataset must be"):
    features.extract_features(_apply_rep, {}, np.zeros((4, 2)))
  with pytest.raises(ValueError, match="std must be > 0"):
    data.preprocess(np.zeros((2, 2, 2, 1), np.uint8), 0.5, 0.0)
  with pytest.raises(ValueError, match="mean must be a scalar or"):
    data.preprocess(np.zeros((2, 2, 2, 3), np.uint8), np.zeros(2), 1.0)


def test_monitor_determinants_are_float64_on_ill_conditioned_features(rng):
  # The features are 12 input pixels, passed through exactly (float images, mean 0,
  # std 1, no arithmetic), that are nearly copies of each other: the correlation
  # matrix is close to singular, which float32 resolves poorly.
  pytest.importorskip("sslit.estimators")
  base = rng.normal(size=(40, 1))
  pixels = np.concatenate([np.repeat(base, 12, axis=1) + 1e-4 * rng.normal(size=(40, 12)),
                           rng.normal(size=(40, 4))], axis=1)
  images = pixels.reshape(40, 4, 4, 1).astype(np.float32)
  ds = ArrayDataset(images, (np.arange(40) % 4).astype(np.int32), 4)
  apply_fn = lambda v, x: {"rep": x.reshape(x.shape[0], -1)[:, :12]}
  kw = dict(num_examples=40, augment=None, bound=False, batch_size=40, mean=0.0,
            std=1.0)
  out64 = monitor_lib.make_monitor(apply_fn, ds, **kw)(0, {})
  out32 = monitor_lib.make_monitor(apply_fn, ds, float64_determinants=False, **kw)(0, {})
  # Oracle: NumPy float64 on the same float32 features (all 40 examples; the
  # determinants do not depend on their order).
  z = images.reshape(40, -1)[:, :12].astype(np.float64)
  sign, logdet_r = np.linalg.slogdet(np.corrcoef(z, rowvar=False))
  assert sign > 0
  sign, logdet_c = np.linalg.slogdet(np.cov(z, rowvar=False))
  h = 0.5 * logdet_c + 0.5 * z.shape[1] * np.log(2 * np.pi * np.e)
  assert out64["monitor/rep/logdet_corr"] == pytest.approx(logdet_r, rel=1e-8)
  assert out64["monitor/rep/entropy_gaussian"] == pytest.approx(h, rel=1e-8)
  # float32 misses the oracle by far more than that (or gives -inf).
  assert not out32["monitor/rep/logdet_corr"] == pytest.approx(logdet_r, rel=1e-6)
