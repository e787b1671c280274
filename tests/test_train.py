"""sslit.train: schedules, optimiser masks, the composed step, fit, resume, multi-host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sslit import data, objectives, parallel, train
from tests.fit_utils import run_fit
from tests.multihost_worker import FIT_KWARGS, DigitsDataset, tiny_model

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
  return DigitsDataset()


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(parallel.to_host(tree))[0]}


def _batch(ds, n=32, start=0):
  x, y = ds.get(np.arange(start, start + n))
  return {"image": x, "label": y, "mask": np.ones(n, bool)}


def _init(model, tx, probe_tx, key, x, *, num_classes=10, byol=False):
  from sslit import models  # pylint: disable=g-import-not-at-top
  v = models.init_variables(model, key, x)
  r = model.apply(v, x, train=False)["rep"].shape[-1]
  pp = {"kernel": jnp.zeros((r, num_classes)), "bias": jnp.zeros((num_classes,))}
  return train.TrainState(
      step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
      opt_state=tx.init(v["params"]), ema_params=v["params"] if byol else {},
      probe_params=pp if probe_tx else {},
      probe_opt_state=probe_tx.init(pp) if probe_tx else {}, key=jax.random.key(1))


def _train_apply(model):
  return lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])


# ----------------------------------------------------------------- schedules


def test_schedule_warmup_cosine_and_batch_scaling():
  sched = train.make_schedule(learning_rate=0.3, batch_size=512, num_steps=110,
                              warmup_steps=10, end_factor=0.1)
  peak = 0.3 * 512 / 256
  np.testing.assert_allclose(sched(0), 0.0, atol=1e-8)
  np.testing.assert_allclose(sched(5), peak * 5 / 10, rtol=1e-6)
  for t in (10, 40, 75, 110):
    cos = 0.5 * (1 + np.cos(np.pi * (t - 10) / 100))
    np.testing.assert_allclose(sched(t), 0.1 * peak + (peak - 0.1 * peak) * cos, rtol=1e-5)
  with pytest.raises(ValueError, match="warmup_steps"):
    train.make_schedule(learning_rate=1.0, batch_size=256, num_steps=5, warmup_steps=6)


def test_byol_momentum_schedule_closed_form():
  sched = train.ema_momentum_schedule(base=0.99, num_steps=100)
  for k in (0, 25, 50, 100):
    want = 1 - (1 - 0.99) * (np.cos(np.pi * k / 100) + 1) / 2
    np.testing.assert_allclose(sched(k), want, rtol=1e-6)


# ----------------------------------------------------------------- optimisers

_PARAMS = {"dense": {"kernel": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]),
                     "bias": jnp.asarray([0.5, -0.5])},
           "bn": {"scale": jnp.asarray([2.0, 2.0])}}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_skips_biases_and_norm_params(name):
  lr, wd = 0.1, 0.5
  tx = train.make_optimizer(name, learning_rate=lr, weight_decay=wd, momentum=0.9)
  zeros = jax.tree.map(jnp.zeros_like, _PARAMS)
  updates, _ = tx.update(zeros, tx.init(_PARAMS), _PARAMS)
  np.testing.assert_allclose(updates["dense"]["kernel"], -lr * wd * _PARAMS["dense"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)


def test_lars_adapts_only_weight_matrices():
  lr, wd, eta = 0.1, 1e-2, 1e-3
  tx = train.make_optimizer("lars", learning_rate=lr, weight_decay=wd, momentum=0.9,
                            trust_coefficient=eta)
  grads = jax.tree.map(jnp.ones_like, _PARAMS)
  updates, _ = tx.update(grads, tx.init(_PARAMS), _PARAMS)
  w = np.asarray(_PARAMS["dense"]["kernel"], np.float64)
  g = np.ones_like(w) + wd * w
  trust = eta * np.linalg.norm(w) / np.linalg.norm(g)
  np.testing.assert_allclose(updates["dense"]["kernel"], -lr * trust * g, rtol=1e-5)
  np.testing.assert_allclose(updates["dense"]["bias"], -lr * np.ones(2), rtol=1e-6)
  np.testing.assert_allclose(updates["bn"]["scale"], -lr * np.ones(2), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
    train.make_optimizer("adagrad", learning_rate=0.1)


# ----------------------------------------------------------------- the step




def test_step_loss_decreases_without_retrace_and_probe_leaves_backbone_alone(
    digits, fast_compile):
  model = tiny_model()
  obj = objectives.get_objective("vicreg")
  tx = optax.adam(1e-2)
  batch = _batch(digits)
  x = train.images_to_float(jnp.asarray(batch["image"]))
  finals = []
  for probe_tx in (optax.adam(1e-2), None):
    state = _init(model, tx, probe_tx, jax.random.key(0), x)
    step = train.make_train_step(_train_apply(model), obj.fn, tx,
                                 probe_optimizer=probe_tx, stats_every=5)
    chex.clear_trace_counter()  # the counter is keyed by the code, shared by both loops
    jstep = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
    losses = []
    for _ in range(12):
      state, metrics = jstep(state, batch)
      losses.append(float(metrics["loss"]))
    assert int(state.step) == 12
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    finals.append((state, metrics))
  (with_probe, m), (without, _) = finals
  for key in ("variance", "covariance", "grad_norm", "probe_acc", "rep_effective_rank"):
    assert key in m
  # Statistics are computed on steps with (t + 1) % 5 == 0 only; t = 11 is not one.
  assert float(m["rep_effective_rank"]) == 0.0
  # The online probe learns from stop-gradient features and never moves the backbone.
  chex.assert_trees_all_equal(with_probe.params, without.params)
  assert float(m["probe_loss"]) < np.log(10)  # better than the uniform guess


@pytest.mark.parametrize("name", ["vicreg", "swav", "byol"])
def test_views_in_one_pass_share_batchnorm_statistics(name, digits, fast_compile):
  model, obj = tiny_model(name), objectives.get_objective(name)
  tx = optax.sgd(0.1)
  batch = _batch(digits, 16)
  x = train.images_to_float(jnp.asarray(batch["image"]))
  views = lambda key, images: (train.images_to_float(images),  # two different views
                               1.0 - train.images_to_float(images))
  state = _init(model, tx, None, jax.random.key(0), x, byol=name == "byol")
  apply = _train_apply(model)
  kw = dict(method=obj.kind, augment_fn=views)
  if name == "byol":
    kw["ema_momentum_fn"] = train.ema_momentum_schedule(base=0.9, num_steps=10)
  joint, m_joint = jax.jit(train.make_train_step(apply, obj.fn, tx, views_in_one_pass=True,
                                                 **kw))(state, batch)
  _, m_apart = jax.jit(train.make_train_step(apply, obj.fn, tx, **kw))(state, batch)
  # Oracle: one training application on the two views concatenated, split after.
  both = jnp.concatenate([x, 1.0 - x])
  out, mut = apply({"params": state.params, "batch_stats": state.batch_stats}, both)
  a, b = {k: v[:16] for k, v in out.items()}, {k: v[16:] for k, v in out.items()}
  if name == "vicreg":
    want = obj.fn(a["proj"], b["proj"])[0]
  elif name == "swav":
    want = obj.fn(jnp.stack([a["proj"], b["proj"]]), out["prototypes"])[0]
  else:  # the target network (here equal to the online one) sees both views at once
    t = apply({"params": state.ema_params, "batch_stats": mut["batch_stats"]}, both)[0]
    want = obj.fn(a["pred"], b["pred"], t["proj"][:16], t["proj"][16:], a["proj"],
                  b["proj"])[0]
  np.testing.assert_allclose(m_joint["loss"], want, rtol=1e-5)
  chex.assert_trees_all_close(joint.batch_stats, mut["batch_stats"], rtol=1e-5,
                              atol=1e-7)
  assert abs(float(m_joint["loss"]) - float(m_apart["loss"])) > 1e-4  # per view: other


@pytest.mark.parametrize("name", ["byol", "moco_v3"])  # BYOL's target, MoCo's keys
def test_target_is_the_ema_of_the_online_params(name, digits, fast_compile):
  model = tiny_model(name)
  obj = objectives.get_objective(name)
  tx = optax.sgd(0.1)
  batch = _batch(digits)
  x = train.images_to_float(jnp.asarray(batch["image"]))
  state0 = _init(model, tx, None, jax.random.key(0), x, byol=True)
  ema_fn = train.ema_momentum_schedule(base=0.9, num_steps=10)
  step = jax.jit(train.make_train_step(_train_apply(model), obj.fn, tx, method=obj.kind,
                                       ema_momentum_fn=ema_fn))
  state1, metrics = step(state0, batch)
  tau = 0.9  # tau at step 0 is the base
  np.testing.assert_allclose(float(metrics["ema_momentum"]), tau, rtol=1e-6)
  want = jax.tree.map(lambda e, p: tau * e + (1 - tau) * p, state0.ema_params,
                      state1.params)
  chex.assert_trees_all_close(state1.ema_params, want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(_flat(state1.params)["backbone/dense0/kernel"],
                         _flat(state0.params)["backbone/dense0/kernel"])
  with pytest.raises(ValueError, match="ema_momentum_fn"):
    train.make_train_step(_train_apply(model), obj.fn, tx, method=obj.kind)


def test_sharded_on_two_devices_equals_single_device(digits, fast_compile):
  from sslit import models  # pylint: disable=g-import-not-at-top
  # BatchNorm and VICReg's covariance both reduce over the sharded batch.
  model = models.build_model("mlp", backbone_kwargs={"widths": (32, 16),
                                                     "batch_norm": True},
                             projector=(32, 32))
  obj = objectives.get_objective("vicreg")
  tx = optax.sgd(0.05, momentum=0.9)
  batches = [_batch(digits, 32, 32 * i) for i in range(3)]
  x = train.images_to_float(jnp.asarray(batches[0]["image"]))
  step = train.make_train_step(_train_apply(model), obj.fn, tx,
                               probe_optimizer=optax.adam(1e-2))
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  finals = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(devices)
    state = parallel.replicate(_init(model, tx, optax.adam(1e-2), jax.random.key(0), x),
                               mesh)
    jstep = jax.jit(step)
    for b in batches:
      state, _ = jstep(state, parallel.shard_batch(b, mesh))
    finals.append(_flat((state.params, state.batch_stats, state.probe_params)))
  assert len(jax.devices()) == 2
  for k in finals[0]:
    np.testing.assert_allclose(finals[0][k], finals[1][k], rtol=2e-5, atol=2e-6, err_msg=k)


# ----------------------------------------------------------------- fit


# "vicreg" runs through fit in the metrics/checkpoint and resume tests below.
# "dino" in the DINO and CLI tests at the end.
CANONICAL = sorted({objectives.get_objective(n).name
                    for n in objectives.list_objectives()} - {"vicreg", "dino"})


@pytest.fixture(scope="module")
def uninterrupted(digits):
  """Final params of FIT_KWARGS on one process with both devices, no interruption."""
  return _flat(run_fit(model=tiny_model(), dataset=digits, **FIT_KWARGS).state.params)


@pytest.mark.parametrize("name", CANONICAL)
def test_fit_smoke_every_objective(name, digits, fast_compile):
  # W-MSE whitens the batch: it needs more examples than embedding dimensions.
  model = tiny_model(name, projector=(32, 16)) if name == "wmse" else tiny_model(name)
  res = run_fit(model=model, objective=name, dataset=digits, batch_size=32,
                  num_steps=3, log_every=3, progress=False, seed=0)
  assert res.step == 3 and res.resumed_from is None
  (record,) = res.history
  assert record["step"] == 3
  assert np.isfinite(record["loss"])
  for key in ("lr", "grad_norm", "probe_acc", "rep_std_mean", "rep_effective_rank"):
    assert np.isfinite(record[key]), key
  assert record["rep_effective_rank"] > 1.0
  assert all(np.ndim(v) == 0 for v in record.values())  # DINO's centre is state


def test_fit_writes_metrics_checkpoints_and_returns_when_done(tmp_path, digits, fast_compile):
  kw = dict(FIT_KWARGS, num_steps=8, checkpoint_every=4)
  calls = []

  def evaluator(step, variables):
    calls.append(step)
    return {"ev/params": sum(np.size(p) for p in jax.tree.leaves(variables["params"]))}

  res = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
                  evaluators=[evaluator], eval_every=4, **kw)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  evals = [l for l in lines if "ev/params" in l]
  lines = [l for l in lines if "loss" in l]
  assert calls == [4, 8] and [l["step"] for l in evals] == [4, 8]
  assert evals[0]["ev/params"] == sum(np.size(p) for p in jax.tree.leaves(res.state.params))
  assert [l["step"] for l in lines] == [4, 8]
  # The logged lr is the schedule's value at the update that was applied.
  sched = train.make_schedule(learning_rate=kw["learning_rate"], batch_size=kw["batch_size"],
                              num_steps=8, warmup_steps=kw["warmup_steps"])
  np.testing.assert_allclose(lines[0]["lr"], float(sched(3)), rtol=1e-6)
  for key in ("loss", "variance", "invariance", "covariance", "lr", "grad_norm",
              "images_per_s", "probe_acc", "rep_std_mean", "rep_effective_rank"):
    assert key in lines[-1], key
  assert "compile_s" in lines[0]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]
  again = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path, **kw)
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 4  # nothing dropped
  assert again.resumed_from == 8 and again.history == []
  chex.assert_trees_all_equal(again.state.params, res.state.params)


def test_kill_9_then_same_command_resumes_bitwise(tmp_path, uninterrupted):
  want = uninterrupted
  cmd = [sys.executable, WORKER, "resume", "--workdir", str(tmp_path / "run"),
         "--out", str(tmp_path / "out.npz")]
  # Same devices as this process (conftest's XLA_FLAGS are inherited); the
  # compilation cache lets the resumed process reuse the killed one's programs.
  env = dict(os.environ, PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  killed = subprocess.run(cmd + ["--kill_at", "11"], env=env, capture_output=True,
                          text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert not (tmp_path / "out.npz").exists()
  steps = sorted(int(s) for s in os.listdir(tmp_path / "run" / "checkpoints") if s.isdigit())
  assert steps and max(steps) < FIT_KWARGS["num_steps"]
  resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  got = np.load(tmp_path / "out.npz")
  assert int(got["resumed"]) == max(steps) and int(got["step"]) == FIT_KWARGS["num_steps"]
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  lines = [json.loads(l)["step"] for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert lines == sorted(set(lines))  # no duplicated steps after the resume



def _poison_objective():
  base = objectives.get_objective("vicreg")

  def fn(z_a, z_b):
    loss, aux = base.fn(z_a, z_b)
    spread = jnp.max(jnp.abs(z_a - z_a[:1]))
    return loss + 0.0 * jnp.log(spread), aux  # NaN exactly when all rows are equal

  return objectives.Objective("poison", "pair", fn)


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, digits, fast_compile):
  def batches(start):
    for s, b in enumerate(data.batch_iterator(digits, 32, seed=0, start_step=start),
                          start=start):
      if s >= 6:  # the batch of step 7 (steps count from 1)
        b = dict(b, image=np.zeros_like(b["image"]))
      yield b

  with pytest.raises(train.NonFiniteLossError, match="non-finite at step 7") as info:
    run_fit(model=tiny_model(), objective=_poison_objective(), dataset=digits,
              batch_size=32, num_steps=20, log_every=5, checkpoint_every=5,
              workdir=tmp_path, progress=False, data_iterator_fn=batches)
  assert info.value.step == 7 and info.value.last_checkpoint == 5
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
  assert "last good checkpoint (step 5)" in str(info.value)


def test_wall_clock_cap_stops_with_a_checkpoint(tmp_path, digits, fast_compile,
                                                 capsys):
  res = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
                  **dict(FIT_KWARGS, num_steps=50, max_train_seconds=1e-9))
  assert res.step == 1
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
  record, note = res.history
  assert record["step"] == 1 and np.isfinite(record["loss"])
  # The early stop is said, on stderr and in metrics.jsonl, not left silent.
  assert note == {"step": 1, "stopped_early": 1.0, "max_train_seconds": 1e-9}
  assert "stopped at step 1 of 50" in capsys.readouterr().err
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["stopped_early"] == 1.0
  # Step 1 is not a statistics step (log_every=4): no zeros pretending to be stats.
  assert not set(train.STATS_KEYS) & set(record)


def test_bad_arguments_are_clear_errors(tmp_path, digits, fast_compile):
  with pytest.raises(ValueError, match="unknown objective 'vicrge'"):
    run_fit(model=tiny_model(), objective="vicrge", dataset=digits, batch_size=32,
              num_steps=2, progress=False)
  if len(jax.devices()) == 2:  # conftest's two CPU devices
    with pytest.raises(ValueError, match="not divisible by the number of devices"):
      run_fit(model=tiny_model(), objective="vicreg", dataset=digits, batch_size=33,
                num_steps=2, progress=False)
  with pytest.raises(ValueError, match="predictor"):
    run_fit(model=tiny_model(), objective="byol", dataset=digits, batch_size=32,
              num_steps=2, progress=False)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="writable"):
    run_fit(model=tiny_model(), objective="vicreg", dataset=digits, batch_size=32,
              num_steps=2, progress=False, workdir=blocker / "run")
  assert blocker.read_text() == "x"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, uninterrupted):
  if jax.default_backend() != "cpu":
    pytest.skip("the worker processes run on CPU (gloo); compare with a CPU parent")
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen(
      [sys.executable, WORKER, "multihost", "--process_id", str(i), "--num_processes", "2",
       "--port", str(port), "--out", str(tmp_path / "mh.npz")],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
  # One process, two devices, the same global batches (each process read half).
  one = uninterrupted
  got = np.load(tmp_path / "mh.npz")
  assert int(got["step"]) == FIT_KWARGS["num_steps"]
  for k, v in one.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------- TensorBoard


def _jsonl_scalars(path):
  """``{name: [(step, value), ...]}`` of the numeric entries of metrics.jsonl."""
  out = {}
  for line in open(path):
    record = json.loads(line)
    for name, value in record.items():
      if name != "step" and type(value) in (int, float):
        out.setdefault(name, []).append((record["step"], value))
  return out


def _tensorboard_scalars(logdir):
  """The same mapping read back by TensorBoard's own loader (restart purge on)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(logdir),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_match_metrics_jsonl_across_a_resume(tmp_path, digits,
                                                                  fast_compile):
  pytest.importorskip("tensorboard")
  kw = dict(FIT_KWARGS, num_steps=4, log_every=2, checkpoint_every=2, eval_every=2)
  runs = []

  def evaluator(step, variables):
    return {"ev/run": len(runs), "ev/norm": float(optax.tree.norm(variables["params"])),
            "ev/entropy": -np.inf,  # as the monitor's singular-covariance entropy
            "ev/curve": [1.0, 2.0]}  # not a scalar: metrics.jsonl only

  runs.append(run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
                        evaluators=[evaluator], **kw))
  # A crash after step 4 was logged but before its checkpoint: the same command
  # resumes from step 2 and logs steps 3-4 again (other elapsed times, ev/run = 1).
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  runs.append(run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
                        evaluators=[evaluator], **kw))
  assert runs[1].resumed_from == 2
  assert len(os.listdir(tmp_path / "tensorboard")) == 2  # one event file per run
  want = _jsonl_scalars(tmp_path / "metrics.jsonl")
  got = _tensorboard_scalars(tmp_path / "tensorboard")
  assert want["ev/run"] == [(2, 0), (4, 1)] and "ev/curve" not in want
  for name in ("loss", "lr", "probe_acc", "rep_effective_rank", "compile_s", "ev/norm",
               "ev/entropy"):
    assert name in want, name
  assert sorted(got) == sorted(want)
  for name, points in want.items():
    assert [s for s, _ in got[name]] == [s for s, _ in points], name
    # Scalar summaries hold float32: the value is the logged one rounded once.
    np.testing.assert_array_equal(np.float32([v for _, v in got[name]]),
                                  np.float32([v for _, v in points]), err_msg=name)


