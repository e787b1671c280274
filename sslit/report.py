"""Run reports: ``report.md`` that leads with the answer, a few figures, a metrics CSV.

A run directory holds ``config.json`` (the resolved configuration),
``metrics.jsonl`` (one JSON object per line: ``step`` plus metric names; lines may
carry different keys), and optionally ``results.json`` (the offline linear probe of
the trained network and of the baselines), ``probe_correct.npz`` (the probes'
per-example correctness on the test split, ``sslit.metrics.write_probe_correct``)
and ``timings.json`` (the command's phases and the machine). :func:`write_report`
turns them into

* ``report.md``, whose first five lines answer the question a run is for: the
  trained network's linear-probe top-1, the random-init and raw-pixel baselines, the
  margin over random init with its 95 % interval, the run's time and the machine;
  then one short table per section (probes, training, information, bound) and the
  figures;
* the figures of ``sslit.figures``, each titled by the question it answers
  (``fig_probes.png``, ``fig_information.png``, ``fig_bound.png``,
  ``fig_vicreg.png``, ``fig_training.png``; each only when its data is recorded);
* ``metrics.csv``: every logged metric with its last value, minimum and maximum.

Intervals: with per-example correctness, the margin's interval is a paired
bootstrap over the test examples (:func:`paired_difference_interval`) and each
accuracy's a Wilson interval (:func:`accuracy_interval`); without it, the margin's
falls back to the normal interval of a difference of two independent proportions
(wider than the paired one when the two probes agree on most examples), and the
report says which it used. Missing files, empty files, malformed lines and
non-finite values are tolerated (and reported), never fatal.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import re
import statistics
from typing import Any, Mapping

import numpy as np

from sslit import figures
from sslit import metrics as metrics_lib

Series = dict[str, tuple[np.ndarray, np.ndarray]]

__all__ = ["classify", "accuracy_interval", "paired_difference_interval",
           "unpaired_difference_interval", "probe_answer", "summary", "run_figures",
           "write_report"]

_ACCURACY = re.compile(r"(top1|top5|acc)", re.IGNORECASE)
_SYSTEM = re.compile(
    r"(^|/)(lr|learning_rate|grad_norm|gradient_norm|images_per_s|img_per_s|"
    r"throughput|step_time|time|wall_time|elapsed|elapsed_s|compile_s|"
    r"eval_seconds|epoch|examples_seen)$",
    re.IGNORECASE)
_BOUND_TERMS = ("invariance_term", "unlabeled_term", "labeled_term", "complexity_term",
                "confidence_term")
_ENTROPIES = ("entropy_pairwise_kl", "entropy_pairwise_bhattacharyya",
              "entropy_logdet", "entropy_gaussian")
_NAMES = {"trained": "trained network", "target": "target network",
          "random_init": "random init", "raw_pixels": "raw pixels"}
LEVEL = 0.95


def classify(name: str) -> str:
  """The group of a metric in ``metrics.csv``.

  "bound" (``.../bound/...``), "accuracy" (last name part has top1/top5/acc),
  "information" (``monitor/...``), "final" (other ``eval/...`` numbers of the
  offline evaluation), "system" (learning rate, gradient norm, throughput, time) or
  "training" (loss terms and everything else).
  """
  if "bound/" in name or name.startswith("bound"):
    return "bound"
  if _ACCURACY.search(name.rsplit("/", 1)[-1]):
    return "accuracy"
  if name.startswith("monitor/"):
    return "information"
  if name.startswith("eval/"):
    return "final"
  if _SYSTEM.search(name):
    return "system"
  return "training"


# --------------------------------------------------------------------------- #
# Intervals
# --------------------------------------------------------------------------- #


def _z(level: float) -> float:
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def accuracy_interval(correct: int, total: int, *, level: float = LEVEL
                      ) -> tuple[float, float]:
  """Wilson score interval of an accuracy, in percent.

  ``p̂ = correct/total``, ``z`` the normal quantile of ``(1 + level)/2``:
  ``(p̂ + z²/2N ± z √(p̂(1−p̂)/N + z²/4N²)) / (1 + z²/N)``.

  Args:
    correct: examples classified correctly.
    total: examples scored (> 0).
    level: coverage.

  Returns:
    ``(low, high)`` in percent.
  """
  if total <= 0 or not 0 <= correct <= total:
    raise ValueError(f"need 0 <= correct <= total and total > 0, got correct={correct}, "
                     f"total={total}.")
  z = _z(level)
  p, n = correct / total, float(total)
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return 100.0 * (centre - half), 100.0 * (centre + half)


def paired_difference_interval(correct_a: Any, correct_b: Any, *, level: float = LEVEL,
                               num_resamples: int = 10000, seed: int = 0
                               ) -> tuple[float, float]:
  """Paired bootstrap interval of ``accuracy(a) − accuracy(b)`` on the same examples.

  Resamples the test examples with replacement (percentile interval). The
  difference of one resample depends only on how many resampled examples only
  ``a`` gets right and how many only ``b`` does, so each resample is drawn exactly
  as one multinomial draw of those counts (``O(num_resamples)``, not
  ``O(num_resamples · N)``).

  Args:
    correct_a: ``[N]`` booleans, probe a right on example i.
    correct_b: ``[N]`` booleans for probe b on the same examples, same order.
    level: coverage.
    num_resamples: bootstrap resamples.
    seed: seed of the resampling.

  Returns:
    ``(low, high)`` in percentage points.
  """
  a = np.asarray(correct_a, dtype=bool).reshape(-1)
  b = np.asarray(correct_b, dtype=bool).reshape(-1)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"correct_a and correct_b must be non-empty and of one length, "
                     f"got {a.shape} and {b.shape}.")
  n = a.size
  only_a, only_b = np.sum(a & ~b), np.sum(b & ~a)
  probs = np.array([only_a, only_b, n - only_a - only_b], dtype=np.float64) / n
  draws = np.random.default_rng(seed).multinomial(n, probs, size=num_resamples)
  diffs = 100.0 * (draws[:, 0] - draws[:, 1]) / n
  lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def unpaired_difference_interval(acc_a: float, acc_b: float, total: int, *,
                                 level: float = LEVEL) -> tuple[float, float]:
  """Normal interval of a difference of two independent accuracies (percent).

  ``d ± z √(p_a(1−p_a)/N + p_b(1−p_b)/N)``; for two probes scored on the same
  examples it ignores their agreement, so it is wider than the paired interval
  when they agree more than chance.
  """
  if total <= 0:
    raise ValueError(f"total must be > 0, got {total}.")
  pa, pb = acc_a / 100.0, acc_b / 100.0
  half = _z(level) * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / total)
  d = acc_a - acc_b
  return d - 100.0 * half, d + 100.0 * half


def probe_answer(results: Mapping, correct: Mapping[str, np.ndarray] | None = None, *,
                 level: float = LEVEL) -> dict:
  """The probes' accuracies, intervals and margins over random init.

  Args:
    results: ``results.json`` (``{name: {"linear_top1": ...}, ...}``).
    correct: ``{name: [N] bool}`` per-example correctness (``probe_correct.npz``), or
      None.
    level: coverage of the intervals.

  Returns:
    ``{"accuracy": {name: {"estimate", "interval"}}, "margins": {name: {"estimate",
    "interval"}}, "method": str, "num_test": int | None}``; intervals are None when
    no test-set size is known.
  """
  correct = {k: np.asarray(v, dtype=bool) for k, v in (correct or {}).items()}
  names = [k for k in ("trained", "target", "random_init", "raw_pixels")
           if isinstance(results.get(k), Mapping) and
           metrics_lib.is_number(results[k].get("linear_top1"))]
  sizes = {v.size for v in correct.values()}
  num_test = sizes.pop() if len(sizes) == 1 else None
  accuracy = {}
  for k in names:
    est = float(results[k]["linear_top1"])
    interval = None
    if num_test and k in correct:
      interval = accuracy_interval(int(correct[k].sum()), num_test, level=level)
    accuracy[k] = {"estimate": est, "interval": interval}
  margins, method = {}, ""
  if "random_init" in accuracy:
    base = accuracy["random_init"]["estimate"]
    for k in (n for n in names if n in ("trained", "target")):
      d = accuracy[k]["estimate"] - base
      if num_test and k in correct and "random_init" in correct:
        interval = paired_difference_interval(correct[k], correct["random_init"],
                                              level=level)
        method = (f"paired bootstrap over the {num_test:,} test examples "
                  "(10,000 resamples, percentile)")
      else:
        interval = None
        method = (f"no interval: no per-example predictions (`{metrics_lib.PROBE_CORRECT}`)"
                  " in the run directory; `sslit eval` writes them")
      margins[f"{_NAMES[k]} − random init"] = {"estimate": d, "interval": interval}
  return {"accuracy": accuracy, "margins": margins, "method": method,
          "num_test": num_test}


def summary(results: Mapping, workdir: str | pathlib.Path | None = None) -> str:
  """The probes' answer as plain text (what ``sslit train`` and ``sslit eval`` print).

  One line per network (linear top-1, its Wilson interval when ``workdir`` holds the
  per-example correctness, kNN), then the margin over random init with its interval.
  """
  correct = metrics_lib.read_probe_correct(workdir)[0] if workdir else None
  answer = probe_answer(results, correct)
  lines = []
  for name, v in answer["accuracy"].items():
    knn = "  ".join(f"{k}={x:.2f}" for k, x in results[name].items()
                    if k.startswith("knn") and isinstance(x, float))
    iv = f" {_interval(v['interval'])}" if v["interval"] else ""
    lines.append(f"  {name:12s} linear top-1 {v['estimate']:.2f} %{iv}  {knn}".rstrip())
  for label, m in answer["margins"].items():
    iv = f", {100 * LEVEL:g} % interval {_interval(m['interval'], True)}" \
        if m["interval"] else ""
    lines.append(f"  margin {label}: {_pm(m['estimate'])} points{iv}")
  return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Reading a run directory
# --------------------------------------------------------------------------- #


def _read_json(path: pathlib.Path, problems: list[str]) -> dict:
  if not path.exists():
    return {}
  try:
    data = json.loads(path.read_text() or "{}")
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    problems.append(f"{path.name}: unreadable ({e})")
    return {}
  if not isinstance(data, Mapping):
    problems.append(f"{path.name}: not a JSON object")
    return {}
  return dict(data)


def _fmt(value: Any, digits: int = 4) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    return f"{value:.{digits}g}"
  if isinstance(value, (list, tuple)):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
  return str(value).replace("|", "\\|").replace("\n", " ")


def _pm(value: float) -> str:
  return f"{value:+.2f}"


def _interval(iv, signed: bool = False) -> str:
  if iv is None:
    return "–"
  f = _pm if signed else (lambda v: f"{v:.2f}")
  return f"[{f(iv[0])}, {f(iv[1])}]"


def _outputs(series: Series, suffix: str) -> list[str]:
  """Monitored outputs (``monitor/<o>/<suffix>``) in the order rep, proj, others."""
  found = [k[len("monitor/"):-len(suffix) - 1] for k in series
           if k.startswith("monitor/") and k.endswith("/" + suffix)]
  found = [o for o in found if "/" not in o]
  return sorted(set(found), key=lambda o: (o != "rep", o != "proj", o))


def _last(series: Series, key: str) -> float | None:
  if key not in series:
    return None
  v = series[key][1]
  v = v[np.isfinite(v)]
  return float(v[-1]) if v.size else None


def _aligned(series: Series, keys: list[str]) -> tuple[np.ndarray, dict]:
  """Steps where every key has a finite value, and the values there."""
  common = None
  for k in keys:
    s, v = series[k]
    s = s[np.isfinite(v)]
    common = s if common is None else np.intersect1d(common, s)
  out = {}
  for k in keys:
    s, v = series[k]
    idx = {float(a): float(b) for a, b in zip(s, v)}   # the last record of a step
    out[k] = np.array([idx[float(c)] for c in common])
  return np.asarray(common, dtype=np.float64), out


def _monitor_examples(config: Mapping) -> int | None:
  n = config.get("monitor_examples")
  return int(n) if metrics_lib.is_number(n) and n else None


# --------------------------------------------------------------------------- #
# Figures of a run
# --------------------------------------------------------------------------- #


def _information_spec(series: Series, n: int | None, init: Mapping,
                      analysis: Mapping | None = None, n_a: int | None = None) -> dict:
  """Per output: the MI bounds over steps, ``log n``, entropies, random-init values.

  ``init``: the monitor's values of the random-init network (``monitor_init.json``),
  drawn at step 0; else a record at step 0 in the series counts as it.
  ``analysis``: ``analysis.json`` (``sslit analyze``, on ``analysis.num_examples``
  images), drawn as a point with its own ceiling.
  """
  analysis = analysis or {}
  specs = {}
  names = set(_outputs(series, "mi_pairwise_kl")) | {
      k.split("/")[1] for k in analysis if k.endswith("/mi_pairwise_kl")}
  for o in sorted(names, key=lambda o: (o != "rep", o != "proj", o)):
    p = f"monitor/{o}/"
    point = {}
    if metrics_lib.is_number(analysis.get(p + "mi_pairwise_kl")) and \
        metrics_lib.is_number(analysis.get(p + "mi_pairwise_bhattacharyya")):
      label = f"sslit analyze (n = {n_a})" if n_a else "sslit analyze"
      point = {label: {"step": analysis.get("step", 0),
                       "mi_lower": analysis[p + "mi_pairwise_bhattacharyya"],
                       "mi_upper": analysis[p + "mi_pairwise_kl"],
                       "ceiling": math.log(n_a) if n_a and n_a != n else None}}
    if p + "mi_pairwise_bhattacharyya" not in series or p + "mi_pairwise_kl" not in series:
      if point:
        specs[o] = {"steps": np.zeros(0), "mi_lower": np.zeros(0),
                    "mi_upper": np.zeros(0), "ceiling": None, "entropies": {},
                    "points": point}
      continue
    steps, v = _aligned(series, [p + "mi_pairwise_bhattacharyya", p + "mi_pairwise_kl"])
    spec = {"steps": steps, "mi_lower": v[p + "mi_pairwise_bhattacharyya"],
            "mi_upper": v[p + "mi_pairwise_kl"],
            "ceiling": math.log(n) if n else None,
            "entropies": {e: series[p + e] for e in _ENTROPIES if p + e in series}}
    if p + "mi_pairwise_kl" in init and p + "mi_pairwise_bhattacharyya" in init:
      spec["init"] = {"mi_lower": init[p + "mi_pairwise_bhattacharyya"],
                      "mi_upper": init[p + "mi_pairwise_kl"]}
      # Entropies as changes from the random-init network's (step 0).
      spec["entropies"] = {
          e: (np.concatenate([[0.0], c[0]]), np.concatenate([[init[p + e]], c[1]]))
          if p + e in init else c for e, c in spec["entropies"].items()}
      spec["entropy_reference"] = "random init"
    elif steps.size and steps[0] == 0:
      spec["init"] = {"mi_lower": spec["mi_lower"][0], "mi_upper": spec["mi_upper"][0]}
    spec["points"] = point
    specs[o] = spec
  return specs


def _bound_spec(series: Series) -> dict:
  specs = {}
  for o in _outputs(series, "bound/bound"):
    p = f"monitor/{o}/bound/"
    if p + "test_loss" not in series:
      continue
    terms = [t for t in _BOUND_TERMS if p + t in series]
    steps, v = _aligned(series, [p + "bound", p + "test_loss"] + [p + t for t in terms])
    specs[o] = {"steps": steps, "bound": v[p + "bound"], "test_loss": v[p + "test_loss"],
                "terms": {t: v[p + t] for t in terms}}
  return specs


def _vicreg_spec(series: Series) -> dict:
  """VICReg's terms and the log-determinants, per monitored output.

  The monitor's terms (on its held-out views) when recorded; else the training
  objective's own terms (on training batches) beside the projector's (or the
  representation's) log-determinants.
  """
  terms = ("invariance", "variance", "covariance")
  logdets = ("logdet_corr", "entropy_logdet")
  rows = {}
  for o in _outputs(series, "vicreg/invariance"):
    p = f"monitor/{o}/"
    row = {t: series[p + "vicreg/" + t] for t in terms if p + "vicreg/" + t in series}
    row.update({q: series[p + q] for q in logdets if p + q in series})
    rows[o] = row
  if not rows and all(t in series for t in terms):
    o = "proj" if any(f"monitor/proj/{q}" in series for q in logdets) else "rep"
    row = {t: series[t] for t in terms}
    row.update({q: series[f"monitor/{o}/{q}"] for q in logdets
                if f"monitor/{o}/{q}" in series})
    rows[o] = row
  return rows


def run_figures(run_dir: str | pathlib.Path) -> dict:
  """The figures of a run directory, as Matplotlib figures (nothing written).

  Returns:
    ``{file name: Figure}`` for the figures whose data the run recorded:
    ``fig_probes.png`` (results.json), ``fig_information.png`` (monitor MI bounds),
    ``fig_bound.png`` (monitor bound and test loss), ``fig_vicreg.png`` (VICReg's
    terms), ``fig_training.png`` (training loss and learning rate).
  """
  return _figures(_read_run(pathlib.Path(run_dir), []))


def _series(records) -> Series:
  """Per-metric ``(steps, values)`` of records, sorted by step (as ``read_series``)."""
  points: dict[str, list[tuple[float, float]]] = {}
  for record in records:
    for key, value in metrics_lib.flatten(record).items():
      if key != "step" and metrics_lib.is_number(value):
        points.setdefault(key, []).append((float(record["step"]), float(value)))
  return {k: tuple(np.asarray(sorted(p), dtype=np.float64).T) for k, p in points.items()}


def _is_analysis(record: Mapping, analysis: Mapping) -> bool:
  """Whether ``record`` is ``sslit analyze``'s (appended to metrics.jsonl)."""
  keys = [k for k, v in analysis.items() if k.startswith("monitor/") and
          metrics_lib.is_number(v)]
  return bool(keys) and record.get("step") == analysis.get("step") and all(
      record.get(k) == analysis[k] for k in keys)


def _read_run(run_dir: pathlib.Path, problems: list[str]) -> dict:
  config = _read_json(run_dir / "config.json", problems)
  results = _read_json(run_dir / "results.json", problems)
  records, metric_problems = metrics_lib.read_records(run_dir / "metrics.jsonl")
  problems += metric_problems
  # sslit analyze's record is on another subset (analysis.num_examples): kept apart.
  analysis = _read_json(run_dir / "analysis.json", problems)
  rest = [r for r in records if not _is_analysis(r, analysis)]
  correct, problem = metrics_lib.read_probe_correct(run_dir)
  if problem:
    problems.append(problem)
  # The monitors' subsets: the configured sizes, capped at the test split's size (the
  # probes' example count) when known.
  num_test = len(next(iter(correct.values()))) if correct else None
  n, n_a = _monitor_examples(config), (config.get("analysis") or {}).get("num_examples")
  n, n_a = ((min(int(v), num_test) if num_test else int(v))
            if metrics_lib.is_number(v) and v else None for v in (n, n_a))
  if not any(k.startswith("monitor/") for r in rest for k in r):
    rest, analysis, n = records, {}, n_a if analysis else n  # only analyze's record
  series = _series(rest)
  timings = _read_json(run_dir / "timings.json", problems)
  init = {k: v for k, v in _read_json(run_dir / "monitor_init.json", problems).items()
          if metrics_lib.is_number(v)}
  return dict(config=config, results=results, series=series, correct=correct,
              timings=timings, init=init, analysis=analysis,
              n=n, n_analysis=n_a)


def _figures(run: Mapping) -> dict:
  config, results, series = run["config"], run["results"], run["series"]
  out = {}
  answer = probe_answer(results, run["correct"])
  if answer["accuracy"]:
    out["fig_probes.png"] = figures.probe_comparison(
        answer["accuracy"], {k: v for k, v in answer["margins"].items()})
  info = _information_spec(series, run["n"], run["init"], run["analysis"],
                           run["n_analysis"])
  if info:
    out["fig_information.png"] = figures.information_plane(info)
  bound = _bound_spec(series)
  if bound:
    out["fig_bound.png"] = figures.bound_vs_loss(bound)
  vic = _vicreg_spec(series)
  if vic:
    out["fig_vicreg.png"] = figures.vicreg_terms(vic)
  training = {k: series[k] for k in ("loss", "lr") if k in series}
  if "loss" in training:
    out["fig_training.png"] = figures.small_multiples(
        {"training": training}, title="Did the training loss fall?",
        ylabels={"loss": f"{config.get('objective', 'training')} loss",
                 "lr": "learning rate"})
  return out


# --------------------------------------------------------------------------- #
# report.md
# --------------------------------------------------------------------------- #


def _answer_lines(results, answer, timings, config, series) -> list[str]:
  acc = answer["accuracy"]
  lines = []
  if acc:
    n = answer["num_test"]
    parts = [f"{_NAMES[k]} {v['estimate']:.2f} %" +
             (f" {_interval(v['interval'])}" if v["interval"] else "")
             for k, v in acc.items()]
    size = f" ({n:,} test images)" if n else ""
    lines.append(f"- **Linear-probe top-1{size}: " + ", ".join(parts) + "**")
  else:
    lines.append("- **No offline evaluation recorded** (no `results.json`): "
                 "`sslit eval --workdir <this directory>` writes it.")
  if answer["margins"]:
    label, m = next(iter(answer["margins"].items()))
    if m["interval"] is not None:
      lines.append(f"- **Margin {label}: {_pm(m['estimate'])} points, "
                   f"{100 * LEVEL:g} % interval {_interval(m['interval'], True)}** "
                   f"({answer['method']}).")
    else:
      lines.append(f"- **Margin {label}: {_pm(m['estimate'])} points** "
                   f"({answer['method']}).")
  elif acc:
    lines.append("- Margin over random init: not measured (`eval.baselines` has no "
                 "`\"random\"`).")
  else:
    lines.append("- Margin over random init: not measured.")
  lines.append("- " + _run_line(results, timings, config, series))
  return lines


def _run_line(results, timings, config, series) -> str:
  steps = results.get("step")
  if not metrics_lib.is_number(steps) and "loss" in series:
    steps = int(series["loss"][0][-1])
  what = f"{int(steps)} steps" if metrics_lib.is_number(steps) else "the run"
  if metrics_lib.is_number(config.get("batch_size")):
    what += f" of batch {int(config['batch_size'])}"
  phases = [f"{label} {timings[k]:.0f} s" for k, label in
            (("fit_s", "training"), ("eval_s", "probes")) if
            metrics_lib.is_number(timings.get(k))]
  if metrics_lib.is_number(timings.get("total_s")):
    took = f" in {timings['total_s']:.0f} s" + (f" ({', '.join(phases)})" if phases else "")
  elif phases:
    took = " in " + ", ".join(phases)
  else:
    took = " (time not recorded: no `timings.json`)"
  machine = timings.get("cpu")
  where = ""
  if machine:
    where = f" on {machine}"
    if timings.get("machine"):
      where += f" ({timings['machine']})"
    if timings.get("device"):
      where += f", {timings['device']}"
  return f"Run: {what}{took}{where}."


def _probe_table(results, answer) -> list[str]:
  acc = answer["accuracy"]
  if not acc:
    return []
  knn = sorted({m for k in acc for m in results[k] if m.startswith("knn")})
  margin_of = {"trained": "trained network − random init",
               "target": "target network − random init"}
  head = ["network", "linear top-1 (%)", f"{100 * LEVEL:g} % interval",
          "margin over random init (points)", "interval"] + knn
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for k, v in acc.items():
    m = answer["margins"].get(margin_of.get(k, ""))
    cells = [_NAMES[k], f"{v['estimate']:.2f}", _interval(v["interval"]),
             _pm(m["estimate"]) if m else "–",
             _interval(m["interval"], True) if m else "–"]
    cells += [_fmt(results[k].get(c, "–")) for c in knn]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _training_table(series, timings) -> list[str]:
  rows = []
  if "loss" in series:
    s, v = series["loss"]
    ok = np.isfinite(v)
    if ok.any():
      rows.append(("training loss (first → last logged)",
                   f"{_fmt(float(v[ok][0]))} → {_fmt(float(v[ok][-1]))} "
                   f"(steps {int(s[ok][0])} → {int(s[ok][-1])})"))
  for t in ("invariance", "variance", "covariance"):
    if _last(series, t) is not None:
      rows.append((f"{t} term (last)", _fmt(_last(series, t))))
  if "images_per_s" in series:
    v = series["images_per_s"][1]
    v = v[np.isfinite(v)]
    if v.size:
      rows.append(("images / s (median of logged)", f"{np.median(v):.0f}"))
  for k, label in (("compile_s", "compilation (s)"), ("fit_s", "training (s)"),
                   ("eval_s", "probes (s)")):
    if metrics_lib.is_number(timings.get(k)):
      rows.append((label, f"{timings[k]:.1f}"))
  if not rows:
    return []
  return ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


def _information_table(info) -> list[str]:
  if not info:
    return []
  lines = ["| output | I lower (nats): first → last | I upper (nats): first → last | "
           "ceiling log n | from → to |", "|---|---|---|---|---|"]
  for o, s in info.items():
    lo, hi, st = s["mi_lower"], s["mi_upper"], s["steps"]
    if not len(st):
      continue
    init = s.get("init")
    first = (init["mi_lower"], init["mi_upper"], "random init") if init else (
        lo[0], hi[0], f"step {int(st[0])}")
    ceiling = _fmt(s["ceiling"]) if s["ceiling"] is not None else "–"
    lines.append(f"| {o} | {first[0]:.3f} → {lo[-1]:.3f} | {first[1]:.3f} → "
                 f"{hi[-1]:.3f} | {ceiling} | {first[2]} → step {int(st[-1])} |")
  return lines


def _bound_table(bound) -> list[str]:
  if not bound:
    return []
  lines = ["| output | bound (last) | test loss (last) | bound / test loss | "
           "largest term (last) | bound ≥ test loss |", "|---|---|---|---|---|---|"]
  for o, s in bound.items():
    if not len(s["steps"]):
      continue
    b, l = s["bound"], s["test_loss"]
    holds = b >= l
    largest = max(s["terms"], key=lambda t: s["terms"][t][-1]) if s["terms"] else "–"
    ratio = f"{b[-1] / l[-1]:.1f}" if l[-1] > 0 else "–"
    lines.append(f"| {o} | {_fmt(float(b[-1]))} | {_fmt(float(l[-1]))} | {ratio} | "
                 f"{largest} | at {int(holds.sum())}/{len(holds)} steps |")
  return lines


_CONFIG_KEYS = ("objective", "dataset", "model/backbone", "num_steps", "batch_size",
                "learning_rate", "optimizer", "augment", "seed", "monitor_examples")


def _write_csv(path: pathlib.Path, series: Series) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["metric", "group", "records", "last_step", "last", "min", "max"])
    for key in sorted(series):
      steps, values = series[key]
      finite = values[np.isfinite(values)]
      w.writerow([key, classify(key), len(values), int(steps[-1]), repr(float(values[-1])),
                  repr(float(finite.min())) if finite.size else "",
                  repr(float(finite.max())) if finite.size else ""])


