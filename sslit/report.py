"""Run reports: ``report.md`` and PNG plots from a run directory.

A run directory holds ``config.json`` (the resolved configuration),
``metrics.jsonl`` (one JSON object per line: ``step`` plus metric names; lines may
carry different keys, e.g. training terms every N steps and evaluator results on
their own schedule) and optionally ``results.json`` (final numbers, e.g. the offline
linear probe and the baselines). :func:`write_report` turns them into ``report.md``
with a results table and plots of the loss terms, probe accuracies, information
quantities and bound terms over training. Missing files, empty files, malformed
lines, non-numeric and non-finite values are tolerated (and reported), never fatal.

Plots are drawn with Matplotlib's Agg canvas directly (no pyplot, no global backend
change), so reports can be written from any thread or process.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from sslit import metrics as metrics_lib

Series = dict[str, tuple[np.ndarray, np.ndarray]]

_ACCURACY = re.compile(r"(top1|top5|acc)", re.IGNORECASE)
_SYSTEM = re.compile(
    r"(^|/)(lr|learning_rate|grad_norm|gradient_norm|images_per_s|img_per_s|"
    r"throughput|step_time|time|wall_time|elapsed|elapsed_s|compile_s|"
    r"eval_seconds|epoch|examples_seen)$",
    re.IGNORECASE)
_MAX_PANELS = 24


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


def _fmt(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    return f"{value:.6g}"
  if isinstance(value, (list, tuple)):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
  return str(value).replace("|", "\\|").replace("\n", " ")


def classify(name: str) -> str:
  """The plot a metric goes to.

  "bound" (``.../bound/...``), "accuracy" (last name part has top1/top5/acc),
  "information" (``monitor/...``), "final" (other ``eval/...`` numbers of the offline
  evaluation: tables only, not plotted), "system" (learning rate, gradient norm,
  throughput, time) or "training" (loss terms and everything else).
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


def _information_panel(name: str) -> str:
  """Groups monitor keys that share units onto one axes."""
  parts = name.split("/")
  last = parts[-1]
  if "entropy" in last:
    return "/".join(parts[:-1] + ["entropies (nats)"])
  if len(parts) >= 3 and parts[-2] in ("vicreg", "cpa"):
    return "/".join(parts[:-1])
  return name


def _bound_panel(name: str) -> str:
  return name.split("bound/", 1)[0] + "bound"


