"""The built wheel runs the commands from any directory, without the checkout.

The wheel is built from this checkout, installed (without dependencies: they are
the test environment's) into a fresh directory that comes first on ``PYTHONPATH``,
and ``sslit train`` / ``eval`` / ``analyze`` / ``embed`` run from an empty working
directory: every file the commands read (the shipped configs) must be inside the
package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_runs_train_eval_analyze_from_an_empty_directory(tmp_path):
  dist, target, cwd = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
  cwd.mkdir()
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                  "--no-build-isolation", "-q", "-w", str(dist), ROOT],
                 check=True, capture_output=True, timeout=300)
  (wheel,) = dist.glob("sslit-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "sslit/configs/default.py" in names and "sslit/configs/smoke.py" in names
  assert not any(n.startswith(("experiments/", "tests/")) for n in names)
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                  "--target", str(target), str(wheel)],
                 check=True, capture_output=True, timeout=300)
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")

  def sslit(*args):
    proc = subprocess.run([sys.executable, "-m", "sslit.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  where = subprocess.run([sys.executable, "-c", "import sslit; print(sslit.__file__)"],
                         cwd=cwd, env=env, capture_output=True, text=True, check=True)
  assert where.stdout.strip().startswith(str(target))  # the wheel, not the checkout
  out = sslit("train", "--config", "smoke", "--config.num_steps=10",
              "--config.monitor_every=0", "--config.eval.steps=20",
              "--config.eval.baselines=()", "--config.report=false")
  assert "linear top-1" in out
  run = cwd / "runs" / "smoke"  # the default workdir, relative to where it ran
  assert (run / "results.json").exists()
  assert "sslit eval: step 10" in sslit("eval", "--workdir", "runs/smoke")
  assert "monitor/cpa/h_cond" in sslit("analyze", "--workdir", "runs/smoke",
                                       "--num_examples", "32")