def test_without_tensorboard_fit_writes_metrics_only(tmp_path, digits, fast_compile,
                                                     monkeypatch, caplog):
  kw = dict(FIT_KWARGS, num_steps=2, log_every=1)
  want = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path / "off",
                   tensorboard=False, **kw)
  assert sorted(f for f in os.listdir(tmp_path / "off") if f != ".lock") == [
      "checkpoints", "metrics.jsonl"]
  # tensorboard unimportable (its submodules too, cached ones included).
  for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, "tensorboard", None)
  with pytest.raises(ImportError):
    import tensorboard.summary.writer.event_file_writer  # noqa: F401  (must fail)
  caplog.set_level("INFO")
  res = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path / "missing", **kw)
  assert sorted(f for f in os.listdir(tmp_path / "missing") if f != ".lock") == [
      "checkpoints", "metrics.jsonl"]
  assert [l["step"] for l in res.history] == [1, 2]
  chex.assert_trees_all_equal(res.state.params, want.state.params)
  notes = [r for r in caplog.records if r.name == "sslit.metrics"]
  assert len(notes) == 1 and notes[0].levelname == "INFO", notes
  assert "tensorboard is not installed" in notes[0].getMessage()


def test_resume_checks_the_checkpoint_signature(tmp_path, digits, fast_compile):
  """Through the Python API too: other trajectory settings never resume silently."""
  from sslit import checkpoint  # pylint: disable=g-import-not-at-top
  kw = dict(FIT_KWARGS, num_steps=4, log_every=2, checkpoint_every=2)
  run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path, **kw)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(checkpoint.SignatureMismatchError,
                     match=r"learning_rate 0\.001 → 0\.0005"):
    run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
            **dict(kw, learning_rate=5e-4, num_steps=6))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # nothing moved
  # Accepted explicitly: resumes from step 4 with the new settings.
  res = run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
                **dict(kw, learning_rate=5e-4, num_steps=6,
                       accept_changes=("learning_rate", "num_steps")))
  assert res.resumed_from == 4 and res.step == 6


