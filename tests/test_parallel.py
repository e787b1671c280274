"""sslit.parallel: mesh, batch sharding and replication on 2 fake CPU devices."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from sslit import parallel
from tests.reference import hlo


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


def test_mesh_spans_all_devices_with_auto_axis(mesh):
  assert mesh.devices.size == len(jax.devices()) == 2
  assert mesh.axis_names == (parallel.DATA_AXIS,)
  assert mesh.axis_types == (AxisType.Auto,)


def test_covariance_of_sharded_batch_equals_unsharded(mesh, rng):
  # The Explicit-axis trap: z.T @ z of a batch-sharded z must compile and be exact.
  z = rng.standard_normal((8, 3)).astype(np.float32)
  zs = parallel.shard_batch(z, mesh)
  assert zs.sharding.spec == PartitionSpec(parallel.DATA_AXIS)
  cov = jax.jit(lambda z: (z - z.mean(0)).T @ (z - z.mean(0)) / (z.shape[0] - 1))(zs)
  np.testing.assert_allclose(np.asarray(cov), np.cov(z.T.astype(np.float64)),
                             rtol=1e-5, atol=1e-6)


def test_shard_batch_keeps_values_and_splits_rows(mesh, rng):
  batch = {"image": rng.integers(0, 255, (4, 2, 2, 1)).astype(np.uint8),
           "label": np.arange(4, dtype=np.int32)}
  out = parallel.shard_batch(batch, mesh)
  np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
  shards = sorted(out["label"].addressable_shards, key=lambda s: s.index[0].start or 0)
  assert [np.asarray(s.data).tolist() for s in shards] == [[0, 1], [2, 3]]


def test_shard_batch_rejects_indivisible_batch(mesh):
  with pytest.raises(ValueError, match="not divisible by the number of devices"):
    parallel.shard_batch({"image": np.zeros((3, 2), np.float32)}, mesh)
  with pytest.raises(ValueError, match="leading batch dimension"):
    parallel.shard_batch({"a": np.zeros((2, 1)), "b": np.zeros((4, 1))}, mesh)


def test_check_batch_size_names_the_fix(mesh):
  with pytest.raises(ValueError, match=r"batch_size=7 .*multiple of 2"):
    parallel.check_batch_size(7, mesh)
  assert parallel.process_local_batch_size(8, mesh) == 8


def test_replicate_and_to_host_round_trip(mesh):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "key": jax.random.key(4)}
  rep = parallel.replicate(tree, mesh)
  assert rep["w"].sharding.is_fully_replicated
  assert len(rep["w"].addressable_shards) == 2
  host = parallel.to_host(rep)
  np.testing.assert_array_equal(host["w"], tree["w"])
  np.testing.assert_array_equal(host["key"], np.asarray(jax.random.key_data(tree["key"])))


def test_sharded_jit_equals_single_device(mesh, rng):
  # A tiny SGD step on a batch-sharded batch gives the single-device result.
  w = rng.standard_normal((3, 2)).astype(np.float32)
  x = rng.standard_normal((8, 3)).astype(np.float32)

  def step(w, x):
    g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
    return w - 0.1 * g

  single = parallel.make_mesh(jax.devices()[:1])
  a = jax.jit(step)(parallel.replicate(w, mesh), parallel.shard_batch(x, mesh))
  b = jax.jit(step)(parallel.replicate(w, single), parallel.shard_batch(x, single))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_initialize_is_a_no_op_for_one_process():
  parallel.initialize()
  parallel.initialize(num_processes=1)
  assert parallel.process_count() == 1 and parallel.process_index() == 0


def test_set_cpu_device_count_after_start_reports_false():
  jax.devices()
  assert parallel.set_cpu_device_count(2) is False
  with pytest.raises(ValueError, match=">= 1"):
    parallel.set_cpu_device_count(0)


def test_serialize_cpu_lapack_only_before_the_backend_and_only_once(monkeypatch):
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  jax.devices()  # the backend is up: too late to add the flag
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert parallel.serialize_cpu_lapack() is False
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
  monkeypatch.setenv("XLA_FLAGS", flag)  # already set (conftest does this): kept once
  assert parallel.serialize_cpu_lapack() is True
  assert os.environ["XLA_FLAGS"] == flag
  old = tuple(int(v) for v in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 11)
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setattr(parallel, "_backend_started", lambda: False)
  assert parallel.serialize_cpu_lapack() is old
  assert (os.environ.get("XLA_FLAGS") == flag) is old


def _conv_dot_grads(x, w, a):
  def loss(w, a):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = jax.nn.relu(y).mean((1, 2)) @ a
    return jnp.sum(z ** 2)
  return jax.grad(loss, argnums=(0, 1))(w, a)


def test_step_compiler_options_keep_convolutions_out_of_library_fusions(rng):
  options = parallel.step_compiler_options()
  assert options == {"xla_cpu_experimental_ynn_fusion_type": ",".join(
      "LIBRARY_FUSION_TYPE_" + t for t in parallel.CPU_STEP_LIBRARY_FUSIONS)}
  x = jnp.asarray(rng.normal(size=(64, 14, 14, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) / 12, jnp.float32)
  a = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  tuned = jax.jit(_conv_dot_grads).lower(x, w, a).compile(compiler_options=options)
  # Every library ("kCustom") fusion of the tuned program is a dot or a reduction:
  # the convolutions (and their gradients) stay XLA's own.
  text = tuned.as_text()
  bodies = dict(re.findall(r"^%?([\w.\-]+) \([^\n]*\{\n(.*?)^\}", text, re.M | re.S))
  library = re.findall(r"kind=kCustom, calls=%?([\w.\-]+)", text)
  assert "convolution(" in text
  assert all(name in bodies for name in library)
  assert not any("convolution(" in bodies[name] for name in library)
  # Different kernels, the same gradients as under XLA's defaults.
  for got, want in zip(tuned(x, w, a), jax.jit(_conv_dot_grads)(x, w, a)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_step_compiler_options_leave_a_users_xla_flags_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert parallel.step_compiler_options() == {}


# ------------------------------------------- training parity across device counts


def _train_on(devices, model, batches, *, optimizer, num_steps):
  """Train ``model`` on ``devices`` with the default recipe's VICReg step.

  Returns the flat ``{path: array}`` of parameters and batch statistics.
  """
  from sslit import models, objectives, train  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(devices)
  x = train.images_to_float(jnp.asarray(batches[0]["image"]))
  variables = models.init_variables(model, jax.random.key(0), x)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=optimizer.init(variables["params"]),
      ema_params={}, probe_params={}, probe_opt_state={}, key=jax.random.key(1))
  state = parallel.replicate(state, mesh)
  # What jax_disable_most_optimizations does, for this step only: compiling the
  # two steps dominates the test.
  step = jax.jit(train.make_train_step(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
      objectives.get_objective("vicreg").fn, optimizer),
      compiler_options={"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True})
  for t in range(num_steps):
    state, _ = step(state, parallel.shard_batch(batches[t % len(batches)], mesh))
  tree = parallel.to_host({"params": state.params, "batch_stats": state.batch_stats})
  return {jax.tree_util.keystr(path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _max_rel_diff(a, b):
  """Largest ``|a - b| / (|b| + 1e-6)`` of each array, relative to its own scale."""
  out = {}
  for k in a:
    scale = np.max(np.abs(b[k])) + 1e-6
    out[k] = float(np.max(np.abs(a[k] - b[k])) / scale)
  return out


def test_adamw_training_on_two_devices_equals_one_device():
  # The default recipe's optimiser (AdamW, warm-up + cosine, weight decay 1e-4 on
  # kernels): Adam divides a gradient by its own running size, so a parameter whose
  # gradient is zero up to rounding (a bias that a BatchNorm directly follows) would
  # take full-size steps in a direction set by rounding, which differs between one
  # and two devices. Every parameter and running statistic must agree.
  from sslit import models, train  # pylint: disable=g-import-not-at-top
  from tests.multihost_worker import DigitsDataset  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == 2
  ds = DigitsDataset()
  batches = []
  for i in range(4):
    x, y = ds.get(np.arange(32 * i, 32 * (i + 1)))
    batches.append({"image": x, "label": y})
  num_steps = 40
  schedule = train.make_schedule(learning_rate=8e-3, batch_size=32,
                                 num_steps=num_steps, warmup_steps=4)
  optimizer = train.make_optimizer("adamw", learning_rate=schedule, weight_decay=1e-4)
  # The default backbone (reduced) and the VICReg projector layout (reduced): the
  # last Dense has no bias, since VICReg's loss is blind to a shift of the embedding.
  model = models.SSLModel(
      backbone=models.ConvNet(channels=(4, 8), final_pool="2x2"),
      projector=models.ProjectionHead(widths=(32, 32), last_bias=False))
  one = _train_on(jax.devices()[:1], model, batches, optimizer=optimizer,
                  num_steps=num_steps)
  two = _train_on(jax.devices(), model, batches, optimizer=optimizer,
                  num_steps=num_steps)
  assert set(one) == set(two)
  # Measured: at most 3e-6 (the backbone's BatchNorm biases); with a bias before the
  # projector's BatchNorm: 1.75 for that bias and 1.9e-2 for the BN's running mean.
  diffs = _max_rel_diff(two, one)
  worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:4]
  assert max(diffs.values()) < 1e-4, f"largest relative differences: {worst}"


def test_per_matrix_equals_vmap_one_matrix_per_lapack_call(rng):
  a = rng.standard_normal((5, 4, 4))
  spd = jnp.asarray(a @ np.swapaxes(a, 1, 2) + 4 * np.eye(4), jnp.float32)
  rhs = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)

  def solve(c, b):
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(c), True), b)

  got = jax.jit(lambda c, b: parallel.per_matrix(solve, c, b))
  np.testing.assert_allclose(got(spd, rhs), np.linalg.solve(spd, rhs[..., None])[..., 0],
                             rtol=1e-4, atol=1e-5)
  text = got.lower(spd, rhs).compile().as_text()
  assert "lapack_" in text and hlo.batched_lapack_calls(text) == []
  grad = jax.grad(lambda c: jnp.sum(parallel.per_matrix(solve, c, rhs)))(spd)
  want = jax.grad(lambda c: jnp.sum(jax.vmap(solve)(c, rhs)))(spd)
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)


_OPENBLAS_THREADS = """
import ctypes, glob, os, scipy, jax.numpy as jnp
from sslit import parallel
lib = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)),
                             "scipy.libs", "libscipy_openblas*"))[0]
