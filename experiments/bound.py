"""SPEC §7.4: the generalization bound versus training, per method.

What it reproduces: the paper's claim that its generalization bound (SPEC §6; the
project's scale-consistent reconstruction in ``docs/bound.md``) holds for the
representations SSL methods learn, at every point of training. For each method
(default VICReg, SimCLR, Barlow Twins, BYOL) one ``sslit train`` run is made with
the information monitor on; at every monitored step the monitor fits the
least-squares head on one half of a fixed held-out subset, measures its loss on the
other half and records every term of the bound under
``monitor/<rep|proj>/bound/<term>``. This script reads those series back from the
run's ``metrics.jsonl`` and reports, per method, output and step, the five terms,
their sum, the measured test loss, whether ``bound >= test loss``, the tightness
(bound and each term over the test loss) and the dominant term. The criterion
(``CRITERION``, docs/experiment_bound.md) is not held when the bound fails at any
checkpoint, held when it holds everywhere and is below the loss range ``c`` it
assumes, and undecided when it holds only where it is vacuous (``bound >= c``).

Commands:

- ``sslit reproduce bound --scale smoke`` (seconds per method: 8x8 digits, tiny MLP,
  30 steps, monitor every 5 steps on the whole 300-image test split);
- ``sslit reproduce bound --scale cpu`` (Fashion-MNIST ConvNet, 800 steps per method,
  monitor every 200 steps on 1024 test images; 37 min measured on the shared 2-core
  CPU under load, about 10 min estimated on a quiet one);
- ``sslit reproduce bound --scale full`` (CIFAR-10 ResNet-18, the full schedule,
  monitor every 50 epochs on 8192 test images; accelerators, not run here).

Options: ``--methods vicreg,byol`` (objective names of ``sslit.objectives``),
``--steps N``, ``--monitor-every N``, ``--monitor-examples N`` (override the scale's
values), ``--seeds N``, ``--workdir DIR``.

Outputs (in the workdir): ``results.json`` (every plotted number, the config of each
run, the scale), ``bound.png`` (bound and measured test loss per method, log scale),
``bound_terms.png`` (the five terms stacked, per method and output); one run
directory per method and seed (``<method>-seed<s>``), reused when finished.

What smoke can and cannot show: it exercises the whole path (training, monitor,
series, flags, plots) and checks the bound holds on a barely trained MLP; with 30
steps and 150 labeled examples the terms are dominated by the head's norm and the
loss range, so the trends over training say nothing about the paper's.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from experiments import claims as claims_lib
from experiments import common

NAME = "bound"
DEFAULT_METHODS = ("vicreg", "simclr", "barlow_twins", "byol")
OUTPUTS = ("rep", "proj")
# The five terms of the bound, in the order of SPEC §6 (their sum is ``bound``).
TERMS = ("invariance_term", "unlabeled_term", "labeled_term", "complexity_term",
         "confidence_term")
# Everything the monitor records under ``bound/`` (``holds`` is a bool and is not
# written to metrics.jsonl; it is recomputed here from ``bound`` and ``test_loss``).
ENTRIES = ("bound", "test_loss") + TERMS + (
    "invariance", "head_norm", "head_norm_fro", "residual_unlabeled",
    "residual_labeled", "rademacher", "loss_range", "train_loss")

CRITERION = (
    "at every monitored checkpoint of every method, seed and output, the bound is at "
    "least the measured test loss of the least-squares head (not held if it fails at "
    "any one); held only if, in addition, the bound is below the loss range c it "
    "assumes (the trivial bound: where bound >= c the check cannot fail whatever the "
    "test labels, so it tests nothing) at every checkpoint; undecided when the bound "
    "holds but is vacuous somewhere, or nothing was monitored")


# Per scale: the run settings the experiment sets on top of the scale's config.
SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    # The smoke config trains without views ("none"); the bound needs two views.
    "smoke": {"num_steps": 30, "monitor_every": 5, "monitor_examples": 300,
              "augment": "fashion_mnist", "checkpoint_every": 10},
    "cpu": {"num_steps": 800, "monitor_every": 200, "monitor_examples": 1024,
            "checkpoint_every": 200},
    # full_cifar10 keeps its own schedule (195k steps, monitor every 50 epochs).
    "full": {"monitor_examples": 8192},
}


# ----------------------------------------------------------------------------
# Runs (shared with experiments/vicreg_logdet.py).


def _config_value(config: Mapping[str, Any], dotted: str) -> Any:
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def _same(a: Any, b: Any) -> bool:
  norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v
  return norm(a) == norm(b)


def finished_run(workdir: str, overrides: Mapping[str, Any]) -> bool:
  """Whether ``workdir`` holds a completed run made with these ``overrides``.

  Complete: ``config.json`` agrees with every override and a checkpoint exists at
  the run's ``num_steps``. Such a run is reused without starting ``sslit train``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not os.path.exists(os.path.join(workdir,
                                                                 "metrics.jsonl")):
    return False
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError:
      return False
  if not all(_same(_config_value(config, k), v) for k, v in overrides.items()):
    return False
  from sslit import runs  # pylint: disable=g-import-not-at-top
  steps = runs.checkpoint_steps(workdir)
  return bool(steps) and max(steps) >= int(config["num_steps"])


