"""Table 1 (SPEC 7.3): linear-probe top-1 of four SSL methods and the paper's variants.

What it reproduces: the paper's Table 1, the linear-probe top-1 accuracy of SimCLR,
Barlow Twins, BYOL and VICReg and of the four information-theoretic variants
(``vicreg+logdet``, ``vicreg+pairdist``, ``byol+logdet``, ``byol+pairdist``: the
invariance term plus an explicit LogDet or pairwise-distance entropy estimate,
SPEC 4), mean and standard deviation over seeds. The paper's claim: **each variant
beats its base method** (the VICReg variants VICReg, the BYOL variants BYOL).

Each (method, seed) is one ``sslit train`` run (``common.train_run``) in
``<workdir>/<method>/seed<s>``, with only the trained network's linear probe
(``eval.baselines=()``) and the information monitor off; the accuracy read is the
run's ``results.json`` ``trained.linear_top1`` (test split). Re-running reuses every
finished run whose config is unchanged (nothing is retrained or re-probed) and
resumes unfinished ones from their checkpoints.

Commands:

- ``sslit reproduce table1 --scale smoke [--methods vicreg,vicreg+logdet]``:
  the tiny MLP on the bundled 8x8 digits, ~30 steps a run, seconds each.
- ``sslit reproduce table1 --scale cpu [--seeds 2] [--steps 400]``: the default
  ConvNet on Fashion-MNIST, 400 steps (0.85 epoch at batch 128) a run, the same
  recipe for every method (the default config's: AdamW, peak lr 4e-3, batch 128,
  "simclr" views, 1024-1024 projector; BYOL adds its predictor and EMA target);
  8 runs a seed, each about 1.5 minutes on a quiet 2-core CPU (4 under load).
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
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import common

NAME = "table1"
BASE_METHODS = ("simclr", "barlow_twins", "byol", "vicreg")
# variant -> the base method the paper's claim compares it with.
VARIANTS = {"vicreg+logdet": "vicreg", "vicreg+pairdist": "vicreg",
            "byol+logdet": "byol", "byol+pairdist": "byol"}
METHODS = BASE_METHODS + tuple(VARIANTS)
LABELS = {"simclr": "SimCLR", "barlow_twins": "Barlow Twins", "byol": "BYOL",
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
  p.add_argument("--methods", type=common.method_list(METHODS), default=METHODS,
                 help="comma-separated methods (default all eight: "
                      f"{','.join(METHODS)})")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="training steps per run (default: smoke 30, cpu 400, full the "
                      "config's 1000 epochs)")
  p.add_argument("--dataset", default=None,
                 help="data set of every run (default the scale config's: digits, "
                      "fashion_mnist, cifar10); e.g. cifar100 at the full scale")
  p.add_argument("--eval-steps", type=_positive_int, default=None,
                 help="L-BFGS iterations of the linear probe (default the config's)")


def run_overrides(method: str, seed: int, *, scale: str, steps: int | None = None,
                  dataset: str | None = None, eval_steps: int | None = None
                  ) -> dict[str, Any]:
  """The config overrides of one (method, seed) run of the table.

  Args:
    method: one of ``METHODS`` (an objective name of ``sslit.objectives``).
    seed: the run's seed.
    scale: one of ``common.SCALES``.
    steps: training steps (None: ``DEFAULT_STEPS[scale]`` or the config's).
    dataset: data set name (None: the config's).
    eval_steps: probe iterations (None: the config's).

  Returns:
    ``{field: value}`` for ``common.train_run``.
  """
  out: dict[str, Any] = {}
  if scale == "full":
    out.update(FULL_METHOD_OVERRIDES[method])
  out.update({"objective": method, "seed": int(seed), "eval.baselines": (),
              "report": False, "monitor_every": 0})
  steps = steps if steps is not None else DEFAULT_STEPS[scale]
  if steps is not None:
    out["num_steps"] = int(steps)
    base = _base_config(scale)
    # Keep the warm-up inside short budgets (the schedule needs warmup <= steps).
    out["warmup_steps"] = min(int(base.warmup_steps), max(int(steps) // 10, 0))
  if dataset is not None:
    out["dataset"] = dataset
  if eval_steps is not None:
    out["eval.steps"] = int(eval_steps)
  return out


def _base_config(scale: str):
  return common.scale_config(scale)


def _resolved_config(scale: str, overrides: Mapping[str, Any]) -> dict:
  """The ``config.json`` that ``sslit train`` writes for these overrides."""
  from sslit import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.apply_overrides(_base_config(scale), overrides)
  return json.loads(json.dumps(config.to_dict()))


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def finished_result(run_dir: str, expected_config: Mapping[str, Any]) -> dict | None:
  """``results.json`` of a finished run with exactly this config, else None."""
  config = _read_json(os.path.join(run_dir, "config.json"))
  results = _read_json(os.path.join(run_dir, "results.json"))
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


def claims(accuracy: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
  """The paper's claim per variant whose base method was run: variant mean > base mean.

  ``exceeds_seed_std`` (seeds > 1): the difference is larger than the larger of the
  two methods' seed standard deviations; None with one seed.
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


def markdown_table(results: Mapping[str, Any]) -> str:
  """Table 1 as Markdown: one row per method, mean ± std, the variants' difference."""
  dataset = results["dataset"]
  col = DATASET_LABELS.get(dataset, dataset)
  targets = SANITY_TARGETS.get(dataset) if results["scale"] == "full" else None
  lines = [f"Linear-probe top-1 (%) on the {col} test split, {results['scale']} scale, "
           f"{results['num_steps']} steps a run, {results['seeds']} seed(s) "
           f"(mean ± std over seeds, ddof 1).", ""]
  header = f"| method | {col} |"
  rule = "|---|---|"
  if targets is not None:
    header += " solo-learn target (SPEC 7.3) |"
    rule += "---|"
  header += " Δ vs base | claim held |"
  rule += "---|---|"
  lines += [header, rule]
  for m in results["methods"]:
    acc = results["accuracy"][m]
    row = f"| {LABELS[m]} | {_fmt(acc['mean'], acc['std'])} |"
    if targets is not None:
      row += f" {targets[m]:.2f} |" if m in targets else " – |"
    c = results["claims"].get(m)
    if c is None:
      row += " | |"
    else:
      sig = "" if c["exceeds_seed_std"] is None else (
          " (> seed std)" if c["exceeds_seed_std"] else " (≤ seed std)")
      row += f" {c['difference']:+.2f}{sig} | {'yes' if c['beats_base'] else 'no'} |"
    lines.append(row)
  return "\n".join(lines) + "\n"


def _target_header(dataset: str) -> str:
  parts = []
  for ds, t in SANITY_TARGETS.items():
    parts.append(f"{DATASET_LABELS[ds]}: " + ", ".join(
        f"{LABELS[m]} {v:.2f}" for m, v in t.items()))
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
  ax.set_xticklabels([LABELS[m] for m in methods], rotation=30, ha="right")
  ax.set_ylabel("linear-probe top-1 (%)")
  ax.set_title(f"Table 1, {DATASET_LABELS.get(results['dataset'], results['dataset'])}"
               f" ({results['scale']}, {results['seeds']} seed(s); blue: base, "
               f"orange: variant)", fontsize=9)
  return common.save_figure(fig, workdir, NAME)


def main(argv: list[str] | None = None) -> int:
  """``sslit reproduce table1``: train every (method, seed), probe, tabulate, plot."""
  args = common.parse_args(NAME, argv, description=__doc__.split("\n\n")[0],
                           add_arguments=_add_arguments)
  t_start = time.perf_counter()
  methods = list(args.methods)
  seeds = list(range(args.seeds))
  total = len(methods) * len(seeds)
  runs: dict[str, dict[str, Any]] = {}
  trained = reused = 0
  i = 0
  for m in methods:
    runs[m] = {}
    for s in seeds:
      i += 1
      run_dir = os.path.join(args.workdir, m, f"seed{s}")
      overrides = run_overrides(m, s, scale=args.scale, steps=args.steps,
                                dataset=args.dataset, eval_steps=args.eval_steps)
      try:
        expected = _resolved_config(args.scale, overrides)
      except ValueError as e:
        common.say(f"table1: error: {e}")
        return 2
      result = finished_result(run_dir, expected)
      t0 = time.perf_counter()
      was_reused = result is not None
      if result is None:
        common.say(f"table1: [{i}/{total}] {m} seed {s}: training "
                   f"{expected['num_steps']} steps in {run_dir}")
        try:
          common.train_run(run_dir, scale=args.scale, overrides=overrides)
        except RuntimeError as e:
          common.say(f"table1: error: {e}")
          return 1
        result = finished_result(run_dir, expected)
        if result is None:
          common.say(f"table1: error: {run_dir} did not finish its {expected['num_steps']}"
                     f" steps (a wall-clock cap?); run the command again to resume.")
          return 1
        trained += 1
      else:
        reused += 1
      acc = float(result["trained"]["linear_top1"])
      runs[m][f"seed{s}"] = {"seed": s, "workdir": run_dir, "linear_top1": acc,
                             "step": int(result["step"]),
                             "config": _read_json(os.path.join(run_dir, "config.json")),
                             "reused": was_reused,
                             "seconds": time.perf_counter() - t0}
      how = "reused" if was_reused else f"{time.perf_counter() - t0:.0f} s"
      common.say(f"table1: [{i}/{total}] {m} seed {s}: linear top-1 {acc:.2f} ({how})")
  accuracy = {}
  for m in methods:
    per_seed = [runs[m][f"seed{s}"]["linear_top1"] for s in seeds]
    mean, std = mean_std(per_seed)
    accuracy[m] = {"per_seed": per_seed, "mean": mean, "std": std}
  first = runs[methods[0]]["seed0"]["config"]
  verdicts = claims(accuracy)
  results = {
      "experiment": NAME, "scale": args.scale, "dataset": first["dataset"],
      "num_steps": int(first["num_steps"]), "seeds": len(seeds), "methods": methods,
      "accuracy": accuracy, "runs": runs, "claims": verdicts,
      "claim_held": (all(c["beats_base"] for c in verdicts.values())
                     if verdicts else None),
      "sanity_targets": SANITY_TARGETS,
      "runs_trained": trained, "runs_reused": reused,
      "wall_seconds": time.perf_counter() - t_start,
  }
  table = markdown_table(results)
  with open(os.path.join(args.workdir, "table1.md"), "w") as f:
    f.write(table)
  results["table_markdown"] = table
  common.write_results(args.workdir, results)
  plot = _plot(results, args.workdir)
  if args.scale == "full":
    common.say(_target_header(results["dataset"]))
  common.say(table)
  for v, c in verdicts.items():
    extra = "" if c["exceeds_seed_std"] is None else (
        f"; {'larger' if c['exceeds_seed_std'] else 'not larger'} than the seed std "
        f"{c['seed_std']:.2f}")
    common.say(f"table1: claim '{v} beats {c['base']}': "
               f"{'held' if c['beats_base'] else 'did not hold'} "
               f"({c['variant_mean']:.2f} vs {c['base_mean']:.2f}, "
               f"{c['difference']:+.2f}{extra})")
  if not verdicts:
    common.say("table1: no variant ran with its base method: no claim to check.")
  common.say(f"table1: {trained} run(s) trained, {reused} reused, "
             f"{results['wall_seconds']:.0f} s; results in {args.workdir}/results.json, "
             f"{args.workdir}/table1.md, {plot}")
  return 0