def _plot(path: pathlib.Path, panels: Mapping[str, Sequence[str]], series: Series,
          *, title: str) -> bool:
  """Small multiples: one axes per panel, one line per metric. False if empty."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=import-outside-toplevel
  panels = {p: ks for p, ks in panels.items() if ks}
  if not panels:
    return False
  ncols = min(3, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows), dpi=90)
  FigureCanvasAgg(fig)
  fig.suptitle(title)
  for i, (panel, keys) in enumerate(panels.items()):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    for key in keys:
      steps, values = series[key]
      ok = np.isfinite(values)
      label = key[len(panel):].lstrip("/") if key.startswith(panel) and key != panel \
          else key.rsplit("/", 1)[-1]
      ax.plot(steps[ok], values[ok], marker="." if ok.sum() < 30 else None,
              label=label)
    ax.set_title(panel, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  return True


def _results_tables(results: Mapping) -> list[str]:
  """Side-by-side table for runs compared on the same metrics, then the rest.

  ``{"trained": {...}, "random_init": {...}, "raw_pixels": {...}, "step": 3}`` gives
  one row per metric with a column per representation, then ``step`` below.
  """
  groups = {k: metrics_lib.flatten(v) for k, v in results.items() if isinstance(v, Mapping)}
  rest = {k: v for k, v in results.items() if not isinstance(v, Mapping)}
  lines = []
  if len(groups) >= 2:
    metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
    lines += ["| metric | " + " | ".join(groups) + " |",
              "|---|" + "---|" * len(groups)]
    for m in metrics:
      cells = [_fmt(g[m]) if m in g else "–" for g in groups.values()]
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
  else:
    rest = dict(results)
  flat = metrics_lib.flatten(rest)
  if flat:
    lines += ["| result | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in flat.items()]
  return lines


def _bound_check(series: Series) -> list[str]:
  """"bound ≥ test_loss" at every common step, per monitored output."""
  lines = []
  for key in sorted(series):
    if not key.endswith("bound/bound"):
      continue
    loss_key = key[:-len("bound")] + "test_loss"
    if loss_key not in series:
      continue
    b_steps, b = series[key]
    l_steps, l = series[loss_key]
    common, bi, li = np.intersect1d(b_steps, l_steps, return_indices=True)
    holds = b[bi] >= l[li]
    lines.append(f"- `{key}` ≥ `{loss_key}` at {int(holds.sum())}/{len(common)} "
                 "recorded steps" + ("" if holds.all() else
                                     f" (fails at steps {common[~holds][:5].tolist()})"))
  return lines


def write_report(run_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes ``report.md`` and PNG plots for a run directory.

  Reads ``config.json``, ``metrics.jsonl`` and ``results.json`` (each optional) in
  ``run_dir`` and writes there:

  * ``report.md``: the final results (``results.json``, flattened), the last value,
    minimum and maximum of every logged metric, a check that the bound is above the
    measured test loss at every monitored step (when both are logged), the
    configuration, and links to the plots;
  * ``plot_training.png`` (loss terms and other training-step metrics, one axes
    each), ``plot_accuracy.png`` (probe accuracies on one axes),
    ``plot_information.png`` (monitor quantities: entropies of one output on one
    axes, VICReg terms, effective rank, ...), ``plot_bound.png`` (every bound term
    and the test loss per output) and ``plot_system.png`` (learning rate, gradient
    norm, throughput); a plot is written only when it has data.

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
  config = _read_json(run_dir / "config.json", problems)
  results = _read_json(run_dir / "results.json", problems)
  series, metric_problems = metrics_lib.read_series(run_dir / "metrics.jsonl")
  problems += metric_problems

  groups: dict[str, list[str]] = {}
  for key in sorted(series):
    groups.setdefault(classify(key), []).append(key)

  plots = []

  def add_plot(kind, panels, title):
    panels = dict(list(panels.items())[:_MAX_PANELS])
    name = f"plot_{kind}.png"
    if _plot(run_dir / name, panels, series, title=title):
      plots.append((title, name))

  add_plot("training", {k: [k] for k in groups.get("training", [])},
           "Loss terms and training statistics")
  add_plot("accuracy", {"accuracy": groups.get("accuracy", [])}, "Probe accuracy")
  info_panels: dict[str, list[str]] = {}
  for k in groups.get("information", []):
    info_panels.setdefault(_information_panel(k), []).append(k)
  add_plot("information", info_panels, "Information quantities (held-out subset)")
  bound_panels: dict[str, list[str]] = {}
  for k in groups.get("bound", []):
    bound_panels.setdefault(_bound_panel(k), []).append(k)
  add_plot("bound", bound_panels, "Generalization bound terms and test loss")
  add_plot("system", {k: [k] for k in groups.get("system", [])}, "Optimisation")

  name = config.get("name") or config.get("experiment") or run_dir.name
  lines = [f"# Run report: {name}", ""]
  lines += ["## Results", ""]
  flat_results = metrics_lib.flatten(results)
  if flat_results:
    lines += _results_tables(results)
  else:
    lines.append("No `results.json` (final evaluation not recorded).")
  lines += ["", "## Metrics over training", ""]
  if series:
    lines += ["| metric | last step | last | min | max |", "|---|---|---|---|---|"]
    for key in sorted(series):
      if results and classify(key) in ("final", "accuracy") and key.startswith("eval/"):
        continue   # the offline evaluation's numbers are in the results table
      steps, values = series[key]
      finite = values[np.isfinite(values)]
      lo = _fmt(float(finite.min())) if finite.size else "–"
      hi = _fmt(float(finite.max())) if finite.size else "–"
      lines.append(f"| {key} | {int(steps[-1])} | {_fmt(float(values[-1]))} | "
                   f"{lo} | {hi} |")
  else:
    lines.append("No metrics recorded.")
  check = _bound_check(series)
  if check:
    lines += ["", "## Does the bound hold?", ""] + check
  if plots:
    lines += ["", "## Plots", ""]
    for title, fname in plots:
      lines += [f"### {title}", "", f"![{title}]({fname})", ""]
  lines += ["", "## Configuration", ""]
  flat_config = metrics_lib.flatten(config)
  if flat_config:
    lines += ["| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(flat_config.items())]
  else:
    lines.append("No `config.json`.")
  if problems:
    lines += ["", "## Input problems", ""] + [f"- {p}" for p in problems]
  path = run_dir / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return path
