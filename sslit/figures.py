"""Figures that each answer one question, from plain arrays and dicts.

Every function takes NumPy-convertible arrays in plain dicts (no run directory, no
metric names), returns a Matplotlib ``Figure`` titled by the question it answers,
and draws on Matplotlib's Agg canvas directly (no pyplot, no global backend
change), so figures can be made from any thread or process and inspected in tests
through the returned objects. :func:`save` writes one as a PNG.

Conventions shared by all figures: one colour per quantity across figures
(:data:`COLORS`), legends outside the axes, units in the axis labels, sizes and
fonts readable at the width a README shows an image (about 900 pixels).

* :func:`information_plane` — "Did training add information?": lower and upper
  bounds on the information the representation keeps about the example over
  steps, the ``log n`` ceiling and the random-init value at step 0; entropies
  beside them as changes from their first value.
* :func:`bound_vs_loss` — "Does the bound track the test loss?": the bound and the
  test loss on a log axis, the bound's terms as a stacked area, per output.
* :func:`small_multiples` / :func:`vicreg_terms` — one small axes per quantity
  (VICReg's three terms beside log det R and the LogDet entropy).
* :func:`interval_dots` / :func:`probe_comparison` — estimates with their
  intervals (and per-seed values), e.g. the three probes and the margin over the
  network at random initialisation, or per-seed differences with an A/A arm.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Array = Any
Curve = tuple[Array, Array]   # (steps [t], values [t])

__all__ = ["COLORS", "LABELS", "color", "new_figure", "save", "information_plane",
           "bound_vs_loss", "small_multiples", "vicreg_terms", "interval_dots",
           "probe_comparison"]

# One colour per quantity, the same in every figure.
COLORS = {
    "mi_lower": "#1f77b4", "mi_upper": "#d62728", "ceiling": "#000000",
    "random_init": "#7f7f7f", "trained": "#1f77b4", "raw_pixels": "#ff7f0e",
    "target": "#2ca02c", "bound": "#d62728", "test_loss": "#000000",
    "invariance": "#9467bd", "variance": "#2ca02c", "covariance": "#ff7f0e",
    "invariance_term": "#9467bd", "unlabeled_term": "#8c564b",
    "labeled_term": "#e377c2", "complexity_term": "#bcbd22",
    "confidence_term": "#17becf", "logdet_corr": "#1f77b4",
    "entropy_logdet": "#17becf", "entropy_gaussian": "#8c564b",
    "entropy_pairwise_kl": "#d62728", "entropy_pairwise_bhattacharyya": "#1f77b4",
    "entropy_conditional": "#7f7f7f", "effective_rank": "#2ca02c",
    "loss": "#000000", "lr": "#7f7f7f",
}
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

# Readable names (with units) of the quantities the run reports plot.
LABELS = {
    "mi_lower": "lower bound (Bhattacharyya)", "mi_upper": "upper bound (KL)",
    "random_init": "random init", "trained": "trained", "raw_pixels": "raw pixels",
    "target": "target network",
    "bound": "bound", "test_loss": "test loss",
    "invariance_term": "invariance term", "unlabeled_term": "unlabeled residual",
    "labeled_term": "labeled residual", "complexity_term": "complexity",
    "confidence_term": "confidence",
    "invariance": "invariance (feature units²)",
    "variance": "variance hinge (feature units)",
    "covariance": "covariance (feature units⁴)",
    "logdet_corr": "log det R (nats)", "entropy_logdet": "LogDet entropy (nats)",
    "entropy_gaussian": "Gaussian entropy", "entropy_pairwise_kl": "H upper (KL)",
    "entropy_pairwise_bhattacharyya": "H lower (Bhattacharyya)",
    "entropy_conditional": "H(Z | example)", "effective_rank": "effective rank",
    "loss": "training loss", "lr": "learning rate",
}

_FONT = 10


def color(name: str, index: int = 0) -> str:
  """The colour of quantity ``name`` (:data:`COLORS`), else the ``index``-th default."""
  return COLORS.get(name, _CYCLE[index % len(_CYCLE)])


def _label(name: str) -> str:
  return LABELS.get(name, name)


def new_figure(nrows: int, ncols: int, *, panel: tuple[float, float] = (3.4, 2.5),
               title: str | None = None) -> tuple[Figure, np.ndarray]:
  """A constrained-layout figure of ``nrows x ncols`` axes on the Agg canvas.

  Args:
    nrows: rows of axes.
    ncols: columns of axes.
    panel: ``(width, height)`` of one axes in inches.
    title: the figure's title (the question it answers).

  Returns:
    ``(figure, axes [nrows, ncols])``.
  """
  if nrows < 1 or ncols < 1:
    raise ValueError(f"nrows and ncols must be >= 1, got {nrows} and {ncols}.")
  # 2.6 inches beside the panels hold the legend outside them (constrained layout
  # gives up, and the legend covers the titles, when it does not fit).
  fig = Figure(figsize=(panel[0] * ncols + 2.6, panel[1] * nrows + 0.6),
               layout="constrained")
  FigureCanvasAgg(fig)
  axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
  if title:
    fig.suptitle(title, fontsize=_FONT + 3, fontweight="bold")
  for ax in axes.flat:
    ax.tick_params(labelsize=_FONT - 1)
    ax.grid(alpha=0.3)
  return fig, axes


def save(fig: Figure, path: str | pathlib.Path, *, dpi: int = 100) -> pathlib.Path:
  """Writes ``fig`` as a PNG at ``path``; returns the path."""
  path = pathlib.Path(path)
  fig.savefig(path, dpi=dpi)
  return path


def _curve(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` as float arrays, non-finite values dropped."""
  steps = np.asarray(curve[0], dtype=np.float64).reshape(-1)
  values = np.asarray(curve[1], dtype=np.float64).reshape(-1)
  if steps.shape != values.shape:
    raise ValueError(f"steps and values must have the same length, got {steps.shape} "
                     f"and {values.shape}.")
  ok = np.isfinite(values)
  return steps[ok], values[ok]


