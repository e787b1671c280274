"""SPEC §7.1: does the noise model hold? Assumption A1 versus the noise scale σ.

The paper's data model (SPEC §2) puts the randomness on the input: a view of image
``x_n`` is ``x_n + σ ε``. If these copies stay in the CPA region of ``x_n``
(assumption A1), the representation of each image is exactly Gaussian,
``z | n ~ N(f(x_n), σ² A_n A_nᵀ)``. The paper validates this on networks trained
with SimCLR and VICReg: as σ → 0 the copies stay in the region and the empirical
covariance, mean and normality match the model. This experiment measures, for one
network per method (and the same architecture at random initialisation as a
reference row), with ``sslit.cpa.noise_model_check`` on ``n`` held-out test inputs
preprocessed as training does (training-set mean/std), over a log-spaced σ grid
(σ in the units of the preprocessed input, i.e. pixel standard deviations):

- ``stay_mean``: the fraction of copies whose activation pattern equals ``x_n``'s;
- ``cov_error_median``: median over inputs of ``‖Ĉ − σ² A Aᵀ‖_F / ‖σ² A Aᵀ‖_F``;
- ``mean_error_median``: median of ``‖mean − f(x_n)‖ / sqrt(tr σ² A Aᵀ)``;
- ``normal_reject_rate``: fraction of per-dimension D'Agostino–Pearson p-values
  below 0.05 (0.05 when the outputs are Gaussian);

plus the Monte-Carlo floor of the two errors: the same statistics for ``M`` exact
draws from ``N(0, σ² A Aᵀ)`` (what the errors are when A1 holds exactly; with
``M`` samples of a ``k``-dim output the covariance error is ≈ sqrt(k/M), not 0).

Criterion (``CRITERION``, docs/experiment_assumptions.md): at the claim's σ fixed
per scale (``CLAIM_SIGMA``), the stay fraction's one-sided 95 % lower bound is at
least 0.9, the stay fraction does not grow with σ (within 0.02) and the covariance
error is within 25 % of its Monte-Carlo floor; held / not held / undecided. The
earlier flag (the same thresholds at the smallest σ of whatever grid ran) is kept
as ``claim_held_smallest_sigma``. For a random 8→32→32→4 MLP the SPEC gives about 98 %
of copies in region at σ = 1e-3, 81 % at 1e-2 and 17 % at 1e-1 (it said 57 % at 1e-2
until our measurement, 81–84 %, corrected it); this script reports what it measures.

Commands::

  sslit reproduce assumptions --scale smoke   # seconds: digits, tiny MLP
  sslit reproduce assumptions --scale cpu     # Fashion-MNIST ConvNet, ~10-15 min
  sslit reproduce assumptions --scale full    # CIFAR-10 ResNet-18 (accelerator)

Own options: ``--steps`` (training steps, 0 = the config's), ``--num_inputs``,
``--num_samples``, ``--sigma_min``, ``--sigma_max``, ``--num_sigmas``,
``--methods`` (comma list of objectives), ``--chunk_size``.

Smoke trains a 64-32 MLP on 8x8 digits for a few dozen steps: it exercises every
code path and shows the σ-trend of a nearly untrained ReLU network; it cannot say
anything about what SSL training does to the regions.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import claims as claims_lib
from experiments import common
from sslit import parallel

NAME = "assumptions"
# Per scale: (inputs, Monte-Carlo copies per input, number of σ values, smallest σ).
# The ConvNet and ResNet have ~10^4-10^6 ReLUs: their copies leave the exact region
# already at σ = 1e-4 (measured), so their grid starts at 1e-6 (one σ per decade).
_DEFAULTS = {"smoke": (16, 64, 3, 1e-3), "cpu": (64, 512, 6, 1e-6),
             "full": (128, 1024, 6, 1e-6)}
_SUMMARY_KEYS = ("stay_mean", "cov_error_median", "mean_error_median",
                 "normal_reject_rate")
_STAY_MIN = 0.9        # stay fraction required at the smallest σ
_STAY_TOL = 0.02       # allowed increase of stay between consecutive σ (MC noise)
_FLOOR_FACTOR = 1.25   # covariance error at the smallest σ vs its MC floor
# The σ at which the trained nets must meet the thresholds, fixed before the runs
# (it must be on the grid, else the verdict is undecided): the smoke grid's smallest
# σ; for the ConvNet/ResNet 1e-6, where the earlier cpu run measured the stay
# fraction only after its grid was extended downwards (so this choice is not blind
# for the cpu scale: it is stated, and checked again by every new run).
CLAIM_SIGMA = {"smoke": 1e-3, "cpu": 1e-6, "full": 1e-6}
CRITERION = (
    "for every trained network, at the claim's sigma (smoke 1e-3, cpu and full 1e-6; "
    "grids smoke 1e-3..1e-1 x3, cpu/full 1e-6..1e-1 x6, log-spaced): (1) the mean "
    "over inputs of the per-input stay fraction has a one-sided 95 % t lower bound "
    f">= {_STAY_MIN} (fails if the upper bound is below {_STAY_MIN}, undecided in "
    f"between); (2) the stay fraction does not grow with sigma on the grid by more "
    f"than {_STAY_TOL} between neighbours; (3) the median covariance error is <= "
    f"{_FLOOR_FACTOR} x its Monte-Carlo floor; held if every trained network meets "
    "all three, not held if any fails one, undecided otherwise or when the claim's "
    "sigma is not on the grid")


def _add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--steps", type=int, default=0,
                 help="training steps per run (0: the scale config's num_steps)")
  p.add_argument("--num_inputs", type=int, default=0,
                 help="held-out inputs checked (0: scale default 16/64/128)")
  p.add_argument("--num_samples", type=int, default=0,
                 help="noisy copies per input and σ, >= 20 (0: scale default)")
  p.add_argument("--sigma_min", type=float, default=0.0,
                 help="smallest σ (0: scale default 1e-3 / 1e-6 / 1e-6)")
  p.add_argument("--sigma_max", type=float, default=1e-1)
  p.add_argument("--num_sigmas", type=int, default=0,
                 help="log-spaced σ values (0: scale default 3/6/6)")
  p.add_argument("--methods", default="simclr,vicreg",
                 help="comma list of objectives to train")
  p.add_argument("--chunk_size", type=int, default=16,
                 help="inputs processed at a time by the check")


def _check_args(p_error, args) -> None:
  if args.steps < 0:
    p_error(f"--steps must be >= 0, got {args.steps}")
  if args.num_inputs < 0 or args.num_inputs == 1:
    p_error(f"--num_inputs must be >= 2 (or 0 for the default), got {args.num_inputs}")
  if args.num_samples and args.num_samples < 20:
    p_error(f"--num_samples must be >= 20 (normality test), got {args.num_samples}")
  if not (0 <= args.sigma_min <= args.sigma_max and args.sigma_max > 0):
    p_error(f"need 0 < --sigma_min <= --sigma_max, got {args.sigma_min}, "
            f"{args.sigma_max}")
  if args.num_sigmas < 0:
    p_error(f"--num_sigmas must be >= 1 (or 0 for the default), got {args.num_sigmas}")
  if args.chunk_size < 1:
    p_error(f"--chunk_size must be >= 1, got {args.chunk_size}")
  if not [m for m in args.methods.split(",") if m.strip()]:
    p_error("--methods must name at least one objective")


def _finished(run_dir: str) -> bool:
  """A run whose final checkpoint and offline results exist (nothing to redo)."""
  from sslit import runs  # pylint: disable=g-import-not-at-top
  cfg_path = os.path.join(run_dir, "config.json")
  if not (os.path.exists(cfg_path) and
          os.path.exists(os.path.join(run_dir, "results.json"))):
    return False
  with open(cfg_path) as f:
    num_steps = int(json.load(f)["num_steps"])
  steps = runs.checkpoint_steps(run_dir) if os.path.isdir(
      os.path.join(run_dir, "checkpoints")) else []
  return bool(steps) and steps[-1] >= num_steps


def _train(run_dir: str, scale: str, overrides: dict) -> bool:
  """Train ``run_dir`` unless finished; True when it trained (or resumed)."""
  if _finished(run_dir):
    common.say(f"[{NAME}] reusing finished run {run_dir}")
    return False
  common.say(f"[{NAME}] training {run_dir}")
  common.train_run(run_dir, scale=scale, overrides=overrides)
  return True


def monte_carlo_floor(slopes: np.ndarray, num_samples: int, seed: int
                      ) -> dict[str, float]:
  """The check's covariance/mean errors when A1 holds exactly (Gaussian draws).

  For each slope ``A [k, d]`` draw ``num_samples`` outputs ``A ε`` (σ cancels in
  both relative errors) and compute the same statistics as
  ``cpa.noise_model_check``; returns their medians over inputs.
  """
  rng = np.random.default_rng(seed)
  cov_err, mean_err = [], []
  for a in np.asarray(slopes, np.float64).reshape(slopes.shape[0], slopes.shape[1], -1):
    z = rng.standard_normal((num_samples, a.shape[1])) @ a.T
    model = a @ a.T
    c = np.cov(z, rowvar=False, ddof=1)
    cov_err.append(np.linalg.norm(c - model) / np.linalg.norm(model))
    mean_err.append(np.linalg.norm(z.mean(0)) / np.sqrt(np.trace(model)))
  return {"cov_error_floor": float(np.median(cov_err)),
          "mean_error_floor": float(np.median(mean_err))}


def check_network(model, variables, x: np.ndarray, *, sigmas: Sequence[float],
                  num_samples: int, seed: int, chunk_size: int) -> dict[str, Any]:
  """``noise_model_check`` on the representation of one network, plus MC floors."""
  import jax  # pylint: disable=g-import-not-at-top
  from sslit import cpa, models  # pylint: disable=g-import-not-at-top
  fn = models.single_input_fn(model, variables, "rep")
  pre_fn = models.preactivation_fn(model, variables, "rep")
  with jax.default_matmul_precision("highest"):
    res = cpa.noise_model_check(jax.random.key(seed), fn, x, sigmas=list(sigmas),
                                num_samples=num_samples, pre_fn=pre_fn,
                                chunk_size=chunk_size)
    slopes = np.asarray(cpa.jacobian(fn, x, chunk_size=chunk_size))
  out = {key: np.asarray(res[key]).tolist() for key in _SUMMARY_KEYS}
  out["stay_per_input"] = np.asarray(res["stay"]).tolist()
  out.update(monte_carlo_floor(slopes, num_samples, seed))
  return out


def claim_flags(row: dict) -> dict[str, bool]:
  """The earlier criterion, kept for comparison: the three conditions at the
  smallest σ of whatever grid ran (``claim_held_smallest_sigma``)."""
  stay = np.asarray(row["stay_mean"], np.float64)
  cov = np.asarray(row["cov_error_median"], np.float64)
  flags = {
      "stay_near_one_at_smallest_sigma": bool(stay[0] >= _STAY_MIN),
      "stay_nonincreasing": bool(np.all(np.diff(stay) <= _STAY_TOL)),
      "cov_error_at_floor_at_smallest_sigma": bool(
          cov[0] <= _FLOOR_FACTOR * row["cov_error_floor"]),
  }
  flags["claim_held_smallest_sigma"] = all(flags.values())
  return flags


def network_verdict(row: dict, sigmas: Sequence[float], sigma: float) -> dict[str, Any]:
  """The criterion (``CRITERION``) on one network's row at the claim's ``sigma``.

  Returns ``{"verdict", "sigma", "stay_interval", "conditions"}``; ``conditions``
  holds the three conditions' verdicts.
  """
  hit = [i for i, s in enumerate(sigmas) if np.isclose(s, sigma, rtol=1e-6)]
  if not hit:
    return {"verdict": claims_lib.UNDECIDED, "sigma": sigma, "stay_interval": None,
            "conditions": {}, "reason": f"sigma {sigma:g} is not on the grid"}
  i = hit[0]
  per_input = np.asarray(row["stay_per_input"], np.float64)[i]
  # A two-sided 90 % interval: its ends are one-sided 95 % bounds.
  iv = claims_lib.t_interval(per_input, level=0.90)
  if iv["low"] is None:
    stay = claims_lib.UNDECIDED
  elif iv["low"] >= _STAY_MIN:
    stay = claims_lib.HELD
  elif iv["high"] < _STAY_MIN:
    stay = claims_lib.NOT_HELD
  else:
    stay = claims_lib.UNDECIDED
  as_verdict = lambda ok: claims_lib.HELD if ok else claims_lib.NOT_HELD
  stay_mean = np.asarray(row["stay_mean"], np.float64)
  cov = float(np.asarray(row["cov_error_median"], np.float64)[i])
  conditions = {
      "stay_at_claim_sigma": stay,
      "stay_nonincreasing": as_verdict(np.all(np.diff(stay_mean) <= _STAY_TOL)),
      "cov_error_at_floor": as_verdict(cov <= _FLOOR_FACTOR * row["cov_error_floor"]),
  }
  return {"verdict": claims_lib.combine(list(conditions.values())), "sigma": sigma,
          "stay_interval": iv, "cov_error": cov,
          "cov_error_limit": _FLOOR_FACTOR * row["cov_error_floor"],
          "conditions": conditions}


_ROW_EVIDENCE = ("method", "seed", "stay_per_input", "stay_mean", "cov_error_median",
                 "cov_error_floor")
CLAIM = ("noisy copies stay in their CPA region and the Gaussian noise model's errors "
         "vanish as sigma -> 0, for SimCLR- and VICReg-trained networks")


def evidence_of(results: Mapping[str, Any]) -> dict[str, Any]:
  """The raw numbers the verdict is computed from (checked in; :func:`summarize`)."""
  return {"claim_sigma": float(results["claim_sigma"]),
          "sigmas": [float(s) for s in results["sigmas"]],
          "num_inputs": int(results["num_inputs"]),
          "num_samples": int(results["num_samples"]),
          "rows": [{k: r[k] for k in _ROW_EVIDENCE} for r in results["rows"]]}


def _row_text(r: Mapping[str, Any], v: Mapping[str, Any]) -> str:
  iv = v["stay_interval"]
  stay = "n/a" if iv is None else (
      f"stay {iv['mean']:.3f}" + ("" if iv["low"] is None else
                                  f" (95 % lower bound {iv['low']:.3f})"))
  cov = "" if "cov_error" not in v else (
      f", cov error {v['cov_error']:.3f} (limit {v['cov_error_limit']:.3f})")
  return f"{r['method']} seed {r['seed']}: {stay}{cov}: {v['verdict']}"


def summarize(evidence: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict, the result line and the controls, from :func:`evidence_of` alone.

  The trained networks decide; each random-init network (same architecture, same
  inputs, same sigma, no training) is a negative control judged by the same rule.
  """
  sigmas, sigma = evidence["sigmas"], evidence["claim_sigma"]
  decided = [(r, network_verdict(r, sigmas, sigma)) for r in evidence["rows"]]
  trained = [(r, v) for r, v in decided if r["method"] != "random_init"]
  verdict = claims_lib.combine([v["verdict"] for _, v in trained])
  controls = [claims_lib.control(
      name=f"random_init-seed{r['seed']}",
      what=("the same architecture at random initialisation (BatchNorm statistics "
            "calibrated), the same inputs and sigma, judged by the same rule: no "
            "training"),
      verdict=v["verdict"], evidence=v)
      for r, v in decided if r["method"] == "random_init"]
  result = (f"sigma {sigma:g}, n = {evidence['num_inputs']}, M = "
            f"{evidence['num_samples']}: "
            + "; ".join(_row_text(r, v) for r, v in decided))
  return claims_lib.summary(
      claim=CLAIM, criterion=CRITERION, verdict=verdict, result=result,
      evidence={f"{r['method']}-seed{r['seed']}": v for r, v in trained},
      negative_controls=controls)


