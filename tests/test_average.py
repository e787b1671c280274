"""The weight average of the kinds without a target network, and probing the target."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslit import evaluate, features, models, objectives, parallel, runs, step, train
from sslit.configs import default
from tests.fit_utils import run_fit
from tests.multihost_worker import DigitsDataset, tiny_model


@pytest.fixture(scope="module")
def digits():
  return DigitsDataset()


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(parallel.to_host(tree))]


def test_weight_average_equals_a_float64_average_of_each_steps_params(digits,
                                                                      fast_compile):
  model, obj, tx, m = tiny_model("vicreg"), objectives.get_objective("vicreg"), \
      optax.adam(1e-2), 0.8
  images, labels = digits.get(np.arange(32))
  batch = {"image": images, "label": labels}
  x = train.images_to_float(jnp.asarray(images))
  variables = models.init_variables(model, jax.random.key(0), x)
  outputs = model.apply(variables, x, train=False)
  params = variables["params"]
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
      opt_state=tx.init(params),
      ema_params=step.init_ema_params("pair", params, outputs, average=True),
      probe_params={}, probe_opt_state={}, key=jax.random.key(1))
  fn = jax.jit(train.make_train_step(
      lambda v, xs: model.apply(v, xs, train=True, mutable=["batch_stats"]), obj.fn, tx,
      method=obj.kind, average_momentum=m))
  want = _leaves(params)  # the average starts at the initial parameters
  for _ in range(3):
    state, _ = fn(state, batch)
    want = [m * a + (1 - m) * p for a, p in zip(want, _leaves(state.params))]
  got = _leaves(state.ema_params["average"])
  assert set(state.ema_params) == {"average"}
  for g, w, p in zip(got, want, _leaves(state.params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(g, p) for g, p in zip(got, _leaves(state.params)))
  assert train.target_params("pair", state.ema_params) is state.ema_params["average"]


def test_average_resumes_bitwise_beside_the_swav_queue(tmp_path, digits, fast_compile):
  kw = dict(model=tiny_model("swav"), objective="swav", dataset=digits, batch_size=32,
            queue_length=64, average_weights=0.5, log_every=1, checkpoint_every=2,
            progress=False, probe=False)
  whole = run_fit(num_steps=4, workdir=tmp_path, **kw)
  assert [r["queue_used"] for r in whole.history] == [0.0, 0.0, 1.0, 1.0]
  ema = parallel.to_host(whole.state).ema_params
  assert set(ema) == {"queue", "filled", "average"} and int(ema["filled"]) == 64
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after step 2's save
  again = run_fit(num_steps=4, workdir=tmp_path, **kw)
  assert again.resumed_from == 2
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(
      parallel.to_host(again.state).ema_params)):
    np.testing.assert_array_equal(a, b)


def test_average_weights_refused_with_a_target_network_or_outside_0_1(digits):
  kw = dict(dataset=digits, batch_size=32, num_steps=1, progress=False)
  with pytest.raises(ValueError, match="has one .*eval.target"):
    run_fit(model=tiny_model("byol"), objective="byol", average_weights=0.9, **kw)
  with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
    run_fit(model=tiny_model("vicreg"), objective="vicreg", average_weights=1.0, **kw)


def test_target_params_finds_each_kinds_network():
  p = {"w": np.ones(2)}
  assert step.target_params("byol", p) is p and step.target_params("moco", p) is p
  assert step.target_params("dino", {"params": p, "center": np.zeros(3)}) is p
  assert step.target_params("pair", {}) is None
  assert step.target_params("swav", {"queue": 0, "filled": 0}) is None
  assert step.target_params("simsiam", {"average": p}) is p


def test_offline_eval_probes_the_average_with_calibrated_statistics(tmp_path, digits,
                                                                    fast_compile):
  model = tiny_model("vicreg")
  result = run_fit(model=model, objective="vicreg", dataset=digits, batch_size=32,
                   num_steps=6, learning_rate=1e-2, average_weights=0.5,
                   progress=False, probe=False)
  config = default.get_config()
  config.objective_kwargs = {}
  config.eval.update(steps=30, knn_k=(), baselines=(), target=True)
  test = DigitsDataset("test")
  target = runs.target_of(config, result.state.ema_params)
  average = parallel.to_host(result.state.ema_params["average"])
  for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(average)):
    np.testing.assert_array_equal(a, b)
  results = runs.offline_eval(config, model, result.variables, digits, test, step=6,
                              workdir=str(tmp_path), write=False, target=target)
  assert set(results) >= {"trained", "target"} and "random_init" not in results
  # The same probe on the average with its BatchNorm statistics calibrated.
  calibrated = features.calibrated_variables(
      model, {"params": average, "batch_stats": result.variables["batch_stats"]}, digits,
      num_batches=int(config.eval.calibration_batches))
  want = evaluate.evaluate_representation(
      models.make_apply_fn(model, "rep"), calibrated, digits, test, num_classes=10,
      batch_size=int(config.eval.batch_size), l2=float(config.eval.l2), steps=30, ks=())
  assert results["target"]["linear_top1"] == want["linear_top1"]
  assert "target" in runs.summary(results)
  with pytest.raises(ValueError, match="average_weights > 0"):
    runs.offline_eval(config, model, result.variables, digits, test, step=6,
                      workdir=str(tmp_path), write=False, target=None)


def test_train_refuses_eval_target_without_a_target_network_before_writing(tmp_path):
  config = default.get_config()
  config.eval.target = True
  with pytest.raises(ValueError, match="average_weights > 0"):
    runs.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_offline_eval_calibrate_probes_the_trained_network_with_calibrated_statistics(
    tmp_path, digits, fast_compile):
  model = models.build_model("convnet", backbone_kwargs={"channels": (4, 8)},
                             projector=(16, 16))  # BatchNorm in the representation
  result = run_fit(model=model, objective="vicreg", dataset=digits, batch_size=32,
                   num_steps=4, learning_rate=1e-2, progress=False, probe=False)
  config = default.get_config()
  config.objective_kwargs = {}
  config.eval.update(steps=30, knn_k=(), baselines=())
  test = DigitsDataset("test")
  variables = parallel.to_host(result.variables)
  # Running statistics far from any the probe's images give: only calibration mends them.
  stale = {**variables, "batch_stats": jax.tree.map(lambda s: s * 1e3 + 50.0,
                                                    variables["batch_stats"])}

  def top1(v, calibrate):
    config.eval.calibrate = calibrate
    return runs.offline_eval(config, model, v, digits, test, step=4,
                             workdir=str(tmp_path), write=False)["trained"]["linear_top1"]

  calibrated = top1(stale, True)
  assert calibrated == top1(variables, True)  # the running statistics play no part
  assert calibrated != top1(stale, False)
  want = evaluate.evaluate_representation(
      models.make_apply_fn(model, "rep"),
      features.calibrated_variables(model, variables, digits,
                                    num_batches=int(config.eval.calibration_batches)),
      digits, test, num_classes=10, batch_size=int(config.eval.batch_size),
      l2=float(config.eval.l2), steps=30, ks=())
  assert calibrated == want["linear_top1"]