def test_a_second_run_on_a_locked_workdir_fails_at_once(tmp_path, digits):
  from sslit import rundir  # pylint: disable=g-import-not-at-top
  with rundir.RunLock(tmp_path):
    with pytest.raises(rundir.RunLockedError, match=f"pid {os.getpid()}"):
      run_fit(model=tiny_model(), dataset=digits, workdir=tmp_path,
              **dict(FIT_KWARGS, num_steps=2))
  assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------- the kinds


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_simsiam_has_no_ema_state_and_its_targets_get_no_gradient(digits, fast_compile):
  model = tiny_model("simsiam")
  obj = objectives.get_objective("simsiam")
  tx = optax.sgd(1.0)  # the update is minus the gradient
  batch = _batch(digits)
  x = train.images_to_float(jnp.asarray(batch["image"]))
  state0 = _init(model, tx, None, jax.random.key(0), x)
  step = jax.jit(train.make_train_step(_train_apply(model), obj.fn, tx, method="simsiam"))
  state1, _ = step(state0, batch)
  assert state1.ema_params == {}

  def neg_cos(params, stop):  # both views are the images (no augmentation)
    out = _train_apply(model)({"params": params, "batch_stats": state0.batch_stats},
                              x)[0]
    z = jax.lax.stop_gradient(out["proj"]) if stop else out["proj"]
    return -jnp.mean(jnp.sum(_unit(out["pred"]) * _unit(z), -1))

  want, through_target = jax.jit(lambda p: (jax.grad(neg_cos)(p, True),
                                             jax.grad(neg_cos)(p, False)))(state0.params)
  got = jax.tree.map(lambda a, b: a - b, state0.params, state1.params)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
  assert not np.allclose(_flat(got)["projector/dense0/kernel"],
                         _flat(through_target)["projector/dense0/kernel"], atol=1e-5)