def _line(ax, curve: Curve, name: str, *, index: int = 0, label: str | None = None,
          **kw):
  steps, values = _curve(curve)
  kw.setdefault("marker", "o" if len(steps) < 30 else None)
  kw.setdefault("markersize", 4)
  return ax.plot(steps, values, color=color(name, index), label=label or _label(name),
                 **kw)


def _legend_outside(fig: Figure, axes: Sequence) -> None:
  """One legend for the figure, right of the axes (never over the data)."""
  handles, labels = {}, []
  for ax in axes:
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in handles and not l.startswith("_"):
        handles[l] = h
        labels.append(l)
  if labels:
    fig.legend([handles[l] for l in labels], labels, loc="outside right center",
               fontsize=_FONT - 1, frameon=False)


def information_plane(outputs: Mapping[str, Mapping[str, Any]], *,
                      title: str = "Did training add information?") -> Figure:
  """Bounds on the information kept about the example, over steps, per output.

  Left column: the lower and upper bounds on ``I(Z; example)`` (nats) over steps,
  the band between them shaded, the ceiling ``log n`` of both bounds (``n``
  examples) as a dashed line and the random-init value at step 0 as grey markers;
  higher is more information kept. Right column (if given): entropy estimates as
  their change from their first recorded value, so estimates of very different
  size (thousands of nats and tens) share an axes without hiding each other.

  Args:
    outputs: ``{output: spec}``, one row per output, where ``spec`` has
      ``"steps"`` ``[t]``, ``"mi_lower"`` ``[t]``, ``"mi_upper"`` ``[t]`` (nats),
      and optionally ``"ceiling"`` (float, ``log n``), ``"init"`` (``{"mi_lower":
      v, "mi_upper": v}`` at step 0, the network at random initialisation),
      ``"entropies"`` (``{name: (steps [s], values [s])}``, nats), and
      ``"entropy_reference"`` (what their first value is, for the axis label;
      default ``"first step"``).
      ``"points"``: ``{label: {"step", "mi_lower", "mi_upper", "ceiling"}}`` single
      measurements on another subset (e.g. ``sslit analyze``'s, of another ``n``),
      drawn as stars with their own ceiling (optional).
    title: the figure's title.

  Returns:
    The figure; the ceiling line is labelled ``"ceiling log n = ..."``.
  """
  if not outputs:
    raise ValueError("outputs is empty: pass {output: {'steps', 'mi_lower', "
                     "'mi_upper'}} for at least one output.")
  with_entropies = any(spec.get("entropies") for spec in outputs.values())
  fig, axes = new_figure(len(outputs), 2 if with_entropies else 1,
                         panel=(4.2, 2.8), title=title)
  for row, (name, spec) in enumerate(outputs.items()):
    ax = axes[row, 0]
    steps = spec.get("steps", ())
    lo = _curve((steps, spec.get("mi_lower", ())))
    hi = _curve((steps, spec.get("mi_upper", ())))
    _line(ax, lo, "mi_lower")
    _line(ax, hi, "mi_upper")
    if len(lo[0]) == len(hi[0]) and np.array_equal(lo[0], hi[0]):
      ax.fill_between(lo[0], lo[1], hi[1], color=color("mi_lower"), alpha=0.12)
    ceiling = spec.get("ceiling")
    if ceiling is not None:
      ax.axhline(float(ceiling), color=color("ceiling"), linestyle="--", linewidth=1.2,
                 label=f"ceiling log n = {float(ceiling):.2f}")
    init = spec.get("init") or {}
    for key in ("mi_lower", "mi_upper"):
      if key in init and np.isfinite(init[key]):
        ax.plot([0.0], [float(init[key])], linestyle="none", marker="D", markersize=7,
                color=color("random_init"),
                label="random init (step 0)")
    for i, (label, point) in enumerate((spec.get("points") or {}).items()):
      c = _CYCLE[(i + 4) % len(_CYCLE)]
      ax.plot([float(point["step"])] * 2, [point["mi_lower"], point["mi_upper"]],
              linestyle="none", marker="*", markersize=11, color=c, label=label)
      if point.get("ceiling") is not None:
        ax.axhline(float(point["ceiling"]), color=c, linestyle=":", linewidth=1.2,
                   label=f"ceiling log n = {float(point['ceiling']):.2f} ({label})")
    # Bounds that sit at the ceiling differ from it by float rounding only: keep a
    # visible span (5 % of log n) and no offset label, so the ceiling reads right.
    y0, y1 = ax.get_ylim()
    span = 0.05 * max(abs(float(ceiling)) if ceiling is not None else 1.0, 1e-3)
    if y1 - y0 < span:
      mid = (y0 + y1) / 2
      ax.set_ylim(mid - span, mid + span)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(f"{name}: information about the example", fontsize=_FONT + 1)
    ax.set_xlabel("training step", fontsize=_FONT)
    ax.set_ylabel("I(Z; example) (nats)\nhigher = more kept", fontsize=_FONT)
    if with_entropies:
      ax2 = axes[row, 1]
      for i, (ename, curve) in enumerate((spec.get("entropies") or {}).items()):
        s, v = _curve(curve)
        if len(v):
          _line(ax2, (s, v - v[0]), ename, index=i)
      ax2.axhline(0.0, color="#000000", linewidth=0.8)
      ax2.set_title(f"{name}: entropy estimates", fontsize=_FONT + 1)
      ax2.set_xlabel("training step", fontsize=_FONT)
      ax2.set_ylabel(f"change since {spec.get('entropy_reference', 'first step')} "
                     "(nats)", fontsize=_FONT)
  _legend_outside(fig, axes.flat)
  return fig