get = ctypes.CDLL(lib).scipy_openblas_get_num_threads
before = get()
parallel.per_matrix(jnp.linalg.cholesky, jnp.eye(3)[None])
print(before, get())
"""


@pytest.mark.parametrize("given", [None, "2"])
def test_per_matrix_makes_scipys_openblas_single_threaded_unless_told(given):
  pytest.importorskip("scipy")
  env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
  env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[1])
  if given is not None:
    env["OPENBLAS_NUM_THREADS"] = given
  out = subprocess.run([sys.executable, "-c", _OPENBLAS_THREADS], env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  before, after = (int(v) for v in out.stdout.split()[-2:])
  assert after == (1 if given is None else before)
  if given is not None:
    assert before == int(given)


def test_shard_rows_equals_the_unsharded_body(mesh):
  body = lambda rows, w: (rows @ w, jnp.sum(rows, axis=1))
  w = jnp.arange(6.0).reshape(3, 2)
  for m in (4, 5):  # divisible by 2 devices, and padded
    rows = jnp.arange(3.0 * m).reshape(m, 3)
    want = body(rows, w)
    got = parallel.shard_rows(body, mesh, rows, w, pad=True)
    for g, v in zip(got, want):
      np.testing.assert_allclose(g, v)
  with pytest.raises(ValueError, match="x's batch size 5 must be divisible by the mesh"):
    parallel.shard_rows(body, mesh, rows, w, name="x")
  assert parallel.shard_rows(body, None, rows, w)[0].shape == (5, 2)
