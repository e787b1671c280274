"""Multi-host checkpointing: two processes, one checkpoint directory, SIGKILL, resume.

Two processes (``jax.distributed.initialize`` on localhost, CPU collectives over
gloo, one device each) train the tiny MLP of ``tests/multihost_worker.py`` with
``sslit.train.fit``, writing checkpoints into one shared workdir. Both are killed
with SIGKILL in the middle of training, then the same command is started again.
The oracle is an uninterrupted run in this process (one process, two devices, the
same global batches, no checkpoints). A second test has the two processes fall
back together from a corrupt newest checkpoint (no training, a small tree).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sslit import checkpoint, parallel
from tests.fit_utils import run_fit
from tests.multihost_worker import FIT_KWARGS, DigitsDataset, small_state, tiny_model

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120  # per launch; a hang (e.g. one process waiting in a barrier) fails


def _flat(tree):
  """``{"a/b": np.ndarray}`` of a pytree (device arrays fetched to the host)."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(parallel.to_host(tree))[0]}


@pytest.fixture(scope="module")
def uninterrupted():
  """Final params of FIT_KWARGS: one process, both devices, no interruption."""
  return _flat(run_fit(model=tiny_model(), dataset=DigitsDataset(),
                         **FIT_KWARGS).state.params)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(tmp_path, tag, *extra, mode="multihost"):
  """Start the two worker processes; their output goes to ``<tag>.<i>.log``."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = open(tmp_path / f"{tag}.{i}.log", "w")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, WORKER, mode, "--process_id", str(i), "--num_processes", "2",
         "--port", str(port), "--workdir", str(tmp_path / "run"),
         "--out", str(tmp_path / "out.npz"), *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs, logs


def _logs(tmp_path, tag):
  return "\n".join(f"--- process {i}:\n" + (tmp_path / f"{tag}.{i}.log").read_text()[-3000:]
                   for i in range(2))


def _kill(procs, logs):
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait(timeout=30)
  for log in logs:
    log.close()


def _wait(procs, logs):
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    _kill(procs, logs)


def _ocdbt_keys(directory):
  """The keys of an OCDBT store (orbax's array format) under ``directory``."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{directory}/"}).result()
  return {k.decode() for k in kv.list().result()}


def test_two_processes_killed_mid_save_resume_from_the_newest_complete_checkpoint(
    tmp_path, uninterrupted):
  ckpt = tmp_path / "run" / "checkpoints"
  num_steps = FIT_KWARGS["num_steps"]

  # 1. Checkpoints every 4 steps; the save of step 8 stalls after both processes
  # wrote their data, before the step is committed. Then SIGKILL both.
  procs, logs = _launch(tmp_path, "killed", "--checkpoint_every", "4",
                        "--stall_save_at", "8")
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(f"{tmp_path / 'out.npz'}.stalled"):
      assert all(p.poll() is None for p in procs), _logs(tmp_path, "killed")
      assert time.monotonic() < deadline, "timed out\n" + _logs(tmp_path, "killed")
      time.sleep(0.05)
  finally:
    _kill(procs, logs)
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
  assert not (tmp_path / "out.npz").exists()
  # Step 4 complete; step 8 only as the uncommitted temporary directory.
  left = sorted(os.listdir(ckpt))
  assert len(left) == 2 and left[0] == "4", left
  assert left[1].startswith("8.orbax-checkpoint-tmp"), left
  # Both processes had written their part of the arrays.
  written = glob.glob(str(ckpt / left[1] / "state*" / "ocdbt.process_*" / "d" / "*"))
  assert {os.path.basename(os.path.dirname(os.path.dirname(w))) for w in written} == {
      "ocdbt.process_0", "ocdbt.process_1"}, written

  # 2. The same command again: both resume from step 4, the newest complete one.
  procs, logs = _launch(tmp_path, "resumed", "--checkpoint_every", "4")
  _wait(procs, logs)
  assert [p.returncode for p in procs] == [0, 0], _logs(tmp_path, "resumed")
  got = np.load(tmp_path / "out.npz")
  assert int(got["resumed"]) == 4 and int(got["step"]) == num_steps
  # Bitwise: with two devices every cross-device reduction is one addition
  # a + b, which is commutative in IEEE arithmetic, and each device sees the
  # same rows in one process with two devices as in two processes.
  assert set(got.files) == set(uninterrupted) | {"step", "resumed"}
  for k, v in uninterrupted.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)

  # 3. One complete copy per saved step (keep_checkpoints=3), no leftovers: the
  # interrupted save's temporary directory is gone.
  assert sorted(os.listdir(ckpt)) == ["12", "16", "8"]
  for step in ("8", "12", "16"):
    d = ckpt / step
    assert {"state", "meta"} <= set(os.listdir(d)) <= {
        "state", "meta", "_CHECKPOINT_METADATA", "commit_success.txt"}, os.listdir(d)
    assert json.loads((d / "meta" / "metadata").read_text())["step"] == int(step)
    # Each process writes its part of the arrays into its own OCDBT store; no
    # array chunk may be written by both (a duplicate copy), and together they
    # hold every chunk the checkpoint's index lists.
    stores = sorted(glob.glob(str(d / "state" / "ocdbt.process_*")))
    assert len(stores) == 2, stores
    parts = [_ocdbt_keys(s) for s in stores]
    chunks = [{k for k in part if not k.endswith(".zarray")} for part in parts]
    assert not chunks[0] & chunks[1]
    index = {k for k in _ocdbt_keys(d / "state") if not k.endswith(".zarray")}
    assert chunks[0] | chunks[1] == index
  assert not [p for p in glob.glob(str(tmp_path / "run" / "**"), recursive=True)
              if "orbax-checkpoint-tmp" in os.path.basename(p)]
  # Process 0 alone wrote the metrics: no line twice, the resumed steps rewritten.
  steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert steps == [4, 8, 12, 16]

  # 4. The multi-host checkpoint is one global copy: a single process reads it
  # and gets the parameters the two processes ended with.
  with checkpoint.CheckpointManager(ckpt) as m:
    raw, meta, step = m.restore_raw()
  assert step == num_steps and meta["step"] == num_steps
  flat = _flat(raw["params"])
  assert set(flat) == set(uninterrupted)
  for k in flat:
    np.testing.assert_array_equal(flat[k], got[k], err_msg=k)


