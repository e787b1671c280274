"""experiments/vicreg_logdet.py (SPEC §7.5) at smoke scale, checked against oracles.

One tiny VICReg run (8 steps, monitor every 2: 4 points) is shared by the module.
Oracles that do not share the experiment's code: the series read back from
``metrics.jsonl`` with ``json``; Spearman's rho recomputed as the Pearson
correlation of NumPy ranks; ``log det`` of the correlation matrix recomputed in
float64 (``np.corrcoef``, ``slogdet``) from the saved checkpoint's features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import vicreg_logdet as exp
from tests.experiment_utils import (assert_png, monitor_records, path_mtimes,
                                    run_experiment)

ARGS = ["--scale", "smoke", "--steps", "8", "--monitor-every", "2",
        "--monitor-examples", "300"]
QUANTITIES = ("logdet_corr", "entropy_gaussian", "entropy_logdet",
              "entropy_pairwise_kl", "entropy_pairwise_bhattacharyya")
F64 = ("logdet_corr_f64", "entropy_gaussian_f64")  # recomputed from checkpoints


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vicreg_logdet")
  return workdir, run_experiment(exp, ARGS, workdir)


def _records(run_dir):
  return monitor_records(run_dir, "monitor/proj/logdet_corr")


def _spearman_oracle(x, y):
  rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)
  return float(np.corrcoef(rank(np.asarray(x)), rank(np.asarray(y)))[0, 1])


def _as_float(v):
  return float(v)  # results.json writes inf/nan as the strings "inf", "-inf", "nan"


def test_series_are_the_monitor_records(experiment):
  workdir, results = experiment
  assert results["scale"] == "smoke" and results["outputs"] == ["proj", "rep"]
  records = _records(workdir / "vicreg-seed0")
  assert sorted(records) == [2, 4, 6, 8]
  for o in ("proj", "rep"):
    s = results["seeds"][0]["outputs"][o]["series"]
    assert s["steps"] == [2, 4, 6, 8]
    for i, step in enumerate(s["steps"]):
      r = records[step]
      for t in ("invariance", "variance", "covariance", "loss"):
        assert s[t][i] == pytest.approx(r[f"monitor/{o}/vicreg/{t}"], rel=1e-12)
      for q in QUANTITIES:
        assert _as_float(s[q][i]) == pytest.approx(r[f"monitor/{o}/{q}"], rel=1e-12)
      # Invariants of the estimators: log det R <= 0, Bhattacharyya <= KL bound.
      assert _as_float(s["logdet_corr"][i]) <= 1e-4
      assert s["entropy_pairwise_bhattacharyya"][i] <= s["entropy_pairwise_kl"][i] + 1e-4


def test_rank_correlations_match_numpy_ranks(experiment):
  _, results = experiment
  checked = 0
  for o, r in results["seeds"][0]["outputs"].items():
    s = r["series"]
    for t in ("covariance", "variance"):
      for q in QUANTITIES + F64:
        c = r["spearman"][t][q]
        x = np.asarray(s[t], np.float64)
        y = np.asarray([_as_float(v) for v in s[q]], np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        assert c["n"] == int(ok.sum()) and c["dropped"] == int((~ok).sum())
        if c["rho"] is None:
          assert ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0
          continue
        assert -1.0 <= c["rho"] <= 1.0 and 0.0 <= c["pvalue"] <= 1.0
        assert c["rho"] == pytest.approx(_spearman_oracle(x[ok], y[ok]), abs=1e-9)
        checked += 1
  assert checked >= 10  # most pairs are defined on a trained MLP


def test_claim_flag_is_the_sign_of_the_reported_correlations(experiment):
  _, results = experiment
  assert results["claim_pairs"] == [["covariance", "logdet_corr_f64"],
                                    ["variance", "entropy_logdet"]]
  for o, r in results["seeds"][0]["outputs"].items():
    rhos = [r["spearman"][t][q]["rho"] for t, q in results["claim_pairs"]]
    expected = None if None in rhos else all(v < 0 for v in rhos)
    assert r["claim_held"] == expected
    assert results["claim_held_per_output"][o] == expected  # sign-only, kept
    fl = r["first_last"]
    trend = {"covariance_fell": fl["covariance"]["last"] < fl["covariance"]["first"],
             "variance_fell": fl["variance"]["last"] < fl["variance"]["first"],
             "logdet_corr_f64_rose": _as_float(fl["logdet_corr_f64"]["last"]) >
                                     _as_float(fl["logdet_corr_f64"]["first"]),
             "entropy_logdet_rose": fl["entropy_logdet"]["last"] >
                                    fl["entropy_logdet"]["first"]}
    assert r["trend"] == trend
    assert results["terms_fell_and_log_dets_rose"][o] == all(trend.values())
    s = r["series"]
    assert fl["covariance"] == {"first": s["covariance"][0], "last": s["covariance"][-1]}
  assert results["headline_output"] == "proj"
  assert results["claim_held_sign_only"] == results["claim_held_per_output"]["proj"]


def test_verdict_is_the_permutation_test_of_the_reported_series(experiment):
  _, results = experiment
  for o in results["outputs"]:
    test = results["tests"][o]
    s = results["seeds"][0]["outputs"][o]["series"]
    for t, q in results["claim_pairs"]:
      p = test["pairs"][f"{t}~{q}"]
      x = np.asarray(s[t], np.float64)
      y = np.asarray([_as_float(v) for v in s[q]], np.float64)
      ok = np.isfinite(x) & np.isfinite(y)
      if p["rho_mean"] is None:
        assert p["verdict"] == "undecided"
        continue
      # Exact test over the 4! orderings, recomputed with itertools.
      import itertools
      rho = _spearman_oracle(x[ok], y[ok])
      null = [_spearman_oracle(x[ok], y[ok][list(perm)])
              for perm in itertools.permutations(range(int(ok.sum())))]
      assert p["rho_mean"] == pytest.approx(rho, abs=1e-9)
      assert p["p_less"] == pytest.approx(np.mean(np.asarray(null) <= rho + 1e-9))
      # 4 points: the smallest one-sided p is 1/24 > 0.025, so never decided.
      assert p["verdict"] == "undecided"
    assert results["verdict_per_output"][o] == test["verdict"] == "undecided"
  assert results["verdict"] == "undecided" and results["claim_held"] is None
  assert results["summary"]["verdict"] == "undecided"


def _anticorrelated(n, seed):
  rng = np.random.default_rng(seed)
  cov = np.sort(rng.random(n))[::-1]  # falls
  return {"covariance": cov, "logdet_corr_f64": 2.0 - cov,
          "variance": cov + 0.3, "entropy_logdet": np.arange(n, dtype=float)}


def test_claim_test_holds_on_a_clear_anticorrelation():
  out = exp.claim_test([_anticorrelated(8, s) for s in range(3)])
  assert out["verdict"] == "held"
  assert all(p["rho_mean"] == pytest.approx(-1.0) for p in out["pairs"].values())


@pytest.mark.parametrize("seeds", [1, 3])
def test_negative_control_shuffled_checkpoint_order(seeds, monkeypatch):
  """The quantities in a shuffled checkpoint order: held at most at the test's level."""
  from experiments import claims
  monkeypatch.setattr(claims, "MC_PERMUTATIONS", 2000)  # speed; p-values to ~1e-3
  rng = np.random.default_rng(1)
  held = 0
  trials = 100
  for _ in range(trials):
    series = []
    for s in range(seeds):
      d = _anticorrelated(6, s)
      perm = rng.permutation(6)
      series.append({**d, "logdet_corr_f64": d["logdet_corr_f64"][perm],
                     "entropy_logdet": d["entropy_logdet"][rng.permutation(6)]})
    held += exp.claim_test(series)["verdict"] == "held"
  # Both pairs must pass at 0.025: far below alpha = 0.05 (expected ~0.0006).
  assert held / trials <= 0.03


