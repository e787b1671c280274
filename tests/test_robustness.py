"""Run-directory lock (rundir.RunLock) and the import-time LAPACK work-around.

The subprocess tests start fresh interpreters: a lock held by another process, and
an interpreter that has neither the conftest's XLA_FLAGS nor its call of
``parallel.serialize_cpu_lapack`` (only ``import sslit`` can have set the flag).
"""

from __future__ import annotations

from tests.fit_utils import subprocess_env

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

import sslit
from sslit import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


_env = subprocess_env  # this checkout, CPU only (tests/fit_utils.py)


HOLDER = """
import sys, time
from sslit.rundir import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_holder_fails_at_once_and_kill_9_frees_the_lock(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)],
                            stdout=subprocess.PIPE, text=True, env=_env())
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.RunLockedError,
                       match=rf"workdir {workdir} is in use by pid {holder.pid} on host "
                             rf".+ since .+; wait for it or use another --workdir"):
      with rundir.RunLock(workdir):
        pass
    # SIGKILL: no clean-up runs; the kernel drops the lock with the process.
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
  with rundir.RunLock(workdir) as lock:
    assert lock.locked
    held = json.loads((workdir / ".lock").read_text())
    assert held["pid"] == os.getpid()
    # A second holder in this very process is refused too, naming this pid.
    with pytest.raises(rundir.RunLockedError, match=rf"pid {os.getpid()} "):
      rundir.RunLock(workdir).acquire()
  assert not lock.locked and (workdir / ".lock").read_text() == ""
  with rundir.RunLock(workdir):  # released on exit: free again
    pass


def test_lock_in_an_unwritable_place_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="writable"):
    rundir.RunLock(blocker / "run").acquire()


LAPACK_USER = """
import os, sys, time
import numpy as np
import sslit.estimators as estimators  # the only sslit import of this user script
from jax._src import xla_bridge
assert not xla_bridge._backends, "the backend must not start on import"
flags_at_start = os.environ.get("XLA_FLAGS", "")
import jax
jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
means = rng.standard_normal((4, 2))
a = rng.standard_normal((4, 2, 2))
covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(2)
# 75,000 draws per component in chunks of 200,000: a full and a partial chunk of
# batched triangular solves run side by side; without the flag this hung in 4 of 4
# fresh processes on a 2-core CPU (the 200,000-draw call of the issue too).
for seed in range(2):
  h = estimators.mixture_entropy_mc(jax.random.key(seed), means, covs,
                                    num_samples=75_000, chunk_size=200_000)
  assert np.isfinite(float(h)) and h.dtype == np.float64
print("FLAGS=" + flags_at_start, flush=True)
"""


def test_importing_sslit_makes_the_batched_lapack_path_safe():
  try:
    out = subprocess.run([sys.executable, "-c", LAPACK_USER], env=_env(),
                         capture_output=True, text=True, timeout=180)
  except subprocess.TimeoutExpired:
    pytest.fail("mixture_entropy_mc hung in a fresh process (batched LAPACK deadlock)")
  assert out.returncode == 0, out.stderr[-3000:]
  flags = out.stdout.strip().splitlines()[-1]
  assert (FLAG in flags) is sslit._jaxlib_affected(), flags  # pylint: disable=protected-access


def test_an_explicit_xla_flags_choice_wins():
  code = "import os, sslit; print(os.environ.get('XLA_FLAGS', ''))"
  for given in ("--xla_cpu_enable_concurrency_optimized_scheduler=true",
                "--xla_cpu_enable_concurrency_optimized_scheduler=false"):
    out = subprocess.run([sys.executable, "-c", code], env=_env(XLA_FLAGS=given),
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == given
  # Other flags are kept and the work-around is added (affected jaxlib only).
  out = subprocess.run([sys.executable, "-c", code + "; import sys; print('jax' in sys.modules)"],
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                       capture_output=True, text=True, timeout=60, check=True)
  flags, jax_imported = out.stdout.strip().splitlines()
  expected = "--xla_force_host_platform_device_count=2"
  if sslit._jaxlib_affected():  # pylint: disable=protected-access
    expected += " " + FLAG
  assert flags == expected and jax_imported == "False"  # import sslit stays cheap


def test_too_late_warns_once_with_the_fix(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # the backend has started (as in a script that used JAX first)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setattr(sslit, "_warned", False)
  monkeypatch.setattr(sslit, "_jaxlib_affected", lambda: True)
  with pytest.warns(RuntimeWarning, match=f"XLA_FLAGS={FLAG}"):
    assert sslit._serialize_cpu_lapack_on_import() is False  # pylint: disable=protected-access
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    sslit._serialize_cpu_lapack_on_import()  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