@pytest.mark.parametrize("dino_head", [0, 24])
def test_dino_center_is_the_ema_of_the_teacher_outputs_and_is_restored(
    tmp_path, digits, fast_compile, dino_head):
  from sslit import models  # pylint: disable=g-import-not-at-top
  model = (tiny_model("dino") if not dino_head else models.build_model(
      "mlp", backbone_kwargs={"widths": (32, 16)}, projector=(32, 32),
      dino_head=dino_head))
  output = "dino" if dino_head else "proj"  # DINO's logits
  batch = _batch(digits)  # every step's batch; no augmentation, no normalisation
  kw = dict(objective="dino", batch_size=32, log_every=1, checkpoint_every=1,
            progress=False, normalize=False, probe=False, data_iterator_fn=lambda start: iter(
                [batch] * (2 - start)))
  first = run_fit(model=model, dataset=digits, workdir=tmp_path, num_steps=1, **kw)
  (record,) = first.history
  assert "center" not in record
  np.testing.assert_allclose(record["teacher_temperature"], 0.04, rtol=1e-6)
  # Resumed from step 1 (its centre restored), one more step.
  again = run_fit(model=model, dataset=digits, workdir=tmp_path, num_steps=2,
                  accept_changes=("num_steps",), **kw)
  assert again.resumed_from == 1
  s1, s2 = parallel.to_host(first.state), parallel.to_host(again.state)
  assert np.abs(s1.ema_params["center"]).max() > 0
  assert s1.ema_params["center"].shape == (dino_head or 32,)
  # centre' = 0.9 centre + 0.1 mean of the teacher's outputs of the two global views
  # (both the images here), the teacher being the EMA network before the update.
  x = train.images_to_float(jnp.asarray(batch["image"]))
  t = _train_apply(model)({"params": s1.ema_params["params"],
                           "batch_stats": s1.batch_stats}, x)[0][output]
  want = 0.9 * s1.ema_params["center"] + 0.1 * np.mean(np.asarray(t), axis=0)
  np.testing.assert_allclose(s2.ema_params["center"], want, rtol=1e-5, atol=1e-6)