def test_negative_control_constant_series_is_undecided():
  d = _anticorrelated(8, 0)
  flat = {**d, "logdet_corr_f64": np.zeros(8)}
  out = exp.claim_test([flat])
  assert out["pairs"]["covariance~logdet_corr_f64"]["verdict"] == "undecided"
  assert out["verdict"] == "undecided"


@pytest.mark.parametrize("index", [0, -1])
def test_logdet_corr_matches_float64_numpy_on_the_checkpoint(experiment, index):
  workdir, results = experiment
  from sslit import data, models, runs  # pylint: disable=g-import-not-at-top
  run_dir = workdir / "vicreg-seed0"
  # A checkpoint was kept at every monitored step.
  assert runs.checkpoint_steps(str(run_dir)) == [2, 4, 6, 8]
  step = [2, 4, 6, 8][index]
  run = runs.open_run(str(run_dir), step=step)
  assert run.step == step
  images, _ = run.test_ds.get(np.arange(len(run.test_ds)))  # all 300: the subset
  x = data.preprocess(images, run.train_ds.mean, run.train_ds.std)
  for o in ("proj", "rep"):
    z = np.asarray(models.make_apply_fn(run.model, o)(run.variables, x), np.float64)
    s = results["seeds"][0]["outputs"][o]["series"]
    f32 = _as_float(s["logdet_corr"][index])
    f64 = _as_float(s["logdet_corr_f64"][index])
    h64 = _as_float(s["entropy_gaussian_f64"][index])
    if np.any(z.std(axis=0) == 0):  # a dead unit: R and the covariance are singular
      assert f32 == -np.inf and f64 == -np.inf and h64 == -np.inf
      continue
    sign, logdet = np.linalg.slogdet(np.corrcoef(z, rowvar=False))
    assert sign > 0
    assert f64 == pytest.approx(logdet, rel=1e-6)
    if np.isfinite(f32):  # float32 on the monitor's side, where it is resolved
      assert f32 == pytest.approx(logdet, rel=1e-2)
    k = z.shape[1]
    _, logdet_cov = np.linalg.slogdet(np.cov(z, rowvar=False))
    assert h64 == pytest.approx(0.5 * (k * np.log(2 * np.pi * np.e) + logdet_cov),
                                rel=1e-6)


