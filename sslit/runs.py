"""The run API: from a config to a trained, evaluated, analysed run directory.

What the ``sslit`` command does, as functions of a config object
(``ml_collections.ConfigDict``, see ``sslit.config``), for scripts and experiments:

* :func:`train` — ``train(config, workdir)``: check everything, write
  ``config.json``, pretrain (resuming from the newest checkpoint), the offline
  evaluation (``results.json``) and ``report.md``;
* :func:`open_run` — a run directory opened for analysis: config, data, model and
  the variables of a checkpoint (:func:`restore_variables`,
  :func:`checkpoint_steps`);
* :func:`offline_eval` — linear probe (and kNN) of a run's network and of the
  baselines (the same network at random initialisation, raw pixels);
* :func:`make_monitor` / :func:`analyze` — the information and bound monitor
  (``sslit.monitor``) of a run, with the CPA noise model of ``config.analysis``;
* the builders the above share: :func:`start_devices`, :func:`make_mesh`,
  :func:`build_model`, :func:`load_datasets`, :func:`fit_options`.

A run directory holds ``config.json``, ``checkpoints/``, ``metrics.jsonl``
(``sslit.metrics``), ``results.json``, ``analysis.json`` and ``report.md``.
Nothing here imports JAX before :func:`start_devices` has set the virtual CPU
device count: JAX is imported inside the builders, after it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import ml_collections

from sslit import config as config_lib
from sslit import rundir

__all__ = ["Run", "TrainResult", "train", "open_run", "restore_variables",
           "checkpoint_steps", "offline_eval", "make_monitor", "analyze",
           "start_devices", "make_mesh", "build_model", "load_datasets",
           "fit_options", "augmentation", "summary", "embed",
           "start_distributed", "open_torch_run", "target_of", "target_variables",
           "probed_variables"]

ConfigDict = ml_collections.ConfigDict
_NO_TARGET = ("eval.target=True but objective {!r} keeps no target network in this run: "
              "BYOL, MoCo and DINO have one; the others need average_weights > 0 during "
              "training.")

# JAX, and every sslit module that imports it, is imported inside the functions
# below (after start_devices): the virtual CPU device count is an XLA flag that
# must be set before JAX starts.
# pylint: disable=g-import-not-at-top,import-outside-toplevel


def start_devices(config: ConfigDict) -> None:
  """Set ``config.cpu_devices`` virtual CPU devices (before JAX starts; 0: leave)."""
  n = int(config.get("cpu_devices", 0) or 0)
  if n > 0:
    from sslit import parallel
    parallel.set_cpu_device_count(n)


def make_mesh(config: ConfigDict):
  """The data-parallel mesh of a run: all devices, or ``cpu_devices`` of the CPU."""
  import jax
  from sslit import parallel
  devices = jax.devices()
  n = int(config.get("cpu_devices", 0) or 0)
  if n > 0 and jax.process_count() == 1 and devices[0].platform == "cpu":
    devices = devices[:n]
  return parallel.make_mesh(devices)


def build_model(config: ConfigDict):
  """The ``sslit.models`` network of ``config.model``, with the heads the objective needs.

  ``model.predictor=False`` gives BYOL and MoCo v3 BYOL's predictor (4096-BN-ReLU-p)
  and SimSiam the paper's bottleneck predictor (hidden width ``p // 4``), ``p`` the
  projector's output width; SwAV gets ``model.prototypes`` prototypes (0:
  ``min(3000, batch_size // 2)``: without a queue the Sinkhorn equipartition runs
  over one batch, which should hold more samples than prototypes); DINO gets a
  weight-normalised head of ``model.dino_head`` outputs on its projector (0: the
  projector's last layer gives the logits), with a trainable gain per output when
  ``model.dino_head_gain``. W-MSE whitens
  groups of ``w`` rows (``objective_kwargs.whitening_size``, default the batch) and
  needs ``w`` greater than the embedding width: a projector (widths) whose last
  width is at least ``w`` ends at ``w // 2`` instead. ``model.projector=none``: no
  projector (the objective sees the representation).
  """
  import jax.numpy as jnp
  from sslit import methods, models, objectives
  m = config.model
  projector, predictor = m.projector, m.predictor
  if isinstance(projector, (list, tuple)) and len(projector) == 1 and isinstance(
      projector[0], str):  # a layout by name, e.g. --config.model.projector=dino
    projector = None if projector[0] == "none" else projector[0]  # none: rep itself
  elif isinstance(projector, (list, tuple)):
    try:
      projector = tuple(int(w) for w in projector)
    except ValueError:
      raise config_lib.ConfigError(
          f"model.projector must be widths or one of the names "
          f"{sorted(models.PROJECTORS)}, got {tuple(projector)!r}.") from None
  if isinstance(predictor, (list, tuple)):
    predictor = tuple(int(w) for w in predictor)
  try:
    objective = objectives.get_objective(config.objective)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  method = methods.get_method(objective.kind)
  if objective.name == "wmse" and isinstance(projector, tuple):
    group = int(config_lib.plain(config.objective_kwargs).get("whitening_size") or
                config.batch_size)
    if projector[-1] >= group:
      projector = projector[:-1] + (max(1, group // 2),)
  heads = method.heads(projector)  # the heads the method needs
  if heads.get("predictor") and predictor is False:
    predictor = heads["predictor"]
  prototypes = 0
  if heads.get("prototypes"):
    prototypes = int(m.get("prototypes", 0) or 0) or min(
        3000, max(2, int(config.batch_size) // 2))
  dino_head = int(m.get("dino_head", 0) or 0) if heads.get("dino_head") else 0
  dino_head_gain = bool(m.get("dino_head_gain", False)) and bool(dino_head)
  dtype = m.get("dtype", "float32")
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise config_lib.ConfigError(
        f"model.dtype={dtype!r} is not a dtype; use float32 or bfloat16.") from None
  return models.build_model(m.backbone, backbone_kwargs=config_lib.plain(
      m.backbone_kwargs), projector=projector, predictor=predictor,
      prototypes=prototypes, dino_head=dino_head, dino_head_gain=dino_head_gain,
      dtype=dtype)


def load_datasets(config: ConfigDict):
  """``(train, test)`` ``sslit.data.Dataset``s of ``config.dataset``."""
  from sslit import data
  data_dir = config.get("data_dir", "") or None
  return (data.load(config.dataset, "train", data_dir=data_dir),
          data.load(config.dataset, "test", data_dir=data_dir))


def fit_options(config: ConfigDict, *, eval_every: int | None = None):
  """The ``train.FitOptions`` of a config (checked: a bad value raises here)."""
  from sslit import train as train_lib
  return train_lib.FitOptions(
      objective=config.objective,
      objective_kwargs=config_lib.plain(config.objective_kwargs),
      batch_size=int(config.batch_size), num_steps=int(config.num_steps),
      augment=augmentation(config),
      optimizer=config.optimizer, learning_rate=float(config.learning_rate),
      weight_decay=float(config.weight_decay), momentum=float(config.momentum),
      warmup_steps=int(config.warmup_steps), end_lr_factor=float(config.end_lr_factor),
      grad_clip=float(config.grad_clip) or None, ema_momentum=float(config.ema_momentum),
      probe=bool(config.online_probe), seed=int(config.seed),
      log_every=int(config.log_every), checkpoint_every=int(config.checkpoint_every),
      keep_checkpoints=int(config.keep_checkpoints),
      eval_every=int(config.eval_every) if eval_every is None else eval_every,
      max_train_seconds=float(config.max_train_seconds) or None,
      **{name: cast(config[name]) for name, cast in rundir.LATER_OPTIONS.items()
         if name in config})  # absent (an older config): FitOptions' default


def augmentation(config: ConfigDict):
  """A config's training views: None, a preset name, or ``(cfg_a, cfg_b)``.

  ``config.augment`` names the preset; ``config.augment_options`` (a dict of
  ``sslit.augment.AugmentConfig`` fields, e.g. ``{"crop_scale": (0.2, 1.0)}``) sets
  those fields in both of its views. Without options the name itself is returned
  (what runs recorded before the options existed).
  """
  name = None if config.augment in ("none", "", None) else config.augment
  options = config_lib.plain(config.get("augment_options") or {})
  if not options:
    return name
  if int(config.get("local_crops", 0)):
    raise config_lib.ConfigError(
        "augment_options set the two views of a preset; with local_crops > 0 set "
        "global_crop_scale and local_crop_scale instead.")
  from sslit import augment
  try:
    return augment.preset(name or "none", image_size=None, options=options)
  except ValueError as e:
    raise config_lib.ConfigError(f"augment_options: {e}") from None


def _every(period: int, num_steps: int, evaluator):
  """Run ``evaluator`` only at multiples of ``period`` and at the last step.

  ``fit`` calls all its evaluators on one schedule (the gcd of their periods);
  this keeps each evaluator on its own.
  """
  def run(step, variables):
    if step % period == 0 or step >= num_steps:
      return evaluator(step, variables)
    return {}
  return run


def _monitor(config, model, train_ds, test_ds, *, num_examples: int, cpa: bool = False):
  """The information/bound monitor of a run on ``num_examples`` held-out images."""
  from sslit import models, monitor
  outputs = ("rep", "proj") if model.projector is not None else ("rep",)
  fn_map = {o: models.make_apply_fn(model, o) for o in outputs}
  augment = augmentation(config)
  kwargs = {}
  if cpa:
    a = config.analysis
    kwargs = dict(cpa_fn=lambda v: models.single_input_fn(model, v, "rep"),
                  cpa_examples=int(a.cpa_examples), cpa_sigma=float(a.sigma),
                  cpa_kwargs={"relative_output_noise": float(a.relative_output_noise)})
  return monitor.make_monitor(
      fn_map, test_ds, num_examples=num_examples, augment=augment,
      seed=int(config.seed), mean=train_ds.mean, std=train_ds.std, **kwargs)


class TrainResult(NamedTuple):
  """What :func:`train` returns: the fit result and the offline results (or None)."""
  fit: Any
  results: dict | None
  report: str | None


def train(config: ConfigDict, workdir: str | os.PathLike, *, progress: bool = True,
          resume_with_changes: bool = False, log=None) -> TrainResult:
  """Pretrain, evaluate and report one run (resuming it if ``workdir`` holds it).

  Everything that can be checked (objective, options, batch size against the
  devices, data set, model) is checked before anything is written.

  Args:
    config: a run config (``sslit.config.load_config`` + overrides).
    workdir: the run directory.
    progress: show progress bars.
    resume_with_changes: resume a run in ``workdir`` although optimisation
      settings of ``config.CHANGEABLE_ON_REQUEST`` changed (see
      :func:`sslit.rundir.prepare_workdir`).
    log: ``log(message)`` for progress lines (default: stderr).

  Returns:
    ``TrainResult(fit, results, report)``.
  """
  log = log or (lambda m: print(m, file=sys.stderr))
  workdir = os.path.abspath(os.fspath(workdir))
  _check_fields(config)
  config_lib.check_values(config)
  rundir.check_run_directory(workdir)
  from sslit import metrics as metrics_lib
  clock = metrics_lib.PhaseClock()
  start_devices(config)
  import jax
  from sslit import evaluate, models, monitor, parallel
  from sslit import step as step_lib
  from sslit import train as train_lib
  # Everything that can be checked is checked before anything is written.
  method = method_of(config)
  if (config.eval.get("target", False) and not method.momentum
      and not float(config.get("average_weights", 0.0))):
    raise ValueError(_NO_TARGET.format(config.objective))
  periods = [p for p in (int(config.eval_every), int(config.get("monitor_every", 0)))
             if p]
  options = fit_options(config, eval_every=math.gcd(*periods) if periods else 0)
  options = dataclasses.replace(options, progress=progress)
  mesh = make_mesh(config)
  parallel.check_batch_size(options.batch_size, mesh)
  train_ds, test_ds = load_datasets(config)
  train_ds.mean  # pylint: disable=pointless-statement  (builds and reads the data set)
  clock.lap("data_s")
  from sslit import augment, data
  data.steps_per_epoch(train_ds, options.batch_size,
                       process_count=jax.process_count())  # the batch fits the data
  if isinstance(options.augment, str):
    augment.preset(options.augment, image_size=train_ds.image_shape[0])  # known name
  model = build_model(config)
  chief = jax.process_index() == 0
  # A run directory holding another run is refused before anything is touched
  # (checked again, and config.json written, under the lock).
  rundir.prepare_workdir(workdir, config, resume_with_changes=resume_with_changes,
                         write=False)
  # One run at a time in a run directory: a second one fails at once, naming this
  # one's pid (every process of a multi-host run enters; process 0 holds it).
  with rundir.RunLock(workdir):
    changed = rundir.prepare_workdir(workdir, config,
                                     resume_with_changes=resume_with_changes, write=False)
    options = dataclasses.replace(options, accept_changes=tuple(changed))

    def on_ready():  # checks passed, checkpoint accepted: config.json is this run's
      if chief:
        rundir.write_config(workdir, config, changed)
      if changed:
        log("sslit train: resuming with changed settings: " + ", ".join(
            f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
    evaluators = []
    if int(config.eval_every):
      evaluators.append(_every(int(config.eval_every), options.num_steps,
                               evaluate.make_probe_evaluator(
          models.make_apply_fn(model, "rep"), train_ds, test_ds, num_train=5000,
          num_test=1000)))
    monitor_fn = _monitor(config, model, train_ds, test_ds, num_examples=int(
        config.get("monitor_examples", 512))) if int(config.get("monitor_every", 0)) else None
    if monitor_fn is not None:
      evaluators.append(_every(int(config.monitor_every), options.num_steps, monitor_fn))
    log(f"sslit train: {config.objective} on {config.dataset}, {options.num_steps} steps "
        f"of {options.batch_size} on {mesh.devices.size} device(s); workdir {workdir}")
    clock.lap("setup_s")
    result = train_lib.fit(model=model, dataset=train_ds, workdir=workdir, mesh=mesh,
                           evaluators=evaluators, options=options, lock=False,
                           signature=rundir.config_signature(config), on_ready=on_ready)
    clock.lap("fit_s")
    compile_s = [h["compile_s"] for h in result.history if "compile_s" in h]
    if compile_s:
      clock.laps["compile_s"] = compile_s[0]  # the first step, part of fit_s
    if result.resumed_from is not None:
      log(f"sslit train: resumed from step {result.resumed_from}")
    results = report = None
    if monitor_fn is not None and config.get("report", True) and chief:
      monitor.write_random_init_values(  # the report's step 0: the random-init network
          os.path.join(workdir, "monitor_init.json"), monitor_fn, model, train_ds,
          seed=int(config.seed), num_batches=int(config.eval.calibration_batches))
      clock.lap("monitor_init_s")
    if config.eval.enabled:
      results = offline_eval(config, model, result.variables, train_ds, test_ds,
                             step=result.step, workdir=workdir, write=chief,
                             target=step_lib.target_params(method, result.state.ema_params))
      clock.lap("eval_s")
    timings = dict(path=os.path.join(workdir, "timings.json"),
                   device=f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
                   steps=result.step - int(result.resumed_from or 0))
    if config.get("report", True) and chief:
      clock.write(**timings)  # the report states the run's time
      report = write_report(workdir)
      clock.lap("report_s")
    if chief:
      clock.write(**timings)
  return TrainResult(result, results, report)


# Fields a training config may lack: read with a default (``config.get``), or
# FitOptions fields that configs gained over time (``rundir.LATER_OPTIONS``).
_OPTIONAL_FIELDS = ("name", "cpu_devices", "data_dir", "monitor_every", "monitor_examples",
                    "augment_options", "analysis", "report")


def _check_fields(config: ConfigDict) -> None:
  """A training config has every field of the default config that training reads."""
  default = config_lib.load_config(config_lib.DEFAULT_CONFIG)
  missing = sorted(k for k in default if k not in config and k not in _OPTIONAL_FIELDS
                   and k not in rundir.LATER_OPTIONS)
  if missing:
    raise config_lib.ConfigError(
        f"the config lacks the fields {', '.join(missing)}; start from the default "
        f"config (from sslit.configs import default; c = default.get_config()) and "
        f"change what differs.")


def offline_eval(config: ConfigDict, model, variables, train_ds, test_ds, *, step: int,
                 workdir: str, write: bool = True, target: Any = None,
                 path: str | os.PathLike | None = None) -> dict:
  """Linear probe (+ kNN) of the network and of the baselines; ``results.json``.

  With ``config.eval.calibrate``, the network's BatchNorm statistics are first
  calibrated as the random-init baseline's (for views smaller than the images).
  The baselines of ``config.eval.baselines``: ``"random"`` (the same network at
  random initialisation, BatchNorm statistics calibrated) and ``"raw"`` (pixels).
  With ``config.eval.target``, also ``"target"``: the network of the parameters
  ``target`` (:func:`sslit.step.target_params` of the run: BYOL's or MoCo's EMA
  target, DINO's teacher, or the weight average of ``average_weights``), its
  BatchNorm statistics calibrated as the random-init baseline's.
  The results are also appended to ``metrics.jsonl`` as ``eval/<name>/<metric>``
  (``write=False``: returned only, as on processes other than 0). ``path``: write
  the results there instead (a JSON file outside the run directory, e.g. of a
  read-only run), and nothing into the run directory.
  """
  import jax
  from sslit import evaluate, features, metrics, models
  ev = config.eval
  apply_fn = models.make_apply_fn(model, "rep")
  common = dict(num_classes=int(train_ds.num_classes), batch_size=int(ev.batch_size),
                l2=float(ev.l2), steps=int(ev.steps), ks=tuple(int(k) for k in ev.knn_k),
                max_train=int(ev.max_train) or None, return_correct=True)
  results = {}
  t0 = time.perf_counter()
  if ev.get("target", False) and target is None:
    raise ValueError(_NO_TARGET.format(config.objective))  # before any probe
  variables = probed_variables(config, model, variables, train_ds)
  results["trained"] = evaluate.evaluate_representation(apply_fn, variables, train_ds,
                                                        test_ds, **common)
  if ev.get("target", False):
    results["target"] = evaluate.evaluate_representation(
        apply_fn, target_variables(config, model, variables, target, train_ds), train_ds,
        test_ds, **common)
  if "random" in ev.baselines:
    rand = features.random_init_variables(
        model, jax.random.key(int(config.seed)), train_ds,
        num_batches=int(ev.calibration_batches))
    results["random_init"] = evaluate.evaluate_representation(apply_fn, rand, train_ds,
                                                              test_ds, **common)
  if "raw" in ev.baselines:
    mean, std = train_ds.mean, train_ds.std
    tr = features.raw_pixel_features(train_ds, max_examples=common["max_train"])
    te = features.raw_pixel_features(test_ds, mean=mean, std=std)
    results["raw_pixels"] = evaluate.evaluate_features(
        *tr, *te, num_classes=common["num_classes"], l2=common["l2"],
        steps=common["steps"], ks=common["ks"], return_correct=True)
  correct = {k: r.pop("linear_correct") for k, r in results.items()}  # paired intervals
  results["eval_seconds"] = time.perf_counter() - t0
  results["step"] = step
  if not write:
    return results
  _write_json(path or os.path.join(workdir, "results.json"), results)
  if path is not None:
    return results
  metrics.write_probe_correct(workdir, correct)
  record = {"step": step}
  for name, res in results.items():
    if isinstance(res, dict):
      record.update({f"eval/{name}/{k}": v for k, v in res.items()
                     if isinstance(v, (int, float))})
  metrics.append(workdir, record)
  return results


def write_report(workdir: str) -> str:
  """``report.md`` and its plots in ``workdir`` (``sslit.report``); returns its path."""
  from sslit import report
  return str(report.write_report(workdir))


def summary(results: dict, workdir: str | None = None) -> str:
  """The probes' answer as a few lines of text (``sslit.report.summary``)."""
  from sslit import report
  return report.summary(results, workdir)


def restore_variables(workdir: str | os.PathLike, step: int | None = None
                      ) -> tuple[dict, int]:
  """``({"params", "batch_stats"}, step)`` of a run's checkpoint, as host arrays.

  Args:
    workdir: the run directory.
    step: the checkpoint (None: the newest complete one).

  Raises:
    FileNotFoundError: the run has no (restorable) checkpoint.
  """
  state, step = _restore_state(workdir, step)
  return _variables_of(state), step


def _variables_of(state: dict) -> dict:
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def target_of(config: ConfigDict, ema_params: Any) -> Any:
  """A run's target network's parameters (:func:`sslit.step.target_params`), or None."""
  from sslit import step
  return step.target_params(method_of(config), ema_params)


def method_of(config: ConfigDict):
  """The ``sslit.methods.Method`` of ``config.objective`` (with its keyword overrides)."""
  from sslit import methods, objectives
  return methods.get_method(objectives.get_objective(
      config.objective, **config_lib.plain(config.objective_kwargs)).kind)


def probed_variables(config: ConfigDict, model, variables: dict, train_ds) -> dict:
  """The trained network's variables as the probe and ``embed`` see them.

  ``variables`` as they are (BatchNorm running statistics of training), or with
  ``config.eval.calibrate`` their statistics calibrated as the random-init
  baseline's (``eval.calibration_batches`` unaugmented training batches): for views
  of another size than the images, whose statistics the images do not share.
  """
  if not config.eval.get("calibrate", False):
    return variables
  from sslit import features
  return features.calibrated_variables(model, variables, train_ds,
                                       num_batches=int(config.eval.calibration_batches))


def target_variables(config: ConfigDict, model, variables: dict, target: Any,
                     train_ds) -> dict:
  """``target`` as parameters, BatchNorm statistics calibrated (as the random-init
  baseline's, on ``eval.calibration_batches`` unaugmented training batches)."""
  from sslit import features
  if target is None:
    raise ValueError(_NO_TARGET.format(config.objective))
  return features.calibrated_variables(model, {**variables, "params": target}, train_ds,
                                       num_batches=int(config.eval.calibration_batches))


def _restore_state(workdir, step: int | None, signature: dict | None = None
                   ) -> tuple[dict, int]:
  """The raw train state (nested dicts of host arrays) of a checkpoint, and its step.

  Read-only (a train may be saving beside it). With ``signature`` (the run's, see
  :func:`_reader_signature`), a checkpoint of another run is refused in one line.
  """
  from sslit import checkpoint
  directory = os.path.join(os.fspath(workdir), "checkpoints")
  if not os.path.isdir(directory) or not any(
      name.isdigit() for name in os.listdir(directory)):
    # Checked before orbax opens the directory: nothing to restore, nothing started.
    raise FileNotFoundError(f"no checkpoint in {directory}; run sslit train first.")
  manager = checkpoint.CheckpointManager(directory, max_to_keep=None, read_only=True)
  try:
    restored = manager.restore_raw(step=step, signature=signature,
                                   ignore=_READER_IGNORES)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; run sslit train "
                            f"first.")
  state, _, step = restored
  return state, step


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints kept in a run directory, ascending."""
  from sslit import checkpoint
  directory = os.path.join(os.fspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return []
  manager = checkpoint.CheckpointManager(directory, max_to_keep=None, read_only=True)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


class Run(NamedTuple):
  """A finished (or checkpointed) run, opened for analysis."""
  config: Any
  workdir: str
  train_ds: Any
  test_ds: Any
  model: Any
  variables: dict
  step: int
  target: Any = None  # parameters of the target network (target_of), if any


# Signature fields a reader does not compare: what a run may resume with changed
# (its older checkpoints keep the old values) and how the reader's host runs it.
_READER_IGNORES = config_lib.CHANGEABLE_ON_REQUEST + ("cpu_devices", "jax_enable_x64")


def _reader_signature(config: ConfigDict) -> dict | None:
  """The run signature a run's checkpoints carry, from its stored config (or None
  where the config is too old to rebuild it: then the checkpoint is not compared)."""
  try:
    return rundir.run_signature(fit_options(config), rundir.config_signature(config))
  except (ValueError, TypeError, KeyError, AttributeError):
    return None


def load_run_config(workdir: str | os.PathLike, overrides: Any = ()) -> ConfigDict:
  """A run directory's ``config.json`` (groups it predates filled in) + overrides.

  The evaluation and analysis fields (``eval.*``, ``analysis.*``) are checked
  (:func:`sslit.config.check_values`).
  """
  stored = rundir.read_config_json(workdir)
  if stored is None:
    raise config_lib.ConfigError(f"{workdir} has no config.json: not a run directory.")
  config = config_lib.apply_overrides(config_lib.with_defaults(stored), overrides)
  config_lib.check_values(config, groups=("eval", "analysis"))
  return config


def open_run(workdir: str | os.PathLike, *, step: int | None = None,
             overrides: Any = ()) -> Run:
  """Open a run directory written by :func:`train`: config, data, model, variables.

  Args:
    workdir: the run directory (holds ``config.json`` and ``checkpoints/``).
    step: the checkpoint to load (None: the newest complete one).
    overrides: config overrides, ``{field: value}`` or ``(field, text)`` pairs.

  Returns:
    ``Run(config, workdir, train_ds, test_ds, model, variables, step, target)``;
    ``variables`` are host arrays ``{"params", "batch_stats"}``, ``target`` the
    target network's parameters (:func:`target_of`) or None.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  config = load_run_config(workdir, overrides)
  start_devices(config)
  signature = _reader_signature(load_run_config(workdir))  # the run's, not overridden
  train_ds, test_ds = load_datasets(config)
  model = build_model(config)
  state, step = _restore_state(workdir, step, signature)
  return Run(config, workdir, train_ds, test_ds, model, _variables_of(state), step,
             target_of(config, state.get("ema_params")))


