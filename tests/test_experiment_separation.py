"""experiments/separation.py (SPEC §7.2) at smoke scale, checked against oracles."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import separation
from tests.experiment_utils import assert_png, checkpoint_mtimes, run_experiment

_ARGS = ["--scale", "smoke", "--steps", "10", "--checkpoint_every", "5",
         "--num_inputs", "8", "--sigmas", "0.05,1"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("separation"))
  return workdir, run_experiment(separation, _ARGS, workdir)


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
  assert seed["claim_held"] == bool(ratio[-1] > ratio[0] and rho > 0)
  assert res["claim_held"] == seed["claim_held"]


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
