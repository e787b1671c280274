"""SPEC §7.5: VICReg's variance and covariance terms as a log-det entropy surrogate.

What it reproduces: the paper reads VICReg's regularisers as a surrogate of the
Gaussian entropy ``½ log det(2πe Cov(Z))``: the covariance penalty is the
second-order term of ``log det`` of the correlation matrix (``log det(I + E) ≈
−½‖E‖_F²`` for small off-diagonal ``E``) and the variance hinge raises the diagonal.
The claim checked here: over VICReg training, **as the covariance and variance terms
go down, log det of the correlation matrix and the entropy estimates go up**.

One VICReg ``sslit train`` run (per seed) with the information monitor on; at every
monitored step the monitor records, on a fixed held-out subset and for the
representation (``rep``) and the projector output (``proj``, where VICReg's loss
acts): the three VICReg terms on two views (``monitor/<o>/vicreg/{invariance,
variance,covariance}``), ``logdet_corr`` (log det of the correlation matrix), and the
entropy estimates ``entropy_gaussian`` (Gaussian surrogate), ``entropy_logdet``
(``½ log det(I + βĈ)``), ``entropy_pairwise_kl`` / ``entropy_pairwise_bhattacharyya``
(upper / lower pairwise mixture bounds). The script reads these series back and
computes Spearman rank correlations over the monitored steps (scipy) between each of
the covariance and variance terms and each of those quantities (non-finite points,
e.g. ``log det = −inf`` of a numerically singular float32 correlation matrix, are left
out and counted).

The monitor computes ``logdet_corr`` and ``entropy_gaussian`` in float64 from the
float32 embeddings (in float32 the correlation matrix of a 1024-d projector output
is numerically singular, ``log det = −inf``), and leaves them out, saying why, when
the subset has no more examples than the output has dimensions; the run also keeps
a checkpoint at every monitored step and the script recomputes ``logdet_corr_f64``
and ``entropy_gaussian_f64`` in float64 from the features of the same subset.

The criterion (``CRITERION``, docs/experiment_vicreg_logdet.md): per output and
pair, ``rho(covariance, logdet_corr_f64)`` and ``rho(variance, entropy_logdet)``
averaged over seeds, with a one-sided permutation p-value at 0.025 each; held /
not held / undecided. The headline is the projector output, the one VICReg trains.
The earlier flag (the two signs alone, no test) is kept as ``claim_held_sign_only``.

Commands:

- ``sslit reproduce vicreg_logdet --scale smoke`` (seconds: 8x8 digits, tiny MLP,
  30 steps, monitor every 5 steps on the 300 test images);
- ``sslit reproduce vicreg_logdet --scale cpu`` (Fashion-MNIST ConvNet, the main
  job's 1600 steps, monitor every 200 steps on 2048 test images, so that ``n``
  exceeds the projector's 1024 dimensions; 25 min measured on the shared 2-core CPU
  under load, about 6 min estimated on a quiet one);
- ``sslit reproduce vicreg_logdet --scale full`` (CIFAR-10 ResNet-18, the full
  schedule, monitor every 50 epochs on 4096 test images; accelerators, not run here).

Options: ``--steps N``, ``--monitor-every N``, ``--monitor-examples N``, ``--seeds
N``, ``--workdir DIR``.

Outputs: ``results.json`` (the series, the correlations, the flags, the run configs,
the scale), ``vicreg_logdet.png`` (min-max normalised series per output; twin axes of
the covariance term against ``logdet_corr_f64``), the run directory ``vicreg-seed<s>``
(reused when finished).

What smoke can and cannot show: the path end to end (training, monitor, series,
correlations, flag, plot) on 6 points of a barely trained MLP; rank correlations over
6 points are weak evidence either way, and 30 steps say nothing about the paper's
training dynamics.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import bound as bound_exp
from experiments import claims as claims_lib
from experiments import common

NAME = "vicreg_logdet"
OUTPUTS = ("proj", "rep")  # the first is the headline
TERMS = ("invariance", "variance", "covariance", "loss")  # monitor/<o>/vicreg/<t>
QUANTITIES = ("logdet_corr", "entropy_gaussian", "entropy_logdet",
              "entropy_pairwise_kl", "entropy_pairwise_bhattacharyya",
              "effective_rank", "std_mean")
# Recomputed here in float64 from the checkpoint of each monitored step (features
# of the same held-out subset, upcast): the float32 log det of a 1024-d projector's
# correlation matrix is -inf (numerically singular) on the monitor's side.
F64_QUANTITIES = ("logdet_corr_f64", "entropy_gaussian_f64")
# Rank correlations reported: each of these terms against each of these quantities.
CORR_TERMS = ("covariance", "variance")
CORR_QUANTITIES = QUANTITIES[:5] + F64_QUANTITIES
# The pairs whose sign is the claim (see the module docstring).
CLAIM_PAIRS = (("covariance", "logdet_corr_f64"), ("variance", "entropy_logdet"))
# Each pair is tested one-sided (rho < 0) at ALPHA / 2 (Bonferroni over the two pairs).
PAIR_ALPHA = claims_lib.ALPHA / len(CLAIM_PAIRS)
CRITERION = (
    "per output, for each of the two pairs (covariance term, log det R in float64) "
    "and (variance term, LogDet entropy): the mean over seeds of Spearman's rho over "
    "the monitored steps, with a permutation p-value (each seed's series permuted; "
    "exact up to 50,000 orderings, else 20,000 seeded draws); a pair holds if "
    "p(rho < 0) < 0.025 and fails if p(rho > 0) < 0.025 (one-sided, alpha = 0.05 "
    "Bonferroni-split over the two pairs), else undecided; the output holds if both "
    "pairs hold, fails if either fails, else undecided; the verdict is the "
    "projector output's (the one VICReg's loss trains)")

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"num_steps": 30, "monitor_every": 5, "monitor_examples": 300,
              "augment": "fashion_mnist", "checkpoint_every": 10},
    "cpu": {"num_steps": 1600, "monitor_every": 200, "monitor_examples": 2048},
    "full": {"monitor_examples": 4096},
}


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
  """Spearman's rho of ``x`` and ``y`` over the points where both are finite.

  Returns ``{"rho", "pvalue", "n", "dropped"}``; ``rho``/``pvalue`` are None when
  fewer than 3 finite points remain or a series is constant (undefined).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  xs, ys = x[ok], y[ok]
  out = {"rho": None, "pvalue": None, "n": int(ok.sum()), "dropped": int((~ok).sum())}
  if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
    return out
  res = stats.spearmanr(xs, ys)
  rho, p = float(res.statistic), float(res.pvalue)
  if math.isfinite(rho):
    out["rho"], out["pvalue"] = rho, p
  return out