def write_report(run_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes ``report.md``, its figures and ``metrics.csv`` for a run directory.

  Reads ``config.json``, ``metrics.jsonl``, ``results.json``, ``probe_correct.npz``
  and ``timings.json`` (each optional) in ``run_dir`` and writes there ``report.md``
  (the answer in its first five lines, then a short table per section and the
  figures), the figures of :func:`run_figures` as PNGs, and ``metrics.csv`` (every
  metric's record count, last step, last value, minimum and maximum).

  Args:
    run_dir: the run directory.

  Returns:
    The path of ``report.md``.

  Raises:
    FileNotFoundError: if ``run_dir`` is not a directory.
  """
  run_dir = pathlib.Path(run_dir)
  if not run_dir.is_dir():
    raise FileNotFoundError(f"run_dir {str(run_dir)!r} is not a directory; pass the "
                            "directory that holds config.json and metrics.jsonl.")
  problems: list[str] = []
  run = _read_run(run_dir, problems)
  config, results, series, timings = (run["config"], run["results"], run["series"],
                                      run["timings"])
  answer = probe_answer(results, run["correct"])
  figs = _figures(run)
  for name, fig in figs.items():
    figures.save(fig, run_dir / name)
  if series:
    _write_csv(run_dir / "metrics.csv", series)

  name = config.get("name") or run_dir.name
  lines = [f"# Run report: {name}", ""]
  lines += _answer_lines(results, answer, timings, config, series)
  if figs:
    lines += ["", "Figures: " + ", ".join(
        f"[{fig.get_suptitle() or n}]({n})" for n, fig in figs.items()) + "."]
  sections = [
      ("Probes (linear probe on the test split)", _probe_table(results, answer) + (
          ["", f"Intervals: Wilson {100 * LEVEL:g} % for each accuracy over the "
           f"{answer['num_test']:,} test images; the margin's: {answer['method']}."]
          if answer["num_test"] else ["", f"Intervals: {answer['method']}."]
          if answer["margins"] else [])),
      ("Training", _training_table(series, timings)),
      ("Information (held-out subset)", _information_table(_information_spec(
          series, run["n"], run["init"], run["analysis"], run["n_analysis"]))),
      ("Generalization bound (held-out subset)", _bound_table(_bound_spec(series))),
  ]
  for title, body in sections:
    if body:
      lines += ["", f"## {title}", ""] + body
  if figs:
    lines += ["", "## Figures", ""]
    for n, fig in figs.items():
      lines += [f"![{fig.get_suptitle() or n}]({n})", ""]
  flat = metrics_lib.flatten(config)
  shown = [(k, flat[k]) for k in _CONFIG_KEYS if k in flat]
  lines += ["", "## Files", ""]
  if series:
    lines.append(f"- [metrics.csv](metrics.csv): every metric ({len(series)}), its last "
                 "value, minimum and maximum; [metrics.jsonl](metrics.jsonl): every record")
  else:
    lines.append("- No metrics recorded.")
  lines.append("- [config.json](config.json): the full configuration" +
               ("; in short: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown)
                if shown else "") if config else "- No `config.json`.")
  if results:
    lines.append("- [results.json](results.json): the offline evaluation")
  else:
    lines.append("- No `results.json` (final evaluation not recorded).")
  if problems:
    lines += ["", "## Input problems", ""] + [f"- {p}" for p in problems]
  path = run_dir / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return path