def bound_vs_loss(outputs: Mapping[str, Mapping[str, Any]], *,
                  title: str = "Does the bound track the test loss?") -> Figure:
  """The generalization bound, its terms stacked, and the test loss on a log axis.

  One axes per output: the bound's terms as a stacked area (which term dominates),
  the bound as a line on top, and the measured test loss as a thick black line, all
  in the loss's units on a log axis so that a test loss tens of times smaller than
  the bound stays visible.

  Args:
    outputs: ``{output: spec}`` with ``"steps"`` ``[t]``, ``"bound"`` ``[t]``,
      ``"test_loss"`` ``[t]`` and ``"terms"`` (``{term: [t]}``, non-negative, summing
      to the bound; may be empty).
    title: the figure's title.

  Returns:
    The figure (each axes on a log y scale).
  """
  if not outputs:
    raise ValueError("outputs is empty: pass {output: {'steps', 'bound', "
                     "'test_loss', 'terms'}} for at least one output.")
  fig, axes = new_figure(1, len(outputs), panel=(4.0, 3.0), title=title)
  for col, (name, spec) in enumerate(outputs.items()):
    ax = axes[0, col]
    steps = np.asarray(spec["steps"], dtype=np.float64)
    terms = {k: np.asarray(v, dtype=np.float64) for k, v in
             (spec.get("terms") or {}).items()}
    finite = [k for k, v in terms.items() if v.shape == steps.shape and
              np.all(np.isfinite(v))]
    if finite:
      stack = np.clip(np.stack([terms[k] for k in finite]), 0.0, None)
      ax.stackplot(steps, stack, colors=[color(k, i) for i, k in enumerate(finite)],
                   labels=[_label(k) for k in finite], alpha=0.55, linewidth=0)
    _line(ax, (steps, spec["bound"]), "bound", linewidth=1.5)
    _line(ax, (steps, spec["test_loss"]), "test_loss", linewidth=2.5, markersize=5)
    ax.set_yscale("log")
    # The axis starts below the test loss (not at a vanishing term), so the test loss
    # and the terms that make up the bound fill the height.
    loss = np.asarray(spec["test_loss"], np.float64)
    loss = loss[np.isfinite(loss) & (loss > 0)]
    if loss.size:
      ax.set_ylim(bottom=float(loss.min()) / 3)
    ax.set_title(name, fontsize=_FONT + 1)
    ax.set_xlabel("training step", fontsize=_FONT)
    ax.set_ylabel("loss (label units, log scale)", fontsize=_FONT)
  _legend_outside(fig, axes.flat)
  return fig


