"""Table 1 (SPEC 7.3): linear-probe top-1 of four SSL methods and the paper's variants.

What it reproduces: the paper's Table 1, the linear-probe top-1 accuracy of SimCLR,
Barlow Twins, BYOL and VICReg and of the four information-theoretic variants
(``vicreg+logdet``, ``vicreg+pairdist``, ``byol+logdet``, ``byol+pairdist``: the
invariance term plus an explicit LogDet or pairwise-distance entropy estimate,
SPEC 4), mean and standard deviation over seeds. The paper's claim: **each variant
beats its base method** (the VICReg variants VICReg, the BYOL variants BYOL).
Criterion (``CRITERION``, docs/experiment_table1.md): per variant, the paired
per-seed linear-probe difference to its base with a 95 % t-interval over >= 3
seeds; held / not held / undecided. kNN (k = 20) and low-label linear probes (1 %
and 10 % of the training labels, class-balanced seeded subsets) are reported with
the same intervals. At the cpu/full scales each variant's entropy weight is chosen
from ``--coef-grid`` (multiples of the default) by a linear probe on a validation
split of the training set (``select_coefficients``); the test split is never used
for the choice.

Each (method, seed) is one ``sslit train`` run (``common.train_run``) in
``<workdir>/<method>/seed<s>``, with only the trained network's linear probe
(``eval.baselines=()``) and the information monitor off; the accuracy read is the
run's ``results.json`` ``trained.linear_top1`` (test split). Re-running reuses every
finished run whose config is unchanged (nothing is retrained or re-probed) and
resumes unfinished ones from their checkpoints.

Commands:

- ``sslit reproduce table1 --scale smoke [--methods vicreg,vicreg+logdet]``:
  the tiny MLP on the bundled 8x8 digits, ~30 steps a run, seconds each.
- ``sslit reproduce table1 --scale cpu [--seeds 3] [--steps 400]``: the default
  ConvNet on Fashion-MNIST, 400 steps (0.85 epoch at batch 128) a run, the same
  recipe for every method (the default config's: AdamW, peak lr 4e-3, batch 128,
  "simclr" views, 1024-1024 projector; BYOL adds its predictor and EMA target);
  8 runs a seed plus 12 coefficient-selection runs, each about 1.5 minutes on a
  quiet 2-core CPU (4 under load): about 1 h with the default 3 seeds (measured on
  a 2-core AMD EPYC with AVX-512, docs/experiment_table1.md).
- ``sslit reproduce table1 --scale full --seeds 3 [--dataset cifar100]``: ResNet-18
  with the CIFAR stem, 1000 epochs, on an accelerator, with each method's
  solo-learn CIFAR recipe (``FULL_METHOD_OVERRIDES``); use one ``--workdir`` per
  data set. The SPEC's sanity targets (solo-learn, CIFAR-10 / CIFAR-100) are printed
  next to the table.

Outputs in the workdir: ``results.json`` (every accuracy per method and seed, the
means and standard deviations, each run's config, the claim per variant),
``table1.md`` (the table) and ``table1.png`` (bars with seed error bars).

What smoke can and cannot show: it runs the whole pipeline (every objective, the
BYOL predictor and EMA target, the probe, the aggregation, the claim) on a
representation that 30 steps barely change: its accuracies say nothing about the
claim. The cpu scale is a short, single-recipe run on Fashion-MNIST; the ranking it
gives is the ranking of that budget and recipe, not the paper's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import claims as claims_lib
from experiments import common
from sslit import objectives

NAME = "table1"
BASE_METHODS = ("simclr", "barlow_twins", "byol", "vicreg")
# variant -> the base method the paper's claim compares it with.
VARIANTS = {"vicreg+logdet": "vicreg", "vicreg+pairdist": "vicreg",
            "byol+logdet": "byol", "byol+pairdist": "byol"}
METHODS = BASE_METHODS + tuple(VARIANTS)
# Extra rows on request (--methods): every other registered method (the methods
# researchers compare against); not part of the paper's claim, so no verdict is
# computed for them. Read from the registry, so a new method needs no edit here.
EXTRA_METHODS = tuple(m for m in objectives.list_objectives()
                      if m not in METHODS and objectives.get_objective(m).name == m)
LABELS = {"simsiam": "SimSiam", "moco_v3": "MoCo v3", "dino": "DINO", "swav": "SwAV",
          "wmse": "W-MSE", "mmcr": "MMCR", "simclr": "SimCLR", "barlow_twins": "Barlow Twins", "byol": "BYOL",
          "vicreg": "VICReg", "vicreg+logdet": "VICReg + LogDet",
          "vicreg+pairdist": "VICReg + PairDist", "byol+logdet": "BYOL + LogDet",
          "byol+pairdist": "BYOL + PairDist"}

# SPEC 7.3 sanity targets (ResNet-18, 1000 epochs, solo-learn), linear top-1 in %.
SANITY_TARGETS = {
    "cifar10": {"vicreg": 92.07, "barlow_twins": 92.10, "byol": 92.58, "simclr": 90.74},
    "cifar100": {"vicreg": 68.54, "barlow_twins": 70.90, "byol": 70.46,
                 "simclr": 65.78},
}
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "tiny_imagenet": "Tiny-ImageNet", "fashion_mnist": "Fashion-MNIST",
                  "digits": "digits 8x8"}

# Steps per run when --steps is not given (None: the scale config's num_steps).
DEFAULT_STEPS = {"smoke": None, "cpu": 400, "full": None}

# The probes of every run: the full-label linear probe (the criterion), kNN and the
# low-label linear probes on class-balanced seeded subsets of the training labels.
KNN_K = 20
LOW_LABEL_FRACTIONS = (0.01, 0.1)
PROBES = ("linear", "knn") + tuple(f"low_label_{round(100 * f)}pct"
                                   for f in LOW_LABEL_FRACTIONS)
PRIMARY_PROBE = "linear"
MIN_SEEDS = 3  # fewest seeds for a verdict other than "undecided"
# Variant coefficients: multiples of the library's default entropy weight, chosen per
# variant by a linear probe on a validation split carved from the training set.
DEFAULT_COEF_GRID = {"smoke": (), "cpu": (0.5, 1.0, 2.0), "full": (0.5, 1.0, 2.0)}
VAL_FRACTION = 0.1
# The entropy estimator of each variant (sslit.objectives' registry).
_VARIANT_ENTROPY = {"vicreg+logdet": "logdet", "vicreg+pairdist": "pairwise_bhattacharyya",
                    "byol+logdet": "logdet", "byol+pairdist": "pairwise_bhattacharyya"}
CRITERION = (
    "per variant, the paired per-seed difference of the full-label linear-probe top-1 "
    "to its base method (same seed), with a two-sided 95 % Student-t interval over "
    f">= {MIN_SEEDS} seeds: held if the interval lies above 0, not held if below, "
    "undecided if it contains 0 or fewer seeds ran; the claim 'each variant beats "
    "its base' is held if every variant run with its base held, not held if any did "
    "not hold, else undecided")

# Per-method recipe at the full scale: solo-learn's CIFAR pretraining configs
# (scripts/pretrain/cifar/<method>.yaml); the VICReg family keeps full_cifar10's.
# Barlow Twins' scale_loss 0.1 has no counterpart here (LARS normalises the
# gradient scale per layer, so it mainly shifts the weight-decay balance).
_BYOL_FULL = {"learning_rate": 1.0, "weight_decay": 1e-5, "model.projector": (4096, 256),
              "ema_momentum": 0.99, "augment": "byol"}
FULL_METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "simclr": {"learning_rate": 0.4, "model.projector": (2048, 256),
               "objective_kwargs": {"temperature": 0.2}, "augment": "simclr"},
    "barlow_twins": {"learning_rate": 0.3, "model.projector": (2048, 2048, 2048),
                     "augment": "byol"},
    "byol": dict(_BYOL_FULL),
    "byol+logdet": dict(_BYOL_FULL),
    "byol+pairdist": dict(_BYOL_FULL),
    "vicreg": {}, "vicreg+logdet": {}, "vicreg+pairdist": {},
}


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}.") \
        from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}.")
  return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--methods", type=common.method_list(METHODS + EXTRA_METHODS),
                 default=METHODS,
                 help="comma-separated methods (default all eight: "
                      f"{','.join(METHODS)}; extra rows: {','.join(EXTRA_METHODS)})")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="training steps per run (default: smoke 30, cpu 400, full the "
                      "config's 1000 epochs)")
  p.add_argument("--dataset", default=None,
                 help="data set of every run (default the scale config's: digits, "
                      "fashion_mnist, cifar10); e.g. cifar100 at the full scale")
  p.add_argument("--eval-steps", type=_positive_int, default=None,
                 help="L-BFGS iterations of the linear probe (default the config's)")
  p.add_argument("--config", default=None,
                 help="base config of every run, a shipped name (e.g. default, the "
                      "main job) or one of experiments/configs/ (default: the "
                      "scale's); with --steps to keep its length")
  p.add_argument("--first-seed", type=int, default=0,
                 help="the arms' seeds are first-seed .. first-seed + seeds - 1 "
                      "(default 0)")
  p.add_argument("--criterion", choices=("interval", "holm"), default="interval",
                 help="'interval': each variant's 95 %% t-interval (the 3-seed "
                      "criterion); 'holm': paired t-tests with Holm's correction over "
                      "the variants (the pre-registered 10-seed plan)")
  p.add_argument("--select-seeds", type=_seed_list, default=(0,),
                 help="seeds of the validation runs that choose each variant's "
                      "entropy weight, their top-1 averaged (default 0)")
  p.add_argument("--widen-grid", action="store_true",
                 help="while a variant's pick is at an edge of --coef-grid, extend "
                      "the grid by a factor 4 beyond that edge (validation only)")
  p.add_argument("--aa-seeds", type=_seed_list, default=None,
                 help="seeds of the A/A arm (the negative control: the base method "
                      "VICReg against itself on other seeds, paired by position), "
                      "e.g. 3,4,5; 'none' for no A/A arm (default: smoke none, "
                      "cpu/full the next --seeds seeds)")
  p.add_argument("--coef-grid", type=_coef_grid, default=None,
                 help="multiples of each variant's default entropy weight tried on a "
                      "validation split of the training set (seed 0), e.g. 0.5,1,2; "
                      "'none' keeps the defaults (default: smoke none, cpu/full "
                      "0.5,1,2)")


def _list_arg(text: str, option: str, cast, ok, expected: str) -> tuple:
  """A comma-separated option value: ``()`` for ''/'none', else distinct values
  passing ``ok`` (an argparse error naming ``option`` otherwise)."""
  if text.strip().lower() in ("", "none"):
    return ()
  try:
    values = tuple(cast(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{option}: expected {expected}, got {text!r}.") \
        from None
  if not values or not all(ok(v) for v in values) or len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(
        f"{option}: expected distinct {expected}, got {text!r}.")
  return values


def _seed_list(text: str) -> tuple[int, ...]:
  return _list_arg(text, "seeds", int, lambda v: v >= 0, "non-negative integers")


def _coef_grid(text: str) -> tuple[float, ...]:
  return _list_arg(text, "--coef-grid", float, lambda v: v > 0, "positive numbers")


def run_overrides(method: str, seed: int, *, scale: str, steps: int | None = None,
                  dataset: str | None = None, eval_steps: int | None = None,
                  entropy_coeff: float | None = None,
                  config: str | None = None) -> dict[str, Any]:
  """The config overrides of one (method, seed) run of the table.

  Args:
    method: one of ``METHODS`` (an objective name of ``sslit.objectives``).
    seed: the run's seed.
    scale: one of ``common.SCALES``.
    steps: training steps (None: ``DEFAULT_STEPS[scale]`` or the config's).
    dataset: data set name (None: the config's).
    eval_steps: probe iterations (None: the config's).
    entropy_coeff: a variant's entropy weight (None: the library's default).
    config: the base config's name (None: the scale's, ``common.SCALE_CONFIG``).

  Returns:
    ``{field: value}`` for ``common.train_run``.
  """
  out: dict[str, Any] = {}
  if scale == "full":
    out.update(FULL_METHOD_OVERRIDES[method])
  out.update({"objective": method, "seed": int(seed), "eval.baselines": (),
              "eval.knn_k": (KNN_K,), "report": False, "monitor_every": 0})
  if entropy_coeff is not None:
    if method not in VARIANTS:
      raise ValueError(f"{method} has no entropy weight (variants: {list(VARIANTS)}).")
    out["objective_kwargs"] = {**out.get("objective_kwargs", {}),
                               "entropy_coeff": float(entropy_coeff)}
  steps = steps if steps is not None else DEFAULT_STEPS[scale]
  if steps is not None:
    out["num_steps"] = int(steps)
    base = _base_config(scale, config)
    # Keep the warm-up inside short budgets (the schedule needs warmup <= steps).
    out["warmup_steps"] = min(int(base.warmup_steps), max(int(steps) // 10, 0))
  if dataset is not None:
    out["dataset"] = dataset
  if eval_steps is not None:
    out["eval.steps"] = int(eval_steps)
  return out


def _aa_seeds(args: Any, seeds: Sequence[int], methods: Sequence[str]) -> list[int]:
  """The A/A arm's seeds: ``--aa-seeds``, else the next ``len(seeds)`` (cpu/full)."""
  if AA_METHOD not in methods:
    return []
  if args.aa_seeds is not None:
    chosen = list(args.aa_seeds)
  else:
    start = max(seeds) + 1
    chosen = [] if args.scale == "smoke" else list(range(start, start + len(seeds)))
  clash = sorted(set(chosen) & set(seeds))
  if clash:
    raise ValueError(f"--aa-seeds must differ from the arms' seeds; both have {clash}.")
  return chosen


def _base_config(scale: str, config: str | None = None):
  """The runs' base config: ``config`` (a shipped or experiments/configs name) or the
  scale's."""
  return common.scale_config(scale) if config is None else common.named_config(config)


def _resolved_config(scale: str, overrides: Mapping[str, Any],
                     config: str | None = None) -> dict:
  """The ``config.json`` that ``sslit train`` writes for these overrides."""
  from sslit import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.apply_overrides(_base_config(scale, config), overrides)
  return json.loads(json.dumps(config.to_dict()))


def finished_result(run_dir: str, expected_config: Mapping[str, Any]) -> dict | None:
  """``results.json`` of a finished run with exactly this config, else None."""
  config = common.read_json(os.path.join(run_dir, "config.json"))
  results = common.read_json(os.path.join(run_dir, "results.json"))
  if config != expected_config or not isinstance(results, dict):
    return None
  if results.get("step") != int(expected_config["num_steps"]):
    return None
  if "linear_top1" not in results.get("trained", {}):
    return None
  return results


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """Mean and sample standard deviation (ddof 1; None for a single value)."""
  a = np.asarray(values, dtype=np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def default_entropy_coeff(variant: str) -> float:
  """The library's default entropy weight of a variant (``sslit.objectives``)."""
  from sslit import objectives  # pylint: disable=g-import-not-at-top
  table = (objectives.DEFAULT_BYOL_ENTROPY_COEFF if variant.startswith("byol")
           else objectives.DEFAULT_ENTROPY_COEFF)
  return float(table[_VARIANT_ENTROPY[variant]])


def balanced_subset(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced seeded subset: ``fraction`` of each class.

  Each class keeps ``max(1, round(fraction · count))`` of its examples, drawn without
  replacement with ``numpy.random.default_rng(seed)``.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  picked = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = max(1, int(round(fraction * len(idx))))
    picked.append(rng.choice(idx, k, replace=False))
  return np.sort(np.concatenate(picked))


def _run_features(run_dir: str, *, test: bool = True) -> tuple[Any, ...]:
  """``(train_x, train_y, test_x, test_y, num_classes)`` of a run's final network.

  ``test=False``: the test split is not read (``test_x``, ``test_y`` are None).
  """
  from sslit import features, models, runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(run_dir)
  apply_fn = models.make_apply_fn(run.model, "rep")
  src = features.as_source(run.train_ds)
  mean, std = features.source_stats(src, None, None)
  bs = int(run.config.eval.batch_size)
  tr = features.extract_features(apply_fn, run.variables, src, batch_size=bs,
                                 mean=mean, std=std)
  te = features.extract_features(apply_fn, run.variables, run.test_ds, batch_size=bs,
                                 mean=mean, std=std) if test else (None, None)
  return (*tr, *te, int(run.train_ds.num_classes))


def low_label_probes(run_dir: str, *, seed: int, step: int, l2: float, steps: int,
                     fractions: Sequence[float] = LOW_LABEL_FRACTIONS) -> dict:
  """Linear-probe top-1 (test split) fitted on class-balanced label subsets.

  One probe per fraction, on ``balanced_subset(train labels, fraction, seed)``;
  cached in ``<run_dir>/low_label.json``. Returns ``{probe name: {"top1",
  "num_labels"}}``.
  """
  from sslit import evaluate  # pylint: disable=g-import-not-at-top

  def compute():
    tr_x, tr_y, te_x, te_y, num_classes = _run_features(run_dir)
    out = {}
    for f in fractions:
      idx = balanced_subset(tr_y, f, seed)
      res = evaluate.linear_probe(tr_x[idx], tr_y[idx], te_x, te_y,
                                  num_classes=num_classes, l2=l2, steps=steps)
      out[f"low_label_{round(100 * f)}pct"] = {"top1": res["top1"],
                                               "num_labels": int(len(idx))}
    return out
  key = {"seed": seed, "step": step, "l2": l2, "steps": steps,
         "fractions": list(fractions)}
  return common.cached_json(os.path.join(run_dir, "low_label.json"), key, compute)


def validation_top1(run_dir: str, *, step: int, l2: float, steps: int,
                    val_fraction: float = VAL_FRACTION) -> float:
  """Linear-probe top-1 on a validation split carved from the training set.

  The split is ``balanced_subset(train labels, val_fraction, seed=0)``; the probe is
  fitted on the rest of the training set. The test set is never read. Cached in
  ``<run_dir>/validation.json``.
  """
  from sslit import evaluate  # pylint: disable=g-import-not-at-top

  def compute():
    tr_x, tr_y, _, _, num_classes = _run_features(run_dir, test=False)
    val = balanced_subset(tr_y, val_fraction, 0)
    fit = np.setdiff1d(np.arange(len(tr_y)), val)
    res = evaluate.linear_probe(tr_x[fit], tr_y[fit], tr_x[val], tr_y[val],
                                num_classes=num_classes, l2=l2, steps=steps)
    return {"val_top1": res["top1"], "num_val": int(len(val))}
  key = {"step": step, "l2": l2, "steps": steps, "val_fraction": val_fraction}
  return float(common.cached_json(os.path.join(run_dir, "validation.json"), key,
                       compute)["val_top1"])


def choose_coefficient(scores: Mapping[float, float]) -> float:
  """The multiple with the best validation top-1; ties go to the one nearest 1."""
  if not scores:
    raise ValueError("no validation scores to choose a coefficient from.")
  return max(scores, key=lambda m: (scores[m], -abs(math.log(m))))


def paired_claims(per_seed: Mapping[str, Mapping[str, Sequence[float]]]
                  ) -> dict[str, dict]:
  """The criterion per variant whose base method ran, for every probe.

  Args:
    per_seed: ``{probe: {method: [score per seed]}}`` (seeds in the same order).

  Returns:
    ``{variant: {"base", "verdict" (the primary probe's), probe: paired difference
    (claims.paired_difference)}}``.
  """
  out = {}
  for variant, base in VARIANTS.items():
    primary = per_seed[PRIMARY_PROBE]
    if variant not in primary or base not in primary:
      continue
    entry = {"base": base}
    for probe, scores in per_seed.items():
      if variant in scores and base in scores:
        entry[probe] = claims_lib.paired_difference(scores[variant], scores[base],
                                                    min_n=MIN_SEEDS)
    entry["verdict"] = entry[PRIMARY_PROBE]["verdict"]
    out[variant] = entry
  return out


def claim_verdict(paired: Mapping[str, Mapping[str, Any]]) -> str:
  """"Each variant beats its base": every variant's verdict combined."""
  return claims_lib.combine([c["verdict"] for c in paired.values()])


def claims(accuracy: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
  """The earlier criterion, kept for comparison: variant mean > base mean.

  It decides on one seed and never says "undecided"; the criterion of record is
  :func:`paired_claims`. ``exceeds_seed_std`` (seeds > 1): the difference is larger
  than the larger of the two methods' seed standard deviations; None with one seed.
  """
  out = {}
  for variant, base in VARIANTS.items():
    if variant not in accuracy or base not in accuracy:
      continue
    v, b = accuracy[variant], accuracy[base]
    diff = v["mean"] - b["mean"]
    stds = [s for s in (v["std"], b["std"]) if s is not None]
    out[variant] = {
        "base": base, "variant_mean": v["mean"], "base_mean": b["mean"],
        "difference": diff, "beats_base": bool(diff > 0),
        "seed_std": max(stds) if stds else None,
        "exceeds_seed_std": bool(diff > max(stds)) if stds else None,
    }
  return out


def _fmt(mean: float, std: float | None) -> str:
  return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _interval_text(c: Mapping[str, Any]) -> str:
  iv = c["interval"]
  if iv["low"] is None:
    return f"{iv['mean']:+.2f} (n = {iv['n']})"
  return f"{iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]"


def markdown_table(results: Mapping[str, Any]) -> str:
  """Table 1 as Markdown: mean ± std per probe, the variants' paired differences."""
  dataset = results["dataset"]
  col = DATASET_LABELS.get(dataset, dataset)
  targets = SANITY_TARGETS.get(dataset) if results["scale"] == "full" else None
  probes = [p for p in PROBES if p in results["probes"]]
  names = {"linear": f"linear ({col})", "knn": f"kNN k={KNN_K}"}
  lines = [f"Top-1 (%) on the {col} test split, {results['scale']} scale, "
           f"{results['num_steps']} steps a run, {results['seeds']} seed(s) "
           f"(mean ± std over seeds, ddof 1). Δ: paired per-seed difference of the "
           f"linear probe to the base method, mean [95 % t-interval].", ""]
  header = "| method | " + " | ".join(names.get(p, p.replace("_", " "))
                                      for p in probes) + " |"
  rule = "|---|" + "---|" * len(probes)
  if targets is not None:
    header += " solo-learn target (SPEC 7.3) |"
    rule += "---|"
  header += " Δ vs base | verdict |"
  rule += "---|---|"
  lines += [header, rule]
  for m in results["methods"]:
    row = f"| {LABELS.get(m, m)} | " + " | ".join(
        _fmt(results["probes"][p][m]["mean"], results["probes"][p][m]["std"])
        for p in probes) + " |"
    if targets is not None:
      row += f" {targets[m]:.2f} |" if m in targets else " – |"
    c = results["claims"].get(m)
    row += " | |" if c is None else (
        f" {_interval_text(c[PRIMARY_PROBE])} | {c['verdict']} |")
    lines.append(row)
  return "\n".join(lines) + "\n"


def _target_header(dataset: str) -> str:
  parts = []
  for ds, t in SANITY_TARGETS.items():
    parts.append(f"{DATASET_LABELS[ds]}: " + ", ".join(
        f"{LABELS.get(m, m)} {v:.2f}" for m, v in t.items()))
  mark = f" (this run: {DATASET_LABELS.get(dataset, dataset)})"
  return "Sanity targets, ResNet-18 1000 epochs solo-learn (SPEC 7.3) - " + \
      "; ".join(parts) + mark


def _plot(results: Mapping[str, Any], workdir: str) -> str:
  fig, axes = common.figure(size=(max(5.0, 0.9 * len(results["methods"])), 3.8))
  ax = axes[0][0]
  methods = results["methods"]
  x = np.arange(len(methods))
  means = [results["accuracy"][m]["mean"] for m in methods]
  stds = [results["accuracy"][m]["std"] or 0.0 for m in methods]
  colors = ["tab:orange" if m in VARIANTS else "tab:blue" for m in methods]
  ax.bar(x, means, yerr=stds if results["seeds"] > 1 else None, capsize=4,
         color=colors, alpha=0.8)
  for i, m in enumerate(methods):
    pts = results["accuracy"][m]["per_seed"]
    ax.plot(np.full(len(pts), x[i]), pts, "k.", ms=4)
  lo = min(min(results["accuracy"][m]["per_seed"]) for m in methods)
  hi = max(max(results["accuracy"][m]["per_seed"]) for m in methods)
  pad = max(1.0, 0.5 * (hi - lo))
  ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
  ax.set_xticks(x)
  ax.set_xticklabels([LABELS.get(m, m) for m in methods], rotation=30, ha="right")
  ax.set_ylabel("linear-probe top-1 (%)")
  ax.set_title(f"Table 1, {DATASET_LABELS.get(results['dataset'], results['dataset'])}"
               f" ({results['scale']}, {results['seeds']} seed(s); blue: base, "
               f"orange: variant)", fontsize=9)
  return common.save_figure(fig, workdir, NAME)


def _train_or_reuse(run_dir: str, overrides: Mapping[str, Any], *, scale: str,
                    label: str, config: str | None = None
                    ) -> tuple[dict | None, bool, tuple[int, str] | None]:
  """``(run results, reused, error)`` of one run: reused when finished, else trained.

  ``error`` is None or ``(exit status, message)``.
  """
  try:
    expected = _resolved_config(scale, overrides, config)
  except ValueError as e:
    return None, False, (2, str(e))
  result = finished_result(run_dir, expected)
  if result is not None:
    return result, True, None
  common.say(f"table1: {label}: training {expected['num_steps']} steps in {run_dir}")
  try:
    common.train_run(run_dir, scale=scale, overrides=overrides,
                     config=_base_config(scale, config))
  except RuntimeError as e:
    return None, False, (1, str(e))
  result = finished_result(run_dir, expected)
  if result is None:
    return None, False, (1, f"{run_dir} did not finish its {expected['num_steps']} steps "
                         f"(a wall-clock cap?); run the command again to resume.")
  return result, False, None


def _probe_settings(result: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
  config = common.read_json(os.path.join(run_dir, "config.json"))
  return {"step": int(result["step"]), "l2": float(config["eval"]["l2"]),
          "steps": int(config["eval"]["steps"])}


def widened(grid: Sequence[float], chosen: float) -> list[float]:
  """The grid extended by a factor 4 beyond the edge ``chosen`` sits on (else as is)."""
  g = sorted(grid)
  if len(g) > 1 and chosen == g[0]:
    return [g[0] / 4] + g
  if len(g) > 1 and chosen == g[-1]:
    return g + [g[-1] * 4]
  return g


def select_coefficients(args: Any, variants: Sequence[str], grid: Sequence[float]
                        ) -> tuple[dict[str, dict], tuple[int, str] | None]:
  """Each variant's entropy weight: the grid multiple best on the validation split.

  One run per multiple and ``--select-seeds`` seed, in
  ``<workdir>/select/<variant>/x<multiple>`` (seed 0) or ``...x<multiple>-seed<s>``;
  the validation top-1 averaged over the seeds decides. With ``--widen-grid`` the
  grid grows by a factor 4 beyond an edge as long as the pick sits on it. Returns
  ``({variant: {"grid", "val_top1", "chosen_multiple", "entropy_coeff"}}, error)``.
  """
  out: dict[str, dict] = {}
  sel_seeds = list(getattr(args, "select_seeds", (0,)) or (0,))
  for v in variants:
    base_coeff = default_entropy_coeff(v)
    scores: dict[float, float] = {}
    todo = sorted(grid)
    while True:
      for mult in todo:
        if mult in scores:
          continue
        per_seed = []
        for sel_seed in sel_seeds:
          tail = "" if sel_seed == 0 else f"-seed{sel_seed}"
          run_dir = os.path.join(args.workdir, "select", v, f"x{mult:g}{tail}")
          overrides = run_overrides(v, sel_seed, scale=args.scale, steps=args.steps,
                                    dataset=args.dataset, eval_steps=args.eval_steps,
                                    entropy_coeff=mult * base_coeff,
                                    config=getattr(args, "config", None))
          result, _, error = _train_or_reuse(
              run_dir, overrides, scale=args.scale, label=f"select {v} x{mult:g}",
              config=getattr(args, "config", None))
          if error:
            return out, error
          per_seed.append(validation_top1(run_dir, **_probe_settings(result, run_dir)))
        scores[mult] = float(np.mean(per_seed))
        common.say(f"table1: select {v} x{mult:g} (entropy weight "
                   f"{mult * base_coeff:g}): validation top-1 {scores[mult]:.2f}")
      chosen = choose_coefficient(scores)
      wider = widened(list(scores), chosen)
      if not getattr(args, "widen_grid", False) or len(wider) == len(scores):
        break
      todo = wider
    out[v] = {"grid": sorted(scores), "val_top1": {f"{m:g}": sc
                                                  for m, sc in sorted(scores.items())},
              "chosen_multiple": chosen, "entropy_coeff": chosen * base_coeff,
              "default_entropy_coeff": base_coeff, "select_seeds": sel_seeds}
  return out, None


def _aggregate(runs: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
               seeds: Sequence[int]) -> dict[str, dict]:
  """``{probe: {method: {"per_seed", "mean", "std"}}}`` from the per-run scores."""
  out: dict[str, dict] = {}
  for probe in PROBES:
    out[probe] = {}
    for m in methods:
      per_seed = [runs[m][f"seed{s}"]["scores"].get(probe) for s in seeds]
      if any(v is None for v in per_seed):
        continue
      mean, std = mean_std(per_seed)
      out[probe][m] = {"per_seed": per_seed, "mean": mean, "std": std}
  return {p: v for p, v in out.items() if v}


AA_METHOD = "vicreg"  # the A/A arm's method: the base of the claim of record
CLAIM = "each information-theoretic variant beats its base method (linear probe)"


def evidence_of(results: Mapping[str, Any]) -> dict[str, Any]:
  """The raw numbers the verdict is computed from (checked in; :func:`summarize`).

  ``per_seed``: ``{probe: {method: [score per seed]}}``; ``aa``: the A/A arm
  (``{"method", "seeds", "base_seeds", "per_seed": {probe: [score per seed]}}``) or
  None.
  """
  return {"dataset": results["dataset"], "num_steps": int(results["num_steps"]),
          "seeds": int(results["seeds"]),
          "criterion": results.get("criterion_name", "interval"),
          "per_seed": {p: {m: [float(x) for x in v["per_seed"]] for m, v in by_m.items()}
                       for p, by_m in results["probes"].items()},
          "aa": results.get("aa")}


def aa_control(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
  """The A/A arm judged by the variants' own function, or None without one."""
  aa = evidence.get("aa")
  if not aa:
    return None
  base = evidence["per_seed"][PRIMARY_PROBE][aa["method"]]
  n = min(len(base), len(aa["per_seed"][PRIMARY_PROBE]))
  d = claims_lib.paired_difference(aa["per_seed"][PRIMARY_PROBE][:n], base[:n],
                                   min_n=MIN_SEEDS)
  return claims_lib.control(
      name="aa_" + aa["method"],
      what=(f"A/A arm: {LABELS.get(aa['method'], aa['method'])} on seeds "
            f"{','.join(map(str, aa['seeds'][:n]))} against itself on seeds "
            f"{','.join(map(str, aa['base_seeds'][:n]))} (paired by position), judged "
            f"as a variant against its base: no true difference"),
      verdict=d["verdict"], evidence=d)


def holm_claims(per_seed: Mapping[str, Mapping[str, Sequence[float]]]
                ) -> dict[str, dict]:
  """The pre-registered 10-seed criterion (``HOLM_CRITERION``) per variant.

  Returns ``{variant: {"base", "test" (claims.paired_test), "interval",
  "verdict"}}`` for the variants whose base ran, Holm over all of them.
  """
  primary = per_seed[PRIMARY_PROBE]
  tests = {v: claims_lib.paired_test(primary[v], primary[b])
           for v, b in VARIANTS.items() if v in primary and b in primary}
  verdicts = claims_lib.holm_verdicts(tests, min_n=MIN_SEEDS)
  return {v: {"base": VARIANTS[v], "test": t, "interval": t["interval"],
              "verdict": verdicts[v]} for v, t in tests.items()}


def summarize(evidence: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict, the result line and the controls, from :func:`evidence_of` alone.

  ``evidence["criterion"]``: ``"interval"`` (``CRITERION``) or ``"holm"``
  (``HOLM_CRITERION``, the pre-registered 10-seed plan).
  """
  if evidence.get("criterion", "interval") == "holm":
    return _summarize_holm(evidence)
  paired = paired_claims(evidence["per_seed"])
  verdict = claim_verdict(paired)
  parts = [f"{LABELS.get(v, v)} {_interval_text(c[PRIMARY_PROBE])} ({c['verdict']})"
           for v, c in paired.items()]
  result = (f"{evidence['seeds']} seed(s), {evidence['num_steps']} steps, "
            f"{DATASET_LABELS.get(evidence['dataset'], evidence['dataset'])}; "
            f"linear-probe Δ vs base, mean [95 % CI]: "
            + ("; ".join(parts) or "no variant ran with its base"))
  aa = aa_control(evidence)
  if aa is not None:
    result += (f"; A/A control ({LABELS.get(evidence['aa']['method'])} vs itself): "
               f"{_interval_text(aa['evidence'])} ({aa['verdict']})")
  return claims_lib.summary(
      claim=CLAIM, criterion=CRITERION, verdict=verdict, result=result,
      evidence={v: c[PRIMARY_PROBE] for v, c in paired.items()},
      negative_controls=[aa] if aa is not None else [])


HOLM_CRITERION = (
    "per variant, the paired differences (variant - base) of the full-label linear "
    "probe's test top-1 over the seeds, two-sided paired t-test; Holm's step-down "
    "correction over the variants at alpha = 0.05: a variant holds if its adjusted "
    "p < 0.05 and the mean difference is > 0, fails if the adjusted p < 0.05 and "
    "the mean is < 0, else undecided (also with fewer than 3 seeds); the claim holds "
    "if every variant holds, fails if any fails, else undecided; the A/A arm (the "
    "base against itself on other seeds), judged by the same test with the same "
    "family size, is the negative control")


def _summarize_holm(evidence: Mapping[str, Any]) -> dict[str, Any]:
  per_seed = evidence["per_seed"]
  decided = holm_claims(per_seed)
  verdict = claims_lib.combine([c["verdict"] for c in decided.values()])
  parts = [f"{LABELS.get(v, v)} {_interval_text(c)} (Holm-adjusted family, t p = "
           f"{c['test']['p_t']:.3g}, Wilcoxon p = {c['test']['p_wilcoxon']:.3g}: "
           f"{c['verdict']})" if c["test"]["p_t"] is not None and
           c["test"]["p_wilcoxon"] is not None else
           f"{LABELS.get(v, v)} {_interval_text(c)} ({c['verdict']})"
           for v, c in decided.items()]
  result = (f"{evidence['seeds']} seed(s), {evidence['num_steps']} steps, "
            f"{DATASET_LABELS.get(evidence['dataset'], evidence['dataset'])}; "
            f"linear-probe Δ vs base, mean [95 % CI]: "
            + ("; ".join(parts) or "no variant ran with its base"))
  controls = []
  aa = evidence.get("aa")
  if aa:
    base = per_seed[PRIMARY_PROBE][aa["method"]]
    n = min(len(base), len(aa["per_seed"][PRIMARY_PROBE]))
    # The same test in the same family: the A/A arm's p-value takes the place of
    # the smallest variant's in Holm's correction (the most lenient position).
    test = claims_lib.paired_test(aa["per_seed"][PRIMARY_PROBE][:n], base[:n])
    family = {"aa": test, **{f"variant{i}": {"p_t": 1.0, "differences": [0.0] * n,
                                             "interval": {"mean": 0.0}}
                             for i in range(max(len(decided) - 1, 0))}}
    v = claims_lib.holm_verdicts(family, min_n=MIN_SEEDS)["aa"]
    controls.append(claims_lib.control(
        name="aa_" + aa["method"],
        what=(f"A/A arm: {LABELS.get(aa['method'], aa['method'])} on seeds "
              f"{','.join(map(str, aa['seeds'][:n]))} against itself on seeds "
              f"{','.join(map(str, aa['base_seeds'][:n]))}, judged by the same test "
              f"with the same Holm family size: no true difference"),
        verdict=v, evidence=test))
    result += f"; A/A control: {_interval_text(test)} ({v})"
  return claims_lib.summary(
      claim=CLAIM, criterion=HOLM_CRITERION, verdict=verdict, result=result,
      evidence={v: c["test"] for v, c in decided.items()}, negative_controls=controls)


def differences_figure(evidence: Mapping[str, Any], workdir: str) -> str:
  """``table1_differences.png``: per-seed differences to the base, mean and 95 %
  interval per variant, and the A/A arm (``sslit.figures.interval_dots``)."""
  from sslit import figures  # pylint: disable=g-import-not-at-top
  linear = evidence["per_seed"][PRIMARY_PROBE]
  rows = {}
  for v, b in VARIANTS.items():
    if v in linear and b in linear:
      d = claims_lib.paired_difference(linear[v], linear[b], min_n=MIN_SEEDS)
      iv = d["interval"]
      rows[f"{LABELS.get(v, v)} − {LABELS.get(b, b)}"] = {
          "values": d["differences"], "estimate": iv["mean"],
          **({"interval": (iv["low"], iv["high"])} if iv["low"] is not None else {})}
  aa = evidence.get("aa")
  if aa:
    base = linear[aa["method"]]
    n = min(len(base), len(aa["per_seed"][PRIMARY_PROBE]))
    d = claims_lib.paired_difference(aa["per_seed"][PRIMARY_PROBE][:n], base[:n],
                                     min_n=MIN_SEEDS)
    iv = d["interval"]
    rows[f"A/A: {LABELS.get(aa['method'])} − itself"] = {
        "values": d["differences"], "estimate": iv["mean"], "color": "0.4",
        **({"interval": (iv["low"], iv["high"])} if iv["low"] is not None else {})}
  if not rows:
    return ""
  fig = figures.interval_dots(
      rows, xlabel="difference in linear-probe top-1 (points)",
      title="Does each variant beat its base? (per seed, mean, 95 % interval)",
      reference=0.0)
  return str(figures.save(fig, os.path.join(workdir, "table1_differences.png")))


def main(argv: list[str] | None = None) -> int:
  """``sslit reproduce table1``: train every (method, seed), probe, tabulate, plot."""
  args = common.parse_args(NAME, argv, description=__doc__.split("\n\n")[0],
                           add_arguments=_add_arguments)
  t_start = time.perf_counter()
  methods = list(args.methods)
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  grid = DEFAULT_COEF_GRID[args.scale] if args.coef_grid is None else args.coef_grid
  coefficients, error = select_coefficients(
      args, [m for m in methods if m in VARIANTS], grid) if grid else ({}, None)
  if error:
    common.say(f"table1: error: {error[1]}")
    return error[0]
  total = len(methods) * len(seeds)
  runs: dict[str, dict[str, Any]] = {}
  trained = reused = 0
  i = 0
  for m in methods:
    runs[m] = {}
    for s in seeds:
      i += 1
      run_dir = os.path.join(args.workdir, m, f"seed{s}")
      coeff = coefficients.get(m, {}).get("entropy_coeff")
      overrides = run_overrides(m, s, scale=args.scale, steps=args.steps,
                                dataset=args.dataset, eval_steps=args.eval_steps,
                                entropy_coeff=coeff, config=args.config)
      t0 = time.perf_counter()
      result, was_reused, error = _train_or_reuse(run_dir, overrides, scale=args.scale,
                                                  label=f"[{i}/{total}] {m} seed {s}",
                                                  config=args.config)
      if error:
        common.say(f"table1: error: {error[1]}")
        return error[0]
      reused += was_reused
      trained += not was_reused
      trained_res = result["trained"]
      scores = {"linear": float(trained_res["linear_top1"]),
                "knn": trained_res.get(f"knn{KNN_K}_top1")}
      low = low_label_probes(run_dir, seed=s, **_probe_settings(result, run_dir))
      scores.update({k: v["top1"] for k, v in low.items()})
      runs[m][f"seed{s}"] = {"seed": s, "workdir": run_dir,
                             "linear_top1": scores["linear"], "scores": scores,
                             "low_label": low, "step": int(result["step"]),
                             "config": common.read_json(os.path.join(run_dir, "config.json")),
                             "reused": was_reused,
                             "seconds": time.perf_counter() - t0}
      how = "reused" if was_reused else f"{time.perf_counter() - t0:.0f} s"
      common.say(f"table1: [{i}/{total}] {m} seed {s}: linear top-1 "
                 f"{scores['linear']:.2f} ({how})")
  try:
    aa_seeds = _aa_seeds(args, seeds, methods)
  except ValueError as e:
    common.say(f"table1: error: {e}")
    return 2
  aa = None
  if aa_seeds:
    aa_scores = []
    for s in aa_seeds:
      run_dir = os.path.join(args.workdir, AA_METHOD, f"seed{s}")
      overrides = run_overrides(AA_METHOD, s, scale=args.scale, steps=args.steps,
                                dataset=args.dataset, eval_steps=args.eval_steps,
                                config=args.config)
      result, was_reused, error = _train_or_reuse(
          run_dir, overrides, scale=args.scale, label=f"[A/A] {AA_METHOD} seed {s}",
          config=args.config)
      if error:
        common.say(f"table1: error: {error[1]}")
        return error[0]
      reused += was_reused
      trained += not was_reused
      scores = {"linear": float(result["trained"]["linear_top1"]),
                "knn": result["trained"].get(f"knn{KNN_K}_top1")}
      low = low_label_probes(run_dir, seed=s, **_probe_settings(result, run_dir))
      scores.update({k: v["top1"] for k, v in low.items()})
      aa_scores.append(scores)
      common.say(f"table1: [A/A] {AA_METHOD} seed {s}: linear top-1 "
                 f"{scores['linear']:.2f}")
    aa = {"method": AA_METHOD, "seeds": list(aa_seeds), "base_seeds": list(seeds),
          "per_seed": {p: [sc[p] for sc in aa_scores] for p in PROBES
                       if all(sc.get(p) is not None for sc in aa_scores)}}
  probes = _aggregate(runs, methods, seeds)
  accuracy = probes["linear"]
  first = runs[methods[0]][f"seed{seeds[0]}"]["config"]
  paired = paired_claims({p: {m: v["per_seed"] for m, v in by_m.items()}
                          for p, by_m in probes.items()})
  results = {
      "experiment": NAME, "scale": args.scale, "dataset": first["dataset"],
      "num_steps": int(first["num_steps"]), "seeds": len(seeds), "methods": methods,
      "accuracy": accuracy, "probes": probes, "runs": runs, "claims": paired,
      "criterion": CRITERION if args.criterion == "interval" else HOLM_CRITERION,
      "criterion_name": args.criterion, "aa": aa,
      "claims_mean_difference": claims(accuracy),
      "coefficients": coefficients, "coef_grid": list(grid),
      "sanity_targets": SANITY_TARGETS,
      "runs_trained": trained, "runs_reused": reused,
      "wall_seconds": time.perf_counter() - t_start,
  }
  results["evidence"] = evidence_of(results)
  results["summary"] = summarize(results["evidence"])
  verdict = results["verdict"] = results["summary"]["verdict"]
  results["claim_held"] = claims_lib.as_flag(verdict)
  table = markdown_table(results)
  with open(os.path.join(args.workdir, "table1.md"), "w") as f:
    f.write(table)
  results["table_markdown"] = table
  common.write_results(args.workdir, results)
  plot = _plot(results, args.workdir)
  differences_figure(results["evidence"], args.workdir)
  if args.scale == "full":
    common.say(_target_header(results["dataset"]))
  common.say(table)
  for v, c in paired.items():
    common.say(f"table1: claim '{v} beats {c['base']}': {c['verdict']} (linear Δ "
               f"{_interval_text(c[PRIMARY_PROBE])})")
  if not paired:
    common.say("table1: no variant ran with its base method: no claim to check.")
  common.say(f"table1: verdict {verdict}; {trained} run(s) trained, {reused} reused, "
             f"{results['wall_seconds']:.0f} s; results in {args.workdir}/results.json, "
             f"{args.workdir}/table1.md, {plot}")
  return 0
