"""Tests of experiments/claims.py and the experiments' criterion functions on plain
numbers: the rank test against scipy, controls, the intervention criterion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from experiments import claims
from experiments import vicreg_logdet as vl


def _exact_p(xs, ys):
  """Slow oracle: enumerate every joint ordering of each y (itertools)."""
  rhos = [stats.spearmanr(x, y).statistic for x, y in zip(xs, ys)]
  observed = np.mean(rhos)
  null = []
  for perms in itertools.product(*[list(itertools.permutations(y)) for y in ys]):
    null.append(np.mean([stats.spearmanr(x, p).statistic for x, p in zip(xs, perms)]))
  null = np.asarray(null)
  return observed, np.mean(null >= observed - 1e-12), np.mean(null <= observed + 1e-12)


def test_rank_trend_test_with_series_of_different_usable_lengths():
  """A non-finite point shortens one series; the null uses each series' length."""
  x1, y1 = [0, 1, 2, 3, 4], [0.1, 0.5, 0.4, 0.9, 1.3]
  x2, y2 = [0, 1, 2, 3], [2.0, 1.0, float("nan"), 3.0]
  test = claims.rank_trend_test([(x1, y1), (x2, y2)])
  assert test["n_per_series"] == [5, 3] and test["method"] == "exact"
  rho, p_greater, p_less = _exact_p([x1, [0, 1, 3]], [y1, [2.0, 1.0, 3.0]])
  assert test["rho_mean"] == pytest.approx(rho)
  assert test["p_greater"] == pytest.approx(p_greater)
  assert test["p_less"] == pytest.approx(p_less)


def test_control_entries_are_validated():
  c = claims.control(name="a", what="b", verdict="undecided", evidence={"x": 1})
  s = claims.summary(claim="c", criterion="k", verdict="held", result="r",
                     negative_controls=[c])
  assert s["negative_controls"] == [c] and "positive_controls" not in s
  with pytest.raises(ValueError, match="verdict"):
    claims.control(name="a", what="b", verdict="maybe")
  with pytest.raises(ValueError, match="exactly"):
    claims.summary(claim="c", criterion="k", verdict="held", result="r",
                   negative_controls=[{"name": "a", "verdict": "held"}])


def _values(per_family):
  return {"proj": {fam: {q: per_family[fam] for q in vl.INTERVENTION_QUANTITIES}
                   for fam in vl.FAMILIES}}


def test_intervention_holds_when_every_seed_rises_and_fails_when_it_falls():
  rising = [[1.0, 2.0, 3.0], [0.5, 0.9, 1.7], [2.0, 2.5, 2.6]]
  d = vl.intervention_decision(_values({"covariance": rising, "variance": rising}))
  fam = d["outputs"]["proj"]["families"]["covariance"]
  assert fam["logdet_corr"]["p_greater"] == pytest.approx(1 / 216)
  assert d["verdict"] == "held"
  falling = [v[::-1] for v in rising]
  d = vl.intervention_decision(_values({"covariance": rising, "variance": falling}))
  assert d["outputs"]["proj"]["families"]["variance"]["verdict"] == "not held"
  assert d["verdict"] == "not held"
  mixed = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 1.0, 3.0]]
  d = vl.intervention_decision(_values({"covariance": mixed, "variance": rising}))
  assert d["verdict"] == "undecided"


def test_control_values_deal_nine_networks_to_three_seeds_by_three_levels():
  nets = [{"proj": {"logdet_corr": float(i), "entropy_logdet": 10.0 + i}}
          for i in range(9)]
  values = vl.control_values(nets, seed=0)
  for fam in vl.FAMILIES:
    dealt = sorted(v for row in values["proj"][fam]["logdet_corr"] for v in row)
    assert dealt == [float(i) for i in range(9)]  # each network once per family
  assert values == vl.control_values(nets, seed=0)
  with pytest.raises(ValueError, match="9 networks"):
    vl.control_values(nets[:8])


