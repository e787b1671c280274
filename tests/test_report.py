"""Tests for sslit.report: files written, numbers in the tables, robustness."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from scipy import stats

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
          "monitor/rep/mi_pairwise_kl": 3.0 + step / 100,
          "monitor/rep/mi_pairwise_bhattacharyya": 1.0 + step / 100,
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


def _correct(rng, n, acc):
  return rng.random(n) < acc


def _wilson(k, n):  # the oracle: scipy's Wilson interval, in percent
  ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
  return 100 * ci.low, 100 * ci.high


def test_report_leads_with_the_answer_and_moves_the_dump_to_csv(tmp_path, rng):
  loss = _write_run(tmp_path, rng)
  n = 2000
  trained = _correct(rng, n, 0.88)
  random_init = trained & (rng.random(n) < 0.95)     # paired: mostly the same examples
  raw = _correct(rng, n, 0.84)
  metrics.write_probe_correct(tmp_path, {"trained": trained, "random_init": random_init,
                                         "raw_pixels": raw})
  acc = {k: 100 * v.mean() for k, v in
         (("trained", trained), ("random_init", random_init), ("raw_pixels", raw))}
  (tmp_path / "results.json").write_text(json.dumps(
      {**{k: {"linear_top1": v} for k, v in acc.items()}, "eval_seconds": 12.5,
       "step": 45}))
  (tmp_path / "timings.json").write_text(json.dumps(
      {"fit_s": 70.2, "eval_s": 40.4, "total_s": 131.0, "cpu": "Some CPU",
       "machine": "x86_64", "device": "1 x cpu"}))
  (tmp_path / "monitor_init.json").write_text(json.dumps(
      {"step": 0, "monitor/rep/entropy_logdet": 0.5}))
  path = report.write_report(tmp_path)
  assert path == tmp_path / "report.md"
  text = path.read_text()
  head = text.splitlines()[:5]
  # The answer: three accuracies with their Wilson intervals, the margin with its
  # paired interval, the run's time and machine.
  answer = "\n".join(head)
  for k, v in (("trained network", trained), ("random init", random_init),
               ("raw pixels", raw)):
    lo, hi = _wilson(int(v.sum()), n)
    assert f"{k} {100 * v.mean():.2f} % [{lo:.2f}, {hi:.2f}]" in answer
  margin = acc["trained"] - acc["random_init"]
  assert f"Margin trained network − random init: {margin:+.2f} points, 95 % interval" \
      in answer and "paired bootstrap over the 2,000 test examples" in answer
  assert "45 steps of batch 256 in 131 s (training 70 s, probes 40 s) on Some CPU " \
      "(x86_64), 1 x cpu" in answer
  # No inline dump: the metrics are in metrics.csv (oracle: the input data).
  assert "| loss |" not in text and "lr" not in text.split("## Files")[0].split("|")
  rows = {r["metric"]: r for r in csv.DictReader((tmp_path / "metrics.csv").open())}
  last = max(loss)
  assert int(rows["loss"]["last_step"]) == last
  assert float(rows["loss"]["last"]) == loss[last]
  assert float(rows["loss"]["min"]) == min(loss.values())
  assert float(rows["probe/knn20_top1"]["max"]) == 50.0 + 40
  assert "[metrics.csv](metrics.csv)" in text
  # Short tables per section; the bound check at each of the 5 monitor steps.
  assert "at 5/5 steps" in text
  assert "| trained network | " in text
  # Problems are reported, not fatal.
  assert "not JSON" in text and "no numeric 'step'" in text
  for name in ("fig_probes.png", "fig_information.png", "fig_bound.png",
               "fig_vicreg.png", "fig_training.png"):
    f = tmp_path / name
    assert f.exists() and f.read_bytes()[:8] == PNG_MAGIC, name
    assert f"]({name})" in text
  assert not list(tmp_path.glob("plot_*.png"))


def test_report_figures_by_content(tmp_path, rng):
  _write_run(tmp_path, rng)
  (tmp_path / "config.json").write_text(json.dumps({"monitor_examples": 64}))
  figs = report.run_figures(tmp_path)
  bound = figs["fig_bound.png"]
  (ax,) = bound.axes
  assert ax.get_yscale() == "log"
  lines = {l.get_label(): l for l in ax.get_lines()}
  np.testing.assert_allclose(lines["test loss"].get_ydata(), 0.9)
  np.testing.assert_allclose(lines["bound"].get_ydata(), 3.0)
  assert [c.get_label() for c in ax.collections] == ["invariance term"]
  vic = figs["fig_vicreg.png"]
  # No monitored VICReg terms with the LogDet: the training objective's invariance.
  titles = [a.get_title() for a in vic.axes]
  assert titles[0] == "rep: invariance" and "rep: LogDet entropy" in titles


def test_analyze_record_is_a_point_with_its_own_ceiling(tmp_path, rng):
  _write_run(tmp_path, rng)
  (tmp_path / "config.json").write_text(json.dumps(
      {"monitor_examples": 64, "analysis": {"num_examples": 256}}))
  analysis = {"step": 40, "monitor/rep/mi_pairwise_kl": 5.0,
              "monitor/rep/mi_pairwise_bhattacharyya": 4.0}
  (tmp_path / "analysis.json").write_text(json.dumps(analysis))
  metrics.append(tmp_path, analysis, tensorboard=False)
  ax = report.run_figures(tmp_path)["fig_information.png"].axes[0]
  lines = {l.get_label(): l for l in ax.get_lines()}
  # The line is the training monitor's alone (n = 64), without analyze's record.
  np.testing.assert_allclose(lines["upper bound (KL)"].get_ydata(),
                             3.0 + np.arange(0, 50, 10) / 100)
  star = lines["sslit analyze (n = 256)"]
  assert list(star.get_xdata()) == [40, 40] and list(star.get_ydata()) == [4.0, 5.0]
  np.testing.assert_allclose(lines[f"ceiling log n = {math.log(64):.2f}"].get_ydata(),
                             math.log(64))
  np.testing.assert_allclose(
      lines[f"ceiling log n = {math.log(256):.2f} (sslit analyze (n = 256))"].get_ydata(),
      math.log(256))
  # A run analysed but never monitored: the analysis is the series, its n the ceiling.
  only = tmp_path / "only"
  only.mkdir()
  (only / "config.json").write_text(json.dumps({"analysis": {"num_examples": 256}}))
  (only / "analysis.json").write_text(json.dumps(analysis))
  metrics.append(only, analysis, tensorboard=False)
  ax = report.run_figures(only)["fig_information.png"].axes[0]
  lines = {l.get_label(): l for l in ax.get_lines()}
  assert list(lines["upper bound (KL)"].get_ydata()) == [5.0]
  assert f"ceiling log n = {math.log(256):.2f}" in lines


def test_report_single_network_states_what_is_missing(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps(
      {"trained": {"linear_top1": 88.25}, "step": 3}))
  head = report.write_report(tmp_path).read_text().splitlines()[:5]
  assert "trained network 88.25 %" in head[2]
  assert "not measured" in head[3] and "time not recorded" in head[4]


def test_wilson_interval_matches_scipy():
  for k, n in ((0, 10), (3, 10), (881, 1000), (10000, 10000), (8952, 10000)):
    np.testing.assert_allclose(report.accuracy_interval(k, n), _wilson(k, n),
                               atol=1e-9)
  with pytest.raises(ValueError, match="total"):
    report.accuracy_interval(3, 0)


def test_paired_interval_matches_a_resampling_bootstrap(rng):
  n = 400
  a = rng.random(n) < 0.8
  b = np.where(rng.random(n) < 0.9, a, ~a)
  # The oracle: resample example indices with replacement.
  idx = rng.integers(0, n, size=(20000, n))
  diffs = 100 * (a[idx].mean(1) - b[idx].mean(1))
  expect = np.quantile(diffs, [0.025, 0.975])
  got = report.paired_difference_interval(a, b, num_resamples=20000)
  np.testing.assert_allclose(got, expect, atol=0.3)  # Monte Carlo error of both
  # Pairing matters: narrower than the interval that ignores it.
  lo, hi = report.unpaired_difference_interval(100 * a.mean(), 100 * b.mean(), n)
  assert got[1] - got[0] < 0.6 * (hi - lo)
  assert report.paired_difference_interval(a, a) == (0.0, 0.0)
  with pytest.raises(ValueError, match="one length"):
    report.paired_difference_interval(a, b[:-1])


def test_probe_correct_round_trip_and_bad_files(tmp_path):
  c = {"trained": np.array([True, False, True]), "random_init": np.array([1, 0, 0])}
  metrics.write_probe_correct(tmp_path, c)
  back, problem = metrics.read_probe_correct(tmp_path)
  assert problem is None and set(back) == set(c)
  np.testing.assert_array_equal(back["random_init"], [True, False, False])
  with pytest.raises(ValueError, match="same examples"):
    metrics.write_probe_correct(tmp_path, {"a": [True], "b": [True, False]})
  (tmp_path / metrics.PROBE_CORRECT).write_bytes(b"not a zip")
  back, problem = metrics.read_probe_correct(tmp_path)
  assert back is None and "unreadable" in problem
  assert metrics.read_probe_correct(tmp_path / "nowhere") == (None, None)


def test_smoke_run_report_structure(tmp_path):
  """The smoke run end to end: the report's first lines, intervals, figures, no dump."""
  from sslit import config as config_lib
  from sslit import runs
  workdir = tmp_path / "run"
  runs.train(config_lib.load_config("smoke"), workdir, progress=False,
             log=lambda m: None)
  text = (workdir / "report.md").read_text()
  head = "\n".join(text.splitlines()[:5])
  results = json.loads((workdir / "results.json").read_text())
  correct, _ = metrics.read_probe_correct(workdir)
  n = len(correct["trained"])
  for name in ("trained", "random_init", "raw_pixels"):
    assert 100 * correct[name].mean() == pytest.approx(results[name]["linear_top1"],
                                                        abs=1e-3)
  trained = results["trained"]["linear_top1"]
  lo, hi = _wilson(int(correct["trained"].sum()), n)
  assert f"trained network {trained:.2f} % [{lo:.2f}, {hi:.2f}]" in head
  margin = trained - results["random_init"]["linear_top1"]
  assert re.search(re.escape(f"Margin trained network − random init: {margin:+.2f} "
                             "points, ") + r"95 % interval \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", head)
  timings = json.loads((workdir / "timings.json").read_text())
  assert "30 steps of batch 64 in " in head and timings["cpu"] in head
  # No inline dump of metric names; every metric is in metrics.csv.
  assert "monitor/rep/entropy_logdet" not in text and "linear_l2" not in text
  assert "monitor/rep/entropy_logdet" in (workdir / "metrics.csv").read_text()
  for name in ("fig_probes.png", "fig_information.png", "fig_vicreg.png",
               "fig_training.png"):
    assert (workdir / name).read_bytes()[:8] == PNG_MAGIC and f"]({name})" in text
  # The information figure: the log n ceiling and the random-init point at step 0.
  info = report.run_figures(workdir)["fig_information.png"]
  ax = info.axes[0]
  assert ax.get_title() == "rep: information about the example"
  labels = {l.get_label(): l for l in ax.get_lines()}
  ceiling = labels[f"ceiling log n = {math.log(128):.2f}"]
  np.testing.assert_allclose(ceiling.get_ydata(), math.log(128))
  init = json.loads((workdir / "monitor_init.json").read_text())
  marks = [l for l in ax.get_lines() if l.get_label() == "random init (step 0)"]
  assert sorted(float(l.get_ydata()[0]) for l in marks) == pytest.approx(sorted(
      [init["monitor/rep/mi_pairwise_bhattacharyya"], init["monitor/rep/mi_pairwise_kl"]]))
  assert all(a.get_xlabel() and a.get_ylabel() for a in info.axes)


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
