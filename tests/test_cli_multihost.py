"""``sslit train`` on two processes (gloo CPU collectives), launched as a user would.

Two ``python -m sslit.cli train`` processes with one CPU device each, joined by
``--coordinator_address/--num_processes/--process_id``, must end with the
parameters of one process on two devices (same global batch), and resume after both
are killed with ``SIGKILL`` to the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sslit import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 180
# The smoke run without its evaluation: training, checkpoints, metrics.
SMOKE = ["train", "--config", "smoke", "--config.eval.enabled=false",
         "--config.report=false", "--config.monitor_every=0",
         "--config.checkpoint_every=10", "--config.num_steps=30"]


def _env(tmp_path, devices: int) -> dict:
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(tmp_path, workdir, tag):
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f"{tag}.{i}.log", "w")
    procs.append((subprocess.Popen(
        [sys.executable, "-m", "sslit.cli", *SMOKE, "--workdir", str(workdir),
         "--config.cpu_devices=1", "--coordinator_address", f"localhost:{port}",
         "--num_processes", "2", "--process_id", str(i)],
        env=_env(tmp_path, 1), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs):
  """Exit codes of both processes (killed if still running after TIMEOUT_S)."""
  try:
    return [p.wait(timeout=TIMEOUT_S) for p, _ in procs]
  finally:
    for p, log in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()


def _finish(procs, tmp_path, tag):
  codes = _wait(procs)
  logs = "\n".join((tmp_path / f"{tag}.{i}.log").read_text()[-2000:] for i in range(2))
  assert codes == [0, 0], logs
  return logs


def _params(workdir):
  variables, step = runs.restore_variables(workdir)
  leaves = {}

  def walk(tree, prefix=""):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        leaves[prefix + k] = np.asarray(v)
  walk(variables["params"])
  return leaves, step


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The same run in one process on two CPU devices."""
  tmp = tmp_path_factory.mktemp("one")
  proc = subprocess.run(
      [sys.executable, "-m", "sslit.cli", *SMOKE, "--workdir", str(tmp / "run"),
       "--config.cpu_devices=2"],
      env=_env(tmp, 2), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _params(tmp / "run")


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_both_are_killed(tmp_path,
                                                                  one_process):
  want, want_step = one_process
  assert want_step == 30

  # Both killed once the first checkpoint exists, then the same commands again.
  workdir = tmp_path / "run"
  procs = _two_processes(tmp_path, workdir, "first")
  deadline = time.time() + TIMEOUT_S
  while not (workdir / "checkpoints" / "10").is_dir() and time.time() < deadline:
    assert all(p.poll() is None for p, _ in procs), "a process ended before step 10"
    time.sleep(0.2)
  for p, log in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
    log.close()
  logs = _finish(_two_processes(tmp_path, workdir, "again"), tmp_path, "again")
  assert "resumed from step" in logs
  got, step = _params(workdir)
  assert step == 30 and sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6,
                               err_msg=name)


def test_a_locked_run_directory_stops_both_processes_naming_the_holder(tmp_path):
  """Process 0 takes the lock for the run; process 1 learns the outcome through a
  collective. While another process holds the directory, both fail at once, and
  both name the holder, before any step or file of the run."""
  from sslit import rundir  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  with rundir.RunLock(workdir):  # held by this (pytest) process
    codes = _wait(_two_processes(tmp_path, workdir, "locked"))
  for i in range(2):
    log = (tmp_path / f"locked.{i}.log").read_text()
    assert codes[i] != 0, log[-2000:]
    assert f"is in use by pid {os.getpid()}" in log, log[-2000:]
  assert not (workdir / "checkpoints").exists()
  assert not (workdir / "config.json").exists()