def _plot(results: dict, workdir: str) -> str:
  fig, axes = common.figure(2, 2, size=(4.5, 3.3))
  sig = results["sigmas"]
  titles = {"stay_mean": "fraction staying in the region",
            "cov_error_median": "covariance error (median)",
            "mean_error_median": "mean error (median)",
            "normal_reject_rate": "normality rejected (alpha 0.05)"}
  floors = {"cov_error_median": "cov_error_floor", "mean_error_median":
            "mean_error_floor"}
  by_method: dict[str, list[dict]] = {}
  for row in results["rows"]:
    by_method.setdefault(row["method"], []).append(row)
  for ax, key in zip(axes.ravel(), _SUMMARY_KEYS):
    for i, (method, rows) in enumerate(by_method.items()):
      color = f"C{i}"
      ax.plot(sig, np.mean([r[key] for r in rows], axis=0), "o-", color=color,
              label=method)
      if key in floors:
        ax.axhline(np.mean([r[floors[key]] for r in rows]), color=color, ls=":",
                   lw=1)
    if key == "normal_reject_rate":
      ax.axhline(0.05, color="k", ls=":", lw=1, label="alpha")
    ax.set_xscale("log")
    ax.set_xlabel("sigma (input noise std, standardised pixels)")
    ax.set_title(titles[key])
    ax.set_ylim(bottom=0)
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"A1 check vs sigma ({results['scale']}; dotted: Monte-Carlo floor)")
  fig.tight_layout()
  return common.save_figure(fig, workdir, "assumptions")