def ensure_run(workdir: str, *, scale: str, overrides: Mapping[str, Any]) -> bool:
  """Train the run (or resume it) unless it is finished; True when it trained."""
  if finished_run(workdir, overrides):
    common.say(f"  reusing the finished run {workdir}")
    return False
  common.say(f"  training {workdir}")
  common.train_run(workdir, scale=scale, overrides=overrides)
  return True


def base_config(scale: str):
  """The scale's config (``common.SCALE_CONFIG[scale]``)."""
  return common.scale_config(scale)


def run_settings(scale: str, defaults: Mapping[str, Mapping[str, Any]],
                 args: argparse.Namespace) -> dict[str, Any]:
  """The overrides of a run: scale defaults, the options, no offline evaluation."""
  settings = dict(defaults[scale])
  if args.steps is not None:
    settings["num_steps"] = args.steps
  if args.monitor_every is not None:
    settings["monitor_every"] = args.monitor_every
  if args.monitor_examples is not None:
    settings["monitor_examples"] = args.monitor_examples
  config = base_config(scale)
  num_steps = int(settings.get("num_steps", config.num_steps))
  if int(config.warmup_steps) > num_steps:
    settings["warmup_steps"] = num_steps // 10
  if int(settings.get("checkpoint_every", config.checkpoint_every)) > num_steps:
    settings["checkpoint_every"] = num_steps
  if int(settings.get("monitor_every", config.monitor_every)) > num_steps:
    raise ValueError(f"--monitor-every ({settings['monitor_every']}) is larger than "
                     f"the number of steps ({num_steps}): one monitored point only.")
  settings.update({"eval.enabled": False, "report": False})
  return settings


def add_run_options(p: argparse.ArgumentParser) -> None:
  """``--steps``, ``--monitor-every``, ``--monitor-examples`` (positive ints)."""
  p.add_argument("--steps", type=positive_int, default=None,
                 help="training steps per run (default: the scale's)")
  p.add_argument("--monitor-every", type=positive_int, default=None,
                 help="steps between monitored points (default: the scale's)")
  p.add_argument("--monitor-examples", type=monitor_examples, default=None,
                 help="held-out examples of the monitor, >= 8 (default: the scale's)")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def monitor_examples(text: str) -> int:
  value = positive_int(text)
  if value < 8:
    raise argparse.ArgumentTypeError(f"the monitor needs >= 8 examples, got {value}")
  return value


def monitored_series(records: Sequence[Mapping[str, Any]], prefix: str,
                     names: Sequence[str]) -> dict[str, Any]:
  """``{"steps": [...], name: [...]}`` of the monitor records holding every name.

  Keys are ``prefix + name``; a step logged twice (never after a clean resume) keeps
  its last record.
  """
  by_step: dict[int, dict[str, float]] = {}
  for r in records:
    if all(prefix + n in r for n in names):
      by_step[int(r["step"])] = {n: float(r[prefix + n]) for n in names}
  steps = sorted(by_step)
  out: dict[str, Any] = {"steps": steps}
  for n in names:
    out[n] = [by_step[s][n] for s in steps]
  return out


# ----------------------------------------------------------------------------
# This experiment.