def test_swav_queue_fills_with_the_global_projections_and_joins_sinkhorn_once_full(
    digits, fast_compile):
  model, obj = tiny_model("swav"), objectives.get_objective("swav")
  tx = optax.sgd(0.1, momentum=0.9)
  n, length = 16, 32  # the queue holds two batches
  batches = [_batch(digits, n, n * i) for i in range(4)]
  apply = _train_apply(model)
  make = lambda **kw: jax.jit(train.make_train_step(apply, obj.fn, tx, method="swav", **kw))
  step, plain_step = make(queue_start_step=1), make()
  plain = _init(model, tx, None, jax.random.key(0), train.images_to_float(
      jnp.asarray(batches[0]["image"])))
  state = plain._replace(ema_params={"queue": jnp.zeros((2, length, 32)),
                                     "filled": jnp.zeros((), jnp.int32)})
  pushed = []
  for t, b in enumerate(batches):
    x = train.images_to_float(jnp.asarray(b["image"]))  # both views: the images
    out = apply({"params": state.params, "batch_stats": state.batch_stats}, x)[0]
    z, before = np.asarray(out["proj"]), state.ema_params
    state, m = step(state, b)
    plain, pm = plain_step(plain, b)
    q, filled = np.asarray(state.ema_params["queue"]), int(state.ema_params["filled"])
    if t == 0:  # before queue_start_step: nothing pushed
      assert filled == 0 and not q.any()
    else:  # newest first: this step's projections (before its update), then older
      pushed.insert(0, z)
      assert filled == min(t * n, length)
      for i, zi in enumerate(pushed[:2]):
        np.testing.assert_allclose(q[:, i * n:(i + 1) * n], np.stack([zi, zi]),
                                   rtol=1e-6, atol=1e-6)
      assert not q[:, len(pushed[:2]) * n:].any()
    used = float(m["queue_used"])
    assert used == (1.0 if t == 3 else 0.0)  # full (two pushes) from step 3 on
    if not used:  # Sinkhorn on the batch alone: the run without a queue
      np.testing.assert_allclose(m["loss"], pm["loss"], rtol=1e-6)
      chex.assert_trees_all_close(state.params, plain.params, rtol=1e-5, atol=1e-6)
    else:  # the objective with the queue as it was before the step
      want = obj.fn(jnp.stack([out["proj"], out["proj"]]), out["prototypes"],
                    queue=before["queue"])[0]
      np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
      assert abs(float(m["loss"]) - float(pm["loss"])) > 1e-4


