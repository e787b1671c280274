"""Tests of ``sslit reproduce table1`` (experiments/table1.py) at the smoke scale.

Oracles: every reported accuracy is read back from the run's own ``results.json``
and one is recomputed from the saved checkpoint with a direct probe; means and
standard deviations are recomputed with NumPy; the claim flags are recomputed from
the reported means; finished runs are not touched by a second call (file mtimes).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments import table1
from tests.experiment_utils import assert_png

# Tiny runs: 5 steps, a 20-iteration probe.
ARGS = ["--scale", "smoke", "--steps", "5", "--eval-steps", "20"]
PAIR = ("vicreg", "vicreg+logdet")


def _load(path):
  with open(path) as f:
    return json.load(f)


def _run_files(run_dir):
  """Every file of a run directory (checkpoints included) with its mtime."""
  out = {}
  for root, _, files in os.walk(run_dir):
    for name in files:
      p = os.path.join(root, name)
      out[p] = os.path.getmtime(p)
  return out


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  wd = tmp_path_factory.mktemp("table1")
  code = table1.main(ARGS + ["--workdir", str(wd), "--methods", ",".join(PAIR)])
  results = _load(wd / "results.json")
  with open(wd / "table1.md") as f:
    table = f.read()
  return wd, code, results, table


@pytest.fixture(scope="module")
def second(first):
  """The same workdir again with two seeds of vicreg: seed 0 reused, seed 1 trained."""
  wd = first[0]
  before = _run_files(wd / "vicreg" / "seed0")
  code = table1.main(ARGS + ["--workdir", str(wd), "--methods", "vicreg", "--seeds", "2"])
  after = _run_files(wd / "vicreg" / "seed0")
  return code, _load(wd / "results.json"), before, after


def test_first_call_reports_each_runs_own_accuracy(first):
  wd, code, results, _ = first
  assert code == 0
  assert results["scale"] == "smoke" and results["seeds"] == 1
  assert results["methods"] == list(PAIR)
  assert results["num_steps"] == 5 and results["dataset"] == "digits"
  for m in PAIR:
    run = _load(wd / m / "seed0" / "results.json")
    config = _load(wd / m / "seed0" / "config.json")
    assert run["step"] == 5
    assert config["objective"] == m and config["seed"] == 0
    assert config["eval"]["baselines"] == []  # only the trained net was probed
    assert set(run) >= {"trained"} and "random_init" not in run
    acc = results["accuracy"][m]
    assert acc["per_seed"] == [run["trained"]["linear_top1"]]
    assert acc["mean"] == pytest.approx(run["trained"]["linear_top1"])
    assert acc["std"] is None  # one seed: no sample std
    assert 0.0 <= acc["mean"] <= 100.0
    assert results["runs"][m]["seed0"]["config"] == config


def test_accuracy_recomputed_from_the_checkpoint(first):
  from sslit import evaluate, models, runs
  wd, _, results, _ = first
  run = runs.open_run(wd / "vicreg+logdet" / "seed0")
  assert run.step == 5
  out = evaluate.evaluate_representation(
      models.make_apply_fn(run.model, "rep"), run.variables, run.train_ds, run.test_ds,
      num_classes=run.train_ds.num_classes, batch_size=int(run.config.eval.batch_size),
      l2=float(run.config.eval.l2), steps=20, ks=())
  # The probe is deterministic; allow one test example of float noise.
  one_example = 100.0 / len(run.test_ds)
  assert abs(out["linear_top1"] - results["accuracy"]["vicreg+logdet"]["mean"]) \
      <= one_example + 1e-6


def test_verdict_and_table_follow_the_reported_numbers(first):
  wd, _, results, table = first
  accs = {m: _load(wd / m / "seed0" / "results.json")["trained"]["linear_top1"]
          for m in PAIR}
  c = results["claims"]["vicreg+logdet"]
  assert set(results["claims"]) == {"vicreg+logdet"}  # only variants with their base
  assert c["base"] == "vicreg"
  lin = c["linear"]
  assert lin["differences"] == [pytest.approx(accs["vicreg+logdet"] - accs["vicreg"])]
  # One seed: no interval, so no decision.
  assert lin["interval"]["low"] is None and c["verdict"] == "undecided"
  assert results["verdict"] == "undecided" and results["claim_held"] is None
  assert results["summary"]["verdict"] == "undecided"
  assert results["summary"]["claim_held"] is None
  # The earlier criterion (means) is kept beside it.
  old = results["claims_mean_difference"]["vicreg+logdet"]
  assert old["beats_base"] == (accs["vicreg+logdet"] > accs["vicreg"])
  # The Markdown table carries the same numbers.
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()
          if line.startswith("| ") and "---" not in line}
  assert f"{accs['vicreg']:.2f}" in rows["VICReg"]
  assert f"{accs['vicreg+logdet']:.2f}" in rows["VICReg + LogDet"]
  assert f"{lin['differences'][0]:+.2f}" in rows["VICReg + LogDet"]
  assert "undecided" in rows["VICReg + LogDet"]


def test_knn_and_low_label_probes_are_reported(first):
  from sslit import data
  wd, _, results, _ = first
  assert set(results["probes"]) == set(table1.PROBES)
  run = _load(wd / "vicreg" / "seed0" / "results.json")
  assert results["probes"]["knn"]["vicreg"]["per_seed"] == [run["trained"]["knn20_top1"]]
  low = _load(wd / "vicreg" / "seed0" / "low_label.json")["value"]
  train = data.load("digits", "train")
  counts = np.bincount(np.asarray(train.get(np.arange(len(train)))[1]))
  for name, frac in (("low_label_1pct", 0.01), ("low_label_10pct", 0.1)):
    assert results["probes"][name]["vicreg"]["per_seed"] == [low[name]["top1"]]
    assert 0.0 <= low[name]["top1"] <= 100.0
    assert low[name]["num_labels"] == sum(max(1, round(frac * c)) for c in counts)


def test_plot_is_a_valid_png(first):
  wd = first[0]
  image = assert_png(wd / "table1.png")
  with open(wd / "table1.png", "rb") as f:  # the header's size is the decoded one
    head = f.read(24)
  assert head[12:16] == b"IHDR"
  width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
  assert image.shape[:2] == (height, width)


def test_second_call_reuses_finished_runs_and_adds_a_seed(first, second):
  wd = first[0]
  code, results, before, after = second
  assert code == 0
  assert before == after  # seed 0: nothing rewritten (checkpoints, results)
  assert results["runs_reused"] == 1 and results["runs_trained"] == 1
  assert results["runs"]["vicreg"]["seed0"]["reused"] is True
  accs = [_load(wd / "vicreg" / f"seed{s}" / "results.json")["trained"]["linear_top1"]
          for s in (0, 1)]
  acc = results["accuracy"]["vicreg"]
  assert acc["per_seed"] == accs
  assert acc["mean"] == pytest.approx(np.mean(accs))
  assert acc["std"] == pytest.approx(np.std(accs, ddof=1))
  assert _load(wd / "vicreg" / "seed1" / "config.json")["seed"] == 1
  assert results["claims"] == {} and results["claim_held"] is None
  assert results["verdict"] == "undecided"


def test_old_mean_criterion_against_hand_numbers():
  acc = {"vicreg": {"mean": 90.0, "std": 0.4}, "vicreg+logdet": {"mean": 91.0, "std": 0.5},
         "vicreg+pairdist": {"mean": 90.3, "std": 0.2}, "byol": {"mean": 80.0, "std": 1.0},
         "byol+logdet": {"mean": 79.0, "std": 0.1}}
  c = table1.claims(acc)
  assert set(c) == {"vicreg+logdet", "vicreg+pairdist", "byol+logdet"}
  assert c["vicreg+logdet"]["difference"] == pytest.approx(1.0)
  assert c["vicreg+logdet"]["beats_base"] and c["vicreg+logdet"]["exceeds_seed_std"]
  assert not c["vicreg+pairdist"]["exceeds_seed_std"]  # 0.3 < max(0.2, 0.4)
  assert not c["byol+logdet"]["beats_base"]
  assert table1.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.sqrt(7 / 3)))
  assert table1.mean_std([3.0]) == (3.0, None)


def test_paired_criterion_against_scipy_t_interval():
  from scipy import stats
  base = [88.0, 88.5, 87.9]
  per_seed = {"linear": {"vicreg": base, "vicreg+logdet": [88.6, 89.0, 88.4],
                         "byol": base, "byol+logdet": [87.0, 87.6, 87.1],
                         "byol+pairdist": [88.5, 88.0, 88.4]}}
  c = table1.paired_claims(per_seed)
  d = np.array([0.6, 0.5, 0.5])
  lo, hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
  iv = c["vicreg+logdet"]["linear"]["interval"]
  assert (iv["low"], iv["high"]) == pytest.approx((lo, hi))
  assert c["vicreg+logdet"]["verdict"] == "held"
  assert c["byol+logdet"]["verdict"] == "not held"  # every seed about -1
  assert c["byol+pairdist"]["verdict"] == "undecided"  # +0.5, -0.5, +0.5
  assert table1.claim_verdict(c) == "not held"
  assert table1.claim_verdict({"a": c["vicreg+logdet"]}) == "held"
  # Two seeds: too few for a verdict, however large the difference.
  two = table1.paired_claims({"linear": {"vicreg": [1.0, 2.0],
                                         "vicreg+logdet": [50.0, 60.0]}})
  assert two["vicreg+logdet"]["verdict"] == "undecided"


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_negative_control_variant_identical_to_its_base(noise):
  """A "variant" that is its base (noise 0) or its base plus seed noise: never held."""
  rng = np.random.default_rng(0)
  base = list(88 + rng.normal(0, 0.3, 5))
  variant = [b + noise * e for b, e in zip(base, rng.standard_normal(5))]
  c = table1.paired_claims({"linear": {"vicreg": base, "vicreg+logdet": variant}})
  assert c["vicreg+logdet"]["verdict"] == "undecided"
  assert table1.claim_verdict(c) == "undecided"


def test_balanced_subset_and_coefficient_choice():
  labels = np.repeat(np.arange(4), [100, 50, 10, 3])
  idx = table1.balanced_subset(labels, 0.1, seed=3)
  assert list(np.bincount(labels[idx])) == [10, 5, 1, 1]
  assert len(set(idx)) == len(idx) and np.all(np.diff(idx) > 0)
  assert np.array_equal(idx, table1.balanced_subset(labels, 0.1, seed=3))
  assert not np.array_equal(idx, table1.balanced_subset(labels, 0.1, seed=4))
  assert table1.choose_coefficient({0.5: 80.0, 1.0: 81.0, 2.0: 80.5}) == 1.0
  assert table1.choose_coefficient({0.5: 82.0, 1.0: 81.0, 2.0: 82.0}) in (0.5, 2.0)
  assert table1.choose_coefficient({0.25: 82.0, 2.0: 82.0}) == 2.0  # nearer 1
  with pytest.raises(ValueError):
    table1.balanced_subset(labels, 0.0, seed=0)


def test_validation_probe_uses_only_the_training_split(monkeypatch, tmp_path):
  """Synthetic features: the probe is fit and scored on the training split only."""
  from sslit import evaluate
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 40)
  x = (np.eye(3)[y] * 2 + rng.normal(0, 1, (120, 3))).astype(np.float32)
  asked = []

  def fake_features(run_dir, *, test=True):
    asked.append(test)
    return x, y, None, None, 3
  monkeypatch.setattr(table1, "_run_features", fake_features)
  got = table1.validation_top1(str(tmp_path), step=5, l2=1e-4, steps=20)
  assert asked == [False]  # the test split is never read
  val = table1.balanced_subset(y, 0.1, 0)
  fit = np.setdiff1d(np.arange(120), val)
  want = evaluate.linear_probe(x[fit], y[fit], x[val], y[val], num_classes=3,
                               l2=1e-4, steps=20)["top1"]
  assert got == pytest.approx(want)
  assert _load(tmp_path / "validation.json")["value"]["num_val"] == len(val) == 12
  # Cached: a second call with the same settings computes nothing.
  assert table1.validation_top1(str(tmp_path), step=5, l2=1e-4, steps=20) == got
  assert asked == [False]


def test_select_coefficients_trains_the_grid_and_keeps_the_best(monkeypatch, tmp_path):
  import argparse
  trained = []

  def fake_train(run_dir, overrides, *, scale, label, config=None):
    del scale, label, config
    trained.append((run_dir, overrides["objective_kwargs"]["entropy_coeff"]))
    return {"step": 5}, False, None
  scores = {"x0.5": 70.0, "x1": 71.0, "x2": 72.5, "x8": 72.0, "x2-seed1": 71.5,
            "x8-seed1": 71.0}
  monkeypatch.setattr(table1, "_train_or_reuse", fake_train)
  monkeypatch.setattr(table1, "_probe_settings", lambda result, run_dir: {})
  monkeypatch.setattr(table1, "validation_top1",
                      lambda run_dir: scores[os.path.basename(run_dir)])
  args = argparse.Namespace(workdir=str(tmp_path), scale="smoke", steps=5,
                            dataset=None, eval_steps=20)
  out, error = table1.select_coefficients(args, ["vicreg+logdet"], (0.5, 1.0, 2.0))
  assert error is None
  base = table1.default_entropy_coeff("vicreg+logdet")
  assert [c for _, c in trained] == [0.5 * base, base, 2 * base]
  assert all(os.sep + os.path.join("select", "vicreg+logdet") in d for d, _ in trained)
  c = out["vicreg+logdet"]
  assert c["chosen_multiple"] == 2.0 and c["entropy_coeff"] == 2 * base
  assert c["val_top1"] == {"0.5": 70.0, "1": 71.0, "2": 72.5}
  # --widen-grid: the pick 2 is the grid's top edge, so x8 is tried (validation
  # only) and, lower, leaves 2 as an interior pick; --select-seeds averages seeds.
  trained.clear()
  args.widen_grid, args.select_seeds = True, (0, 1)
  scores.update({"x0.5-seed1": 70.0, "x1-seed1": 71.0})
  out, error = table1.select_coefficients(args, ["vicreg+logdet"], (0.5, 1.0, 2.0))
  c = out["vicreg+logdet"]
  assert c["grid"] == [0.5, 1.0, 2.0, 8.0] and c["chosen_multiple"] == 2.0
  assert c["val_top1"]["2"] == pytest.approx(72.0) and len(trained) == 8


def test_coefficient_override_reaches_the_objective():
  from sslit import objectives
  o = table1.run_overrides("vicreg+pairdist", 0, scale="smoke", entropy_coeff=200.0)
  config = table1._resolved_config("smoke", o)  # pylint: disable=protected-access
  assert config["objective_kwargs"] == {"entropy_coeff": 200.0}
  assert table1.default_entropy_coeff("vicreg+pairdist") == \
      objectives.DEFAULT_ENTROPY_COEFF["pairwise_bhattacharyya"]
  assert table1.default_entropy_coeff("byol+logdet") == \
      objectives.DEFAULT_BYOL_ENTROPY_COEFF["logdet"]
  with pytest.raises(ValueError):
    table1.run_overrides("vicreg", 0, scale="smoke", entropy_coeff=2.0)


def test_full_scale_table_shows_the_spec_sanity_targets():
  methods = list(table1.METHODS)
  results = {"scale": "full", "dataset": "cifar100", "num_steps": 195000, "seeds": 1,
             "methods": methods,
             "accuracy": {m: {"mean": 50.0, "std": None, "per_seed": [50.0]}
                          for m in methods}}
  results["probes"] = {"linear": results["accuracy"]}
  results["claims"] = table1.paired_claims(
      {"linear": {m: a["per_seed"] for m, a in results["accuracy"].items()}})
  rows = {line.split("|")[1].strip(): line
          for line in table1.markdown_table(results).splitlines() if line.startswith("| ")}
  assert "CIFAR-100" in rows["method"] and "target" in rows["method"]
  # SPEC 7.3, CIFAR-100: VICReg 68.54, Barlow 70.90, BYOL 70.46, SimCLR 65.78.
  for label, target in (("VICReg", "68.54"), ("Barlow Twins", "70.90"),
                        ("BYOL", "70.46"), ("SimCLR", "65.78")):
    assert target in rows[label]
  assert "| – |" in rows["VICReg + LogDet"]
  header = table1._target_header("cifar10")  # pylint: disable=protected-access
  for number in ("92.07", "92.10", "92.58", "90.74", "68.54", "70.90", "70.46", "65.78"):
    assert number in header


@pytest.mark.parametrize("method", table1.METHODS)
def test_full_scale_is_configuration_only(method):
  from sslit import objectives, runs
  overrides = table1.run_overrides(method, 2, scale="full")
  config = table1._resolved_config("full", overrides)  # pylint: disable=protected-access
  assert config["objective"] == method and config["seed"] == 2
  assert config["model"]["backbone"] == "resnet18" and config["dataset"] == "cifar10"
  assert config["eval"]["baselines"] == [] and config["monitor_every"] == 0
  assert objectives.get_objective(method, **config["objective_kwargs"]).name == method
  import ml_collections
  model = runs.build_model(ml_collections.ConfigDict(config))
  # BYOL and its variants get the online predictor, the others none.
  assert (model.predictor is not None) == ("byol" in method)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "vicreg,nope"], "nope"),
    (["--methods", ","], "at least one"),
    (["--methods", "vicreg,vicreg"], "twice"),
    (["--steps", "0"], "positive integer"),
    (["--seeds", "0"], "--seeds"),
    (["--scale", "huge"], "huge"),
    (["--coef-grid", "1,-2"], "--coef-grid"),
])
def test_bad_options_exit_non_zero_with_a_message(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    table1.main(["--workdir", str(tmp_path)] + argv)
  assert e.value.code != 0
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "results.json")


def test_workdir_holding_another_config_fails_clearly(first, capsys):
  wd = first[0]
  before = _run_files(wd / "vicreg" / "seed0")
  code = table1.main(["--scale", "smoke", "--steps", "6", "--eval-steps", "20",
                      "--workdir", str(wd), "--methods", "vicreg"])
  assert code == 1
  assert "different config" in capsys.readouterr().err
  assert _run_files(wd / "vicreg" / "seed0") == before


def test_saved_pieces_alone_are_reused_on_a_new_machine(first, tmp_path):
  """``pieces save`` keeps the small JSON files only; ``restore`` into an empty
  workdir and the same command trains nothing and reports the same accuracies."""
  from experiments import pieces
  wd, _, results, _ = first
  store = tmp_path / "store"
  assert pieces.main(["save", str(wd), "--store", str(store)]) == 0
  kept = [os.path.join(r, f) for r, _, fs in os.walk(store) for f in fs]
  assert kept and all(p.endswith(".json") and "checkpoints" not in p for p in kept)
  new = tmp_path / "new"
  assert pieces.main(["restore", str(new), "--store", str(store)]) == 0
  code = table1.main(ARGS + ["--workdir", str(new), "--methods", ",".join(PAIR)])
  again = _load(new / "results.json")
  assert code == 0 and again["runs_trained"] == 0
  for m in PAIR:
    assert again["accuracy"][m]["per_seed"] == results["accuracy"][m]["per_seed"]
    assert not (new / m / "seed0" / "checkpoints").exists()
  # Restore keeps what is there; a missing store is a clear error.
  assert pieces.restore(str(new), str(store)) == []
  assert pieces.main(["restore", str(new), "--store", str(tmp_path / "none")]) == 2