def test_run_values_share_the_base_arm_between_families():
  per_run = {a: [{"proj": {"logdet_corr": 10.0 * j + s, "entropy_logdet": -s}}
                 for s in range(2)] for j, a in enumerate(vl.INTERVENTION_ARMS)}
  values = vl.run_values(per_run)
  cov = values["proj"]["covariance"]["logdet_corr"]
  var = values["proj"]["variance"]["logdet_corr"]
  assert [row[1] for row in cov] == [row[1] for row in var] == [0.0, 1.0]  # "base"
  assert cov[1] == [11.0, 1.0, 21.0]  # cov_x0, base, cov_x4 of seed 1


def test_intervention_overrides_scale_one_weight():
  base = vl.intervention_overrides("base", 2, scale="cpu")["objective_kwargs"]
  assert base == {"sim_coeff": 25.0, "std_coeff": 100.0, "cov_coeff": 1.0}
  x4 = vl.intervention_overrides("cov_x4", 2, scale="cpu")
  assert x4["objective_kwargs"] == {**base, "cov_coeff": 4.0} and x4["seed"] == 2
  assert vl.intervention_overrides("var_x0", 0, scale="smoke")["objective_kwargs"][
      "std_coeff"] == 0.0
  with pytest.raises(ValueError, match="arm"):
    vl.intervention_overrides("cov_x2", 0, scale="cpu")


def test_random_feature_series_has_no_training_and_the_experiments_keys():
  images = np.random.default_rng(0).normal(size=(64, 20))
  s = vl.random_feature_series(images, seed=1, checkpoints=4, width=8)
  assert s["steps"] == [0, 1, 2, 3]
  assert all(len(s[k]) == 4 for k in ("covariance", "variance", "logdet_corr_f64",
                                       "entropy_logdet"))
  assert s == vl.random_feature_series(images, seed=1, checkpoints=4, width=8)


def test_holm_against_the_step_down_definition():
  p = [0.01, 0.04, 0.03, 0.005]
  # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
  assert claims.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert claims.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
  with pytest.raises(ValueError):
    claims.holm([0.1, 1.5])


def test_paired_test_and_holm_verdicts_against_scipy():
  base = [89.0, 88.5, 89.2, 88.9, 89.1]
  up = [b + d for b, d in zip(base, [0.6, 0.5, 0.7, 0.4, 0.65])]
  noise = [b + d for b, d in zip(base, [0.3, -0.2, 0.1, -0.4, 0.2])]
  t_up = claims.paired_test(up, base)
  assert t_up["p_t"] == pytest.approx(stats.ttest_rel(up, base).pvalue)
  assert t_up["p_wilcoxon"] == pytest.approx(0.0625)  # 5 positive of 5, exact
  verdicts = claims.holm_verdicts({"up": t_up, "noise": claims.paired_test(noise,
                                                                          base)})
  assert verdicts == {"up": "held", "noise": "undecided"}
  down = claims.paired_test(base, up)
  assert claims.holm_verdicts({"down": down})["down"] == "not held"
  assert claims.holm_verdicts({"few": claims.paired_test(up[:2], base[:2])}) == {
      "few": "undecided"}


