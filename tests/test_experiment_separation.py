"""experiments/separation.py (SPEC §7.2) at smoke scale, checked against oracles."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from experiments import common, separation
from tests.experiment_utils import assert_png, checkpoint_mtimes, run_experiment

_ARGS = ["--scale", "smoke", "--steps", "10", "--checkpoint_every", "5",
         "--num_inputs", "8", "--sigmas", "0.05,1"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("separation"))
  res = run_experiment(separation, _ARGS, workdir)
  # The per-seed pieces as this run left them (later tests rerun in this workdir).
  shutil.copytree(os.path.join(workdir, "pieces"), workdir + "-pieces")
  return workdir, res


def test_every_checkpoint_kept_and_analysed(done):
  from sslit import runs
  _, res = done
  run = res["per_seed"][0]["run"]
  assert runs.checkpoint_steps(run) == [5, 10]
  assert [r["step"] for r in res["rows"]] == [0, 5, 10]
  assert list(res["rows_by_sigma"]) == ["0.05", "1.0"]
  assert res["rows"] == res["rows_by_sigma"]["0.05"]


def test_bounds_ordered_and_in_range(done):
  _, res = done
  log_n = np.log(8)
  assert res["log_n"] == pytest.approx(log_n)
  for rows in res["rows_by_sigma"].values():
    for r in rows:
      assert -1e-3 <= r["mi_lower"] <= r["mi_upper"] + 1e-4 <= log_n + 2e-3
      assert r["h_lower"] <= r["h_upper"] + 1e-3
      assert r["h_lower"] == pytest.approx(r["h_cond"] + r["mi_lower"], abs=1e-2)
      assert r["separation_ratio"] > 0 and 1 <= r["min_rank"] <= 32
  # tau is proportional to sigma and the ratio to 1/sigma (same slopes, same means).
  for a, b in zip(res["rows_by_sigma"]["0.05"], res["rows_by_sigma"]["1.0"]):
    assert b["output_noise"] == pytest.approx(20 * a["output_noise"], rel=1e-4)
    assert b["separation_ratio"] == pytest.approx(a["separation_ratio"] / 20, rel=1e-3)


def test_separation_ratio_recomputed_independently(done):
  """Last checkpoint: own inputs, own Jacobians (jax.jacrev), own tau and ratio."""
  import jax
  from sslit import data, runs
  _, res = done
  seed = res["per_seed"][0]
  run = runs.open_run(seed["run"], step=10)
  train_x = np.asarray(data.load("digits", "train").get(
      np.arange(len(run.train_ds)))[0], np.float64) / 255.0
  images = np.asarray(data.load("digits", "test").get(
      np.asarray(seed["input_indices"]))[0], np.float64) / 255.0
  x = ((images - train_x.mean()) / train_x.std()).astype(np.float32)

  def f(v):
    return run.model.apply(run.variables, v.reshape((1,) + x.shape[1:]), train=False,
                           upto="rep")["rep"][0]
  flat = x.reshape(len(x), -1)
  means = np.asarray(jax.vmap(f)(flat), np.float64)
  a = np.asarray(jax.vmap(jax.jacrev(f))(flat), np.float64)  # [n, k, d]
  n, k, _ = a.shape
  sigma = 0.05
  tau = 0.1 * sigma * np.sqrt(np.sum(a**2) / (n * k))
  covs = sigma**2 * a @ a.transpose(0, 2, 1) + tau**2 * np.eye(k)
  var_max = max(np.linalg.eigvalsh(c)[-1] for c in covs)
  dist = [np.linalg.norm(means[i] - means[j]) for i in range(n) for j in range(i + 1, n)]
  last = res["rows"][-1]
  assert last["output_noise"] == pytest.approx(tau, rel=1e-3)
  assert last["separation_ratio"] == pytest.approx(np.median(dist) / np.sqrt(var_max),
                                                   rel=1e-3)


def test_monitor_series_match_metrics(done):
  _, res = done
  run = res["per_seed"][0]["run"]
  expect = {}
  with open(os.path.join(run, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "monitor/rep/entropy_logdet" in rec:
        expect[rec["step"]] = rec["monitor/rep/entropy_logdet"]
  got = res["monitor"]["entropy_logdet"]
  assert got["steps"] == [5, 10] == sorted(expect)
  np.testing.assert_allclose(got["values"], [expect[s] for s in got["steps"]])


def test_claim_flag_follows_reported_numbers(done):
  _, res = done
  seed = res["per_seed"][0]
  ratio = np.asarray([r["separation_ratio"] for r in res["rows"]])
  steps = np.asarray([r["step"] for r in res["rows"]], float)
  rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # no ties here
  rho = np.corrcoef(rank(steps), rank(ratio))[0, 1]
  assert seed["spearman_step_ratio"] == pytest.approx(rho, abs=1e-9)
  assert seed["claim_held_old"] == bool(ratio[-1] > ratio[0] and rho > 0)
  assert res["claim_held_old"] == seed["claim_held_old"]
  # The criterion: one seed is too few for a verdict.
  sep = res["criterion_result"]["separation"]
  assert sep["rho_mean"] == pytest.approx(rho, abs=1e-9)
  assert sep["verdict"] == "undecided"
  assert res["verdict"] == res["summary"]["verdict"] == "undecided"
  assert res["claim_held"] is None
  # The MI trend is tested only on the sigma whose bounds sit below log n.
  log_n = np.log(8)
  for s, test in res["criterion_result"]["mi"].items():
    at_init = res["rows_by_sigma"][s][0]["mi_upper"]
    assert (test == "saturated") == (at_init >= 0.99 * log_n)


def _rows(steps, ratio, mi_lower, mi_upper):
  return [{"step": s, "separation_ratio": r, "mi_lower": lo, "mi_upper": up}
          for s, r, lo, up in zip(steps, ratio, mi_lower, mi_upper)]


_STEPS = [0, 100, 200, 300, 400, 500, 600, 700, 800]
_LOG_N = float(np.log(32))


def _seed(ratio, mi):
  return {"0.05": _rows(_STEPS, ratio, [_LOG_N] * 9, [_LOG_N] * 9),
          "4.0": _rows(_STEPS, list(np.asarray(ratio) / 80), mi, [m + 0.1 for m in mi])}


def test_criterion_on_hand_numbers():
  up = [1.0 + 0.1 * i for i in range(9)]
  rising = [_seed([10 + i + 0.1 * k for i in range(9)], up) for k in range(3)]
  c = separation.criterion(rising, [0.05, 4.0], _LOG_N)
  assert c["separation"]["verdict"] == "held"
  assert c["mi"]["0.05"] == "saturated" and c["mi"]["4.0"]["verdict"] == "held"
  assert c["verdict"] == "held"
  # The cpu-scale shape of the earlier run (falling ratio), three seeds: not held.
  falling = [_seed([129, 143, 119, 96, 82, 77, 71.5, 71.8, 69.5], up)] * 3
  assert separation.criterion(falling, [0.05, 4.0], _LOG_N)["verdict"] == "not held"
  # Every sigma saturated: the MI part cannot be tested, so at best undecided.
  c = separation.criterion(rising, [0.05], _LOG_N)
  assert c["mi_verdict"] == "undecided" and c["verdict"] == "undecided"


def test_supplementary_rule_tests_lower_bound_when_upper_saturates():
  """Upper bound at log n, lower bound below it: the criterion cannot test the MI
  trend, the supplementary rule can; a falling lower bound makes it fail."""
  def seed(ratio, lower):
    return {"4.0": _rows(_STEPS, ratio, lower, [_LOG_N] * 9)}

  ratio = [10 + i for i in range(9)]
  rising = [seed([r + 0.1 * k for r in ratio], [1.0 + 0.1 * i + 0.01 * k
                                                for i in range(9)]) for k in range(3)]
  c = separation.criterion(rising, [4.0], _LOG_N)
  assert c["mi"]["4.0"] == "saturated" and c["verdict"] == "undecided"
  assert c["supplementary"]["mi"]["4.0"]["verdict"] == "held"
  assert c["supplementary"]["verdict"] == "held"
  falling = [seed(ratio, [2.0 - 0.1 * i for i in range(9)])] * 3
  sup = separation.criterion(falling, [4.0], _LOG_N)["supplementary"]
  assert sup["mi_verdict"] == "not held" and sup["verdict"] == "not held"


def test_negative_control_too_few_seeds_and_untrained_network():
  up = [1.0 + 0.1 * i for i in range(9)]
  one = [_seed([10 + i for i in range(9)], up)]
  assert separation.criterion(one, [0.05, 4.0], _LOG_N)["verdict"] == "undecided"
  # An untrained network at every "checkpoint": a constant ratio and MI.
  frozen = [_seed([37.4] * 9, [2.0] * 9)] * 3
  c = separation.criterion(frozen, [0.05, 4.0], _LOG_N)
  assert c["separation"]["rho_mean"] is None and c["verdict"] == "undecided"


def test_negative_control_shuffled_steps(monkeypatch):
  """Checkpoint order shuffled: "held" at most at about the test's level."""
  from experiments import claims
  monkeypatch.setattr(claims, "MC_PERMUTATIONS", 2000)  # speed; p-values to ~1e-3
  rng = np.random.default_rng(0)
  held = 0
  for _ in range(60):
    seeds = []
    for k in range(3):
      ratio = np.asarray([10.0 + i + 0.1 * k for i in range(9)])[rng.permutation(9)]
      mi = np.asarray([1.0 + 0.1 * i for i in range(9)])[rng.permutation(9)]
      seeds.append(_seed(list(ratio), list(mi)))
    held += separation.criterion(seeds, [0.05, 4.0], _LOG_N)["verdict"] == "held"
  assert held <= 3  # both trends at 0.05: expected 0.0025 x 60


