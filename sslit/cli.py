"""The ``sslit`` command: ``train``, ``eval``, ``analyze``, ``reproduce``.

``sslit train`` with no argument runs the main job (``experiments/configs/
default.py``: VICReg on Fashion-MNIST, then linear probes and a report) in
``runs/default``; running the same command again resumes from the newest
checkpoint. Configs are Python files with ``get_config()`` returning an
``ml_collections.ConfigDict``; ``--config.<field>=<value>`` overrides any existing
field (nested with dots); an unknown field is an error naming the closest ones.

Exit status: 0 on success, 1 on a failure with a clear message (missing data
set, non-finite loss, unwritable workdir, ...), 2 on a usage error (unknown
field or option). Nothing already written is deleted.

This module imports no JAX at import time: device options from the config (the
virtual CPU device count) are set before JAX starts.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple, Sequence

import ml_collections

__all__ = ["main", "load_config", "apply_overrides", "UsageError", "CONFIG_DIR", "Run",
           "open_run", "restore_variables", "checkpoint_steps", "run_monitor"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.py")
# Fields that may change between a run and its resumption (they do not change
# the training trajectory).
_RESUMABLE_FIELDS = ("eval", "report", "max_train_seconds", "log_every",
                     "checkpoint_every", "keep_checkpoints", "eval_every", "data_dir",
                     "monitor_every", "monitor_examples")


class UsageError(ValueError):
  """A command-line mistake (exit status 2)."""


# ----------------------------------------------------------------------------
# Configs.


def load_config(path: str) -> ml_collections.ConfigDict:
  """Load ``get_config()`` from a Python config file.

  A bare name (``smoke``) is looked up in ``experiments/configs/``.
  """
  if not path.endswith(".py") and os.sep not in path and "/" not in path:
    path = os.path.join(CONFIG_DIR, path + ".py")
  if not os.path.isfile(path):
    raise UsageError(f"config file {path!r} not found; configs live in {CONFIG_DIR} "
                     f"({', '.join(sorted(_config_names()))}).")
  spec = importlib.util.spec_from_file_location(
      "_sslit_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UsageError(f"config file {path!r} defines no get_config().")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  return config


def _config_names() -> list[str]:
  try:
    return [f[:-3] for f in os.listdir(CONFIG_DIR)
            if f.endswith(".py") and not f.startswith("_")]
  except OSError:
    return []


def _all_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for key, value in config.items():
    name = prefix + key
    out.append(name)
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(_all_fields(value, name + "."))
  return out


def _parse_value(text: str, current: Any, field: str) -> Any:
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise UsageError(f"--config.{field} expects a boolean (true/false), got {text!r}.")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise UsageError(f"--config.{field}={text!r} is not a valid "
                     f"{type(current).__name__} literal.") from None
  if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(current, float) and isinstance(value, (int, float)) \
      and not isinstance(value, bool):
    return float(value)
  if isinstance(current, (tuple, list)):
    if isinstance(value, (int, float, str)):
      value = (value,)
    if isinstance(value, (tuple, list)):
      return type(current)(value)
  if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
    return ml_collections.ConfigDict(value)
  if current is None or type(value) is type(current):
    return value
  raise UsageError(f"--config.{field} expects a {type(current).__name__}, got "
                   f"{text!r} ({type(value).__name__}).")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Apply ``(field, text)`` overrides; ``field`` is dotted (``model.backbone``).

  Raises:
    UsageError: unknown field (the message lists the closest names) or a value
      of the wrong type.
  """
  fields = _all_fields(config)
  for field, text in overrides:
    parts = field.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        close = difflib.get_close_matches(field, fields, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown config field {field!r}.{hint} Valid fields: "
                         f"{', '.join(sorted(fields))}.")
      if i < len(parts) - 1:
        node = node[part]
    leaf = parts[-1]
    value = _parse_value(text, node[leaf], field)
    try:
      if isinstance(node[leaf], ml_collections.ConfigDict):
        node[leaf] = value
      else:
        setattr(node, leaf, value)
    except (TypeError, ValueError) as e:
      raise UsageError(f"cannot set --config.{field}={text!r}: {e}") from None
  return config


