"""The trained network's probe with its running BatchNorm statistics vs calibrated ones.

The main job's random-init baseline gets BatchNorm statistics calibrated on
unaugmented training batches (``sslit.features.random_init_variables``); the trained
network is probed with the running statistics it accumulated on augmented views.
This script probes each given run both ways (and its random-init network), on the
validation split: probe fitted on ``train[:50000]``, scored on ``train[50000:]``, so
no choice is made on the test split (docs/recipe.md, "The trained network's
BatchNorm statistics").

Command (one JSON line per run directory on stdout)::

  python experiments/bn_calibration_check.py runs/default runs/other ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np


def check(workdir: str, *, fit_n: int = 50000) -> dict:
  """Validation-split probes of one run: running stats, calibrated, random init."""
  from sslit import evaluate, features, models, runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(workdir)
  ev = run.config.eval
  train_ds = run.train_ds
  kw = dict(mean=train_ds.mean, std=train_ds.std, batch_size=int(ev.batch_size))
  apply_fn = models.make_apply_fn(run.model, "rep")

  def probe(variables):
    x, y = features.extract_features(apply_fn, variables, train_ds, **kw)
    x, y = np.asarray(x), np.asarray(y)
    r = evaluate.linear_probe(x[:fit_n], y[:fit_n], x[50000:], y[50000:],
                              num_classes=train_ds.num_classes, l2=float(ev.l2),
                              steps=int(ev.steps))
    return round(float(r["top1"]), 2)

  t = time.perf_counter()
  random_init = features.random_init_variables(
      run.model, jax.random.key(int(run.config.seed)), train_ds,
      num_batches=int(ev.calibration_batches))
  out = {"workdir": workdir, "step": int(run.step),
         "running_stats": probe(run.variables),
         "calibrated": probe(features.calibrated_variables(
             run.model, run.variables, train_ds,
             num_batches=int(ev.calibration_batches))),
         "random_init": probe(random_init)}
  out["seconds"] = round(time.perf_counter() - t, 1)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+")
  args = p.parse_args(argv)
  for w in args.workdirs:
    print(json.dumps(check(w)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