def output_series(records: Sequence[Mapping[str, Any]], output: str) -> dict[str, Any]:
  """The VICReg terms and the quantities of one output over the monitored steps."""
  prefix = f"monitor/{output}/"
  names = [f"vicreg/{t}" for t in TERMS] + list(QUANTITIES)
  s = bound_exp.monitored_series(records, prefix, names)
  out = {"steps": s["steps"]}
  for t in TERMS:
    out[t] = s[f"vicreg/{t}"]
  for q in QUANTITIES:
    out[q] = s[q]
  return out


def float64_series(run_dir: str, steps: Sequence[int], outputs: Sequence[str]
                   ) -> dict[str, dict[str, list[float]]]:
  """log det R and the Gaussian surrogate in float64 at every checkpointed step.

  Features of the monitor's clean subset from the checkpoint of each step (eval
  mode, float32 network), upcast to float64; ``estimators.correlation_logdet`` and
  ``gaussian_surrogate_entropy`` under 64-bit JAX. NaN where no checkpoint was kept.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sslit import data, estimators, features, models, runs  # pylint: disable=g-import-not-at-top
  kept = set(runs.checkpoint_steps(run_dir))
  out = {o: {q: [] for q in F64_QUANTITIES} for o in outputs}
  if not kept & set(steps):
    for o in outputs:
      for q in F64_QUANTITIES:
        out[o][q] = [float("nan")] * len(steps)
    return out
  run = runs.open_run(run_dir)  # config, data and model once; variables per step
  idx = features.subset_indices(len(run.test_ds), int(run.config.monitor_examples),
                                 int(run.config.seed))
  images, _ = run.test_ds.get(idx)
  fns = {o: jax.jit(models.make_apply_fn(run.model, o)) for o in outputs}
  for step in steps:
    if step not in kept:
      for o in outputs:
        for q in F64_QUANTITIES:
          out[o][q].append(float("nan"))
      continue
    variables = (run.variables if step == run.step
                 else runs.restore_variables(run_dir, step)[0])
    feats = {o: [] for o in outputs}
    for i in range(0, len(idx), 512):
      x = data.preprocess(images[i:i + 512], run.train_ds.mean, run.train_ds.std)
      for o in outputs:
        feats[o].append(np.asarray(fns[o](variables, x)).reshape(len(x), -1))
    for o in outputs:
      z = np.concatenate(feats[o]).astype(np.float64)
      with jax.enable_x64(True):
        z64 = jnp.asarray(z, jnp.float64)
        out[o]["logdet_corr_f64"].append(float(estimators.correlation_logdet(z64)))
        out[o]["entropy_gaussian_f64"].append(
            float(estimators.gaussian_surrogate_entropy(z64)))
  return out


def cached_float64_series(workdir: str, name: str, run_dir: str,
                          steps: Sequence[int], outputs: Sequence[str],
                          trained: bool) -> dict[str, dict[str, list[float]]]:
  """``float64_series``, cached in ``<workdir>/float64_<name>.json``.

  The cache is used when the run was not (re)trained in this call and it holds the
  same steps and outputs.
  """
  path = os.path.join(workdir, f"float64_{name}.json")
  if not trained and os.path.exists(path):
    with open(path) as f:
      try:
        cached = json.load(f)
      except json.JSONDecodeError:
        cached = {}
    if cached.get("steps") == list(steps) and sorted(cached.get("series", {})) == \
        sorted(outputs):
      return {o: {q: [float(v) for v in vals] for q, vals in d.items()}
              for o, d in cached["series"].items()}
  series = float64_series(run_dir, steps, outputs)
  common.write_results(workdir, {"steps": list(steps), "series": series},
                       name=f"float64_{name}.json")
  return series


def analyse(series: Mapping[str, Any]) -> dict[str, Any]:
  """Rank correlations of one output's series and the claim's flag."""
  corr = {t: {q: spearman(series[t], series[q]) for q in CORR_QUANTITIES}
          for t in CORR_TERMS}
  signs = [corr[t][q]["rho"] for t, q in CLAIM_PAIRS]
  claim = None if any(r is None for r in signs) else all(r < 0 for r in signs)
  change = {}
  for name in CORR_TERMS + CORR_QUANTITIES:
    v = series[name]
    change[name] = {"first": v[0], "last": v[-1]} if v else None
  # Descriptive, not the claim: did training lower both terms and raise the log
  # dets they stand for, from the first to the last monitored step?
  trend = {f"{t}_fell": change[t]["last"] < change[t]["first"] for t in CORR_TERMS}
  trend.update({f"{q}_rose": change[q]["last"] > change[q]["first"]
                for _, q in CLAIM_PAIRS})
  return {"spearman": corr, "claim_held": claim, "first_last": change,
          "trend": trend, "terms_fell_and_log_dets_rose": all(trend.values())}


def claim_test(per_seed_series: Sequence[Mapping[str, Sequence[float]]], *,
               seed: int = 0) -> dict[str, Any]:
  """The criterion (``CRITERION``) on one output's series, one mapping per seed.

  Returns ``{"pairs": {"<term>~<quantity>": rank test + "verdict"}, "verdict"}``.
  """
  pairs = {}
  for t, q in CLAIM_PAIRS:
    test = claims_lib.rank_trend_test([(s[t], s[q]) for s in per_seed_series],
                                      seed=seed)
    test["verdict"] = claims_lib.trend_verdict(test, direction="less",
                                               alpha=PAIR_ALPHA)
    pairs[f"{t}~{q}"] = test
  return {"pairs": pairs,
          "verdict": claims_lib.combine([p["verdict"] for p in pairs.values()])}


def _test_text(output: str, test: Mapping[str, Any]) -> str:
  parts = []
  for name, p in test["pairs"].items():
    t, q = name.split("~")
    rho = "n/a" if p["rho_mean"] is None else f"{p['rho_mean']:+.2f}"
    pv = "n/a" if p["p_less"] is None else f"{p['p_less']:.3g}"
    parts.append(f"rho({t}, {q}) = {rho} (p = {pv})")
  return f"{output}: " + ", ".join(parts) + f": {test['verdict']}"


def _normalised(v: Sequence[float]) -> np.ndarray:
  a = np.asarray(v, np.float64)
  a = np.where(np.isfinite(a), a, np.nan)
  lo, hi = np.nanmin(a) if np.isfinite(a).any() else 0, (
      np.nanmax(a) if np.isfinite(a).any() else 1)
  return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _plot(workdir: str, outputs: Sequence[str], series: Mapping[str, Any]) -> str:
  fig, axes = common.figure(ncols=len(outputs), nrows=2, size=(5.5, 4.0))
  for j, o in enumerate(outputs):
    s = series[o]
    ax = axes[0][j]
    for name, style in (("covariance", "-o"), ("variance", "-s"),
                        ("invariance", "-^"), ("logdet_corr_f64", "--o"),
                        ("entropy_gaussian_f64", "--s"), ("entropy_logdet", "--^"),
                        ("entropy_pairwise_kl", ":v"),
                        ("entropy_pairwise_bhattacharyya", ":d")):
      ax.plot(s["steps"], _normalised(s[name]), style, ms=3, label=name)
    ax.set_title(f"{o}: min-max normalised (seed 0)")
    ax.set_xlabel("step")
    if j == 0:
      ax.legend(fontsize=6)
    ax = axes[1][j]
    ax.plot(s["steps"], s["covariance"], "-o", color="C0", ms=3)
    ax.set_ylabel("VICReg covariance term", color="C0")
    ax.set_xlabel("step")
    twin = ax.twinx()
    ld = np.asarray(s["logdet_corr_f64"], np.float64)
    twin.plot(s["steps"], np.where(np.isfinite(ld), ld, np.nan), "--s", color="C3",
              ms=3)
    twin.set_ylabel("log det R, float64 (nats)", color="C3")
    ax.set_title(f"{o}: covariance term vs log det R")
  fig.tight_layout()
  return common.save_figure(fig, workdir, "vicreg_logdet")


# ----------------------------------------------------------------------------
# The verdict from the checked-in evidence.

CLAIM = ("VICReg's covariance and variance weights raise log det R and the LogDet "
         "entropy of the final representation (log-det surrogate), tested by "
         "intervention")
CORRELATION_CLAIM = ("VICReg's covariance and variance terms move opposite to log "
                     "det R and the LogDet entropy over training")
_CORRELATION_KEYS = ("steps", "covariance", "variance", "logdet_corr_f64",
                     "entropy_logdet")
# The random-feature control of the correlation criterion (no training at all).
FEATURE_CONTROL = {"seeds": 3, "checkpoints": 8, "examples": 2048, "width": 128,
                   "view_noise": 0.1, "trials": 20}


def random_feature_series(images: np.ndarray, *, seed: int, checkpoints: int = 8,
                          width: int = 128, view_noise: float = 0.1
                          ) -> dict[str, list[float]]:
  """One untrained "run" for the correlation criterion: no training, no trend.

  At each "checkpoint" a new random ReLU layer ``z = relu(x W)`` on the real
  ``images`` (``[n, d]``, standardised), ``W = s (G + a g 1ᵀ) / sqrt(d)`` with a
  scale ``s`` and a shared-direction strength ``a`` drawn independently per
  checkpoint (log-uniform in [0.3, 3] and uniform in [0, 1]); two views are the
  images plus independent Gaussian noise of std ``view_noise``. The VICReg terms
  (``objectives.vicreg_loss``'s aux) and, in float64, log det R and the LogDet
  entropy of the first view's features, as the experiment computes them.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sslit import estimators, objectives  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  n, d = x.shape
  out = {k: [] for k in _CORRELATION_KEYS}
  for step in range(checkpoints):
    s = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    a = float(rng.uniform(0.0, 1.0))
    w = s * (rng.normal(size=(d, width)) + a * rng.normal(size=(d, 1))) / np.sqrt(d)
    xa = x + view_noise * rng.normal(size=x.shape)
    xb = x + view_noise * rng.normal(size=x.shape)
    za, zb = np.maximum(xa @ w, 0.0), np.maximum(xb @ w, 0.0)
    _, aux = objectives.vicreg_loss(jnp.asarray(za, jnp.float32),
                                    jnp.asarray(zb, jnp.float32))
    with jax.enable_x64(True):
      z64 = jnp.asarray(za, jnp.float64)
      out["logdet_corr_f64"].append(float(estimators.correlation_logdet(z64)))
      out["entropy_logdet"].append(float(estimators.logdet_entropy(z64, beta=1.0)))
    out["steps"].append(step)
    out["covariance"].append(float(aux["covariance"]))
    out["variance"].append(float(aux["variance"]))
  return out


def feature_control(images: np.ndarray, *, settings: Mapping[str, Any] = FEATURE_CONTROL
                    ) -> list[list[dict[str, list[float]]]]:
  """``trials`` x ``seeds`` untrained series (:func:`random_feature_series`)."""
  return [[random_feature_series(images, seed=1000 * t + s,
                                 checkpoints=settings["checkpoints"],
                                 width=settings["width"],
                                 view_noise=settings["view_noise"])
           for s in range(settings["seeds"])] for t in range(settings["trials"])]


def _most_common(verdicts: Sequence[str]) -> str:
  """The verdict most trials gave (a tie between the top two: undecided)."""
  counts = sorted(((verdicts.count(v), v) for v in claims_lib.VERDICTS), reverse=True)
  return claims_lib.UNDECIDED if counts[0][0] == counts[1][0] else counts[0][1]


def evidence_of(results: Mapping[str, Any]) -> dict[str, Any]:
  """The raw numbers the verdict is computed from (checked in; :func:`summarize`).

  ``correlation``: per seed and output, the series the correlation criterion reads;
  ``feature_control``: its random-feature control's series; ``intervention``: the
  intervention's values, runs and control (None before it ran).
  """
  corr = [{"seed": e["seed"],
           "outputs": {o: {k: e["outputs"][o]["series"][k] for k in _CORRELATION_KEYS}
                       for o in e["outputs"]}}
          for e in results["seeds"]]
  iv = results.get("intervention")
  return {"correlation": corr, "feature_control": results.get("feature_control"),
          "intervention": None if iv is None else {
              "settings": iv["settings"], "values": iv["values"],
              "control": iv["control"],
              "runs": {a: [{"seed": r["seed"], "step": r["step"],
                            "linear_top1": r["linear_top1"]} for r in v]
                       for a, v in iv["runs"].items()}}}


def _family_text(decision: Mapping[str, Any], output: str) -> str:
  fams = decision["outputs"][output]["families"]
  parts = []
  for fam, f in fams.items():
    t = f[FAMILY_QUANTITY[fam]]
    rho = "n/a" if t["rho_mean"] is None else f"{t['rho_mean']:+.2f}"
    p = "n/a" if t["p_greater"] is None else f"{t['p_greater']:.3g}"
    parts.append(f"{fam} weight -> {FAMILY_QUANTITY[fam]}: rho {rho}, p(>0) {p} "
                 f"({f['verdict']})")
  return f"{output}: " + "; ".join(parts)


def summarize(evidence: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict, the result line and the controls, from :func:`evidence_of` alone.

  With the intervention's evidence its criterion (``INTERVENTION_CRITERION``) is
  the verdict of record and the correlation criterion is kept under
  ``superseded`` with its random-feature control; without it (older evidence) the
  correlation criterion decides.
  """
  corr = evidence["correlation"]
  outputs = [o for o in OUTPUTS if all(o in e["outputs"] for e in corr)]
  tests = {o: claim_test([e["outputs"][o] for e in corr]) for o in outputs}
  corr_text = (f"{len(corr)} seed(s) x {len(corr[0]['outputs'][outputs[0]]['steps'])}"
               f" monitored steps; " + "; ".join(_test_text(o, tests[o])
                                                 for o in outputs))
  fc = evidence.get("feature_control")
  feature_entries = []
  if fc:
    verdicts = [claim_test(trial)["verdict"] for trial in fc["series"]]
    held = sum(v == claims_lib.HELD for v in verdicts)
    feature_entries.append(claims_lib.control(
        name="untrained_random_features",
        what=(f"{len(verdicts)} trials of {fc['settings']['seeds']} 'seeds' x "
              f"{fc['settings']['checkpoints']} 'checkpoints' of untrained random "
              f"ReLU features of {fc['settings']['examples']} real test images (a "
              f"new random layer per checkpoint, scale and shared direction drawn "
              f"independently): no training, no trend; judged by the correlation "
              f"criterion; the verdict is the majority's"),
        verdict=_most_common(verdicts),
        evidence={"verdicts": verdicts, "held": held, "trials": len(verdicts)}))
  if feature_entries:
    fe = feature_entries[0]["evidence"]
    corr_text += (f"; untrained random-feature control: held in {fe['held']} of "
                  f"{fe['trials']} trials ({100 * fe['held'] / fe['trials']:.0f} %, "
                  f"where a calibrated test would give at most 2.5 %)")
  superseded = {"claim": CORRELATION_CLAIM, "criterion": CRITERION,
                "verdict": tests[outputs[0]]["verdict"], "result": corr_text,
                "evidence": tests, "negative_controls": feature_entries,
                "why": "untrained random features meet it far more often than its "
                       "level allows: the relation is algebraic (the covariance term "
                       "is log det R's second-order expansion, the variance hinge "
                       "falls as the LogDet entropy rises) and says nothing about "
                       "training"}
  iv = evidence.get("intervention")
  if not iv:
    return claims_lib.summary(claim=CORRELATION_CLAIM, criterion=CRITERION,
                              verdict=tests[outputs[0]]["verdict"], result=corr_text,
                              evidence=tests, negative_controls=feature_entries)
  decision = intervention_decision(iv["values"])
  control = intervention_decision(iv["control"]["values"])
  iv_outputs = list(decision["outputs"])
  n = len(iv["runs"]["base"])
  planned = len(iv["settings"].get("planned_seeds", iv["settings"]["seeds"]))
  of = "" if planned == n else f" (of {planned} pre-registered)"
  result = (f"intervention, {n} seed(s){of} x {len(INTERVENTION_ARMS)} arms at the main "
            f"job's recipe: " + " | ".join(_family_text(decision, o)
                                          for o in iv_outputs)
            + f"; random-init control: {control['verdict']}; superseded correlation "
              f"criterion: {superseded['verdict']}")
  negative = [claims_lib.control(
      name="random_init_networks",
      what=(f"{len(iv['control']['networks'])} networks of the same architecture at "
            f"random initialisation (seeds {iv['control']['networks'][0]}-"
            f"{iv['control']['networks'][-1]}), their features on the same test "
            f"images, dealt to the three levels of each family in a seeded random "
            f"order: no weight acted on them"),
      verdict=control["verdict"], evidence=control)]
  return claims_lib.summary(
      claim=CLAIM, criterion=INTERVENTION_CRITERION, verdict=decision["verdict"],
      result=result, evidence=decision, negative_controls=negative,
      extra={"superseded": superseded})


def _add_arguments(p) -> None:
  bound_exp.add_run_options(p)
  p.add_argument("--part", choices=("all", "correlation", "intervention", "collect"),
                 default=None,
                 help="'intervention': only the covariance/variance-weight "
                      "intervention and its control (intervention.json); "
                      "'collect': the same from the measured runs only, training "
                      "nothing (the seeds whose every arm is done); "
                      "'correlation': only the runs monitored over training; "
                      "default: all (smoke: correlation)")


def _fmt(r: Any) -> str:
  return "  n/a " if r is None else f"{r:+.2f}"


# ----------------------------------------------------------------------------
# The intervention (docs/experiment_vicreg_logdet.md, "Intervention criterion"):
# change VICReg's covariance / variance weight and look at the final log dets.

# arm -> (objective_kwargs field, multiple of the config's value); "base" changes
# nothing. The families are judged by rank_trend_test over the multiples.
INTERVENTION_ARMS = {"base": (None, 1.0), "cov_x0": ("cov_coeff", 0.0),
                     "cov_x4": ("cov_coeff", 4.0), "var_x0": ("std_coeff", 0.0),
                     "var_x4": ("std_coeff", 4.0)}
FAMILIES = {"covariance": ("cov_x0", "base", "cov_x4"),
            "variance": ("var_x0", "base", "var_x4")}
# The quantity of record of each family; the other one is reported, deciding nothing.
FAMILY_QUANTITY = {"covariance": "logdet_corr", "variance": "entropy_logdet"}
INTERVENTION_QUANTITIES = ("logdet_corr", "entropy_logdet")
FAMILY_ALPHA = claims_lib.ALPHA / len(FAMILIES)
# Base config and held-out examples of the intervention per scale: the main job's
# recipe at the cpu scale, the smoke config (digits MLP, 30 steps) at smoke.
INTERVENTION_SCALE = {"smoke": {"config": "smoke", "examples": 300},
                      "cpu": {"config": "default", "examples": 2048},
                      "full": {"config": "full_cifar10", "examples": 4096}}
CONTROL_SEEDS = tuple(range(100, 109))  # random-init networks of the negative control
INTERVENTION_CRITERION = (
    "per output and family (covariance weight x0/x1/x4 judged on log det R in "
    "float64; variance weight x0/x1/x4 judged on the LogDet entropy, beta = 1), the "
    "quantity of the final network's features (2048 test images, the probe's "
    "BatchNorm statistics) against the weight's multiple, one series of three runs "
    "per seed: the mean over seeds of Spearman's rho with an exact permutation "
    "p-value; a family holds if p(rho > 0) < 0.025 and fails if p(rho < 0) < 0.025 "
    "(alpha = 0.05 Bonferroni-split over the two families), else undecided; the "
    "output holds if both hold, fails if either fails, else undecided; the verdict "
    "is the projector output's")


def _vicreg_defaults() -> dict[str, float]:
  import inspect  # pylint: disable=g-import-not-at-top
  from sslit import objectives  # pylint: disable=g-import-not-at-top
  sig = inspect.signature(objectives.vicreg_loss)
  return {k: p.default for k, p in sig.parameters.items()
          if p.kind is p.KEYWORD_ONLY}


def intervention_overrides(arm: str, seed: int, *, scale: str) -> dict[str, Any]:
  """The config overrides of one intervention run (``arm`` of ``INTERVENTION_ARMS``).

  The weight is the base config's VICReg value (or ``vicreg_loss``'s default) times
  the arm's multiple; the offline evaluation probes the trained network only.
  """
  from sslit import config as config_lib  # pylint: disable=g-import-not-at-top
  if arm not in INTERVENTION_ARMS:
    raise ValueError(f"arm must be one of {tuple(INTERVENTION_ARMS)}, got {arm!r}.")
  config = config_lib.load_config(INTERVENTION_SCALE[scale]["config"])
  if config.objective != "vicreg":
    raise ValueError(f"the intervention needs a VICReg base config, got "
                     f"{config.objective!r}.")
  kwargs = {**_vicreg_defaults(), **config_lib.plain(config.objective_kwargs)}
  kwargs = {k: kwargs[k] for k in ("sim_coeff", "std_coeff", "cov_coeff")}
  field, multiple = INTERVENTION_ARMS[arm]
  if field is not None:
    kwargs[field] = float(kwargs[field]) * multiple
  return {"objective_kwargs": kwargs, "seed": int(seed), "eval.baselines": (),
          "monitor_every": 0, "report": False}


def final_quantities(model: Any, variables: Any, train_ds: Any, test_ds: Any, *,
                     num_examples: int, subset_seed: int,
                     outputs: Sequence[str] = OUTPUTS) -> dict[str, dict[str, float]]:
  """log det R and the LogDet entropy (float64) of a network's test features.

  Features of ``num_examples`` test images (``features.subset_indices`` with
  ``subset_seed``), eval mode, preprocessed with the training split's statistics.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sslit import data, estimators, features, models  # pylint: disable=g-import-not-at-top
  idx = features.subset_indices(len(test_ds), num_examples, subset_seed)
  images, _ = test_ds.get(idx)
  out = {}
  for o in outputs:
    fn = jax.jit(models.make_apply_fn(model, o))
    z = np.concatenate([
        np.asarray(fn(variables, data.preprocess(images[i:i + 512], train_ds.mean,
                                                 train_ds.std))).reshape(
                                                     len(images[i:i + 512]), -1)
        for i in range(0, len(idx), 512)]).astype(np.float64)
    with jax.enable_x64(True):
      z64 = jnp.asarray(z, jnp.float64)
      out[o] = {"logdet_corr": float(estimators.correlation_logdet(z64)),
                "entropy_logdet": float(estimators.logdet_entropy(z64, beta=1.0))}
  return out


def intervention_decision(values: Mapping[str, Any]) -> dict[str, Any]:
  """The intervention criterion (``INTERVENTION_CRITERION``) from the measured values.

  Args:
    values: ``{output: {family: {quantity: [[value per level of FAMILIES[family]]
      per seed]}}}``.

  Returns:
    ``{"outputs": {output: {"families": {family: {quantity: rank test +
    "verdict", "verdict"}}, "verdict"}}, "verdict"}``: each family's verdict is that
    of its quantity of record (``FAMILY_QUANTITY``); the verdict is the first
    output's of ``OUTPUTS`` present.
  """
  outs = {}
  for o, by_fam in values.items():
    fams = {}
    for fam, arms in FAMILIES.items():
      multiples = [INTERVENTION_ARMS[a][1] for a in arms]
      fams[fam] = {}
      for q in INTERVENTION_QUANTITIES:
        series = [list(v) for v in by_fam[fam][q]]
        if any(len(v) != len(arms) for v in series):
          raise ValueError(f"{o}/{fam}/{q}: each seed needs one value per level "
                           f"{arms}, got {[len(v) for v in series]}.")
        test = claims_lib.rank_trend_test([(multiples, v) for v in series])
        test["verdict"] = claims_lib.trend_verdict(test, direction="greater",
                                                   alpha=FAMILY_ALPHA)
        fams[fam][q] = test
      fams[fam]["verdict"] = fams[fam][FAMILY_QUANTITY[fam]]["verdict"]
    outs[o] = {"families": fams,
               "verdict": claims_lib.combine([f["verdict"] for f in fams.values()])}
  first = [o for o in OUTPUTS if o in outs] or list(outs)
  verdict = outs[first[0]]["verdict"] if first else claims_lib.UNDECIDED
  return {"outputs": outs, "verdict": verdict}


def run_values(per_run: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]
               ) -> dict[str, Any]:
  """``intervention_decision``'s input from the runs' ``final_quantities``.

  Args:
    per_run: ``{arm: [final_quantities per seed]}`` (seeds in one order).
  """
  outputs = [o for o in OUTPUTS if o in per_run["base"][0]]
  n = len(per_run["base"])
  return {o: {fam: {q: [[per_run[a][s][o][q] for a in arms] for s in range(n)]
                    for q in INTERVENTION_QUANTITIES}
              for fam, arms in FAMILIES.items()} for o in outputs}