def _to_jsonable(value: Any) -> Any:
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _to_jsonable(v) for k, v in value.items()}
  if isinstance(value, dict):
    return {k: _to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [_to_jsonable(v) for v in value]
  return value


def _plain(value: Any) -> Any:
  """ConfigDict -> dict, lists -> tuples (hashable, for Flax module attributes)."""
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return tuple(_plain(v) for v in value)
  return value


# ----------------------------------------------------------------------------
# Argument parsing.


_USAGE = """usage: sslit <command> [options]

commands:
  train       pretrain (default: the main job, VICReg on Fashion-MNIST) then evaluate
  eval        linear probe / kNN / baselines of the newest checkpoint of a run
  analyze     information, bound and effective-rank monitor on a run's checkpoint
  reproduce   run a registered experiment: sslit reproduce <name> [args...]

options (train, eval, analyze):
  --config PATH              a config file (default experiments/configs/default.py;
                             a bare name such as 'smoke' is looked up there)
  --config.<field>=<value>   override a config field (dotted for nested fields)
  --workdir DIR              run directory (default runs/<config name>)
"""


def _parse(argv: Sequence[str]) -> tuple[str, argparse.Namespace, list[tuple[str, str]]]:
  argv = list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    if argv:
      print(_USAGE)
      raise SystemExit(0)
    return "train", argparse.Namespace(config=None, workdir=None, rest=[]), []
  command = argv[0] if not argv[0].startswith("-") else "train"
  if not argv[0].startswith("-"):
    argv = argv[1:]
  if command not in ("train", "eval", "analyze", "reproduce"):
    raise UsageError(f"unknown command {command!r}; choose train, eval, analyze or "
                     f"reproduce.")
  if command == "reproduce":
    if not argv or argv[0].startswith("-"):
      raise UsageError("usage: sslit reproduce <name> [args...]")
    return command, argparse.Namespace(name=argv[0], rest=argv[1:]), []
  config, workdir, overrides = None, None, []
  extra = {"num_examples": None}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg in ("-h", "--help"):
      print(_USAGE)
      raise SystemExit(0)
    name, eq, value = arg.partition("=")
    takes_value = name in ("--config", "--workdir", "--num_examples") or \
        name.startswith("--config.")
    if not takes_value:
      raise UsageError(f"unknown option {arg!r}; see `sslit --help`.")
    if not eq:
      if i + 1 >= len(argv):
        raise UsageError(f"option {name} needs a value.")
      value = argv[i + 1]
      i += 1
    if name == "--config":
      config = value
    elif name == "--workdir":
      workdir = value
    elif name == "--num_examples":
      extra["num_examples"] = int(value)
    else:
      overrides.append((name[len("--config."):], value))
    i += 1
  return command, argparse.Namespace(config=config, workdir=workdir, **extra), overrides


# ----------------------------------------------------------------------------
# Commands.


def _resolve(args, overrides) -> tuple[ml_collections.ConfigDict, str]:
  config = load_config(args.config or DEFAULT_CONFIG)
  apply_overrides(config, overrides)
  name = config.get("name", None) or os.path.splitext(
      os.path.basename(args.config or DEFAULT_CONFIG))[0]
  workdir = os.path.abspath(args.workdir or os.path.join("runs", name))
  return config, workdir


def _prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Create ``workdir``, check it is writable and that it holds no other run."""
  from sslit import train  # pylint: disable=g-import-not-at-top
  train._ensure_writable(workdir)  # pylint: disable=protected-access
  resolved = _to_jsonable(config)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      try:
        previous = json.load(f)
      except json.JSONDecodeError:
        previous = None
    if previous is not None:
      differ = sorted(k for k in set(previous) | set(resolved)
                      if previous.get(k) != resolved.get(k) and k not in _RESUMABLE_FIELDS)
      if differ:
        raise UsageError(
            f"workdir {workdir} holds a run with a different config (fields "
            f"{', '.join(differ)} differ); use another --workdir, or the same config "
            f"to resume that run.")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(resolved, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _start_devices(config) -> None:
  n = int(config.get("cpu_devices", 0) or 0)
  if n > 0:
    from sslit import parallel  # pylint: disable=g-import-not-at-top
    parallel.set_cpu_device_count(n)


def _mesh(config):
  import jax  # pylint: disable=g-import-not-at-top
  from sslit import parallel  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  n = int(config.get("cpu_devices", 0) or 0)
  if n > 0 and jax.process_count() == 1 and devices[0].platform == "cpu":
    devices = devices[:n]
  return parallel.make_mesh(devices)


def _build_model(config):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sslit import models  # pylint: disable=g-import-not-at-top
  m = config.model
  projector = m.projector
  if isinstance(projector, (list, tuple)):
    projector = tuple(int(w) for w in projector)
  predictor = m.predictor
  if isinstance(predictor, (list, tuple)):
    predictor = tuple(int(w) for w in predictor)
  if "byol" in config.objective and predictor is False:
    predictor = True
  return models.build_model(m.backbone, backbone_kwargs=_plain(m.backbone_kwargs),
                            projector=projector, predictor=predictor,
                            dtype=jnp.dtype(m.get("dtype", "float32")))


def _datasets(config):
  from sslit import data  # pylint: disable=g-import-not-at-top
  data_dir = config.get("data_dir", "") or None
  return (data.load(config.dataset, "train", data_dir=data_dir),
          data.load(config.dataset, "test", data_dir=data_dir))


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


def _monitor(config, model, train_ds, test_ds, *, num_examples: int, **kwargs):
  """The information/bound monitor of a run (SPEC §5–6 on a fixed held-out subset).

  Records, on ``num_examples`` held-out test images: every term of the
  generalization bound, the entropy estimates (Gaussian surrogate, LogDet, pairwise
  KL/Bhattacharyya), the effective rank and the three VICReg terms, for the
  representation and the projector output. Used during training
  (``monitor_every``) and by ``sslit analyze``.
  """
  from sslit import evaluate, models  # pylint: disable=g-import-not-at-top
  outputs = ("rep", "proj") if model.projector is not None else ("rep",)
  fn_map = {o: models.make_apply_fn(model, o) for o in outputs}
  augment = None if config.augment in ("none", "", None) else config.augment
  return evaluate.make_monitor(
      fn_map, test_ds, num_examples=num_examples, augment=augment,
      seed=int(config.seed), mean=train_ds.mean, std=train_ds.std, **kwargs)


def _fit_kwargs(config, *, eval_every: int | None = None) -> dict:
  if eval_every is None:
    eval_every = int(config.eval_every)
  return dict(
      objective=config.objective, objective_kwargs=_plain(config.objective_kwargs),
      batch_size=int(config.batch_size), num_steps=int(config.num_steps),
      augment=None if config.augment in ("none", "", None) else config.augment,
      optimizer=config.optimizer, learning_rate=float(config.learning_rate),
      weight_decay=float(config.weight_decay), momentum=float(config.momentum),
      warmup_steps=int(config.warmup_steps), end_lr_factor=float(config.end_lr_factor),
      grad_clip=float(config.grad_clip) or None, ema_momentum=float(config.ema_momentum),
      probe=bool(config.online_probe), seed=int(config.seed),
      log_every=int(config.log_every), checkpoint_every=int(config.checkpoint_every),
      keep_checkpoints=int(config.keep_checkpoints), eval_every=eval_every,
      max_train_seconds=float(config.max_train_seconds) or None)


def _offline_eval(config, model, variables, train_ds, test_ds, *, step: int,
                  workdir: str) -> dict:
  """Linear probe (+ kNN) of the trained net and the baselines; results.json."""
  import jax  # pylint: disable=g-import-not-at-top
  from sslit import evaluate, models, train  # pylint: disable=g-import-not-at-top
  ev = config.eval
  apply_fn = models.make_apply_fn(model, "rep")
  common = dict(num_classes=int(train_ds.num_classes), batch_size=int(ev.batch_size),
                l2=float(ev.l2), steps=int(ev.steps), ks=tuple(int(k) for k in ev.knn_k),
                max_train=int(ev.max_train) or None)
  results = {}
  t0 = time.perf_counter()
  results["trained"] = evaluate.evaluate_representation(apply_fn, variables, train_ds,
                                                        test_ds, **common)
  if "random" in ev.baselines:
    rand = evaluate.random_init_variables(
        model, jax.random.key(int(config.seed)), train_ds,
        num_batches=int(ev.calibration_batches))
    results["random_init"] = evaluate.evaluate_representation(apply_fn, rand, train_ds,
                                                              test_ds, **common)
  if "raw" in ev.baselines:
    mean, std = train_ds.mean, train_ds.std
    tr = evaluate.raw_pixel_features(train_ds, max_examples=common["max_train"])
    te = evaluate.raw_pixel_features(test_ds, mean=mean, std=std)
    results["raw_pixels"] = evaluate.evaluate_features(
        *tr, *te, num_classes=common["num_classes"], l2=common["l2"],
        steps=common["steps"], ks=common["ks"])
  results["eval_seconds"] = time.perf_counter() - t0
  results["step"] = step
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  record = {"step": step}
  for name, res in results.items():
    if isinstance(res, dict):
      record.update({f"eval/{name}/{k}": v for k, v in res.items()
                     if isinstance(v, (int, float))})
  train.append_metrics(workdir, record)
  return results


def _write_report(workdir: str) -> str | None:
  try:
    from sslit import report  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("sslit: sslit.report is not available; no report.md written.", file=sys.stderr)
    return None
  return report.write_report(workdir)


def _summary(results: dict) -> str:
  lines = []
  for name in ("trained", "random_init", "raw_pixels"):
    if name in results:
      r = results[name]
      knn = "  ".join(f"{k}={v:.2f}" for k, v in r.items()
                      if k.startswith("knn") and isinstance(v, float))
      lines.append(f"  {name:12s} linear top-1 {r['linear_top1']:.2f}  {knn}")
  return "\n".join(lines)


def cmd_train(args, overrides) -> int:
  config, workdir = _resolve(args, overrides)
  _start_devices(config)
  # Everything that can be checked is checked before anything is written.
  from sslit import objectives, parallel  # pylint: disable=g-import-not-at-top
  objectives.get_objective(config.objective, **_plain(config.objective_kwargs))
  mesh = _mesh(config)
  parallel.check_batch_size(int(config.batch_size), mesh)
  train_ds, test_ds = _datasets(config)
  model = _build_model(config)
  _prepare_workdir(workdir, config)
  from sslit import train  # pylint: disable=g-import-not-at-top
  evaluators = []
  periods = []
  if int(config.eval_every):
    from sslit import evaluate, models  # pylint: disable=g-import-not-at-top
    evaluators.append(_every(int(config.eval_every), int(config.num_steps),
                             evaluate.make_probe_evaluator(
        models.make_apply_fn(model, "rep"), train_ds, test_ds, num_train=5000,
        num_test=1000)))
    periods.append(int(config.eval_every))
  if int(config.get("monitor_every", 0)):
    evaluators.append(_every(int(config.monitor_every), int(config.num_steps),
                             _monitor(config, model, train_ds, test_ds,
                                      num_examples=int(config.get("monitor_examples", 512)))))
    periods.append(int(config.monitor_every))
  print(f"sslit train: {config.objective} on {config.dataset}, {config.num_steps} steps "
        f"of {config.batch_size} on {mesh.devices.size} device(s); workdir {workdir}",
        file=sys.stderr)
  result = train.fit(model=model, dataset=train_ds, workdir=workdir, mesh=mesh,
                     evaluators=evaluators,
                     **_fit_kwargs(config, eval_every=math.gcd(*periods) if periods else 0))
  if result.resumed_from is not None:
    print(f"sslit train: resumed from step {result.resumed_from}", file=sys.stderr)
  if config.eval.enabled:
    results = _offline_eval(config, model, result.variables, train_ds, test_ds,
                            step=result.step, workdir=workdir)
    print("sslit train: linear probe on the test split\n" + _summary(results))
  if config.get("report", True):
    path = _write_report(workdir)
    if path:
      print(f"sslit train: report written to {path}")
  return 0


def _load_run(workdir, overrides):
  if workdir is None:
    raise UsageError("this command needs --workdir DIR (a run directory).")
  workdir = os.path.abspath(os.fspath(workdir))
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UsageError(f"{workdir} has no config.json: not a run directory.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  apply_overrides(config, overrides)
  return config, workdir


def restore_variables(workdir: str | os.PathLike, step: int | None = None
                      ) -> tuple[dict, int]:
  """``({"params", "batch_stats"}, step)`` of a run's checkpoint, as host arrays.

  Args:
    workdir: the run directory.
    step: the checkpoint (None: the newest complete one).
  """
  from sslit import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.CheckpointManager(os.path.join(os.fspath(workdir), "checkpoints"),
                                         max_to_keep=None)
  try:
    restored = manager.restore_raw(step=step)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; run sslit train "
                            f"first.")
  state, _, step = restored
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}, step


class Run(NamedTuple):
  """A finished (or checkpointed) run, opened for analysis."""
  config: Any
  workdir: str
  train_ds: Any
  test_ds: Any
  model: Any
  variables: dict
  step: int


def open_run(workdir: str | os.PathLike, *, step: int | None = None,
             overrides: Sequence[tuple[str, str]] = ()) -> Run:
  """Open a run directory written by ``sslit train``: config, data, model, variables.

  Args:
    workdir: the run directory (holds ``config.json`` and ``checkpoints/``).
    step: the checkpoint to load (None: the newest complete one).
    overrides: ``(field, value)`` config overrides, as ``--config.field=value``.

  Returns:
    ``Run(config, workdir, train_ds, test_ds, model, variables, step)``;
    ``variables`` are host arrays ``{"params", "batch_stats"}``.
  """
  config, workdir = _load_run(workdir, list(overrides))
  _start_devices(config)
  train_ds, test_ds = _datasets(config)
  model = _build_model(config)
  variables, step = restore_variables(workdir, step)
  return Run(config, workdir, train_ds, test_ds, model, variables, step)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints kept in a run directory, ascending."""
  from sslit import checkpoint  # pylint: disable=g-import-not-at-top
  manager = checkpoint.CheckpointManager(os.path.join(os.fspath(workdir), "checkpoints"))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def run_monitor(run: Run, *, num_examples: int = 1024, **kwargs):
  """The information/bound monitor of ``sslit analyze`` for an opened run.

  Returns ``monitor(step, variables) -> {name: value}`` (see ``_monitor``).
  """
  return _monitor(run.config, run.model, run.train_ds, run.test_ds,
                  num_examples=num_examples, **kwargs)


def cmd_eval(args, overrides) -> int:
  config, workdir, train_ds, test_ds, model, variables, step = open_run(
      args.workdir, overrides=overrides)
  results = _offline_eval(config, model, variables, train_ds, test_ds, step=step,
                          workdir=workdir)
  print(f"sslit eval: step {step}\n" + _summary(results))
  if config.get("report", True):
    _write_report(workdir)
  return 0


def cmd_analyze(args, overrides) -> int:
  run = open_run(args.workdir, overrides=overrides)
  workdir, step = run.workdir, run.step
  from sslit import models, train  # pylint: disable=g-import-not-at-top
  # Output noise τ = 0.1·σ·(RMS slope): finite CPA bounds when slopes are rank
  # deficient (dead ReLUs, k > d); see docs/cpa.md.
  rho = 0.1
  monitor = run_monitor(run, num_examples=args.num_examples or 1024,
                        cpa_fn=lambda v: models.single_input_fn(run.model, v, "rep"),
                        cpa_kwargs={"relative_output_noise": rho})
  import jax  # pylint: disable=g-import-not-at-top
  # Analysis in true float32 on every backend (GPUs default to TF32 matmuls).
  with jax.default_matmul_precision("highest"):
    measured = dict(monitor(step, run.variables))
  result = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in measured.items()}
  result["step"] = step
  with open(os.path.join(workdir, "analysis.json"), "w") as f:
    json.dump(result, f, indent=2)
  train.append_metrics(workdir, result)
  for k in sorted(result):
    print(f"{k}: {result[k]}")
  if "monitor/cpa/output_noise" in result:
    print(f"CPA model z = f(x + sigma eps) + tau eta: sigma = "
          f"{result.get('monitor/cpa/sigma')}, output noise tau = "
          f"{result['monitor/cpa/output_noise']:.4g} (= {rho} x sigma x RMS slope)")
  return 0


