"""The sslit command: config overrides, clear failures, the smoke run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sslit import cli
from sslit import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = ml_collections.ConfigDict()
  c.lr = 0.1
  c.steps = 10
  c.name = "x"
  c.flag = False
  c.widths = (1, 2)
  c.model = ml_collections.ConfigDict({"depth": 3, "kind": "mlp"})
  return c


def test_overrides_parse_by_field_type():
  c = config_lib.apply_overrides(_config(), [("lr", "3"), ("steps", "7"), ("name", "y z"),
                                      ("flag", "true"), ("widths", "(4, 5, 6)"),
                                      ("model.depth", "5")])
  assert c.lr == 3.0 and isinstance(c.lr, float)
  assert c.steps == 7 and c.name == "y z" and c.flag is True
  assert c.widths == (4, 5, 6) and c.model.depth == 5


def test_a_new_objective_starts_from_its_own_options(capsys):
  from sslit import objectives  # pylint: disable=g-import-not-at-top
  default_kwargs = config_lib.plain(config_lib.load_config("default").objective_kwargs)
  # The default's VICReg weights are refused by SimCLR (what the rule prevents) ...
  with pytest.raises(ValueError, match="std_coeff"):
    objectives.get_objective("simclr", **default_kwargs)
  # ... so overriding only the objective drops them, and says so.
  config = config_lib.apply_overrides(config_lib.load_config("default"),
                                      [("objective", "simclr")])
  assert config.objective == "simclr" and config_lib.plain(config.objective_kwargs) == {}
  assert "std_coeff" in capsys.readouterr().err
  assert objectives.get_objective(config.objective).name == "simclr"
  # Options given with the objective, in either order, are kept; so is everything
  # when the objective does not change.
  for pairs in ([("objective_kwargs", '{"temperature": 0.2}'), ("objective", "simclr")],
                [("objective", "simclr"), ("objective_kwargs", '{"temperature": 0.2}')]):
    kept = config_lib.apply_overrides(config_lib.load_config("default"), pairs)
    assert config_lib.plain(kept.objective_kwargs) == {"temperature": 0.2}
  same = config_lib.apply_overrides(config_lib.load_config("default"),
                                    {"objective": "vicreg", "seed": 1})
  assert config_lib.plain(same.objective_kwargs) == default_kwargs
  assert capsys.readouterr().err == ""


def test_unknown_field_names_the_closest_ones():
  with pytest.raises(config_lib.ConfigError, match=r"unknown config field 'model\.dept'.*model\.depth"):
    config_lib.apply_overrides(_config(), [("model.dept", "2")])
  with pytest.raises(config_lib.ConfigError, match="expects a int"):
    config_lib.apply_overrides(_config(), [("steps", "1.5")])
  with pytest.raises(config_lib.ConfigError, match="boolean"):
    config_lib.apply_overrides(_config(), [("flag", "maybe")])


def test_a_bare_word_sets_a_tuple_field_and_names_a_projector():
  from sslit import runs  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("smoke")
  config_lib.apply_overrides(config, [("eval.baselines", "raw"),
                                      ("model.projector", "dino"),
                                      ("objective", "dino"), ("model.dino_head", "16")])
  assert config.eval.baselines == ("raw",)
  head = runs.build_model(config).projector
  assert (head.widths, head.batch_norm, head.activation) == ((2048, 2048, 256), False,
                                                             "gelu_exact")
  with pytest.raises(config_lib.ConfigError, match="not a valid tuple literal"):
    config_lib.apply_overrides(config, [("model.projector", "(16, 32")])


def test_shipped_configs_load_and_default_is_the_main_job():
  default = config_lib.load_config(config_lib.DEFAULT_CONFIG)
  assert default.objective == "vicreg" and default.dataset == "fashion_mnist"
  assert default.model.backbone == "convnet" and default.optimizer == "adamw"
  # The main job is the recipe measured in docs/recipe.md, field for field.
  def recipe(name):
    c = config_lib.load_config(
        os.path.join(ROOT, "experiments", "configs", name + ".py")).to_dict()
    c.pop("name")
    return c

  def differ(a, b):
    return sorted(k for k in a if a[k] != b[k])

  shipped = default.to_dict()
  shipped.pop("name")
  assert shipped == recipe("recipe_px16_p512_2650")
  # R16 (the main job for an hour on 2026-12-07) differs in its projector and steps.
  r16 = recipe("recipe_px16_1950")
  assert differ(shipped, r16) == ["model", "num_steps"]
  assert differ(shipped["model"], r16["model"]) == ["projector"]
  assert (r16["model"]["projector"], r16["num_steps"]) == ((1024, 1024), 1950)
  assert (shipped["model"]["projector"], shipped["num_steps"]) == ((512, 512), 2650)
  # The main job of 2026-12-06 (F9) differs from R16 in its views' size, steps, probe.
  f9 = recipe("recipe_std100_900")
  assert differ(r16, f9) == ["augment_options", "eval", "num_steps"]
  assert differ(r16["eval"], f9["eval"]) == ["calibrate"]
  assert (f9["augment_options"], f9["num_steps"], f9["eval"]["calibrate"]) == (
      {}, 900, False)
  assert (r16["augment_options"], r16["num_steps"]) == ({"image_size": 16}, 1950)
  # The main job until 2026-12-06 (the experiments' cpu scale) differs from F9 in two.
  before = recipe("recipe_b128_simclr_w200")
  assert differ(f9, before) == ["num_steps", "objective_kwargs"]
  assert (before["num_steps"], before["objective_kwargs"]) == (2000, {})
  smoke = config_lib.load_config("smoke")
  assert smoke.dataset == "digits" and smoke.model.backbone == "mlp"
  assert sorted(smoke) == sorted(default)  # same fields, other values
  c = config_lib.apply_overrides(default, [("model.backbone_kwargs", "{'widths': (8,)}")])
  assert c.model.backbone_kwargs.to_dict() == {"widths": (8,)}


def _run(argv, capsys):
  code = cli.main(argv)
  captured = capsys.readouterr()
  return code, captured.out + captured.err


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--config", "smoke", "--config.learning_rat=1"], 2,
     "unknown config field 'learning_rat'.*learning_rate"),
    (["train", "--config", "smoke", "--config.objective=vicrge"], 1,
     "unknown objective 'vicrge'"),
    (["train", "--config", "smoke", "--config.cpu_devices=2", "--config.batch_size=63"], 1,
     "not divisible by the number of devices"),
    (["train", "--config", "smoke", "--config.dataset=cifar10"], 1,
     "cifar10.*not prepared"),
    (["train", "--config", "nonexistent"], 2, "config file .* not found"),
    (["train", "--bogus"], 2, "unknown option '--bogus'"),
    (["frobnicate"], 2, "unknown command 'frobnicate'"),
    (["eval", "--workdir", "/nonexistent/run"], 2, "no config.json"),
    # Every value a run depends on is checked before anything is written.
    (["train", "--config", "smoke", "--config.num_steps=0"], 1, "num_steps must be >= 1"),
    (["train", "--config", "smoke", "--config.warmup_steps=100"], 1,
     r"warmup_steps must be >= 0 and <= num_steps \(30\), got 100"),
    (["train", "--config", "smoke", "--config.log_every=0"], 1, "log_every must be >= 1"),
    (["train", "--config", "smoke", "--config.batch_size=100000"], 1,
     "batch_size=100000 is larger than the data set"),
    (["train", "--config", "smoke", "--config.batch_size=0"], 1, "batch_size must be >= 1"),
    (["train", "--config", "smoke", "--config.optimizer=adamx"], 1,
     "optimizer must be one of"),
    (["train", "--config", "smoke", "--config.augment=bogus"], 1,
     "unknown augmentation preset 'bogus'"),
    (["train", "--config", "smoke", "--config.keep_checkpoints=0"], 1,
     "keep_checkpoints must be >= 1"),
    (["train", "--config", "smoke", "--config.learning_rate=-1"], 1,
     "learning_rate must be > 0"),
    (["train", "--config", "smoke", "--config.checkpoint_every=-5"], 1,
     "checkpoint_every must be >= 0"),
    (["train", "--config", "smoke", "--config.model.dtype=float33"], 2,
     "model.dtype='float33' is not a dtype"),
    (["train", "--config", "smoke", "--config.model.backbone=resnet7"], 1,
     "unknown backbone 'resnet7'"),
    (["train", "--config", "smoke", "--config.objective_kwargs={'bogus': 1}"], 1,
     r"unknown option\(s\) \['bogus'\]"),
    (["analyze", "--workdir", "/nonexistent/run", "--num_examples=abc"], 2,
     "--num_examples expects a whole number, got 'abc'"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(argv, code, message, tmp_path,
                                                       capsys):
  workdir = tmp_path / "run"
  if argv[0] == "train":
    argv = argv + ["--workdir", str(workdir)]
  got, out = _run(argv, capsys)
  assert got == code, out
  assert __import__("re").search(message, out, flags=__import__("re").S), out
  assert not workdir.exists()  # nothing written before the inputs were checked


def test_reproduce_launches_the_experiments_package(monkeypatch, capfd):
  monkeypatch.chdir(ROOT)
  assert cli.main(["reproduce", "no_such_experiment"]) == 2
  assert "unknown experiment 'no_such_experiment'" in capfd.readouterr().err


def test_reproduce_outside_a_checkout_says_where_to_run_it(monkeypatch, tmp_path,
                                                           capsys):
  monkeypatch.chdir(tmp_path)
  code, out = _run(["reproduce", "table1"], capsys)
  assert code == 2 and "repository root" in out


def test_eval_of_a_run_without_checkpoint_says_so_in_one_line(tmp_path, capfd):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(
      config_lib.to_dict(config_lib.load_config("smoke"))))
  assert cli.main(["eval", "--workdir", str(run)]) == 1
  err = capfd.readouterr().err
  assert err.strip() == f"sslit: error: no checkpoint in {run}/checkpoints; run sslit " \
      "train first.", err
  assert cli.main(["eval", "--workdir", str(run), "--verbose"]) == 1
  assert "Traceback" in capfd.readouterr().err  # the full trace, on request


def test_config_errors_name_the_problem(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  with pytest.raises(config_lib.ConfigError, match="syntax error at line 1"):
    config_lib.load_config(str(bad))
  none = tmp_path / "none.py"
  none.write_text("x = 1\n")
  with pytest.raises(config_lib.ConfigError, match="defines no get_config"):
    config_lib.load_config(str(none))
  # Typed values from the run API are checked like command-line text.
  c = config_lib.apply_overrides(_config(), {"steps": 3, "lr": 2, "widths": [7]})
  assert c.steps == 3 and c.lr == 2.0 and c.widths == (7,)
  with pytest.raises(config_lib.ConfigError, match="expects a int"):
    config_lib.apply_overrides(_config(), {"steps": 1.5})


def test_unwritable_workdir_exits_1(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("keep me")
  code, out = _run(["train", "--config", "smoke", "--workdir", str(blocker / "run")],
                   capsys)
  assert code == 1 and "writable" in out
  assert blocker.read_text() == "keep me"


def test_smoke_train_end_to_end_then_eval_and_resume(tmp_path, capsys):
  workdir = tmp_path / "run"
  argv = ["train", "--config", "smoke", "--workdir", str(workdir),
          "--config.eval.baselines=('raw',)"]
  code, out = _run(argv, capsys)
  assert code == 0, out
  config = json.loads((workdir / "config.json").read_text())
  assert config["dataset"] == "digits" and config["eval"]["baselines"] == ["raw"]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [l["step"] for l in lines if "loss" in l]
  assert steps == [10, 20, 30]
  results = json.loads((workdir / "results.json").read_text())
  for name in ("trained", "raw_pixels"):
    assert 10.0 < results[name]["linear_top1"] <= 100.0  # percent, above chance
  assert any("eval/trained/linear_top1" in l for l in lines)
  # The information monitor ran on its own schedule (every 15 steps and at the end).
  monitored = [l for l in lines if "monitor/rep/entropy_logdet" in l]
  assert [l["step"] for l in monitored] == [15, 30]
  for l in monitored:
    assert l["monitor/rep/entropy_pairwise_bhattacharyya"] <= (
        l["monitor/rep/entropy_pairwise_kl"] + 1e-4)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
  assert "trained" in out and "raw_pixels" in out
  assert "monitor/rep/entropy_logdet" in (workdir / "metrics.csv").read_text()

  # The same command again: resumes at the end, trains nothing, keeps everything
  # (evaluation settings may change on resume).
  code, out = _run(argv + ["--config.eval.enabled=false", "--config.report=false"], capsys)
  assert code == 0, out
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]
  lines2 = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines2 if "loss" in l] == steps

  # A different training config in the same workdir is refused; config.json kept.
  before = (workdir / "config.json").read_text()
  code, out = _run(argv + ["--config.learning_rate=0.5"], capsys)
  assert code == 2 and "different config" in out and "learning_rate" in out
  assert (workdir / "config.json").read_text() == before

  # sslit eval on the run's newest checkpoint reproduces the trained probe.
  code, out = _run(["eval", "--workdir", str(workdir)], capsys)
  assert code == 0, out
  again = json.loads((workdir / "results.json").read_text())
  np.testing.assert_allclose(again["trained"]["linear_top1"],
                             results["trained"]["linear_top1"], atol=1e-6)

  # sslit analyze on the newest checkpoint: the monitor plus the CPA information.
  code, out = _run(["analyze", "--workdir", str(workdir), "--num_examples", "64"],
                   capsys)
  assert code == 0, out
  analysis = json.loads((workdir / "analysis.json").read_text())
  assert analysis["step"] == 30
  assert np.isfinite(analysis["monitor/rep/entropy_logdet"])
  assert np.isfinite(analysis["monitor/cpa/h_cond"])
  assert 0 < analysis["monitor/cpa/min_rank"] <= 32  # the 32-d representation
  # With output noise (the analyze default) the bounds exist even for rank-deficient
  # slopes, and the information bounds lie in [0, log n].
  assert analysis["monitor/cpa/output_noise"] > 0
  assert analysis["monitor/cpa/h_lower"] <= analysis["monitor/cpa/h_upper"] + 1e-4
  assert -1e-4 <= analysis["monitor/cpa/mi_lower"] <= np.log(64) + 1e-4

  # sslit embed: the representation and projector output of the first 100 test
  # images, equal to the network applied directly to the preprocessed images.
  out_path = tmp_path / "emb.npz"
  code, out = _run(["embed", "--workdir", str(workdir), "--outputs", "rep,proj",
                    "--num_examples", "100", "--out", str(out_path)], capsys)
  assert code == 0, out
  emb = np.load(out_path)
  assert emb["rep"].shape == (100, 32) and emb["proj"].shape == (100, 64)
  assert int(emb["step"]) == 30
  from sslit import data, models, runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(workdir)
  images, labels = run.test_ds.get(np.arange(100))
  x = data.preprocess(images, run.train_ds.mean, run.train_ds.std)
  np.testing.assert_array_equal(emb["labels"], labels)
  for o in ("rep", "proj"):
    want = models.make_apply_fn(run.model, o)(run.variables, x)
    np.testing.assert_allclose(emb[o], want, rtol=1e-5, atol=1e-5)
  # With eval.calibrate the export is the network the probe sees: BatchNorm
  # statistics calibrated on unaugmented training batches.
  from sslit import features  # pylint: disable=g-import-not-at-top
  run.config.eval.calibrate = True
  path = runs.embed(run, outputs=("proj",), max_examples=100, progress=False,
                    path=tmp_path / "calibrated.npz")
  calibrated = features.calibrated_variables(
      run.model, run.variables, run.train_ds,
      num_batches=int(run.config.eval.calibration_batches))
  want = models.make_apply_fn(run.model, "proj")(calibrated, x)
  np.testing.assert_allclose(np.load(path)["proj"], want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(want, emb["proj"], atol=1e-3)
  code, out = _run(["embed", "--workdir", str(workdir), "--outputs", "nope"], capsys)
  assert code == 1 and "nope" in out

  # Everything in metrics.jsonl (training, offline evaluation, analysis) is also in
  # the TensorBoard events, read back with tensorboard's own reader.
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"),
                                           size_guidance={"scalars": 0})
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  for tag in ("loss", "eval/trained/linear_top1", "eval/raw_pixels/linear_top1",
              "monitor/cpa/h_cond"):
    assert tag in tags, sorted(tags)
  events = acc.Scalars("eval/trained/linear_top1")  # sslit train, then sslit eval
  assert [e.step for e in events] == [30, 30]
  np.testing.assert_allclose([e.value for e in events],
                             2 * [again["trained"]["linear_top1"]], rtol=1e-6)

  # An optimisation setting may change on request only; the change is recorded.
  code, out = _run(argv + ["--config.num_steps=40", "--config.eval.enabled=false",
                           "--config.report=false"], capsys)
  assert code == 2 and "--resume_with_changes" in out
  code, out = _run(argv + ["--config.num_steps=40", "--config.eval.enabled=false",
                           "--config.report=false", "--resume_with_changes"], capsys)
  assert code == 0, out
  assert "resuming with changed settings: num_steps 30 -> 40" in out
  history = [json.loads(l) for l in
             (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history[-1]["changed"] == {"num_steps": [30, 40]}
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "30", "40"]

  # A second sslit train on a workdir in use exits at once, naming the holder.
  from sslit import rundir  # pylint: disable=g-import-not-at-top
  with rundir.RunLock(workdir):
    code, out = _run(argv + ["--config.num_steps=40"], capsys)
  assert code == 1 and f"in use by pid {os.getpid()}" in out


def test_command_line_entry_point_exit_status(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "sslit.cli", "train", "--config.no_such_field=1",
       "--workdir", str(tmp_path / "run")],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "unknown config field 'no_such_field'" in proc.stderr
  assert not (tmp_path / "run").exists()


def test_undefined_monitor_quantities_are_reported_not_plotted(tmp_path, capsys):
  """n <= k on the monitor subset: no -inf in metrics, report or plots, a reason."""
  workdir = tmp_path / "run"
  code, out = _run(["train", "--config", "smoke", "--workdir", str(workdir),
                    "--config.monitor_examples=16", "--config.num_steps=15",
                    "--config.eval.enabled=false"], capsys)
  assert code == 0, out
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  monitored = [l for l in lines if "monitor/proj/undefined" in l]
  assert monitored and "n=16 examples in k=64 dimensions" in \
      monitored[0]["monitor/proj/undefined"]
  assert all("monitor/proj/entropy_gaussian" not in l for l in lines)
  assert "-inf" not in (workdir / "report.md").read_text()


def test_a_full_disk_is_one_line_and_keeps_the_checkpoints(tmp_path, capsys,
                                                          monkeypatch):
  """ENOSPC while saving the second checkpoint: one line, the first one kept."""
  import errno  # pylint: disable=g-import-not-at-top
  from sslit import checkpoint  # pylint: disable=g-import-not-at-top
  save = checkpoint.CheckpointManager.save

  def full_after_first(self, step, *args, **kwargs):
    if step > 10:
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run"))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.CheckpointManager, "save", full_after_first)
  code, out = _run(["train", "--config", "smoke", "--workdir", str(tmp_path / "run"),
                    "--config.num_steps=20", "--config.monitor_every=0"], capsys)
  err = [l for l in out.splitlines() if l.startswith("sslit: error")]
  assert code == 1 and len(err) == 1 and "no space left" in err[0], out
  assert "Traceback" not in out
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["10"]
