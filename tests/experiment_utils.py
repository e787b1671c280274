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