def cmd_reproduce(args) -> int:
  try:
    experiments = importlib.import_module("experiments")
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(CONFIG_DIR)))
    experiments = importlib.import_module("experiments")
  registry = getattr(experiments, "REGISTRY", {})
  if args.name not in registry:
    raise UsageError(f"unknown experiment {args.name!r}; registered: "
                     f"{', '.join(sorted(registry)) or '(none)'}.")
  target = registry[args.name]
  if not target:
    print(f"sslit: error: experiment {args.name!r} is registered but not implemented "
          f"yet (its entry in experiments.REGISTRY is empty).", file=sys.stderr)
    return 1
  module = importlib.import_module(target)
  return int(module.main(list(args.rest)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``sslit`` command; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    command, args, overrides = _parse(argv)
    if command in ("analyze", "reproduce"):
      # CPA analysis runs batched LAPACK kernels (see parallel.serialize_cpu_lapack).
      from sslit import parallel  # pylint: disable=g-import-not-at-top
      parallel.serialize_cpu_lapack()
    if command == "reproduce":
      return cmd_reproduce(args)
    return {"train": cmd_train, "eval": cmd_eval, "analyze": cmd_analyze}[command](
        args, overrides)
  except UsageError as e:
    print(f"sslit: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("sslit: interrupted; run the same command again to resume.", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if not _is_expected(e):
      raise
    print(f"sslit: error: {e}", file=sys.stderr)
    return 1


def _is_expected(e: Exception) -> bool:
  from sslit import checkpoint  # pylint: disable=g-import-not-at-top
  expected = (ValueError, TypeError, PermissionError, FileNotFoundError,
              FloatingPointError, checkpoint.CheckpointError)
  return isinstance(e, expected)


if __name__ == "__main__":
  sys.exit(main())