def test_swav_prototypes_frozen_for_the_first_steps_then_trained(digits, fast_compile):
  model, obj = tiny_model("swav"), objectives.get_objective("swav")
  tx = optax.adamw(1e-2, weight_decay=0.5)
  batches = [_batch(digits, 16, 16 * i) for i in range(3)]
  state = _init(model, tx, None, jax.random.key(0), train.images_to_float(
      jnp.asarray(batches[0]["image"])))
  start = np.asarray(state.params["prototypes"])
  step = jax.jit(train.make_train_step(_train_apply(model), obj.fn, tx, method="swav",
                                       freeze_prototypes_steps=2))
  for t, b in enumerate(batches):
    before = _flat(state.params)
    state, _ = step(state, b)
    after = _flat(state.params)
    moved = {k: not np.allclose(after[k], before[k], atol=1e-7) for k in after}
    assert moved["projector/dense0/kernel"]  # the rest trains from the first step
    if t < 2:
      np.testing.assert_allclose(after["prototypes"], start, atol=1e-6)
    else:
      assert moved["prototypes"]


def test_swav_queue_from_the_options_resumes_and_is_refused_elsewhere(
    tmp_path, digits, fast_compile):
  kw = dict(model=tiny_model("swav"), objective="swav", dataset=digits, batch_size=32,
            queue_length=64, log_every=1, checkpoint_every=2, progress=False,
            probe=False)
  whole = run_fit(num_steps=4, workdir=tmp_path, **kw)
  assert [r["queue_used"] for r in whole.history] == [0.0, 0.0, 1.0, 1.0]
  assert parallel.to_host(whole.state).ema_params["queue"].shape == (2, 64, 32)
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after step 2's save
  again = run_fit(num_steps=4, workdir=tmp_path, **kw)
  assert again.resumed_from == 2  # the queue came back with the checkpoint
  chex.assert_trees_all_close(parallel.to_host(again.state).ema_params,
                              parallel.to_host(whole.state).ema_params, rtol=1e-5,
                              atol=1e-6)
  with pytest.raises(ValueError, match="queue_length must be >= 0 and a multiple"):
    train.FitOptions(objective="swav", batch_size=32, num_steps=4, queue_length=48)
  with pytest.raises(ValueError, match="queue_length is an option of the swav method"):
    run_fit(**{**kw, "model": tiny_model("vicreg"), "objective": "vicreg"},
            num_steps=1)
  with pytest.raises(ValueError, match="freeze_prototypes_steps is an option of the swav method"):
    run_fit(**{**kw, "model": tiny_model("vicreg"), "objective": "vicreg",
               "queue_length": 0}, freeze_prototypes_steps=3, num_steps=1)


def test_swav_prototypes_stay_unit_norm_and_two_devices_equal_one(digits, fast_compile):
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  model = tiny_model("swav")
  obj = objectives.get_objective("swav")
  tx = optax.sgd(0.1, momentum=0.9)
  batches = [_batch(digits, 32, 32 * i) for i in range(3)]
  x = train.images_to_float(jnp.asarray(batches[0]["image"]))
  step = train.make_train_step(_train_apply(model), obj.fn, tx, method="swav")
  finals = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(devices)
    state = parallel.replicate(_init(model, tx, None, jax.random.key(0), x), mesh)
    jstep = jax.jit(step)
    for b in batches:
      state, metrics = jstep(state, parallel.shard_batch(b, mesh))
      norms = np.linalg.norm(parallel.to_host(state.params["prototypes"]), axis=-1)
      np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert np.isfinite(float(metrics["loss"]))
    finals.append(_flat(state.params))
  assert finals[0]["prototypes"].shape == (16, 32)
  for k in finals[0]:  # Sinkhorn's 1/epsilon = 20 amplifies rounding a little
    np.testing.assert_allclose(finals[0][k], finals[1][k], rtol=1e-4, atol=1e-5,
                               err_msg=k)


def test_multi_crop_views_shapes_and_steps_with_two_local_crops(digits, fast_compile):
  from sslit import models  # pylint: disable=g-import-not-at-top
  views = train.multi_crop_fn("none", image_size=8, num_local=2, local_size=4)
  images = jnp.asarray(_batch(digits, 4)["image"])
  g, l = jax.eval_shape(views, jax.random.key(0), images)  # the step runs them below
  assert g.shape == (2, 4, 8, 8, 1) and l.shape == (2, 4, 4, 4, 1)
  assert train.view_pairs(2) == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3))
  conv = models.build_model("convnet", backbone_kwargs={"channels": (4,),
                                                        "final_pool": "gap"},
                            projector=(16, 16), prototypes=8)
  kw = dict(batch_size=32, num_steps=2, log_every=2, progress=False, local_crops=2,
            local_crop_size=4, probe=False)
  (record,) = run_fit(model=conv, objective="swav", dataset=digits, **kw).history
  assert np.isfinite(record["loss"]) and record["rep_effective_rank"] > 1.0
  # One pass per crop size (2 global, 2 local): the same run, other statistics.
  (joint,) = run_fit(model=conv, objective="swav", dataset=digits,
                     views_in_one_pass=True, **kw).history
  assert np.isfinite(joint["loss"]) and joint["loss"] != record["loss"]
  # An MLP's input size is fixed: refused before anything is compiled.
  with pytest.raises(ValueError, match="does not accept local crops"):
    run_fit(model=tiny_model("dino"), objective="dino", dataset=digits, **kw)


