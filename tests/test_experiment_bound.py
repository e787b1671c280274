"""experiments/bound.py (SPEC §7.4) at smoke scale, checked against oracles.

One tiny run (VICReg, 6 steps, monitor every 2) is shared by the module. Oracles
that do not share the experiment's code: the metrics read back with ``json`` (the
bound is the sum of its terms, the flags are the comparisons of the numbers), and
the measured test loss recomputed from the saved checkpoint with a float64 NumPy
least-squares head.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import bound as bound_exp
from tests.experiment_utils import (assert_png, monitor_records, path_mtimes,
                                    run_experiment)

TERMS = ("invariance_term", "unlabeled_term", "labeled_term", "complexity_term",
         "confidence_term")
ARGS = ["--scale", "smoke", "--methods", "vicreg", "--steps", "6",
        "--monitor-every", "2", "--monitor-examples", "300"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("bound")
  return workdir, run_experiment(bound_exp, ARGS, workdir)


def _monitor_records(run_dir):
  return monitor_records(run_dir, "monitor/rep/bound/bound")


def test_series_are_the_metrics_and_the_bound_is_the_sum_of_its_terms(experiment):
  workdir, results = experiment
  assert results["scale"] == "smoke" and results["methods"] == ["vicreg"]
  assert results["outputs"] == ["rep", "proj"]
  records = _monitor_records(workdir / "vicreg-seed0")
  assert sorted(records) == [2, 4, 6]
  for o in ("rep", "proj"):
    s = results["results"]["vicreg"][o]["seeds"][0]["series"]
    assert s["steps"] == [2, 4, 6]
    for i, step in enumerate(s["steps"]):
      r = records[step]
      for key in ("bound", "test_loss") + TERMS:
        assert s[key][i] == pytest.approx(r[f"monitor/{o}/bound/{key}"], rel=1e-12)
      total = sum(r[f"monitor/{o}/bound/{t}"] for t in TERMS)
      assert s["bound"][i] == pytest.approx(total, rel=1e-5)
      assert all(s[t][i] >= 0 for t in TERMS)
      assert s["holds"][i] == (s["bound"][i] >= s["test_loss"][i])


def test_flags_are_the_comparisons_of_the_reported_numbers(experiment):
  _, results = experiment
  per_output = results["results"]["vicreg"]
  for o, e in per_output.items():
    s = e["seeds"][0]["series"]
    expected = all(b >= t for b, t in zip(s["bound"], s["test_loss"]))
    assert e["held_every_checkpoint"] == expected
    assert e["checkpoints"] == len(s["steps"])
    assert e["min_margin"] == pytest.approx(
        min(b - t for b, t in zip(s["bound"], s["test_loss"])))
  held = all(e["held_every_checkpoint"] for e in per_output.values())
  assert results["held_every_checkpoint"] == {"vicreg": held}
  assert results["held_every_checkpoint_all"] == held
  verdicts = []
  for e in per_output.values():
    s = e["seeds"][0]["series"]
    fails = sum(b < t for b, t in zip(s["bound"], s["test_loss"]))
    vacuous = sum(b >= c for b, c in zip(s["bound"], s["loss_range"]))
    assert e["verdict"]["failures"] == fails and e["verdict"]["vacuous"] == vacuous
    verdicts.append("not held" if fails else "undecided" if vacuous else "held")
    assert e["verdict"]["verdict"] == verdicts[-1]
  expected = ("not held" if "not held" in verdicts else
              "held" if set(verdicts) == {"held"} else "undecided")
  assert results["verdict"] == results["summary"]["verdict"] == expected
  assert results["claim_held"] == {"held": True, "not held": False}.get(expected)
  # The config of the run is recorded, with the experiment's settings.
  config = results["runs"]["vicreg-seed0"]["config"]
  assert config["objective"] == "vicreg" and config["num_steps"] == 6
  assert config["monitor_every"] == 2 and config["augment"] != "none"


def test_test_loss_matches_a_numpy_least_squares_head_on_the_checkpoint(experiment):
  workdir, results = experiment
  from sslit import data, models, runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(str(workdir / "vicreg-seed0"))
  assert run.step == 6
  images, labels = run.test_ds.get(np.arange(len(run.test_ds)))
  assert len(labels) == 300  # the whole digits test split: the monitor's subset
  x = data.preprocess(images, run.train_ds.mean, run.train_ds.std)
  z = np.asarray(models.make_apply_fn(run.model, "rep")(run.variables, x), np.float64)
  y = np.eye(10)[np.asarray(labels)]
  half = 150
  # The library's documented cut-off on relative singular values (float32).
  rcond = 10 * np.sqrt(np.finfo(np.float32).eps)
  w = np.linalg.lstsq(z[:half], y[:half], rcond=rcond)[0]
  test_loss = np.mean(np.linalg.norm(z[half:] @ w - y[half:], axis=1))
  res_s = np.linalg.norm(z[:half] @ w - y[:half]) / np.sqrt(half)
  s = results["results"]["vicreg"]["rep"]["seeds"][0]["series"]
  assert s["test_loss"][-1] == pytest.approx(test_loss, rel=2e-3)
  assert s["labeled_term"][-1] == pytest.approx(res_s, rel=2e-3)


def test_tightness_is_the_ratio_of_the_reported_numbers(experiment):
  _, results = experiment
  for e in results["results"]["vicreg"].values():
    s, tg = e["seeds"][0]["series"], e["seeds"][0]["tightness"]
    for i in range(len(s["steps"])):
      assert tg["ratio"][i] == pytest.approx(s["bound"][i] / s["test_loss"][i])
      terms = {t: s[t][i] for t in TERMS}
      for t in TERMS:
        assert tg["per_term"][t][i] == pytest.approx(terms[t] / s["test_loss"][i])
      assert tg["dominant"][i] == max(terms, key=terms.get)
      assert tg["dominant_share"][i] == pytest.approx(max(terms.values()) /
                                                      s["bound"][i])


def test_checkpoint_verdict_on_hand_numbers():
  v = bound_exp.checkpoint_verdict
  assert v([2.0, 3.0], [1.0, 1.0], [5.0, 5.0])["verdict"] == "held"
  assert v([2.0, 0.5], [1.0, 1.0], [5.0, 5.0])["verdict"] == "not held"
  assert v([2.0, 6.0], [1.0, 1.0], [5.0, 5.0])["verdict"] == "undecided"  # vacuous
  assert v([], [], [])["verdict"] == "undecided"
  with pytest.raises(ValueError):
    v([1.0], [1.0, 2.0], [1.0])


def test_negative_control_labels_shifted_at_test_time(experiment):
  """Test labels shifted by one class: the criterion must not say "held".

  The head is fitted on true labels (first half) and scored on shifted labels
  (second half): a loss near the largest possible. Either the bound fails (not
  held) or it held only because it is vacuous (undecided).
  """
  workdir, results = experiment
  from sslit import data, models, runs  # pylint: disable=g-import-not-at-top
  s = results["results"]["vicreg"]["rep"]["seeds"][0]["series"]
  run = runs.open_run(str(workdir / "vicreg-seed0"))
  images, labels = run.test_ds.get(np.arange(len(run.test_ds)))
  x = data.preprocess(images, run.train_ds.mean, run.train_ds.std)
  z = np.asarray(models.make_apply_fn(run.model, "rep")(run.variables, x), np.float64)
  y = np.eye(10)[np.asarray(labels)]
  y_shift = np.eye(10)[(np.asarray(labels) + 1) % 10]
  rcond = 10 * np.sqrt(np.finfo(np.float32).eps)
  w = np.linalg.lstsq(z[:150], y[:150], rcond=rcond)[0]
  shifted = np.mean(np.linalg.norm(z[150:] @ w - y_shift[150:], axis=1))
  assert shifted > 1.5 * s["test_loss"][-1]  # the control does hurt the head
  control = bound_exp.checkpoint_verdict([s["bound"][-1]], [shifted],
                                         [s["loss_range"][-1]])
  assert control["verdict"] != "held"
  # At smoke the bound is vacuous (bound >= c): the check cannot fail, so undecided.
  vacuous = s["bound"][-1] >= s["loss_range"][-1]
  assert control["verdict"] == ("undecided" if vacuous else "not held")
  # The same control on a bound that is not vacuous: the check then fails.
  assert bound_exp.checkpoint_verdict([0.9 * shifted], [shifted],
                                      [10 * shifted])["verdict"] == "not held"


def test_plots_are_valid_pngs(experiment):
  workdir, results = experiment
  assert sorted(results["plots"]) == ["bound.png", "bound_terms.png"]
  for name in results["plots"]:
    assert_png(workdir / name)


def test_second_call_reuses_the_finished_run(experiment):
  workdir, results = experiment
  assert results["trained"] == ["vicreg-seed0"]
  run_dir = workdir / "vicreg-seed0"
  watched = [run_dir / "metrics.jsonl", run_dir / "config.json"] + sorted(
      (run_dir / "checkpoints").iterdir())
  before = path_mtimes(watched)
  assert bound_exp.main(ARGS + ["--workdir", str(workdir)]) == 0
  assert path_mtimes(watched) == before
  with open(workdir / "results.json") as f:
    again = json.load(f)
  assert again["trained"] == []
  assert again["results"] == results["results"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "vicreg,nonsense"], "unknown method"),
    (["--methods", ","], "at least one method"),
    (["--steps", "0"], "positive integer"),
    (["--monitor-examples", "4"], ">= 8"),
    (["--scale", "huge"], "invalid choice"),
])
def test_bad_options_exit_non_zero_with_a_message(extra, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bound_exp.main(["--scale", "smoke", "--workdir", str(tmp_path)] + extra)
  assert e.value.code != 0
  assert message in capsys.readouterr().err


def test_monitor_period_longer_than_the_run_is_refused(tmp_path, capsys):
  code = bound_exp.main(["--scale", "smoke", "--workdir", str(tmp_path), "--steps", "4",
                         "--monitor-every", "10"])
  assert code != 0
  assert "--monitor-every" in capsys.readouterr().out
  assert not (tmp_path / "vicreg-seed0").exists()