def open_torch_run(path: str | os.PathLike, *, workdir: str | os.PathLike,
                   config: ConfigDict, arch: str = "auto", stem: str = "auto",
                   stem_padding: int | None = None) -> Run:
  """A PyTorch ResNet checkpoint opened like a run, for ``offline_eval``/``analyze``.

  The network is ``sslit.torch_weights.load_torch_resnet(path, arch=..., stem=...)``
  (torchvision layout; ``rep`` is the pooled representation); the data sets and
  every evaluation/analysis setting come from ``config`` (its training fields are
  unused). Results go to ``workdir``, which gets the ``config.json`` they were
  computed with. Images are preprocessed with the training split's per-channel
  statistics, as sslit's own runs are: a network trained with other normalisation
  sees shifted inputs (see docs/models.md).
  """
  from sslit import torch_weights
  workdir = os.path.abspath(os.fspath(workdir))
  config_lib.check_values(config, groups=("eval", "analysis"))
  rundir.check_run_directory(workdir)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise config_lib.ConfigError(
        f"--workdir {workdir} holds a trained run, whose config.json a PyTorch "
        f"checkpoint's evaluation would replace; choose another --workdir.")
  start_devices(config)
  train_ds, test_ds = load_datasets(config)
  model, variables = torch_weights.load_torch_resnet(
      os.fspath(path), arch=arch, stem=stem, stem_padding=stem_padding)
  rundir.ensure_writable(workdir)
  stored = config_lib.to_dict(config)
  stored["torch_checkpoint"] = {"path": os.path.abspath(os.fspath(path)), "arch": arch,
                                "stem": stem, "stem_padding": stem_padding}
  rundir.write_config(workdir, stored, {})
  return Run(config, workdir, train_ds, test_ds, model, variables, 0)