def main(argv: list[str] | None = None) -> int:
  """Run the experiment; returns the exit status."""
  parallel.serialize_cpu_lapack()
  args = common.parse_args(NAME, argv, description=__doc__.split("\n")[0],
                           add_arguments=_add_arguments, check=_check_args)
  t0 = time.perf_counter()
  d_inputs, d_samples, d_sigmas, d_sigma_min = _DEFAULTS[args.scale]
  num_inputs = args.num_inputs or d_inputs
  num_samples = args.num_samples or d_samples
  num_sigmas = args.num_sigmas or d_sigmas
  sigmas = np.geomspace(args.sigma_min or d_sigma_min, args.sigma_max,
                        num_sigmas).tolist()
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]

  from sslit import features, runs  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  rows, run_dirs, trained = [], {}, []
  for seed in range(args.seeds):
    for method in methods:
      run_dir = os.path.join(args.workdir, f"{method}-seed{seed}")
      overrides = {"objective": method, "seed": seed, "eval.baselines": (),
                   "eval.steps": 20 if args.scale == "smoke" else 100,
                   "report": False, "monitor_every": 0}
      if args.steps:
        overrides["num_steps"] = args.steps
      if _train(run_dir, args.scale, overrides):
        trained.append(run_dir)
      run = runs.open_run(run_dir)
      x, idx = common.held_out_inputs(run, num_inputs, seed)
      common.say(f"[{NAME}] {method} seed {seed}: noise check on {len(x)} inputs, "
                 f"{num_samples} copies, sigmas {['%.3g' % s for s in sigmas]}")
      row = {"method": method, "seed": seed, "step": run.step, "run": run_dir,
             "input_indices": idx.tolist(),
             **check_network(run.model, run.variables, x, sigmas=sigmas,
                             num_samples=num_samples, seed=seed,
                             chunk_size=args.chunk_size)}
      with open(os.path.join(run_dir, "results.json")) as f:
        probe = json.load(f).get("trained", {})
      row["linear_top1"] = probe.get("linear_top1")
      row.update(claim_flags(row))
      row["criterion"] = network_verdict(row, sigmas, CLAIM_SIGMA[args.scale])
      rows.append(row)
      with open(os.path.join(run_dir, "config.json")) as f:
        run_dirs[run_dir] = json.load(f)
    # Reference row: the same architecture at random initialisation (BatchNorm
    # statistics calibrated as for the random-init probe baseline).
    common.say(f"[{NAME}] random init seed {seed}: noise check")
    variables = features.random_init_variables(
        run.model, jax.random.key(seed), run.train_ds,
        num_batches=int(run.config.eval.calibration_batches))
    row = {"method": "random_init", "seed": seed, "step": 0, "run": None,
           "input_indices": idx.tolist(),
           **check_network(run.model, variables, x, sigmas=sigmas,
                           num_samples=num_samples, seed=seed,
                           chunk_size=args.chunk_size)}
    row.update(claim_flags(row))
    row["criterion"] = network_verdict(row, sigmas, CLAIM_SIGMA[args.scale])
    rows.append(row)

  trained_rows = [r for r in rows if r["method"] != "random_init"]
  results = {
      "experiment": NAME, "scale": args.scale, "seeds": args.seeds,
      "sigmas": sigmas, "num_inputs": num_inputs, "num_samples": num_samples,
      "methods": methods, "rows": rows, "criterion": CRITERION,
      "claim_sigma": CLAIM_SIGMA[args.scale],
      "random_init_verdict": [r["criterion"]["verdict"] for r in rows
                              if r["method"] == "random_init"],
      "claim_held_smallest_sigma": all(r["claim_held_smallest_sigma"]
                                       for r in trained_rows),
      "claim_smallest_sigma": ("the earlier criterion, kept for comparison: per "
                "trained network: stay_mean >= %.2f at the smallest sigma, "
                "stay_mean non-increasing in sigma (tolerance %.2f), covariance "
                "error at the smallest sigma <= %.2f x its Monte-Carlo floor"
                % (_STAY_MIN, _STAY_TOL, _FLOOR_FACTOR)),
      "configs": run_dirs, "trained_runs": trained,
      "wall_seconds": time.perf_counter() - t0,
  }
  results["evidence"] = evidence_of(results)
  results["summary"] = summarize(results["evidence"])
  verdict = results["verdict"] = results["summary"]["verdict"]
  results["claim_held"] = claims_lib.as_flag(verdict)
  results["plot"] = _plot(results, args.workdir)
  common.write_results(args.workdir, results)

  common.say(f"[{NAME}] {args.scale}: sigma " +
             " ".join("%.3g" % s for s in sigmas))
  for r in rows:
    common.say(f"  {r['method']:12s} seed {r['seed']} stay " +
               " ".join("%.3f" % v for v in r["stay_mean"]) + " | cov err " +
               " ".join("%.3f" % v for v in r["cov_error_median"]) +
               f" (floor {r['cov_error_floor']:.3f}) | normal rejected " +
               " ".join("%.2f" % v for v in r["normal_reject_rate"]))
  common.say(f"[{NAME}] {results['summary']['result']}")
  common.say(f"[{NAME}] paper's claim (stay -> 1 and errors -> MC floor as sigma -> 0)"
             f" {verdict.upper()} for the trained networks (random init: "
             f"{', '.join(results['random_init_verdict'])}); "
             f"results in {args.workdir}/results.json, plot {results['plot']} "
             f"({results['wall_seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main(sys.argv[1:]))
