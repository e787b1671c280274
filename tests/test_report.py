"""Tests for sslit.report: files written, numbers in the tables, robustness."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sslit import metrics, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(tmp_path, rng):
  (tmp_path / "config.json").write_text(json.dumps(
      {"objective": "vicreg", "optimizer": {"name": "adamw", "lr": 1e-3},
       "batch_size": 256}))
  lines, loss = [], {}
  for step in range(0, 50, 5):
    rec = {"step": step, "loss": float(30 - step * 0.3 + rng.normal()),
           "invariance": 0.5 / (1 + step), "lr": 1e-3 * step / 50,
           "probe_acc": 0.1 + step / 100}
    loss[step] = rec["loss"]
    lines.append(json.dumps(rec))
    if step % 10 == 0:   # evaluators on their own schedule, other keys
      lines.append(json.dumps({
          "step": step, "probe/knn20_top1": 50.0 + step,
          "monitor/rep/effective_rank": 3.0 + step / 10,
          "monitor/rep/entropy_logdet": 1.0 + step / 50,
          "monitor/rep/entropy_pairwise_kl": 2.0,
          "monitor/rep/vicreg/invariance": 0.2,
          "monitor/rep/bound/bound": 3.0, "monitor/rep/bound/test_loss": 0.9,
          "monitor/rep/bound/invariance_term": 0.4,
          "monitor/rep/entropy_gaussian": -math.inf if step == 0 else 1.5}))
  lines.insert(3, "")               # a blank line
  lines.insert(5, "{not json")      # a corrupt line (e.g. a killed writer)
  lines.append(json.dumps({"loss": 1.0}))   # no step
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  (tmp_path / "results.json").write_text(json.dumps(
      {"trained": {"linear_top1": 88.25, "knn20_top1": 85.5},
       "raw_pixels": {"linear_top1": 84.1}, "eval_seconds": 12.5}))
  return loss


def test_report_writes_markdown_and_plots(tmp_path, rng):
  loss = _write_run(tmp_path, rng)
  path = report.write_report(tmp_path)
  assert path == tmp_path / "report.md"
  text = path.read_text()
  # Results: representations side by side, metrics missing from one shown as "–".
  assert "| metric | trained | raw_pixels |" in text
  assert "| linear_top1 | 88.25 | 84.1 |" in text
  assert "| knn20_top1 | 85.5 | – |" in text
  assert "| eval_seconds | 12.5 |" in text
  # Metrics table: last step and last value of the loss (oracle: the input data).
  last = max(loss)
  assert f"| loss | {last} | {loss[last]:.6g} |" in text
  assert f"| probe/knn20_top1 | 40 | {50.0 + 40:.6g} |" in text
  # The bound check compares bound and test loss at each of the 5 monitor steps.
  assert "at 5/5 recorded steps" in text
  # Problems are reported, not fatal.
  assert "not JSON" in text and "no numeric 'step'" in text
  assert "| optimizer/name | adamw |" in text
  for name in ("plot_training.png", "plot_accuracy.png", "plot_information.png",
               "plot_bound.png", "plot_system.png"):
    f = tmp_path / name
    assert f.exists() and f.read_bytes()[:8] == PNG_MAGIC, name
    assert f"]({name})" in text


def test_report_single_result_group_is_flattened(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps(
      {"trained": {"linear_top1": 88.25}, "step": 3}))
  text = report.write_report(tmp_path).read_text()
  assert "| trained/linear_top1 | 88.25 |" in text and "| step | 3 |" in text


def test_read_metrics_merges_lines_with_different_keys(tmp_path, rng):
  _write_run(tmp_path, rng)
  series, problems = metrics.read_series(tmp_path / "metrics.jsonl")
  steps, values = series["monitor/rep/effective_rank"]
  np.testing.assert_array_equal(steps, [0, 10, 20, 30, 40])
  np.testing.assert_allclose(values, 3.0 + steps / 10)
  assert len(series["loss"][0]) == 10
  assert len(problems) == 2


@pytest.mark.parametrize("metrics", [None, "", "\n\n"])
def test_report_with_missing_or_empty_inputs(tmp_path, metrics):
  if metrics is not None:
    (tmp_path / "metrics.jsonl").write_text(metrics)
  text = report.write_report(tmp_path).read_text()
  assert "No metrics recorded." in text
  assert "No `results.json`" in text and "No `config.json`." in text
  assert not list(tmp_path.glob("*.png"))


def test_report_classifies_metrics():
  assert report.classify("probe/knn20_top1") == "accuracy"
  assert report.classify("probe_acc") == "accuracy"
  assert report.classify("monitor/rep/bound/bound") == "bound"
  assert report.classify("monitor/proj/entropy_logdet") == "information"
  assert report.classify("lr") == "system"
  assert report.classify("compile_s") == "system"
  assert report.classify("eval/trained/linear_l2") == "final"
  assert report.classify("eval/trained/linear_top1") == "accuracy"
  assert report.classify("vicreg/covariance") == "training"


def test_report_bad_run_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    report.write_report(tmp_path / "missing")


def test_phase_clock_writes_each_lap_the_total_and_the_cpu(tmp_path, monkeypatch):
  ticks = iter([10.0, 11.5, 14.0, 20.0])  # start, two laps, write
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(ticks))
  clock = metrics.PhaseClock()
  clock.lap("data_s")
  clock.lap("fit_s")
  clock.write(str(tmp_path / "timings.json"), steps=7)
  record = json.loads((tmp_path / "timings.json").read_text())
  assert {k: record[k] for k in ("data_s", "fit_s", "total_s", "steps_trained")} == {
      "data_s": 1.5, "fit_s": 2.5, "total_s": 10.0, "steps_trained": 7}
  assert record["cpu"] == metrics.cpu_model() and record["cpu"]