def test_views_smaller_than_the_images_train_a_pooling_net_and_refuse_others(
    digits, fast_compile):
  from sslit import augment, models  # pylint: disable=g-import-not-at-top
  small = augment.preset("none", image_size=4)  # 4x4 views of the 8x8 digits
  kw = dict(objective="vicreg", dataset=digits, batch_size=32, num_steps=2, log_every=2,
            progress=False, probe=False, augment=small)
  conv = models.build_model("convnet", backbone_kwargs={"channels": (4,),
                                                        "final_pool": "2x2"},
                            projector=(16, 16))
  result = run_fit(model=conv, **kw)
  assert np.isfinite(result.history[-1]["loss"])
  full, _ = digits.get(np.arange(4))
  rep = conv.apply(result.variables, jnp.asarray(full, jnp.float32), train=False)["rep"]
  assert rep.shape == (4, 16)  # 4 channels x 2x2 bins of the 8x8 images too
  # A representation that depends on the input size: refused before any compilation.
  with pytest.raises(ValueError, match=r"views are \(4, 4\) but the images \(8, 8\)"):
    run_fit(model=tiny_model("vicreg"), **kw)
  flat = models.build_model("convnet", backbone_kwargs={"channels": (4,),
                                                        "final_pool": "none"},
                            projector=(16, 16))
  with pytest.raises(ValueError, match="does not map both to one representation"):
    run_fit(model=flat, **kw)


def test_crop_scales_of_the_config_reach_the_options_and_are_checked():
  from sslit import config as config_lib, runs  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("smoke")
  default = runs.fit_options(config)
  assert (default.global_crop_scale, default.local_crop_scale) == ((0.4, 1.0), (0.05, 0.4))
  config_lib.apply_overrides(config, [("local_crops", "2"),
                                      ("global_crop_scale", "(0.08, 1.0)"),
                                      ("local_crop_scale", "(0.1, 0.3)")])
  options = runs.fit_options(config)
  assert not options.views_in_one_pass
  config_lib.apply_overrides(config, [("views_in_one_pass", "true")])
  assert runs.fit_options(config).views_in_one_pass
  assert options.global_crop_scale == (0.08, 1.0)
  assert options.local_crop_scale == (0.1, 0.3)
  signature = train.run_signature(options)  # not the defaults: part of the signature
  assert tuple(signature["global_crop_scale"]) == (0.08, 1.0)
  for bad in ("(0.0, 1.0)", "(0.5, 0.2)", "(0.1, 1.5)", "(0.1,)"):
    config_lib.apply_overrides(config, [("global_crop_scale", bad)])
    with pytest.raises(ValueError, match="global_crop_scale must be"):
      runs.fit_options(config)


def test_augment_options_of_the_config_set_both_views_of_the_trainer_and_monitor():
  from sslit import augment, config as config_lib, monitor, runs  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("smoke")
  config.augment = "simclr"
  assert runs.fit_options(config).augment == "simclr"  # no options: the name, as before
  plain_signature = train.run_signature(runs.fit_options(config))
  # Options that leave only a flip of the simclr views: each view is then exactly
  # the image or its mirror (the oracle: NumPy), in the trainer and in the monitor.
  config_lib.apply_overrides(config, [("augment_options", (
      '{"crop_scale": None, "flip_prob": 1.0, "jitter_prob": 0.0, "blur_prob": 0.0,'
      ' "grayscale_prob": 0.0}'))])
  options = runs.fit_options(config)
  cfg_a, cfg_b = options.augment
  assert cfg_a == cfg_b and cfg_a.flip_prob == 1.0 and cfg_a.crop_scale is None
  assert (cfg_a.brightness, cfg_a.contrast, cfg_a.crop_ratio) == (0.8, 0.8, (0.75, 4 / 3))
  assert train.run_signature(options)["augment"] != plain_signature["augment"]
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
  dataset = types.SimpleNamespace(image_shape=(8, 8, 1))
  expected = np.flip(images, axis=2).astype(np.float32) / 255
  for views_fn in (train._make_augment_fn(options, dataset),  # pylint: disable=protected-access
                   monitor._views_fn(options.augment, (8, 8, 1))):  # pylint: disable=protected-access
    for view in views_fn(jax.random.key(0), images):
      np.testing.assert_allclose(view, expected, atol=1e-6)
  # Options are the two-view presets': refused with local crops, and checked.
  config.local_crops = 2
  with pytest.raises(config_lib.ConfigError, match="global_crop_scale"):
    runs.fit_options(config)
  config.local_crops = 0
  config_lib.apply_overrides(config, [("augment_options", '{"crop_size": 20}')])
  with pytest.raises(config_lib.ConfigError, match="unknown augmentation option.*crop_size"):
    runs.fit_options(config)
  config_lib.apply_overrides(config, [("augment_options", '{"crop_scale": (0.5, 0.2)}')])
  with pytest.raises(config_lib.ConfigError, match="augment_options: crop_scale must be"):
    runs.fit_options(config)
  assert augment.preset("simclr", image_size=8, options={}) == augment.preset(
      "simclr", image_size=8)


