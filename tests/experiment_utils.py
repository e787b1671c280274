"""Helpers of the experiment tests (tests/test_experiment_*.py)."""

from __future__ import annotations

import json
import os


def run_experiment(module, args: list[str], workdir) -> dict:
  """``module.main(args + --workdir)`` must exit 0; returns its ``results.json``."""
  assert module.main(list(args) + ["--workdir", str(workdir)]) == 0
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def file_mtimes(root) -> dict:
  """Every file below ``root`` with its modification time (reuse checks)."""
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
          for d, _, files in os.walk(root) for f in files}


def monitor_records(run_dir, key: str) -> dict:
  """``{step: record}`` of a run's metrics.jsonl lines that hold ``key``."""
  out = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if key in r:
        out[r["step"]] = r
  return out


def checkpoint_mtimes(run_dir) -> dict:
  """``file_mtimes`` of a run's ``checkpoints/`` directory."""
  return file_mtimes(os.path.join(run_dir, "checkpoints"))


def path_mtimes(paths) -> dict:
  """``{path: st_mtime_ns}`` of the given files (reuse checks)."""
  return {p: os.stat(p).st_mtime_ns for p in paths}


def assert_png(path, min_size: int = 100):
  """``path`` is a PNG that decodes to an image of at least ``min_size`` pixels a side."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and min(image.shape[:2]) > min_size, image.shape
  return image