def test_two_processes_fall_back_together_from_a_corrupt_newest_checkpoint(tmp_path):
  # The worker saves small_state(1) (with each process's data iterator state),
  # small_state(2) as steps 1, 2; process 0
  # garbles step 2; both restore, save step 2 again and restore it.
  procs, logs = _launch(tmp_path, "ckpt", mode="checkpoint")
  _wait(procs, logs)
  assert [p.returncode for p in procs] == [0, 0], _logs(tmp_path, "ckpt")
  for i in range(2):
    got = np.load(tmp_path / f"out.npz.{i}.npz")
    # Both processes resumed from step 1 with its meta and said why.
    assert int(got["step"]) == 1 and int(got["data_step"]) == 1
    assert str(got["data_state"]) == f"iterator of process {i}"  # its own file
    (warned,) = got["warned"]
    assert "step 2" in warned and "could not be restored" in warned
    assert list(got["listed"]) == ["1", "2.corrupt"]  # moved aside, not deleted
    assert list(got["steps_after"]) == [1, 2] and int(got["step_again"]) == 2
    for prefix, seed in (("fallback/", 1), ("again/", 2)):
      want = _flat(small_state(seed))
      want["key"] = np.asarray(jax.random.key_data(jax.random.key(seed)))
      assert {k[len(prefix):] for k in got.files if k.startswith(prefix)} == set(want)
      for k, v in want.items():
        np.testing.assert_array_equal(got[prefix + k], v, err_msg=prefix + k)