def small_multiples(rows: Mapping[str, Mapping[str, Curve]], *, title: str,
                    xlabel: str = "training step",
                    ylabels: Mapping[str, str] | None = None) -> Figure:
  """One small axes per quantity (its own scale), one row per group.

  Args:
    rows: ``{row: {quantity: (steps [t], values [t])}}``; a quantity with no finite
      value leaves its axes empty with a note.
    title: the figure's title.
    xlabel: the x label of every axes.
    ylabels: y label (with units) per quantity (default :data:`LABELS`).

  Returns:
    The figure; axes titles are ``"<row>: <quantity label>"``.
  """
  if not rows or not any(rows.values()):
    raise ValueError("rows is empty: pass {row: {quantity: (steps, values)}}.")
  ncols = max(len(r) for r in rows.values())
  fig, axes = new_figure(len(rows), ncols, panel=(2.6, 2.1), title=title)
  ylabels = dict(ylabels or {})
  for r, (row, curves) in enumerate(rows.items()):
    for c in range(ncols):
      ax = axes[r, c]
      if c >= len(curves):
        ax.set_axis_off()
        continue
      name, curve = list(curves.items())[c]
      steps, values = _curve(curve)
      if not len(values):
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                transform=ax.transAxes, fontsize=_FONT)
      else:
        _line(ax, (steps, values), name, index=c)
      ax.set_title(f"{row}: {_label(name).split(' (')[0]}", fontsize=_FONT)
      ax.set_xlabel(xlabel, fontsize=_FONT - 1)
      ax.set_ylabel(ylabels.get(name, _label(name)), fontsize=_FONT - 1)
  return fig


def vicreg_terms(rows: Mapping[str, Mapping[str, Curve]], *,
                 title: str = "What did VICReg's terms do?") -> Figure:
  """VICReg's invariance, variance and covariance beside log det R and LogDet entropy.

  Args:
    rows: ``{output: {"invariance": (steps, values), "variance": ..., "covariance":
      ..., "logdet_corr": ..., "entropy_logdet": ...}}`` (any subset; columns in
      this order, a quantity another row has but this one lacks left empty with a
      note, so each column is one quantity).
    title: the figure's title.

  Returns:
    The :func:`small_multiples` figure, one axes per quantity.
  """
  order = ("invariance", "variance", "covariance", "logdet_corr", "entropy_logdet")
  present = [k for k in order if any(k in curves for curves in rows.values())]
  empty = (np.zeros(0), np.zeros(0))   # a quantity one row lacks: "not recorded"
  ordered = {row: {k: curves.get(k, empty) for k in present}
             for row, curves in rows.items() if any(k in curves for k in present)}
  return small_multiples(ordered, title=title)