def test_plot_is_a_valid_png(experiment):
  workdir, results = experiment
  assert results["plots"] == ["vicreg_logdet.png"]
  assert_png(workdir / "vicreg_logdet.png")


def test_second_call_reuses_the_finished_run(experiment):
  workdir, results = experiment
  assert results["trained"] == ["vicreg-seed0"]
  run_dir = workdir / "vicreg-seed0"
  # The float64 recomputation is cached next to results.json and reused too.
  watched = [run_dir / "metrics.jsonl", run_dir / "config.json",
             workdir / "float64_vicreg-seed0.json"] + sorted(
                 (run_dir / "checkpoints").iterdir())
  before = path_mtimes(watched)
  assert exp.main(ARGS + ["--workdir", str(workdir)]) == 0
  assert path_mtimes(watched) == before
  with open(workdir / "results.json") as f:
    again = json.load(f)
  assert again["trained"] == [] and again["seeds"] == results["seeds"]


def test_spearman_helper_on_known_series():
  # Closed forms: a monotone map has rho = +1 / -1; non-finite points are dropped.
  assert exp.spearman([1, 2, 3, 4], [10, 20, 30, 45])["rho"] == pytest.approx(1.0)
  assert exp.spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
  c = exp.spearman([1, 2, 3, 4, 5], [-np.inf, 1, 2, 3, 4])
  assert c["n"] == 4 and c["dropped"] == 1 and c["rho"] == pytest.approx(1.0)
  assert exp.spearman([1, 2], [1, 2])["rho"] is None  # too few points
  assert exp.spearman([1, 1, 1], [1, 2, 3])["rho"] is None  # constant series


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--monitor-every", "-3"], "positive integer"),
    (["--monitor-examples", "7"], ">= 8"),
])
def test_bad_options_exit_non_zero_with_a_message(extra, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    exp.main(["--scale", "smoke", "--workdir", str(tmp_path)] + extra)
  assert e.value.code != 0
  assert message in capsys.readouterr().err