def test_plot_is_png(done):
  workdir, res = done
  path = os.path.join(workdir, "separation.png")
  assert res["plot"] == path
  assert_png(path)


def test_second_call_reuses_run(done):
  workdir, res = done
  run = res["per_seed"][0]["run"]
  assert res["trained_runs"] == [run]
  before = checkpoint_mtimes(run)
  assert separation.main(_ARGS[:-2] + ["--sigmas", "0.05", "--workdir", workdir]) == 0
  with open(os.path.join(workdir, "results.json")) as f:
    again = json.load(f)
  assert again["trained_runs"] == []
  assert checkpoint_mtimes(run) == before
  # Same checkpoints, inputs and sigma: the same numbers.
  np.testing.assert_allclose([r["separation_ratio"] for r in again["rows"]],
                             [r["separation_ratio"] for r in res["rows"]], rtol=1e-5)


def test_pieces_alone_resume_without_the_runs(done, tmp_path):
  """The small per-seed pieces are enough: no run directory, no training, same rows."""
  workdir, res = done
  shutil.copytree(workdir + "-pieces", tmp_path / "pieces")
  assert separation.main(_ARGS + ["--workdir", str(tmp_path)]) == 0
  with open(tmp_path / "results.json") as f:
    again = json.load(f)
  assert again["trained_runs"] == [] and not (tmp_path / "vicreg-seed0").exists()
  assert again["rows_by_sigma"] == res["rows_by_sigma"]
  assert again["verdict"] == res["verdict"]


def test_cached_json_reuses_same_key_and_recomputes_changed(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"x": [1.0, float("nan"), float("-inf")]}

  path = str(tmp_path / "sub" / "c.json")
  first = common.cached_json(path, {"a": 1}, compute)
  second = common.cached_json(path, {"a": 1}, compute)
  assert len(calls) == 1 and np.isnan(first["x"][1]) and np.isnan(second["x"][1])
  assert first["x"][2] == second["x"][2] == -np.inf
  common.cached_json(path, {"a": 2}, compute)
  assert len(calls) == 2


@pytest.mark.parametrize("bad, message", [
    (["--sigmas", "0.05,-1"], "--sigmas"),
    (["--sigmas", "abc"], "--sigmas"),
    (["--num_inputs", "1"], "--num_inputs"),
    (["--relative_output_noise", "-0.1"], "--relative_output_noise"),
])
def test_bad_options_exit_nonzero(tmp_path, capsys, bad, message):
  with pytest.raises(SystemExit) as e:
    separation.main(["--scale", "smoke", "--workdir", str(tmp_path)] + bad)
  assert e.value.code != 0
  assert message in capsys.readouterr().err