def _add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--methods", type=common.method_list(), default=DEFAULT_METHODS,
                 help="comma-separated objectives (default: "
                      f"{','.join(DEFAULT_METHODS)})")
  add_run_options(p)


def bound_series(records: Sequence[Mapping[str, Any]], output: str) -> dict[str, Any]:
  """Every bound entry of one output over the monitored steps, plus ``holds``."""
  s = monitored_series(records, f"monitor/{output}/bound/", ENTRIES)
  s["holds"] = [b >= t for b, t in zip(s["bound"], s["test_loss"])]
  s["margin"] = [b - t for b, t in zip(s["bound"], s["test_loss"])]
  return s


def checkpoint_verdict(bound: Sequence[float], test_loss: Sequence[float],
                       loss_range: Sequence[float]) -> dict[str, Any]:
  """The criterion (``CRITERION``) on the checkpoints of one or more runs.

  Args:
    bound: the bound at each checkpoint.
    test_loss: the measured test loss at each checkpoint.
    loss_range: ``c``, the loss range the bound assumes, at each checkpoint.

  Returns:
    ``{"verdict", "checkpoints", "failures", "vacuous"}``: the number of checkpoints,
    of those where ``bound < test_loss`` and of those where ``bound >= c``.
  """
  b, t, c = (np.asarray(v, np.float64) for v in (bound, test_loss, loss_range))
  if not b.shape == t.shape == c.shape or b.ndim != 1:
    raise ValueError(f"bound, test_loss and loss_range need one length, got "
                     f"{b.shape}, {t.shape}, {c.shape}.")
  failures, vacuous = int(np.sum(b < t)), int(np.sum(b >= c))
  if b.size == 0:
    verdict = claims_lib.UNDECIDED
  elif failures:
    verdict = claims_lib.NOT_HELD
  else:
    verdict = claims_lib.UNDECIDED if vacuous else claims_lib.HELD
  return {"verdict": verdict, "checkpoints": int(b.size), "failures": failures,
          "vacuous": vacuous}


def tightness(series: Mapping[str, Sequence[float]]) -> dict[str, Any]:
  """Bound and each term over the measured test loss, and the dominant term.

  Per checkpoint: ``ratio`` (bound / test loss), ``<term>`` / test loss for each of
  ``TERMS``, ``dominant`` (the largest term) and its share of the bound.
  """
  t = np.asarray(series["test_loss"], np.float64)
  terms = np.asarray([series[k] for k in TERMS], np.float64)  # [5, steps]
  top = np.argmax(terms, axis=0)
  return {"ratio": (np.asarray(series["bound"], np.float64) / t).tolist(),
          "per_term": {k: (terms[i] / t).tolist() for i, k in enumerate(TERMS)},
          "dominant": [TERMS[i] for i in top],
          "dominant_share": (terms[top, np.arange(terms.shape[1])] /
                             np.asarray(series["bound"], np.float64)).tolist()}


def _verdict_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
  runs = entry["seeds"]
  return checkpoint_verdict(*[[v for r in runs for v in r["series"][k]]
                              for k in ("bound", "test_loss", "loss_range")])


def _seed0(results: Mapping[str, Any], methods: Sequence[str],
           outputs: Sequence[str]):
  """``(method, output, entry, seed-0 series, seed-0 tightness)`` of every pair."""
  for m in methods:
    for o in outputs:
      e = results[m][o]
      yield m, o, e, e["seeds"][0]["series"], e["seeds"][0]["tightness"]


CLAIM = "the generalization bound holds at every checkpoint, for every method"
_SERIES_KEYS = ("steps", "bound", "test_loss", "loss_range") + TERMS


def evidence_of(results: Mapping[str, Any]) -> dict[str, Any]:
  """The raw numbers the verdict is computed from (checked in; :func:`summarize`):
  every (method, output, seed)'s per-checkpoint bound, terms, ``c`` and test loss."""
  methods, outputs = list(results["methods"]), list(results["outputs"])
  return {"methods": methods, "outputs": outputs,
          "series": {m: {o: [{"seed": r["seed"],
                              **{k: [float(v) for v in r["series"][k]]
                                 for k in _SERIES_KEYS}}
                             for r in results["results"][m][o]["seeds"]]
                         for o in outputs} for m in methods}}