def control_values(per_network: Sequence[Mapping[str, Mapping[str, float]]], *,
                   seed: int = 0) -> dict[str, Any]:
  """Untrained networks' quantities dealt to the intervention's levels at random.

  Args:
    per_network: ``final_quantities`` of 9 random-init networks.
    seed: seed of the dealing (one permutation of the nine per family).

  Returns:
    ``intervention_decision``'s input: per family, a seeded permutation of the
    nine networks fills three "seeds" x the family's three levels.
  """
  if len(per_network) != 9:
    raise ValueError(f"the control needs 9 networks (3 seeds x 3 levels), got "
                     f"{len(per_network)}.")
  rng = np.random.default_rng(seed)
  orders = {fam: rng.permutation(9).reshape(3, 3) for fam in FAMILIES}  # [seed, level]
  outputs = [o for o in OUTPUTS if o in per_network[0]]
  return {o: {fam: {q: [[per_network[orders[fam][s, j]][o][q] for j in range(3)]
                        for s in range(3)]
                    for q in INTERVENTION_QUANTITIES}
              for fam in FAMILIES} for o in outputs}


def _intervention_config(scale: str):
  from sslit import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(INTERVENTION_SCALE[scale]["config"])


def run_intervention(workdir: str, *, scale: str, seeds: Sequence[int],
                     steps: int | None = None, train: bool = True) -> dict[str, Any]:
  """Train (or reuse) every arm x seed, measure, run the control; the evidence.

  Each run is ``<workdir>/intervention/<arm>-seed<s>`` (a full ``sslit train`` run
  directory); its measurement is cached beside it in ``quantities.json``, the
  control's in ``<workdir>/intervention/control/net<c>.json`` (pieces).
  ``train=False`` trains nothing: it collects the seeds whose every arm is measured
  (an experiment still running, or pieces restored), leaving the others out.

  Returns:
    ``{"settings", "runs": {arm: [{"seed", "linear_top1", "step", "quantities"}]},
    "values", "control": {"networks", "values"}}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sslit import features, runs as runs_lib  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, "intervention")
  examples = INTERVENTION_SCALE[scale]["examples"]
  per_run: dict[str, list] = {a: [] for a in INTERVENTION_ARMS}
  total, i = len(INTERVENTION_ARMS) * len(seeds), 0
  opened = None
  def key(arm, seed):
    overrides = intervention_overrides(arm, seed, scale=scale)
    if steps is not None:
      overrides["num_steps"] = int(steps)
    return overrides, {"arm": arm, "seed": seed, "examples": examples,
                       "overrides": overrides}
  done = []
  for seed in seeds:
    if not train and not all(
        common.cached_json_ready(os.path.join(root, f"{a}-seed{seed}",
                                              "quantities.json"), key(a, seed)[1])
        for a in INTERVENTION_ARMS):
      common.say(f"seed {seed}: not every arm is measured yet; left out")
      continue
    done.append(seed)
    for arm in INTERVENTION_ARMS:
      i += 1
      run_dir = os.path.join(root, f"{arm}-seed{seed}")
      overrides, cache_key = key(arm, seed)
      common.say(f"[{i}/{total}] intervention {arm} seed {seed}")
      if not train:
        pass
      elif not bound_exp.finished_run(run_dir, overrides):
        common.say(f"  training {run_dir}")
        common.train_run(run_dir, scale=scale, overrides=overrides,
                         config=_intervention_config(scale))
      else:
        common.say(f"  reusing the finished run {run_dir}")

      def measure(run_dir=run_dir):
        run = runs_lib.open_run(run_dir)
        variables = runs_lib.probed_variables(run.config, run.model, run.variables,
                                              run.train_ds)
        return {"step": run.step,
                "quantities": final_quantities(run.model, variables, run.train_ds,
                                               run.test_ds, num_examples=examples,
                                               subset_seed=int(run.config.seed))}
      m = common.cached_json(os.path.join(run_dir, "quantities.json"), cache_key,
                             measure)
      result = common.read_json(os.path.join(run_dir, "results.json")) or {}
      top1 = (result.get("trained") or {}).get("linear_top1")
      per_run[arm].append({"seed": seed, "step": m["step"], "linear_top1": top1,
                           "quantities": m["quantities"]})
      if opened is None:
        opened = run_dir
  # The negative control: random-init networks of the same architecture.
  nets = []
  run = None
  for c in CONTROL_SEEDS:
    def measure_control(c=c):
      nonlocal run
      if run is None:
        run = runs_lib.open_run(opened)
      variables = features.random_init_variables(
          run.model, jax.random.key(c), run.train_ds,
          num_batches=int(run.config.eval.calibration_batches))
      return final_quantities(run.model, variables, run.train_ds, run.test_ds,
                              num_examples=examples, subset_seed=0)
    nets.append(common.cached_json(os.path.join(root, "control", f"net{c}.json"),
                                   {"seed": c, "examples": examples, "run": opened},
                                   measure_control))
  if not done:
    raise ValueError(f"no seed of the intervention under {root} is complete yet.")
  return {"settings": {"scale": scale, "seeds": done, "planned_seeds": list(seeds),
                       "examples": examples,
                       "base_config": INTERVENTION_SCALE[scale]["config"],
                       "arms": {a: intervention_overrides(a, 0, scale=scale)[
                           "objective_kwargs"] for a in INTERVENTION_ARMS},
                       "steps": steps},
          "runs": per_run,
          "values": run_values({a: [r["quantities"] for r in v]
                                for a, v in per_run.items()}),
          "control": {"networks": list(CONTROL_SEEDS), "values": control_values(nets)}}


def main(argv: list[str] | None = None) -> int:
  args = common.parse_args(NAME, argv, description=__doc__.splitlines()[0],
                           add_arguments=_add_arguments)
  part = args.part or ("correlation" if args.scale == "smoke" else "all")
  intervention = None
  if part in ("all", "intervention", "collect"):
    intervention = run_intervention(args.workdir, scale=args.scale,
                                    seeds=range(args.seeds), steps=args.steps,
                                    train=part != "collect")
    common.write_results(args.workdir, intervention, name="intervention.json")
    decision = intervention_decision(intervention["values"])
    control = intervention_decision(intervention["control"]["values"])
    common.say(f"intervention: verdict {decision['verdict']}; random-init control: "
               f"{control['verdict']}; evidence in "
               f"{os.path.join(args.workdir, 'intervention.json')}")
    if part in ("intervention", "collect"):
      return 0
  try:
    settings = bound_exp.run_settings(args.scale, SCALE_SETTINGS, args)
  except ValueError as e:
    print(f"sslit reproduce {NAME}: error: {e}", flush=True)
    return 2
  # A checkpoint at every monitored step (all kept) for the float64 recomputation.
  config = bound_exp.base_config(args.scale)
  every = int(settings.get("monitor_every", config.monitor_every))
  num_steps = int(settings.get("num_steps", config.num_steps))
  settings["checkpoint_every"] = every
  settings["keep_checkpoints"] = -(-num_steps // every) + 1
  common.say(f"VICReg terms vs log det: scale {args.scale}, {args.seeds} seed(s), "
             f"workdir {args.workdir}")
  runs, trained, per_seed = {}, [], []
  for seed in range(args.seeds):
    name = f"vicreg-seed{seed}"
    run_dir = os.path.join(args.workdir, name)
    overrides = {**settings, "objective": "vicreg", "seed": seed}
    common.say(f"[{seed + 1}/{args.seeds}] {name}")
    fresh = bound_exp.ensure_run(run_dir, scale=args.scale, overrides=overrides)
    if fresh:
      trained.append(name)
    with open(os.path.join(run_dir, "config.json")) as f:
      runs[name] = {"seed": seed, "workdir": run_dir, "config": json.load(f)}
    records = common.read_records(run_dir)
    entry = {"seed": seed, "outputs": {}}
    for o in OUTPUTS:
      s = output_series(records, o)
      if s["steps"]:
        entry["outputs"][o] = {"series": s}
    if entry["outputs"]:
      common.say(f"  float64 log det at {len(s['steps'])} checkpoints of {name}")
      outs = list(entry["outputs"])
      f64 = cached_float64_series(args.workdir, name, run_dir,
                                  entry["outputs"][outs[0]]["series"]["steps"], outs,
                                  fresh)
      for o in outs:
        entry["outputs"][o]["series"].update(f64[o])
        entry["outputs"][o].update(analyse(entry["outputs"][o]["series"]))
    per_seed.append(entry)

  outputs = [o for o in OUTPUTS if all(o in e["outputs"] for e in per_seed)]
  if not outputs:
    print(f"sslit reproduce {NAME}: error: no VICReg terms in the runs' metrics: the "
          f"monitor needs two views.", flush=True)
    return 1
  claim = {}  # the earlier criterion: the signs of the two rho, every seed
  for o in outputs:
    flags = [e["outputs"][o]["claim_held"] for e in per_seed]
    claim[o] = None if any(f is None for f in flags) else all(flags)
  tests = {o: claim_test([e["outputs"][o]["series"] for e in per_seed])
           for o in outputs}
  settings_fc = dict(FEATURE_CONTROL)
  if args.scale == "smoke":
    settings_fc.update(examples=256, trials=3)

  def compute_feature_control():
    from sslit import runs as runs_lib  # pylint: disable=g-import-not-at-top
    run = runs_lib.open_run(runs["vicreg-seed0"]["workdir"])
    images, _ = common.held_out_inputs(run, settings_fc["examples"], 0)
    return {"settings": settings_fc, "series": feature_control(images,
                                                               settings=settings_fc)}
  feature = common.cached_json(os.path.join(args.workdir, "feature_control.json"),
                               settings_fc, compute_feature_control)
  evidence = evidence_of({"seeds": per_seed, "feature_control": feature,
                          "intervention": intervention})
  summary = summarize(evidence)
  verdict = summary["verdict"]
  plot = _plot(args.workdir, outputs, {o: per_seed[0]["outputs"][o]["series"]
                                       for o in outputs})
  common.write_results(args.workdir, {
      "experiment": NAME,
      "scale": args.scale,
      "claim": "over VICReg training the covariance and variance terms fall while "
               "log det of the correlation matrix and the entropy estimates rise: "
               "Spearman rho(covariance, logdet_corr_f64) < 0 and rho(variance, "
               "entropy_logdet) < 0 over the monitored steps",
      "claim_pairs": [list(p) for p in CLAIM_PAIRS],
      "terms_fell_and_log_dets_rose": {
          o: all(e["outputs"][o]["terms_fell_and_log_dets_rose"] for e in per_seed)
          for o in outputs},
      "criterion": summary["criterion"],
      "verdict": verdict,
      "claim_held": claims_lib.as_flag(verdict),
      "evidence": evidence,
      "verdict_per_output": {o: tests[o]["verdict"] for o in outputs},
      "tests": tests,
      "summary": summary,
      "claim_sign_only": "the earlier criterion, kept for comparison: rho < 0 for "
                         "both pairs, every seed, no significance test",
      "claim_held_sign_only": claim[outputs[0]],
      "claim_held_per_output": claim,
      "headline_output": outputs[0],
      "outputs": outputs,
      "settings": settings,
      "runs": runs,
      "trained": trained,
      "seeds": per_seed,
      "plots": [os.path.basename(plot)],
  })
  for o in outputs:
    r = per_seed[0]["outputs"][o]
    s = r["series"]
    common.say(f"{o} (seed 0, {len(s['steps'])} points, steps {s['steps'][0]}.."
               f"{s['steps'][-1]}): Spearman rho")
    common.say("  term        " + " ".join(f"{q[:18]:>18s}" for q in CORR_QUANTITIES))
    for t in CORR_TERMS:
      common.say(f"  {t:11s} " + " ".join(
          f"{_fmt(r['spearman'][t][q]['rho']):>18s}" for q in CORR_QUANTITIES))
    fl = r["first_last"]
    common.say(f"  covariance {fl['covariance']['first']:.4g} -> "
               f"{fl['covariance']['last']:.4g}; variance "
               f"{fl['variance']['first']:.4g} -> {fl['variance']['last']:.4g}; "
               f"logdet_corr {fl['logdet_corr']['first']:.4g} -> "
               f"{fl['logdet_corr']['last']:.4g} (float64: "
               f"{fl['logdet_corr_f64']['first']:.4g} -> "
               f"{fl['logdet_corr_f64']['last']:.4g}); terms fell and log dets "
               f"rose: {r['terms_fell_and_log_dets_rose']} {r['trend']}")
  for o in outputs:
    common.say(_test_text(o, tests[o]))
  for c in summary["negative_controls"] + summary.get("superseded", {}).get(
      "negative_controls", []):
    common.say(f"control {c['name']}: {c['verdict']}")
  common.say(f"{summary['result']}")
  common.say(f"verdict of record: {verdict.upper()} (correlation criterion: "
             f"{tests[outputs[0]]['verdict']}; sign-only: {claim[outputs[0]]}); "
             f"results in {os.path.join(args.workdir, 'results.json')}")
  return 0


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(main(sys.argv[1:]))
