"""experiments/assumptions.py (SPEC §7.1) at smoke scale, checked against oracles."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import assumptions
from tests.experiment_utils import assert_png, checkpoint_mtimes, run_experiment

_ARGS = ["--scale", "smoke", "--steps", "6", "--num_inputs", "6", "--num_samples", "24",
         "--num_sigmas", "2", "--sigma_min", "1e-3", "--sigma_max", "1e-1"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("assumptions"))
  return workdir, run_experiment(assumptions, _ARGS, workdir)


def test_rows_and_ranges(done):
  _, res = done
  assert res["scale"] == "smoke"
  np.testing.assert_allclose(res["sigmas"], [1e-3, 1e-1])
  methods = [r["method"] for r in res["rows"]]
  assert methods == ["simclr", "vicreg", "random_init"]
  m = res["num_samples"]
  for r in res["rows"]:
    stay = np.asarray(r["stay_per_input"])
    assert stay.shape == (2, 6)
    # A fraction of M copies: a multiple of 1/M in [0, 1].
    np.testing.assert_allclose(stay * m, np.round(stay * m), atol=1e-6)
    assert np.all((stay >= 0) & (stay <= 1))
    np.testing.assert_allclose(r["stay_mean"], stay.mean(axis=1), rtol=1e-6)
    assert all(0 <= v <= 1 for v in r["normal_reject_rate"])
    assert all(v >= 0 for v in r["cov_error_median"] + r["mean_error_median"])
    assert r["cov_error_floor"] > 0 and r["mean_error_floor"] > 0


def test_claim_flags_follow_reported_numbers(done):
  from scipy import stats
  _, res = done
  assert res["claim_sigma"] == 1e-3  # the smoke scale's, fixed in advance
  for r in res["rows"]:
    stay, cov = r["stay_mean"], r["cov_error_median"]
    expect = (stay[0] >= 0.9 and stay[1] <= stay[0] + 0.02 and
              cov[0] <= 1.25 * r["cov_error_floor"])
    assert r["claim_held_smallest_sigma"] == expect  # the earlier criterion
    # The criterion at sigma = 1e-3 (index 0): a one-sided 95 % t bound on the stay.
    per_input = np.asarray(r["stay_per_input"][0])
    c = r["criterion"]
    if np.ptp(per_input) > 0:
      low = per_input.mean() - stats.t.ppf(0.95, 5) * stats.sem(per_input)
      assert c["stay_interval"]["low"] == pytest.approx(low)
    cond = c["conditions"]
    assert (cond["cov_error_at_floor"] == "held") == (cov[0] <= 1.25 * r["cov_error_floor"])
    assert (cond["stay_nonincreasing"] == "held") == (stay[1] <= stay[0] + 0.02)
    expected = ("not held" if "not held" in cond.values() else
                "held" if set(cond.values()) == {"held"} else "undecided")
    assert c["verdict"] == expected
  trained = [r["criterion"]["verdict"] for r in res["rows"]
             if r["method"] != "random_init"]
  expected = ("not held" if "not held" in trained else
              "held" if set(trained) == {"held"} else "undecided")
  assert res["verdict"] == res["summary"]["verdict"] == expected
  assert res["claim_held"] == {"held": True, "not held": False}.get(expected)


def _row(stay_per_input, cov, floor):
  stay = np.asarray(stay_per_input, np.float64)
  return {"stay_per_input": stay.tolist(), "stay_mean": stay.mean(axis=1).tolist(),
          "cov_error_median": cov, "cov_error_floor": floor}


def test_network_verdict_on_hand_numbers():
  sigmas = [1e-6, 1e-3, 1e-1]
  good = _row([[1.0, 0.98, 0.99, 1.0, 0.97, 1.0], [0.5] * 6, [0.0] * 6],
              [0.25, 0.26, 0.5], 0.24)
  assert assumptions.network_verdict(good, sigmas, 1e-6)["verdict"] == "held"
  # Covariance error above 1.25 x its floor: not held.
  bad_cov = dict(good, cov_error_median=[0.40, 0.3, 0.5], cov_error_floor=0.31)
  assert assumptions.network_verdict(bad_cov, sigmas, 1e-6)["verdict"] == "not held"
  # Stay fraction around 0.9 with wide spread: undecided.
  wide = _row([[1.0, 0.8, 1.0, 0.8, 1.0, 0.8], [0.5] * 6, [0.0] * 6],
              [0.25, 0.26, 0.5], 0.24)
  assert assumptions.network_verdict(wide, sigmas, 1e-6)["verdict"] == "undecided"
  # The claim's sigma is not on the grid (a grid changed after the fact): undecided.
  assert assumptions.network_verdict(good, [1e-3, 1e-1], 1e-6)["verdict"] == \
      "undecided"


def test_negative_control_sigma_far_too_large(done):
  """The criterion judged at the largest sigma of the smoke grid (1e-1, where most
  copies leave their region): every network, trained or not, fails."""
  _, res = done
  for r in res["rows"]:
    assert np.mean(r["stay_per_input"][-1]) < 0.9
    v = assumptions.network_verdict(r, res["sigmas"], res["sigmas"][-1])
    assert v["verdict"] == "not held"
    assert v["conditions"]["stay_at_claim_sigma"] == "not held"


def test_stay_fraction_recomputed_independently(done):
  """Own inputs (NumPy preprocessing), own noise draws, own pattern comparison."""
  import jax
  from sslit import data, models, runs
  _, res = done
  row = res["rows"][1]  # vicreg
  run = runs.open_run(row["run"])
  train_x = data.load("digits", "train").get(np.arange(len(run.train_ds)))[0]
  train_x = np.asarray(train_x, np.float64) / 255.0
  mean, std = train_x.mean(), train_x.std()
  images = np.asarray(data.load("digits", "test").get(
      np.asarray(row["input_indices"]))[0], np.float64) / 255.0
  x = ((images - mean) / std).astype(np.float32)
  pre_fn = jax.jit(jax.vmap(lambda v: models.preactivation_fn(
      run.model, run.variables)(v)[1]))
  sigma, m = res["sigmas"][1], 400
  base = pre_fn(x)
  rng = np.random.default_rng(1)
  noisy = x[:, None] + sigma * rng.standard_normal((len(x), m) + x.shape[1:])
  pre = pre_fn(noisy.reshape((-1,) + x.shape[1:]).astype(np.float32))
  same = np.ones((len(x), m), bool)
  for name, b in base.items():
    p = np.asarray(pre[name]).reshape((len(x), m, -1))
    same &= np.all((p > 0) == (np.asarray(b).reshape(len(x), 1, -1) > 0), axis=2)
  # 6 inputs x 24 copies in the experiment vs 6 x 400 here: binomial tolerance.
  assert abs(same.mean() - row["stay_mean"][1]) < 0.12
  assert row["stay_mean"][1] <= row["stay_mean"][0] + 0.1


def test_plot_is_png(done):
  workdir, res = done
  path = os.path.join(workdir, "assumptions.png")
  assert res["plot"] == path
  assert_png(path)


def test_second_call_reuses_runs(done):
  workdir, res = done
  assert sorted(os.path.basename(p) for p in res["trained_runs"]) == \
      ["simclr-seed0", "vicreg-seed0"]
  before = {r["run"]: checkpoint_mtimes(r["run"]) for r in res["rows"] if r["run"]}
  assert assumptions.main(_ARGS + ["--workdir", workdir, "--num_sigmas", "1"]) == 0
  with open(os.path.join(workdir, "results.json")) as f:
    again = json.load(f)
  assert again["trained_runs"] == []
  for run, mtimes in before.items():
    assert checkpoint_mtimes(run) == mtimes


@pytest.mark.parametrize("bad, message", [
    (["--num_samples", "5"], "--num_samples"),
    (["--sigma_min", "0.5", "--sigma_max", "0.1"], "--sigma_min"),
    (["--num_inputs", "1"], "--num_inputs"),
    (["--scale", "huge"], "--scale"),
])
def test_bad_options_exit_nonzero(tmp_path, capsys, bad, message):
  with pytest.raises(SystemExit) as e:
    assumptions.main(["--scale", "smoke", "--workdir", str(tmp_path)] + bad)
  assert e.value.code != 0
  assert message in capsys.readouterr().err
