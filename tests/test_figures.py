"""Tests for sslit.figures: content of the figures (series, labels, scales), not pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sslit import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(ax) -> dict:
  """``{label: (x, y)}`` of the labelled lines of an axes."""
  return {l.get_label(): (np.asarray(l.get_xdata(), float), np.asarray(l.get_ydata(), float))
          for l in ax.get_lines()}


def _legend_labels(fig) -> list[str]:
  return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_information_plane_draws_bounds_ceiling_init_and_entropy_changes(tmp_path):
  steps = np.array([100.0, 200.0, 300.0])
  lower, upper = np.array([1.0, 1.5, 2.0]), np.array([3.0, 3.5, 4.0])
  h_kl = (np.array([0.0, 100.0, 200.0, 300.0]), np.array([1800.0, 1810.0, 1830.0, 1850.0]))
  n = 512
  fig = figures.information_plane({
      "rep": {"steps": steps, "mi_lower": lower, "mi_upper": upper,
              "ceiling": math.log(n), "init": {"mi_lower": 0.5, "mi_upper": 2.5},
              "entropies": {"entropy_pairwise_kl": h_kl},
              "entropy_reference": "random init"},
      "proj": {"steps": steps, "mi_lower": lower, "mi_upper": upper}})
  assert fig.get_suptitle() == "Did training add information?"
  axes = fig.axes
  assert len(axes) == 4    # two outputs x (MI bounds, entropies)
  mi = _lines(axes[0])
  np.testing.assert_array_equal(mi["lower bound (Bhattacharyya)"][1], lower)
  np.testing.assert_array_equal(mi["upper bound (KL)"][0], steps)
  ceiling = [l for label, l in mi.items() if label.startswith("ceiling log n")]
  assert len(ceiling) == 1 and np.allclose(ceiling[0][1], math.log(n))
  init = [l for l in axes[0].get_lines() if l.get_label() == "random init (step 0)"]
  assert sorted(float(l.get_ydata()[0]) for l in init) == [0.5, 2.5]
  assert all(float(l.get_xdata()[0]) == 0.0 for l in init)
  # Entropies as changes from their first value (never 1,800 nats on the MI axes).
  x, y = _lines(axes[1])["H upper (KL)"]
  np.testing.assert_allclose(y, h_kl[1] - h_kl[1][0])
  assert axes[1].get_ylabel() == "change since random init (nats)"
  assert "nats" in axes[0].get_ylabel()
  assert all(ax.get_xlabel() == "training step" for ax in axes)
  # No ceiling for an output without n; legend outside the axes.
  assert not any(l.startswith("ceiling") for l in _lines(axes[2]))
  assert all(ax.get_legend() is None for ax in axes)
  assert "ceiling log n = 6.24" in _legend_labels(fig)
  path = figures.save(fig, tmp_path / "info.png")
  assert path.read_bytes()[:8] == PNG_MAGIC


def test_bound_vs_loss_log_axis_stacked_terms_and_visible_test_loss():
  steps = np.array([0.0, 10.0, 20.0])
  terms = {"invariance_term": np.array([5.0, 4.0, 3.0]),
           "complexity_term": np.array([500.0, 520.0, 540.0]),
           "confidence_term": np.array([1.0, 1.0, 1.0])}
  bound = sum(terms.values())
  test_loss = np.array([0.9, 0.8, 0.7])
  fig = figures.bound_vs_loss({"rep": {"steps": steps, "bound": bound,
                                       "test_loss": test_loss, "terms": terms},
                               "proj": {"steps": steps, "bound": bound,
                                        "test_loss": test_loss, "terms": {}}})
  assert fig.get_suptitle() == "Does the bound track the test loss?"
  rep, proj = fig.axes
  assert rep.get_yscale() == "log" and proj.get_yscale() == "log"
  lines = _lines(rep)
  np.testing.assert_allclose(lines["test loss"][1], test_loss)
  np.testing.assert_allclose(lines["bound"][1], bound)
  # The test loss is inside the visible range of the log axis.
  assert rep.get_ylim()[0] <= test_loss.min()
  # One stacked area per term, labelled; none for the output without terms.
  stacked = [c.get_label() for c in rep.collections]
  assert stacked == ["invariance term", "complexity", "confidence"]
  assert len(proj.collections) == 0
  assert "log" in rep.get_ylabel() and rep.get_xlabel() == "training step"
  assert {"test loss", "bound", "complexity"} <= set(_legend_labels(fig))


def test_vicreg_terms_one_axes_per_quantity_in_order():
  s = np.arange(4.0)
  curves = {"entropy_logdet": (s, s + 1), "covariance": (s, 2 * s),
            "invariance": (s, s ** 2), "variance": (s, np.full(4, np.nan)),
            "logdet_corr": (s, -s)}
  fig = figures.vicreg_terms({"proj": curves})
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["proj: invariance", "proj: variance hinge", "proj: covariance",
                    "proj: log det R", "proj: LogDet entropy"]
  np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(), s ** 2)
  # All-NaN: an empty axes that says so, not a missing one.
  assert fig.axes[1].get_lines() == []
  assert [t.get_text() for t in fig.axes[1].texts] == ["not recorded"]
  assert all(ax.get_ylabel() for ax in fig.axes)
  # A quantity one row lacks keeps its column (one quantity per column).
  two = figures.vicreg_terms({"rep": curves, "proj": {"invariance": (s, s),
                                                      "entropy_logdet": (s, s)}})
  titles = [ax.get_title() for ax in two.axes]
  assert titles[5:] == ["proj: invariance", "proj: variance hinge", "proj: covariance",
                        "proj: log det R", "proj: LogDet entropy"]
  assert [t.get_text() for t in two.axes[8].texts] == ["not recorded"]


def test_interval_dots_seeds_interval_estimate_and_reference():
  rows = {"variant − base": {"values": [0.1, 0.4, -0.2], "estimate": 0.1,
                             "interval": (-0.3, 0.5)},
          "A/A": {"values": [0.05, -0.05], "estimate": 0.0, "interval": (-0.2, 0.2)}}
  fig = figures.interval_dots(rows, xlabel="difference (points)", title="Q?",
                              reference=0.0)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["A/A", "variant − base"]
  xs = [np.asarray(l.get_xdata(), float) for l in ax.get_lines()]
  assert any(np.array_equal(x, [0.1, 0.4, -0.2]) for x in xs)     # the seeds
  assert any(np.array_equal(x, [-0.3, 0.5]) for x in xs)          # the interval
  assert any(np.array_equal(x, [0.0, 0.0]) for x in xs)           # the reference
  assert ax.get_xlabel() == "difference (points)"


def test_probe_comparison_two_panels():
  acc = {"trained": {"estimate": 89.5, "interval": (88.9, 90.1)},
         "random_init": {"estimate": 86.8, "interval": (86.1, 87.4)}}
  fig = figures.probe_comparison(acc, {"trained − random init": {
      "estimate": 2.7, "interval": (2.3, 3.1)}})
  a, m = fig.axes
  assert fig.get_suptitle() == "How much better than random init?"
  assert [t.get_text() for t in a.get_yticklabels()] == ["random init", "trained"]
  assert "%" in a.get_xlabel() and "points" in m.get_xlabel()


@pytest.mark.parametrize("fn,arg", [
    (figures.information_plane, {}), (figures.bound_vs_loss, {}),
    (figures.vicreg_terms, {})])
def test_empty_input_is_a_clear_error(fn, arg):
  with pytest.raises(ValueError, match="empty"):
    fn(arg)


def test_mismatched_lengths_name_both():
  with pytest.raises(ValueError, match="same length"):
    figures.small_multiples({"r": {"loss": ([0, 1, 2], [1.0, 2.0])}}, title="t")
