"""sslit.methods: every objective's method, what each asks of the model and the run,
the all-views method, and the step's freedom from branches on the method."""

from __future__ import annotations

import ast
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslit import methods, objectives, step, train
from tests.multihost_worker import DigitsDataset, tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_objective_names_a_method_that_agrees_with_kind_state():
  for name in objectives.list_objectives():
    m = methods.get_method(objectives.get_objective(name).kind)
    state = objectives.KIND_STATE[m.name]
    assert m.momentum == ("ema" in state), name
    assert ("pred" in m.outputs) == ("predictor" in state), name
    assert ("prototypes" in m.outputs) == ("prototypes" in state), name
  assert set(methods.METHODS) == set(objectives.KIND_STATE)


def test_get_method_returns_a_method_as_is_and_refuses_unknown_names():
  assert methods.get_method(methods.METHODS["swav"]) is methods.METHODS["swav"]
  with pytest.raises(ValueError, match="unknown method 'nope'.*pair"):
    methods.get_method("nope")


def test_heads_and_options_each_method_asks_for():
  heads = {n: m.heads((64, 32)) for n, m in methods.METHODS.items()}
  assert heads["simsiam"] == {"predictor": (8, 32)}  # the paper's p/4 bottleneck
  assert heads["byol"] == heads["moco"] == {"predictor": True}
  assert heads["swav"] == {"prototypes": True} and heads["dino"] == {"dino_head": True}
  assert heads["pair"] == heads["views"] == {}
  assert methods.option_fields() == {"queue_length": ("swav",),
                                     "freeze_prototypes_steps": ("swav",)}


def test_view_pairs_are_the_globals_then_each_local_with_both_globals():
  assert methods.view_pairs(0) == ((0, 1),)
  assert methods.view_pairs(2) == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3))


def test_target_params_probes_the_target_or_the_average():
  p = {"w": np.ones(2)}
  assert step.target_params("byol", p) is p
  assert step.target_params("dino", {"params": p, "center": np.zeros(3)}) is p
  assert step.target_params("views", {"average": p}) is p
  assert step.target_params("swav", {"queue": 0, "filled": 0}) is None
  with pytest.raises(ValueError, match="has one"):
    step.check_average_momentum(0.9, "moco")


def _views_state(model, tx, x):
  from sslit import models  # pylint: disable=g-import-not-at-top
  v = models.init_variables(model, jax.random.key(0), x)
  return train.TrainState(
      step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
      opt_state=tx.init(v["params"]), ema_params={}, probe_params={},
      probe_opt_state={}, key=jax.random.key(1))


def test_views_method_hands_the_loss_every_view_stacked_and_a_fresh_key(fast_compile):
  ds = DigitsDataset()
  images, labels = ds.get(np.arange(8))
  batch = {"image": images, "label": labels}
  model, tx = tiny_model(), optax.sgd(0.0)
  # Two global views and two local ones: the images, scaled by 1, 2, 3, 4.
  def augment(key, imgs):
    del key
    x = train.images_to_float(imgs)
    return jnp.stack([x, 2 * x]), jnp.stack([3 * x, 4 * x])

  def loss_fn(z, *, key):
    # Weights 1..4 tell the views apart (and their order).
    return sum((v + 1) * jnp.mean(z[v] ** 2) for v in range(4)), {
        "draw": jax.random.uniform(key), "views": jnp.float32(z.shape[0])}

  x = train.images_to_float(jnp.asarray(images))
  state = _views_state(model, tx, x)
  fn = jax.jit(step.make_train_step(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), loss_fn, tx,
      method="views", augment_fn=augment))
  new, metrics = fn(state, batch)
  # Oracle: the model applied to each view by hand.
  z = [model.apply({"params": state.params, "batch_stats": state.batch_stats}, s * x,
                   train=True,
                   mutable=["batch_stats"])[0]["proj"] for s in (1, 2, 3, 4)]
  want = sum((v + 1) * jnp.mean(z[v] ** 2) for v in range(4))
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  assert float(metrics["views"]) == 4.0
  _, again = fn(state, batch)
  _, later = fn(new, batch)
  assert float(again["draw"]) == float(metrics["draw"])  # pure: the state decides
  assert float(later["draw"]) != float(metrics["draw"])  # a new key every step


def test_make_train_step_is_short_and_never_branches_on_the_method():
  source = inspect.getsource(step.make_train_step)
  assert len(source.splitlines()) < 80
  body = ast.parse(source).body[0].body  # the default method="pair" aside
  strings = {n.value for stmt in body for n in ast.walk(stmt)
             if isinstance(n, ast.Constant)}
  assert not strings & set(methods.METHODS), strings & set(methods.METHODS)
  for path in ("sslit/step.py", "sslit/train.py", "sslit/runs.py"):
    text = (ROOT / path).read_text()
    assert "kind ==" not in text and "kind in (" not in text, path