def make_monitor(run: Run, *, num_examples: int | None = None, cpa: bool = False):
  """The information/bound monitor of an opened run: ``monitor(step, variables)``.

  Args:
    run: an :func:`open_run` result.
    num_examples: held-out images (default ``config.analysis.num_examples``).
    cpa: also record the CPA information quantities with the noise model of
      ``config.analysis`` (σ, relative output noise, number of inputs).
  """
  n = int(num_examples or run.config.analysis.num_examples)
  return _monitor(run.config, run.model, run.train_ds, run.test_ds, num_examples=n,
                  cpa=cpa)


def analyze(run: Run, *, num_examples: int | None = None,
            path: str | os.PathLike | None = None) -> dict:
  """Every monitor quantity of a run's checkpoint, CPA included; ``analysis.json``.

  Computed at the highest matmul precision on every backend (GPUs default to TF32),
  written to ``<workdir>/analysis.json`` and appended to ``metrics.jsonl``, or
  written to ``path`` only (nothing in the run directory).
  """
  import jax
  from sslit import metrics
  monitor = make_monitor(run, num_examples=num_examples, cpa=True)
  with jax.default_matmul_precision("highest"):
    measured = dict(monitor(run.step, run.variables))
  result = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in measured.items()}
  result["step"] = run.step
  _write_json(path or os.path.join(run.workdir, "analysis.json"), result)
  if path is None:
    metrics.append(run.workdir, result)
  return result