def test_collect_takes_the_complete_seeds_and_trains_nothing(tmp_path):
  """run_intervention(train=False) on measured pieces only (no run directory)."""
  from experiments import common
  root = tmp_path / "intervention"
  examples = vl.INTERVENTION_SCALE["smoke"]["examples"]
  q = lambda v: {"proj": {"logdet_corr": v, "entropy_logdet": -v}}
  for seed, arms in ((0, vl.INTERVENTION_ARMS), (1, ["base", "cov_x0"])):
    for j, arm in enumerate(arms):
      overrides = vl.intervention_overrides(arm, seed, scale="smoke")
      common.cached_json(str(root / f"{arm}-seed{seed}" / "quantities.json"),
                         {"arm": arm, "seed": seed, "examples": examples,
                          "overrides": overrides},
                         lambda j=j: {"step": 30, "quantities": q(float(j))})
  first = str(root / "base-seed0")
  for c in vl.CONTROL_SEEDS:
    common.cached_json(str(root / "control" / f"net{c}.json"),
                       {"seed": c, "examples": examples, "run": first},
                       lambda c=c: q(float(c)))
  ev = vl.run_intervention(str(tmp_path), scale="smoke", seeds=range(2), train=False)
  assert ev["settings"]["seeds"] == [0] and ev["settings"]["planned_seeds"] == [0, 1]
  assert ev["values"]["proj"]["covariance"]["logdet_corr"] == [[1.0, 0.0, 2.0]]
  assert not (root / "base-seed0" / "config.json").exists()  # nothing trained
  text = vl.summarize({"correlation": [{"seed": 0, "outputs": {"proj": {
      "steps": [0, 1, 2], "covariance": [3.0, 2.0, 1.0], "variance": [3.0, 2.0, 1.0],
      "logdet_corr_f64": [1.0, 2.0, 3.0], "entropy_logdet": [1.0, 2.0, 3.0]}}}],
      "feature_control": None, "intervention": ev})["result"]
  assert "1 seed(s) (of 2 pre-registered)" in text


def test_table1_holm_criterion_and_its_aa_control():
  from experiments import table1
  base = [89.0, 88.6, 89.3, 88.9, 89.2, 88.8, 89.1, 89.0, 88.7, 89.4]
  lift = [0.5, 0.6, 0.4, 0.7, 0.5, 0.45, 0.55, 0.6, 0.5, 0.65]
  noise = [0.3, -0.4, 0.1, -0.2, 0.25, -0.1, 0.0, -0.3, 0.2, 0.05]
  ev = {"dataset": "fashion_mnist", "num_steps": 2650, "seeds": 10,
        "criterion": "holm",
        "per_seed": {"linear": {"vicreg": base,
                                "vicreg+logdet": [b + d for b, d in zip(base, lift)],
                                "vicreg+pairdist": [b + d for b, d in zip(base, noise)]}},
        "aa": {"method": "vicreg", "seeds": list(range(20, 30)),
               "base_seeds": list(range(10, 20)),
               "per_seed": {"linear": [b + d for b, d in zip(base, noise[::-1])]}}}
  s = table1.summarize(ev)
  assert s["criterion"] == table1.HOLM_CRITERION
  p = {v: stats.ttest_rel(ev["per_seed"]["linear"][v], base).pvalue
       for v in ("vicreg+logdet", "vicreg+pairdist")}
  adjusted = claims.holm([p["vicreg+logdet"], p["vicreg+pairdist"]])
  assert adjusted[0] < 0.05 < adjusted[1]
  assert s["evidence"]["vicreg+logdet"]["p_t"] == pytest.approx(p["vicreg+logdet"])
  assert s["verdict"] == "undecided"  # pairdist undecided, logdet held
  assert [c["verdict"] for c in s["negative_controls"]] == ["undecided"]
  ev["per_seed"]["linear"]["vicreg+pairdist"] = [b + d for b, d in zip(base, lift)]
  assert table1.summarize(ev)["verdict"] == "held"
  ev["aa"]["per_seed"]["linear"] = [b + d for b, d in zip(base, lift)]
  assert table1.summarize(ev)["negative_controls"][0]["verdict"] == "held"


def test_table1_grid_widens_beyond_the_edge_it_picked():
  from experiments import table1
  assert table1.widened([0.5, 1.0, 2.0], 2.0) == [0.5, 1.0, 2.0, 8.0]
  assert table1.widened([0.5, 1.0, 2.0], 0.5) == [0.125, 0.5, 1.0, 2.0]
  assert table1.widened([0.5, 1.0, 2.0], 1.0) == [0.5, 1.0, 2.0]