def test_signature_and_stored_config_predating_new_fields_still_resume(tmp_path):
  from sslit import config as config_lib, rundir  # pylint: disable=g-import-not-at-top
  options = train.FitOptions(objective="vicreg", batch_size=32, num_steps=4)
  assert sorted(train.run_signature(options)) == sorted(rundir.SIGNATURE_FIELDS)
  crops = train.run_signature(train.FitOptions(objective="dino", batch_size=32,
                                               num_steps=4, local_crops=2))
  assert crops["local_crops"] == 2 and "local_crop_size" not in crops
  config = config_lib.load_config("smoke")
  assert "prototypes" not in rundir.config_signature(config)["model"]
  # A config.json written before local_crops, local_crop_size, model.prototypes.
  stored = config_lib.to_dict(config)
  for field in ("local_crops", "local_crop_size", "augment_options"):
    del stored[field]
  del stored["model"]["prototypes"], stored["eval"]["calibrate"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  assert rundir.prepare_workdir(str(tmp_path), config, write=False) == {}
  config.local_crops = 2
  with pytest.raises(config_lib.ConfigError, match="local_crops"):
    rundir.prepare_workdir(str(tmp_path), config, write=False)
  # A field whose default is not what earlier runs did: they had no options, whatever
  # the main job's default is now. (eval.calibrate is resumable either way.)
  config.local_crops = 0
  config.augment_options = {"image_size": 4}
  with pytest.raises(config_lib.ConfigError, match="augment_options"):
    rundir.prepare_workdir(str(tmp_path), config, write=False)
  config.augment_options = {}
  config.eval.calibrate = True
  assert rundir.prepare_workdir(str(tmp_path), config, write=False) == {}
  # The config's name is a label: the same fields under another name resume.
  config.local_crops = 0
  config.name = "renamed"
  assert rundir.prepare_workdir(str(tmp_path), config, write=False) == {}


def test_cli_trains_dino_on_the_smoke_config(tmp_path, capsys, fast_compile):
  from sslit import cli  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "dino"
  code = cli.main(["train", "--config", "smoke", "--workdir", str(workdir),
                   "--config.objective=dino", "--config.num_steps=4",
                   "--config.model.dino_head=48", "--config.model.dino_head_gain=true",
                   "--config.warmup_steps=1", "--config.log_every=2",
                   "--config.monitor_every=0", "--config.report=false",
                   "--config.eval.enabled=false", "--config.online_probe=false"])
  out = capsys.readouterr()
  assert code == 0, out.out + out.err
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [l for l in lines if "loss" in l]
  assert [l["step"] for l in losses] == [2, 4]
  assert all(np.isfinite(l["loss"]) and "teacher_temperature" in l for l in losses)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
  # The weight-normalised head from the config, restored from the checkpoint.
  from sslit import runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(workdir)
  assert run.model.dino_head == 48 and run.model.dino_head_gain
  assert run.variables["params"]["dino_head"].shape == (48, 64)
  gain = np.asarray(run.variables["params"]["dino_head_gain"])
  assert gain.shape == (48,) and not np.array_equal(gain, np.ones(48))  # trained
  # The teacher (what eval.target probes) comes back beside the student, apart from it.
  teacher = run.target["dino_head"]
  assert teacher.shape == (48, 64)
  assert not np.array_equal(teacher, run.variables["params"]["dino_head"])
  # sslit embed --target: the teacher's representation, BatchNorm calibrated.
  path = tmp_path / "teacher.npz"
  assert cli.main(["embed", "--workdir", str(workdir), "--target", "--num_examples",
                   "40", "--out", str(path)]) == 0
  from sslit import data, models  # pylint: disable=g-import-not-at-top
  images, _ = run.test_ds.get(np.arange(40))
  x = data.preprocess(images, run.train_ds.mean, run.train_ds.std)
  rep = models.make_apply_fn(run.model, "rep")
  want = rep(runs.target_variables(run.config, run.model, run.variables, run.target,
                                   run.train_ds), x)
  np.testing.assert_allclose(np.load(path)["rep"], want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(want, rep(run.variables, x), atol=1e-3)


def test_runs_build_model_gives_each_objective_its_heads():
  from sslit import config as config_lib, runs  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("smoke")  # batch 64, projector (64, 64)
  heads = {}
  for name in ("vicreg", "byol", "moco_v3", "simsiam", "swav", "wmse", "dino"):
    config.objective = name
    m = runs.build_model(config)
    heads[name] = (m.projector.widths, m.predictor and m.predictor.widths, m.prototypes)
  assert heads["vicreg"] == heads["dino"] == ((64, 64), None, 0)
  assert heads["byol"] == heads["moco_v3"] == ((64, 64), (4096, 64), 0)
  assert heads["simsiam"] == ((64, 64), (16, 64), 0)  # the bottleneck predictor
  assert heads["swav"] == ((64, 64), None, 32)  # batch_size // 2
  assert heads["wmse"] == ((64, 32), None, 0)  # whitening needs width < batch
  config.objective, config.model.prototypes = "swav", 10
  assert runs.build_model(config).prototypes == 10
  # DINO's weight-normalised head: only for DINO, only when asked for.
  config.model.dino_head = 48
  assert runs.build_model(config).dino_head == 0
  config.objective = "dino"
  assert runs.build_model(config).dino_head == 48
  assert not runs.build_model(config).dino_head_gain
  config.model.dino_head_gain = True
  assert runs.build_model(config).dino_head_gain
  assert "dino" in runs.build_model(config).outputs()
  # model.projector=none: no projector, the objective gets the representation.
  config.objective = "vicreg"
  config_lib.apply_overrides(config, [("model.projector", "none")])
  assert runs.build_model(config).projector is None
  assert runs.build_model(config).outputs() == ("rep",)