def interval_dots(rows: Mapping[str, Mapping[str, Any]], *, xlabel: str,
                  title: str, reference: float | None = None, ax=None,
                  fig: Figure | None = None) -> Figure:
  """Estimates with their intervals, one row each, optionally with per-seed dots.

  For the probes of one run (accuracy and Wilson interval) and for experiments'
  per-seed differences (each seed a small dot, the mean a large one, its interval a
  bar, an A/A arm as one more row, ``reference=0`` as a vertical line).

  Args:
    rows: ``{label: spec}`` top to bottom; ``spec`` has ``"estimate"`` (float) and
      optionally ``"interval"`` (``(low, high)``), ``"values"`` (per-seed values
      ``[s]``) and ``"color"`` (default: :func:`color` of the label).
    xlabel: x label with units.
    title: the axes' title (or the figure's when a new figure is made).
    reference: x of a vertical reference line (e.g. 0 for a difference).
    ax: draw into this axes instead of a new figure.
    fig: the figure of ``ax``.

  Returns:
    The figure.
  """
  if not rows:
    raise ValueError("rows is empty: pass {label: {'estimate': ..., 'interval': ...}}.")
  if ax is None:
    fig, axes = new_figure(1, 1, panel=(5.0, 0.55 * len(rows) + 1.0), title=title)
    ax = axes[0, 0]
  else:
    ax.set_title(title, fontsize=_FONT + 1)
  labels = list(rows)
  for i, label in enumerate(labels):
    spec = rows[label]
    y = len(labels) - 1 - i
    c = spec.get("color") or color(label, i)
    values = spec.get("values")
    if values is not None and len(values):
      v = np.asarray(values, dtype=np.float64)
      jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
      ax.plot(v, y + jitter, linestyle="none", marker="o", markersize=4, alpha=0.6,
              color=c, label="_seeds")
    interval = spec.get("interval")
    if interval is not None and all(np.isfinite(interval)):
      ax.plot([float(interval[0]), float(interval[1])], [y, y], color=c, linewidth=3,
              solid_capstyle="butt", label="_interval")
    ax.plot([float(spec["estimate"])], [y], linestyle="none", marker="D", markersize=8,
            color=c, label="_estimate")
  if reference is not None:
    ax.axvline(float(reference), color="#000000", linewidth=1, linestyle="--")
  ax.set_yticks(range(len(labels)), labels[::-1], fontsize=_FONT)
  ax.set_ylim(-0.7, len(labels) - 0.3)
  ax.set_xlabel(xlabel, fontsize=_FONT)
  ax.grid(alpha=0.3, axis="x")
  ax.grid(False, axis="y")
  return fig if fig is not None else ax.figure


def probe_comparison(accuracies: Mapping[str, Mapping[str, Any]],
                     margins: Mapping[str, Mapping[str, Any]] | None = None, *,
                     title: str = "How much better than random init?",
                     level: float = 0.95) -> Figure:
  """The probes' accuracies with their intervals, and the margins over a baseline.

  Args:
    accuracies: ``{name: {"estimate": top-1 %, "interval": (low, high)}}`` (e.g.
      trained, random_init, raw_pixels).
    margins: ``{label: {"estimate": points, "interval": (low, high)}}`` (e.g. the
      trained network minus random init), drawn on a second axes with a zero line.
    title: the figure's title.
    level: the intervals' level, for the axis labels.

  Returns:
    The figure.
  """
  fig, axes = new_figure(1, 2 if margins else 1,
                         panel=(4.2, 0.55 * max(len(accuracies), 2) + 1.2), title=title)
  pct = f"{100 * level:g} %"
  interval_dots({_label(k): {**v, "color": v.get("color") or color(k, i)}
                 for i, (k, v) in enumerate(accuracies.items())},
                xlabel=f"linear-probe top-1 (%), {pct} interval", title="accuracy",
                ax=axes[0, 0], fig=fig)
  if margins:
    interval_dots(margins, xlabel=f"difference (points), {pct} interval",
                  title="margin", reference=0.0, ax=axes[0, 1], fig=fig)
  return fig
