"""The main job's linear probe: its answer and cost against the L-BFGS iterations.

The main job scores three representations with the same probe
(``sslit.evaluate.linear_probe``: standardised features, multinomial logistic
regression with L2 1e-4 by full-batch L-BFGS, at most ``eval.steps`` = 300
iterations): the trained network, the same network at random initialisation
(BatchNorm statistics calibrated) and the raw pixels. This bench reads a finished
run directory (``sslit train`` writes ``runs/default``), extracts the three
representations once, and fits the probe with each iteration budget of
``--iters``, printing top-1 on the test split, the final gradient norm and the
seconds of the fit (median of ``--reps``; features already on the device). A
cheaper probe gives the same answer only where top-1 has settled.

The peer is scikit-learn's ``LogisticRegression(solver="lbfgs", C=1/(n·l2))``,
the same objective (the tests check the minimiser against it), fitted on the same
standardised features with ``max_iter`` = the config's ``eval.steps``; its seconds
over sslit's at that budget are the printed ratio. ``--no-peer`` skips it.

Usage: ``python bench/probe.py --workdir runs/default [--iters 100,200,300,600]
[--reps 2] [--no-peer]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import jax
import numpy as np

from sslit import evaluate, features, metrics, models, runs


def representations(run: runs.Run) -> dict:
  """``{name: (train_x, train_y, test_x, test_y)}``: the main job's three inputs."""
  apply_fn = models.make_apply_fn(run.model, "rep")

  def extract(variables):
    return evaluate.representation_features(apply_fn, variables, run.train_ds,
                                            run.test_ds,
                                            batch_size=int(run.config.eval.batch_size))

  rand = features.random_init_variables(
      run.model, jax.random.key(int(run.config.seed)), run.train_ds,
      num_batches=int(run.config.eval.calibration_batches))
  raw = (*features.raw_pixel_features(run.train_ds),
         *features.raw_pixel_features(run.test_ds, mean=run.train_ds.mean,
                                      std=run.train_ds.std))
  return {"trained": extract(run.variables), "random init": extract(rand),
          "raw pixels": raw}


def sklearn_probe(train_x, train_y, test_x, test_y, *, l2: float, steps: int):
  """``(top1, seconds, iterations)`` of scikit-learn on the same standardised features."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  train_x, test_x = (np.asarray(a, np.float32) for a in (train_x, test_x))
  mean, std = (np.asarray(a) for a in evaluate.standardize_stats(train_x))
  tr, te = (train_x - mean) / std, (test_x - mean) / std
  clf = LogisticRegression(C=1.0 / (len(tr) * l2), max_iter=steps, tol=1e-10)
  t0 = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.fit(tr, np.asarray(train_y))
  seconds = time.perf_counter() - t0
  top1 = 100.0 * float(np.mean(clf.predict(te) == np.asarray(test_y)))
  return top1, seconds, int(np.max(clf.n_iter_))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/default",
                      help="a finished run directory (default: the main job's)")
  parser.add_argument("--iters", default="100,200,300,600",
                      help="comma list of L-BFGS iteration budgets")
  parser.add_argument("--reps", type=int, default=2, help="fits per budget (median)")
  parser.add_argument("--no-peer", action="store_true", help="skip scikit-learn")
  args = parser.parse_args()
  budgets = [int(s) for s in args.iters.split(",")]
  run = runs.open_run(args.workdir)
  l2, default_steps = float(run.config.eval.l2), int(run.config.eval.steps)
  num_classes = int(run.train_ds.num_classes)
  print(f"{metrics.cpu_model()}; run {args.workdir} (step {run.step}); L2 {l2}")
  print("| representation | iterations | top-1 | grad norm | s (median) | "
        "scikit-learn top-1 | scikit-learn s | sklearn s / sslit s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, (tr_x, tr_y, te_x, te_y) in representations(run).items():
    evaluate.linear_probe(tr_x, tr_y, te_x, te_y, num_classes=num_classes, l2=l2,
                          steps=2)  # compile for these shapes outside the timings
    for steps in budgets:
      seconds = []
      for _ in range(args.reps):
        t0 = time.perf_counter()
        res = evaluate.linear_probe(tr_x, tr_y, te_x, te_y, num_classes=num_classes,
                                    l2=l2, steps=steps)
        seconds.append(time.perf_counter() - t0)
      med = statistics.median(seconds)
      peer = "| – | – | –"
      if steps == default_steps and not args.no_peer:
        top1, s, it = sklearn_probe(tr_x, tr_y, te_x, te_y, l2=l2, steps=steps)
        peer = f"| {top1:.2f} ({it} iterations) | {s:.1f} | {s / med:.1f}x"
      print(f"| {name} | {steps} ({res['steps']} run) | {res['top1']:.2f} | "
            f"{res['grad_norm']:.1e} | {med:.1f} {peer} |", flush=True)


if __name__ == "__main__":
  main()