def _pooled(runs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
  return [v for r in runs for v in r[key]]


def summarize(evidence: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict, the result line and the controls, from :func:`evidence_of` alone.

  Negative control (from the same series): the bound with its complexity term
  dropped, judged by the same rule: an incomplete bound that a working check must
  be able to catch.
  """
  methods, outputs, series = evidence["methods"], evidence["outputs"], evidence["series"]
  per, dropped, parts = {}, {}, []
  for m in methods:
    for o in outputs:
      runs = series[m][o]
      per[f"{m}/{o}"] = checkpoint_verdict(*[_pooled(runs, k) for k in
                                             ("bound", "test_loss", "loss_range")])
      without = [b - c for b, c in zip(_pooled(runs, "bound"),
                                       _pooled(runs, "complexity_term"))]
      dropped[f"{m}/{o}"] = checkpoint_verdict(without, _pooled(runs, "test_loss"),
                                               _pooled(runs, "loss_range"))
      s0 = runs[0]
      tg = tightness(s0)
      parts.append(f"{m}/{o} bound/test loss {tg['ratio'][-1]:.0f}x (c = "
                   f"{s0['loss_range'][-1]:.3g}, dominant {tg['dominant'][-1]})")
  verdict = claims_lib.combine([v["verdict"] for v in per.values()])
  ck = {k: sum(v[k] for v in per.values()) for k in ("checkpoints", "failures",
                                                        "vacuous")}
  result = (f"{ck['checkpoints']} checkpoints, bound < test loss at "
            f"{ck['failures']}, vacuous (bound >= c) at {ck['vacuous']}; final, "
            f"seed 0: " + "; ".join(parts))
  control = claims_lib.control(
      name="complexity_term_dropped",
      what=("the same checkpoints' bound with its complexity term (2/sqrt(m) R_m) "
            "removed: an incomplete bound, judged by the same rule"),
      verdict=claims_lib.combine([v["verdict"] for v in dropped.values()]),
      evidence={"per_output": dropped,
                "failures": sum(v["failures"] for v in dropped.values())})
  return claims_lib.summary(
      claim=CLAIM, criterion=CRITERION, verdict=verdict, result=result,
      evidence=per, negative_controls=[control])


def _plot(workdir: str, methods: Sequence[str], outputs: Sequence[str],
          results: Mapping[str, Any]) -> list[str]:
  paths = []
  fig, axes = common.figure(ncols=len(methods), nrows=1)
  for j, method in enumerate(methods):
    ax = axes[0][j]
    for o, color in zip(outputs, ("C0", "C1")):
      for run in results[method][o]["seeds"]:
        s = run["series"]
        ax.plot(s["steps"], s["bound"], "-o", color=color, ms=3,
                label=f"{o}: bound" if run["seed"] == 0 else None)
        ax.plot(s["steps"], s["test_loss"], "--s", color=color, ms=3,
                label=f"{o}: test loss" if run["seed"] == 0 else None)
        bad = [(st, b) for st, b, h in zip(s["steps"], s["bound"], s["holds"]) if not h]
        if bad:
          ax.plot(*zip(*bad), "x", color="red", ms=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(method)
    if j == 0:
      ax.set_ylabel("label units (log)")
      ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(common.save_figure(fig, workdir, "bound"))

  fig, axes = common.figure(ncols=len(methods), nrows=len(outputs))
  for i, o in enumerate(outputs):
    for j, method in enumerate(methods):
      ax = axes[i][j]
      s = results[method][o]["seeds"][0]["series"]
      ax.stackplot(s["steps"], *[s[t] for t in TERMS],
                   labels=[t.replace("_term", "") for t in TERMS], alpha=0.8)
      ax.plot(s["steps"], s["test_loss"], "k--o", ms=3, label="test loss")
      ax.set_title(f"{method} / {o} (seed 0)")
      ax.set_xlabel("step")
      if i == 0 and j == 0:
        ax.legend(fontsize=6, loc="upper right")
  fig.tight_layout()
  paths.append(common.save_figure(fig, workdir, "bound_terms"))
  return paths


def main(argv: list[str] | None = None) -> int:
  args = common.parse_args(NAME, argv, description=__doc__.splitlines()[0],
                           add_arguments=_add_arguments)
  try:
    settings = run_settings(args.scale, SCALE_SETTINGS, args)
  except ValueError as e:
    print(f"sslit reproduce {NAME}: error: {e}", flush=True)
    return 2
  methods = tuple(args.methods)
  common.say(f"bound vs training: {', '.join(methods)} at scale {args.scale}, "
             f"{args.seeds} seed(s), workdir {args.workdir}")
  runs, trained = {}, []
  for method in methods:
    for seed in range(args.seeds):
      name = f"{method}-seed{seed}"
      run_dir = os.path.join(args.workdir, name)
      overrides = {**settings, "objective": method, "seed": seed}
      common.say(f"[{len(runs) + 1}/{len(methods) * args.seeds}] {name}")
      if ensure_run(run_dir, scale=args.scale, overrides=overrides):
        trained.append(name)
      with open(os.path.join(run_dir, "config.json")) as f:
        runs[name] = {"method": method, "seed": seed, "workdir": run_dir,
                      "config": json.load(f)}

  results: dict[str, Any] = {}
  outputs: list[str] = []
  for method in methods:
    results[method] = {}
    for seed in range(args.seeds):
      records = common.read_records(runs[f"{method}-seed{seed}"]["workdir"])
      for o in OUTPUTS:
        s = bound_series(records, o)
        if not s["steps"]:
          continue
        if o not in outputs:
          outputs.append(o)
        entry = results[method].setdefault(o, {"seeds": []})
        entry["seeds"].append({"seed": seed, "series": s, "tightness": tightness(s)})
    for o, entry in results[method].items():
      holds = [h for run in entry["seeds"] for h in run["series"]["holds"]]
      entry["checkpoints"] = len(holds)
      entry["held_every_checkpoint"] = bool(holds) and all(holds)
      entry["min_margin"] = min(m for run in entry["seeds"]
                                for m in run["series"]["margin"])
      entry["verdict"] = _verdict_entry(entry)
  missing = [(m, o) for m in methods for o in outputs if o not in results[m]]
  if not outputs or missing:
    print(f"sslit reproduce {NAME}: error: no bound terms in the runs' metrics "
          f"({missing or 'any output'}): the monitor needs two views and labels.",
          flush=True)
    return 1
  held = {m: all(results[m][o]["held_every_checkpoint"] for o in outputs)
          for m in methods}
  evidence = evidence_of({"methods": methods, "outputs": outputs, "results": results})
  summary = summarize(evidence)
  verdict = summary["verdict"]
  plots = _plot(args.workdir, methods, outputs, results)
  common.write_results(args.workdir, {
      "experiment": NAME,
      "scale": args.scale,
      "claim": "the generalization bound (SPEC §6) is at least the measured test "
               "loss of the least-squares head at every monitored checkpoint, for "
               "every method",
      "criterion": CRITERION,
      "verdict": verdict,
      "claim_held": claims_lib.as_flag(verdict),
      "held_every_checkpoint_all": all(held.values()),
      "held_every_checkpoint": held,
      "evidence": evidence,
      "summary": summary,
      "methods": list(methods),
      "outputs": outputs,
      "terms": list(TERMS),
      "entries": list(ENTRIES),
      "settings": settings,
      "runs": runs,
      "trained": trained,
      "results": results,
      "plots": [os.path.basename(p) for p in plots],
  })
  common.say("method        output  steps  final bound  final test loss  min margin"
             "  bound/loss  dominant term  verdict")
  for m, o, e, s, tg in _seed0(results, methods, outputs):
    common.say(f"{m:13s} {o:6s} {e['checkpoints']:6d}  {s['bound'][-1]:11.4g}  "
               f"{s['test_loss'][-1]:15.4g}  {e['min_margin']:10.4g}  "
               f"{tg['ratio'][-1]:10.3g}  {tg['dominant'][-1]:15s} "
               f"{e['verdict']['verdict']}")
  common.say(f"paper's claim (bound holds at every checkpoint for every method): "
             f"{verdict.upper()} (held at every checkpoint: {all(held.values())}); "
             f"results in "
             f"{os.path.join(args.workdir, 'results.json')}")
  return 0


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  sys.exit(main(sys.argv[1:]))