def _write_json(path: str | os.PathLike, value: Any) -> None:
  """``value`` as JSON at ``path``, atomically (no temporary left behind)."""
  path = os.fspath(path)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def embed(run: Run, *, split: str = "test", outputs: tuple[str, ...] = ("rep",),
          path: str | os.PathLike | None = None, batch_size: int | None = None,
          max_examples: int | None = None, progress: bool = True,
          target: bool = False) -> str:
  """Write a run's representations of a data split as ``.npz``, for any other tool.

  Eval-mode network (BatchNorm running statistics, or calibrated ones with
  ``eval.calibrate``: the network the probe sees, :func:`probed_variables`), images
  preprocessed with the training split's statistics as in training; batches split over every device of
  this host. ``target``: the run's target network (``run.target``) instead, as
  ``eval.target`` probes it (:func:`target_variables`).

  Args:
    run: an :func:`open_run` result.
    split: ``"train"`` or ``"test"``.
    outputs: network outputs to write: ``"rep"`` (the representation), ``"proj"``
      (the projector output), ``"pred"`` (BYOL's predictor).
    path: the ``.npz`` file (default ``<workdir>/embeddings-<split>-step<step>.npz``,
      ``...-target.npz`` for the target network).
    batch_size: images per batch (default ``config.eval.batch_size``), rounded up
      to a multiple of the device count.
    max_examples: the first ``max_examples`` images of the split (default all).
    progress: show a progress bar.
    target: embed with the target network.

  Returns:
    The path written. The file holds one ``[N, k]`` float32 array per output, the
    ``labels`` ``[N]``, and ``step`` (the checkpoint).
  """
  import jax
  import numpy as np
  from sslit import features, models, parallel
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if path is not None:  # checked before the work: never onto a run's records
    path = rundir.check_output_path(path, suffix=".npz")
  dataset = run.train_ds if split == "train" else run.test_ds
  variables = (target_variables(run.config, run.model, run.variables, run.target,
                                run.train_ds) if target else
               probed_variables(run.config, run.model, run.variables, run.train_ds))
  # This host's devices: each process embeds the whole split, process 0 writes it.
  mesh = parallel.make_mesh(jax.local_devices())
  devices = mesh.devices.size
  bs = int(batch_size or run.config.eval.batch_size)
  bs = -(-bs // devices) * devices
  outputs = tuple(outputs)
  # One forward pass gives every output (checked to exist by make_apply_fn).
  apply_fn = models.make_apply_fn(run.model, outputs)
  arrays, labels = features.extract_features(
      apply_fn, variables, dataset, batch_size=bs, max_examples=max_examples,
      mean=run.train_ds.mean, std=run.train_ds.std, output=outputs,
      sharding=parallel.data_sharding(mesh),
      progress=f"embed {split} {','.join(outputs)}" if progress else None)
  path = os.fspath(path or os.path.join(
      run.workdir, f"embeddings-{split}-step{run.step}{'-target' if target else ''}.npz"))
  if jax.process_index() == 0:
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
      np.savez(tmp, labels=labels, step=np.int64(run.step), **arrays)
      os.replace(tmp, path)
    finally:  # no temporary left behind, whatever happened
      if os.path.exists(tmp):
        os.remove(tmp)
  return path


def start_distributed(*, coordinator_address: str | None = None,
                      num_processes: int | None = None, process_id: int | None = None,
                      auto: bool = False) -> None:
  """Start multi-host JAX before anything else touches the devices.

  JAX's conventions: with ``auto`` (TPU pods, SLURM, Open MPI, Kubernetes),
  ``jax.distributed.initialize()`` with no arguments detects the cluster; otherwise
  the coordinator address, the process count and this process's id come from the
  arguments or the environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. With none of them set this is a
  no-op (one process). On CPU the cross-process collectives use gloo.
  """
  from sslit import parallel
  env = os.environ
  if auto:
    import jax
    jax.distributed.initialize()
    return
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if (num_processes or 1) > 1 and (coordinator_address is None or process_id is None):
    raise config_lib.ConfigError(
        f"{num_processes} processes need a coordinator address (host:port of process "
        f"0) and this process's id: --coordinator_address, --process_id (or "
        f"JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID).")
  parallel.initialize(coordinator_address=coordinator_address,
                      num_processes=num_processes, process_id=process_id)
