"""Self-supervised pretraining: ``FitOptions`` and ``fit``, the host loop.

The step itself is ``sslit.step.make_train_step`` (re-exported here with
``TrainState``): views made on device, the model, an objective called by its method
(``sslit.methods``: pair, byol, simsiam, moco, dino, swav, views), an Optax update,
the method's state (the EMA target of BYOL, MoCo and DINO, DINO's centre, SwAV's
queue) and an online linear probe. Swapping the objective, the optimiser or the augmentation
is a change of argument.

``fit`` runs the loop: initialisation through ``jax.eval_shape``, replicated
state on a data-parallel mesh, restore-or-init from the newest checkpoint, a
jitted step with the state donated, and host work only every ``log_every`` steps
(metrics to ``metrics.jsonl`` and, if tensorboard is installed, TensorBoard
events; the progress bar), on the checkpoint schedule and on the evaluator
schedule. Library code never reads a config object: ``fit`` takes a
:class:`FitOptions` (``sslit.runs`` builds one from a config).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tqdm.auto import tqdm

from sslit import augment as augment_lib
from sslit import checkpoint as checkpoint_lib
from sslit import data as data_lib
from sslit import loader
from sslit import metrics as metrics_lib
from sslit import models
from sslit import methods as methods_lib
from sslit import objectives as objectives_lib
from sslit import parallel
from sslit import rundir
from sslit.rundir import ensure_writable, run_signature
from sslit.step import (STATS_KEYS, TrainState, check_average_momentum, images_to_float,
                        init_ema_params, make_train_step, target_params, view_pairs)
from sslit.optim import (OPTIMIZERS, decay_mask, ema_momentum_schedule,
                         make_optimizer, make_schedule)

__all__ = [
    "TrainState", "FitResult", "NonFiniteLossError", "make_schedule",
    "ema_momentum_schedule", "decay_mask", "make_optimizer", "make_train_step",
    "fit", "FitOptions", "images_to_float", "ensure_writable", "run_signature",
    "view_pairs", "multi_crop_fn", "target_params",
]

class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; training stopped, checkpoints kept."""

  def __init__(self, step: int, last_checkpoint: int | None, workdir: str | None,
               diverged: Sequence[tuple[int, float, str]] = (), median: float = 0.0):
    self.step = step
    self.last_checkpoint = last_checkpoint
    self.diverged = tuple(diverged)
    where = (f"the last good checkpoint (step {last_checkpoint}) is kept in {workdir}"
             if last_checkpoint is not None else "no checkpoint had been written yet")
    if self.diverged:
      where += (" (checkpoints of " + ", ".join(
          f"step {s} (loss {l:.3g}) moved to {p}" for s, l, p in self.diverged) +
          f": their loss was more than {_SANE_FACTOR:g} times the running median, "
          f"{median:.3g}, away from it, so the run resumes before them)")
    super().__init__(
        f"the loss became non-finite at step {step}; training stopped and {where}. "
        f"Lower the learning rate or add warm-up steps and resume from it: the same "
        f"command with e.g. --config.learning_rate=<lower> --resume_with_changes "
        f"(from Python: sslit.runs.train(..., resume_with_changes=True)).")


class FitResult(NamedTuple):
  """What ``fit`` returns.

  Attributes:
    state: the final ``TrainState`` (on the mesh, replicated).
    variables: ``{"params", "batch_stats"}`` of the final model (eval apply input).
    history: list of the metric dicts logged (each has ``step``).
    step: the final step.
    resumed_from: step restored from a checkpoint, or None.
  """
  state: TrainState
  variables: dict
  history: list
  step: int
  resumed_from: int | None


# ----------------------------------------------------------------------------
# Host side.


def _to_python(tree: Mapping[str, Any]) -> dict:
  return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
          for k, v in tree.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitOptions:
  """Everything ``fit`` needs besides the model, the data and the run directory.

  The trajectory (objective, optimiser, schedule, augmentation, seed) and the loop's
  host work (logging, checkpoints, evaluators, time cap). Checked when built, so a
  bad value fails before anything is written.

  Attributes:
    objective: a name for ``sslit.objectives.get_objective`` or an ``Objective``.
    batch_size: global batch size (all devices and processes); must divide by
      the device count.
    num_steps: total number of updates (the schedule's length).
    objective_kwargs: overrides passed to ``get_objective``.
    augment: ``(cfg_a, cfg_b)`` for ``sslit.augment.two_views``, a preset name, a
      callable ``(key, images) -> (x_a, x_b)`` (or the multi-crop pair of stacked
      views, see ``make_train_step``), or None (no augmentation).
    optimizer: ``"adamw"``, ``"lars"``, ``"sgd"`` or ``"adam"``.
    learning_rate: base learning rate (> 0), scaled by ``batch_size / 256`` if
      ``scale_lr_by_batch``; linear warm-up then cosine to ``end_lr_factor * peak``.
    weight_decay, momentum, warmup_steps, end_lr_factor, scale_lr_by_batch,
      grad_clip: optimiser and schedule settings (see ``make_optimizer``;
      ``grad_clip`` None or 0: no clipping).
    ema_momentum: base momentum of the EMA target of BYOL, MoCo's key encoder
      and DINO's teacher (cosine-increased to 1).
    average_weights: momentum of a weight average kept for evaluation only (pair,
      simsiam, swav; ``ema_params["average"]``, see ``target_params``; 0: none).
    local_crops: number ``V`` of local crops per image (multi-crop; 0: the two
      views of ``augment``, nothing else changes). With ``V > 0`` the views are
      ``sslit.augment.multi_crop_views`` of ``multi_crop_configs(augment, ...)``:
      two global crops at the image size with ``global_crop_scale`` and ``V``
      local crops of ``local_crop_size`` with ``local_crop_scale``; ``augment``
      must then be a preset name or None (``"none"``). DINO and SwAV use all the
      crops (the teacher and the codes see the global ones only); a two-view
      objective averages its loss over the pairs of :func:`view_pairs`.
    local_crop_size: side of the local crops (0: half the image size). The model
      must accept this input size (a convolutional backbone; an MLP's input size
      is fixed).
    global_crop_scale, local_crop_scale: area fractions of the global and local
      crops (DINO's (0.4, 1) and (0.05, 0.4)).
    queue_length: SwAV only: length ``L`` of the queue of earlier embeddings that
      joins each batch in the Sinkhorn step (0: none; a multiple of
      ``batch_size``). The paper uses one when the batch is smaller than the
      number of prototypes. The queue (``TrainState.ema_params["queue"]``,
      ``[2, L, k]``, newest first) fills from ``queue_start_step`` on with the
      global crops' projections and is used once full (the ``queue_used`` metric).
    queue_start_step: step from which the queue fills (the paper: epoch 15).
    freeze_prototypes_steps: SwAV only: the prototypes stay as initialised for
      this many steps (no gradient, no update; the paper: one epoch).
    views_in_one_pass: the views of each size go through the network as one
      batch, so BatchNorm statistics are over all of them (DINO's and SwAV's
      reference code); False: view after view, statistics per view (VICReg's).
    teacher_temperature_warmup_steps: DINO's teacher temperature ramp
      (``sslit.objectives.dino_teacher_temperature``, 0.04 -> 0.07) over this many
      steps; None: 30 % of ``num_steps`` (the paper's 30 of 100 epochs). Not used
      when ``objective_kwargs`` sets ``teacher_temperature`` (then constant).
    probe: train an online linear probe on stop-gradient representations.
    probe_learning_rate: Adam learning rate of the online probe.
    seed: seeds initialisation, augmentation and the data order.
    normalize: standardise each view with the data set's per-channel training
      statistics (``sslit.data.preprocess``, as evaluation does).
    log_every: host sync, metrics line and progress update every this many steps.
    checkpoint_every: save every this many steps (0: only at the end).
    keep_checkpoints: keep the newest K checkpoints (≥ 1).
    eval_every: evaluator period in steps (0: only at the end).
    max_train_seconds: stop early (with a checkpoint) after this much training
      time (None or 0: no cap); the schedule stays the one of ``num_steps``.
    resume: restore the newest good checkpoint of the run directory if any. Each
      checkpoint stores the run's signature (:func:`sslit.rundir.run_signature`); resuming
      with other trajectory settings raises ``checkpoint.SignatureMismatchError``
      listing them, except for the fields named in ``accept_changes``.
    accept_changes: signature fields allowed to differ from the checkpoint's
      (e.g. ``("learning_rate",)`` to resume after a non-finite loss).
    progress: show a tqdm progress bar (process 0 only).
    tensorboard: also write TensorBoard events when tensorboard is importable.
    data_workers: grain worker processes decoding a data set read from disk
      (``sslit.loader``; 0: in this process; None: the cores less one).
  """
  objective: Any
  batch_size: int
  num_steps: int
  objective_kwargs: Mapping[str, Any] | None = None
  augment: Any = None
  optimizer: str = "adamw"
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  momentum: float = 0.9
  warmup_steps: int = 0
  end_lr_factor: float = 0.0
  scale_lr_by_batch: bool = True
  grad_clip: float | None = None
  ema_momentum: float = 0.996
  average_weights: float = 0.0
  local_crops: int = 0
  local_crop_size: int = 0
  global_crop_scale: tuple[float, float] = (0.4, 1.0)
  local_crop_scale: tuple[float, float] = (0.05, 0.4)
  teacher_temperature_warmup_steps: int | None = None
  queue_length: int = 0
  queue_start_step: int = 0
  freeze_prototypes_steps: int = 0
  views_in_one_pass: bool = False
  probe: bool = True
  probe_learning_rate: float = 1e-3
  seed: int = 0
  normalize: bool = True
  log_every: int = 50
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  eval_every: int = 0
  max_train_seconds: float | None = None
  resume: bool = True
  accept_changes: tuple[str, ...] = ()
  progress: bool = True
  tensorboard: bool = True
  data_workers: int | None = None

  def __post_init__(self):
    checks = (
        ("batch_size", self.batch_size >= 1, ">= 1"),
        ("num_steps", self.num_steps >= 1, ">= 1"),
        ("log_every", self.log_every >= 1, ">= 1"),
        ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: only at the end)"),
        ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
        ("eval_every", self.eval_every >= 0, ">= 0 (0: only at the end)"),
        ("warmup_steps", 0 <= self.warmup_steps <= self.num_steps,
         f">= 0 and <= num_steps ({self.num_steps})"),
        ("learning_rate", self.learning_rate > 0, "> 0"),
        ("weight_decay", self.weight_decay >= 0, ">= 0"),
        ("end_lr_factor", 0 <= self.end_lr_factor <= 1, "in [0, 1]"),
        ("max_train_seconds", not self.max_train_seconds or self.max_train_seconds > 0,
         "> 0 (or 0/None: no cap)"),
        ("optimizer", self.optimizer in OPTIMIZERS, f"one of {sorted(OPTIMIZERS)}"),
        ("local_crops", self.local_crops >= 0, ">= 0 (0: two views)"),
        ("local_crop_size", self.local_crop_size >= 0, ">= 0 (0: half the image)"),
        ("global_crop_scale", _is_scale(self.global_crop_scale),
         "(low, high) with 0 < low <= high <= 1"),
        ("local_crop_scale", _is_scale(self.local_crop_scale),
         "(low, high) with 0 < low <= high <= 1"),
        ("queue_length", self.queue_length >= 0
         and self.queue_length % max(self.batch_size, 1) == 0,
         f">= 0 and a multiple of batch_size ({self.batch_size})"),
        ("queue_start_step", self.queue_start_step >= 0, ">= 0"),
        ("freeze_prototypes_steps", self.freeze_prototypes_steps >= 0, ">= 0"),
        ("teacher_temperature_warmup_steps",
         self.teacher_temperature_warmup_steps is None
         or self.teacher_temperature_warmup_steps >= 0, ">= 0 or None"),
    )
    for name, ok, want in checks:
      if not ok:
        raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}.")


def _is_scale(value: Any) -> bool:
  """``value`` is a crop area fraction range ``(low, high)``, ``0 < low <= high <= 1``."""
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError):
    return False
  return 0.0 < low <= high <= 1.0


class _Hook(NamedTuple):
  """Host work run every ``every`` steps (0: never on a period) and at the end."""
  every: int
  run: Callable[[int, "TrainState", Mapping], None]


def _due(hook: _Hook, step: int, final: bool) -> bool:
  return final or bool(hook.every and step % hook.every == 0)


def fit(*, model: Any, dataset: Any, options: FitOptions,
        workdir: str | os.PathLike | None = None, mesh: Any = None,
        evaluators: Sequence[Callable] = (),
        data_iterator_fn: Callable | None = None,
        signature: Mapping[str, Any] | None = None, lock: bool = True,
        on_ready: Callable[[], None] | None = None) -> FitResult:
  """Pretrain ``model`` with a self-supervised objective on ``dataset``.

  A short loop: the jitted step, then the hooks that are due (log, evaluate,
  checkpoint) and the time cap. Everything else is set up by ``_setup``.

  Args:
    model: a ``sslit.models.SSLModel`` (Flax module; ``apply(v, x, train=...)``
      returns ``{"rep", "proj"?, "pred"?, "prototypes"?}``); BYOL, SimSiam and
      MoCo need a predictor, SwAV prototypes.
    dataset: a ``sslit.data.Dataset`` (``get``, ``num_classes``, ``image_shape``).
    options: a :class:`FitOptions`.
    workdir: run directory for ``metrics.jsonl``, ``tensorboard/`` and
      ``checkpoints/`` (None: keep nothing on disk).
    mesh: a ``parallel.make_mesh()`` mesh (default: all devices).
    evaluators: callables ``(step, variables) -> dict[str, float]`` run on the
      host every ``options.eval_every`` steps and at the end; results go to
      ``metrics.jsonl``.
    data_iterator_fn: ``(start_step) -> iterator of host batches`` replacing
      ``sslit.data.batch_iterator`` (each batch is this process's part).
    signature: extra signature fields (see :func:`sslit.rundir.run_signature`).
    lock: hold ``rundir.RunLock(workdir)`` while training (False: the caller
      holds it, as ``sslit.runs.train`` does).
    on_ready: called once everything is checked and the state restored (its
      checkpoint's signature accepted) or initialised, before the first step and
      before ``metrics.jsonl`` is opened: ``sslit.runs.train`` writes
      ``config.json`` there, so a refused run leaves it as it was.

  Returns:
    A ``FitResult`` (final state, eval variables, logged history, final step,
    the step resumed from).

  Raises:
    NonFiniteLossError: the loss became NaN/inf (checkpoints up to then kept).
    ValueError: bad arguments (unknown objective, batch size not divisible by
      the device count, a model without the heads the objective's kind needs,
      local crops the model cannot take, ...).
  """
  if workdir is not None and lock:
    with rundir.RunLock(workdir):
      return fit(model=model, dataset=dataset, options=options, workdir=workdir,
                 mesh=mesh, evaluators=evaluators, data_iterator_fn=data_iterator_fn,
                 signature=signature, lock=False, on_ready=on_ready)
  o = options
  sig = run_signature(o, signature)
  run = _setup(model, dataset, o, workdir, mesh, sig)
  if on_ready is not None:
    on_ready()
  state, start, manager = run.state, run.start, run.manager
  is_chief = jax.process_index() == 0
  writer = metrics_lib.MetricsWriter(
      run.metrics_path, resume_step=start, enabled=is_chief,
      tensorboard_dir=run.tensorboard_dir)
  history: list = []
  if start >= o.num_steps:
    writer.close()
    if manager is not None:
      manager.close()
    return FitResult(state, _variables(state), history, start, run.resumed_from)

  batches = loader.Prefetch(_batches(dataset, o, start, data_iterator_fn, manager))
  bar = _progress_bar(o, start) if o.progress and is_chief else None
  timer = _Timer(o.batch_size)
  losses: list = []  # the loss of every step checked, host floats (the sane bound)
  saved: dict = {}  # step saved -> (its loss, the median of the losses until then)

  def record(rec):
    writer.write(rec)
    history.append(rec)

  def log(step, state, metrics):
    rec = timer.log_record(step, _to_python(parallel.to_host(metrics)),
                           stats=step % o.log_every == 0)
    record(rec)
    if bar is not None:
      bar.set_postfix(_postfix(rec), refresh=False)

  def evaluate(step, state, metrics):
    del metrics
    variables, rec = _variables(state), {"step": step}
    for ev in evaluators:
      rec.update({k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
                  for k, v in dict(ev(step, variables)).items()})
    record(rec)

  def save(step, state, metrics):
    del metrics
    manager.save(step, state, meta={"step": step, "data_step": step, "seed": o.seed,
                                    "batch_size": o.batch_size,
                                    "num_steps": o.num_steps}, signature=sig,
                 data_state=batches.state)
    if losses:  # every pending loss was checked before the hooks: the last is step's
      saved[step] = (losses[-1], float(np.median(losses)))

  def diverged(step):
    kept, moved = _keep_sane_checkpoint(manager, saved)
    median = float(np.median(losses)) if losses else 0.0
    raise NonFiniteLossError(step, kept, workdir, moved, median)

  hooks = [_Hook(o.log_every, log)]
  if evaluators:
    hooks.append(_Hook(o.eval_every, evaluate))
  if manager is not None:
    hooks.append(_Hook(o.checkpoint_every, save))

  pending: list = []  # (step, loss) not yet checked for finiteness
  step = start
  try:
    while step < o.num_steps:
      state, metrics = run.step_fn(state, parallel.shard_batch(
          _next_batch(batches, step, o.num_steps), run.mesh))
      step += 1
      pending.append((step, metrics["loss"]))
      timer.tick(step, metrics["loss"])
      if bar is not None:
        bar.update(1)
      out_of_time = timer.out_of_time(o.max_train_seconds)
      final = step == o.num_steps or out_of_time
      due = [h for h in hooks if _due(h, step, final)]
      if not due:
        continue
      _check_finite(pending, losses, diverged)
      for hook in due:
        hook.run(step, state, metrics)
      if out_of_time and step < o.num_steps:
        record(_stopped_early(step, o))
        break
  finally:
    batches.close()
    writer.close()
    if bar is not None:
      bar.close()
    if manager is not None:
      manager.close()
  return FitResult(state, _variables(state), history, step, run.resumed_from)


class _Setup(NamedTuple):
  mesh: Any
  state: TrainState
  start: int
  resumed_from: int | None
  manager: Any
  step_fn: Callable
  metrics_path: str | None
  tensorboard_dir: str | None


def _setup(model, dataset, o: FitOptions, workdir, mesh, sig: dict) -> _Setup:
  """Objective, optimiser, abstract shapes, restore-or-init and the jitted step."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(o.batch_size, mesh)
  obj = (objectives_lib.get_objective(o.objective, **dict(o.objective_kwargs or {}))
         if isinstance(o.objective, str) else o.objective)
  method = methods_lib.get_method(obj.kind)  # resolved once, asked from here on
  check_average_momentum(o.average_weights, method)
  _check_method_options(obj, method, o)
  settings = methods_lib.settings_for(method, obj.fn, o)
  augment_fn = _make_augment_fn(o, dataset)
  if o.normalize:
    augment_fn = _normalized(augment_fn, dataset)

  schedule = make_schedule(learning_rate=o.learning_rate, batch_size=o.batch_size,
                           num_steps=o.num_steps, warmup_steps=o.warmup_steps,
                           end_factor=o.end_lr_factor, scale_by_batch=o.scale_lr_by_batch)
  tx = make_optimizer(o.optimizer, learning_rate=schedule, weight_decay=o.weight_decay,
                      momentum=o.momentum, grad_clip=o.grad_clip or None)
  probe_tx = optax.adam(o.probe_learning_rate)

  def train_apply(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  # Shapes first (no FLOPs): the view shape, the model's variables and outputs.
  view, local_view = _view_shapes(augment_fn, dataset.image_shape)
  init_vars = lambda k: _init_variables(model, k, jnp.zeros(view.shape, view.dtype))
  abstract_vars = jax.eval_shape(init_vars, jax.random.key(0))
  outputs = jax.eval_shape(lambda v, x: train_apply(v, x)[0], abstract_vars, view)
  _check_outputs(obj, method, outputs)
  _check_input_sizes(model, abstract_vars, outputs["rep"], view, local_view,
                     dataset.image_shape)
  rep_dim = outputs["rep"].shape[-1]
  num_classes = int(dataset.num_classes)

  def init_state(key):
    k_model, k_train = jax.random.split(key)
    variables = init_vars(k_model)
    params = variables["params"]
    probe_params = ({"kernel": jnp.zeros((rep_dim, num_classes), jnp.float32),
                     "bias": jnp.zeros((num_classes,), jnp.float32)} if o.probe else {})
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
        ema_params=init_ema_params(method, params, outputs, settings=settings,
                                   average=bool(o.average_weights)),
        probe_params=probe_params,
        probe_opt_state=probe_tx.init(probe_params) if o.probe else {},
        key=k_train)

  replicated = parallel.replicated_sharding(mesh)
  root_key = jax.random.key(o.seed)
  abstract_state = jax.eval_shape(init_state, root_key)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)

  manager = metrics_path = tensorboard_dir = None
  if workdir is not None:
    workdir = os.path.abspath(os.fspath(workdir))
    ensure_writable(workdir)
    manager = checkpoint_lib.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                               max_to_keep=o.keep_checkpoints)
    metrics_path = os.path.join(workdir, metrics_lib.METRICS_FILE)
    if o.tensorboard:
      tensorboard_dir = os.path.join(workdir, "tensorboard")

  state, resumed_from = None, None
  if manager is not None and o.resume:
    stored = manager.signature() or {}
    accepted = {k: stored[k] for k in o.accept_changes if k in stored}
    restored = manager.restore(abstract_state, signature={**sig, **accepted})
    if restored is not None:
      state, _, resumed_from = restored
  if state is None:
    state = jax.jit(init_state, out_shardings=state_sharding)(root_key)

  step_fn = make_train_step(
      train_apply, obj.fn, tx, method=method, augment_fn=augment_fn,
      learning_rate_fn=schedule, probe_optimizer=probe_tx, stats_every=o.log_every,
      views_in_one_pass=o.views_in_one_pass, average_momentum=o.average_weights,
      **settings._asdict())
  jstep = jax.jit(step_fn, donate_argnums=0,
                  out_shardings=(state_sharding, replicated),
                  compiler_options=parallel.step_compiler_options(mesh))
  return _Setup(mesh, state, int(resumed_from or 0), resumed_from, manager, jstep,
                metrics_path, tensorboard_dir)


def _batches(dataset, o: FitOptions, start: int, data_iterator_fn, manager):
  if data_iterator_fn is not None:
    return data_iterator_fn(start)
  return loader.host_batches(
      dataset, o.batch_size, seed=o.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=start, num_steps=o.num_steps,
      workers=o.data_workers, state=manager and loader.saved_state(manager.directory, start))


def _next_batch(batches: Iterator, step: int, num_steps: int) -> dict:
  try:
    batch = next(batches)
  except StopIteration:
    raise RuntimeError(f"the data iterator ended at step {step} before num_steps="
                       f"{num_steps}; it must cycle over epochs.") from None
  return {k: batch[k] for k in ("image", "label", "mask") if k in batch}


def _check_finite(pending: list, losses: list, diverged: Callable[[int], None]) -> None:
  """Call ``diverged(step)`` (it raises) at the first non-finite pending loss; else
  append them to ``losses`` and clear them."""
  values = jax.device_get([l for _, l in pending])
  for (s, _), l in zip(pending, values):
    if not np.isfinite(l):
      diverged(s)
    losses.append(float(l))
  pending.clear()


# A checkpoint's loss this many times the running median (at least 1) away from it
# marks the run as diverged there: finite, but not a state to resume from.
_SANE_FACTOR = 100.0


def _keep_sane_checkpoint(manager, saved: Mapping[int, tuple[float, float]]
                          ) -> tuple[int | None, list]:
  """After a non-finite loss: the newest checkpoint whose loss was sane, and the
  newer ones moved aside (``<step>.diverged``, never deleted) so a resume starts
  from it. A step saved before this process started (its loss unknown) is kept."""
  if manager is None:
    return None, []
  moved = []
  for step in reversed(manager.all_steps()):
    loss, median = saved.get(step, (None, None))
    if loss is not None and abs(loss - median) > _SANE_FACTOR * max(abs(median), 1.0):
      moved.append((step, loss, manager.move_aside(step, reason="diverged")))
      continue
    return step, moved
  return None, moved


class _Timer:
  """Compile time (the first step), throughput between log lines, the time cap."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.t0 = time.perf_counter()
    self.mark, self.steps_mark, self.compile_s = None, 0, None

  def tick(self, step: int, loss) -> None:
    if self.mark is None:  # first step: compilation; time the rest
      jax.block_until_ready(loss)
      self.mark, self.steps_mark = time.perf_counter(), step
      self.compile_s = self.mark - self.t0

  def out_of_time(self, max_seconds: float | None) -> bool:
    return bool(max_seconds) and time.perf_counter() - self.t0 > max_seconds

  def log_record(self, step: int, values: dict, *, stats: bool) -> dict:
    now = time.perf_counter()
    rec = {"step": step}
    if not stats:  # statistics are computed on multiples of log_every only
      values = {k: v for k, v in values.items() if k not in STATS_KEYS}
    rec.update(values)
    if step > self.steps_mark:
      rec["images_per_s"] = (step - self.steps_mark) * self.batch_size / (now - self.mark)
    if self.compile_s is not None:
      rec["compile_s"], self.compile_s = self.compile_s, None
    rec["elapsed_s"] = now - self.t0
    self.mark, self.steps_mark = now, step
    return rec


def _postfix(rec: Mapping) -> dict:
  post = {"loss": f"{rec['loss']:.4g}"}
  if "images_per_s" in rec:
    post["img/s"] = f"{rec['images_per_s']:.0f}"
  if "probe_acc" in rec:
    post["probe"] = f"{rec['probe_acc']:.3f}"
  return post


def _progress_bar(o: FitOptions, start: int):
  return tqdm(total=o.num_steps, initial=start, unit="step", dynamic_ncols=True,
              desc="train")


def _stopped_early(step: int, o: FitOptions) -> dict:
  """The metrics note of a time-capped stop (a silent one looks like a finished run)."""
  if jax.process_index() == 0:
    print(f"fit: stopped at step {step} of {o.num_steps}: max_train_seconds="
          f"{o.max_train_seconds:g} reached (checkpoint saved; run again with a "
          f"larger cap to continue the schedule)", file=sys.stderr)
  return {"step": step, "stopped_early": 1.0,
          "max_train_seconds": float(o.max_train_seconds)}


def _variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _init_variables(model: Any, key: jax.Array, x: jax.Array) -> dict:
  variables = dict(models.init_variables(model, key, x))
  variables.setdefault("batch_stats", {})
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


# How to give a model an output a method needs.
_OUTPUT_HINTS = {"pred": "a predictor (build_model(..., predictor=True))",
               "proj": "a projector",
               "prototypes": "prototypes (build_model(..., prototypes=P))"}


def _check_outputs(obj: Any, method: methods_lib.Method, outputs: Mapping) -> None:
  """The model has the heads ``obj``'s method needs (a ValueError naming them)."""
  missing = [o for o in sorted(method.outputs) if o not in outputs]
  if missing:
    raise ValueError(f"objective {obj.name!r} needs a model with "
                     f"{' and '.join(_OUTPUT_HINTS.get(o, repr(o)) for o in missing)}; "
                     f"the model outputs {sorted(outputs)}.")


def _check_method_options(obj: Any, method: methods_lib.Method, o: FitOptions) -> None:
  """The options that belong to another method are left at 0."""
  for field, owners in methods_lib.option_fields().items():
    if getattr(o, field) and method.name not in owners:
      raise ValueError(f"{field} is an option of the {' and '.join(owners)} method "
                       f"only; objective {obj.name!r} uses method {method.name!r}: "
                       f"leave it at 0.")


def _check_input_sizes(model: Any, variables: Any, rep: Any, view: Any, local_view: Any,
                       image_shape: Sequence[int]) -> None:
  """The model takes the local crops, and maps the full images (which the probes, the
  monitor and ``embed`` see) to a representation of the views' shape."""
  def problem(x, want=None):
    try:
      got = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)["rep"], variables,
                           x)
    except Exception as e:  # pylint: disable=broad-except  (Flax raises its own kinds)
      return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None if want is None or got.shape[1:] == want else (
        f"a {got.shape[1:]} representation of the images against {want} of the views")
  if local_view is not None and (p := problem(local_view)):
    raise ValueError(f"the model does not accept local crops of shape "
                     f"{tuple(local_view.shape[1:])} ({p}); use a convolutional backbone "
                     f"or local_crop_size equal to the image size.")
  image = tuple(int(d) for d in image_shape)
  if tuple(view.shape[1:]) != image and (
      p := problem(jax.ShapeDtypeStruct((2,) + image, jnp.float32), rep.shape[1:])):
    raise ValueError(
        f"the views are {tuple(view.shape[1:3])} but the images {image[:2]}, and the "
        f"model does not map both to one representation ({p}); the probes apply it to "
        f"the full images. Use a backbone that pools to a fixed size (ConvNet with "
        f"final_pool '2x2' or 'gap', ResNet) or views of the images' size "
        f"(augment_options.image_size).")


def _view_shapes(augment_fn: Callable | None, image_shape: Sequence[int]):
  """Abstract ``[2, H, W, C]`` global view and local view (or None) of the views."""
  h, w, c = image_shape
  dummy = jax.ShapeDtypeStruct((2, h, w, c), jnp.uint8)
  if augment_fn is None:
    return jax.ShapeDtypeStruct((2, h, w, c), jnp.float32), None
  first, second = jax.eval_shape(augment_fn, jax.random.key(0), dummy)
  if len(first.shape) == 5:  # multi-crop: [2, n, ...] and [V, n, ...]
    local = (jax.ShapeDtypeStruct(second.shape[1:], second.dtype) if second.shape[0]
             else None)
    return jax.ShapeDtypeStruct(first.shape[1:], first.dtype), local
  return first, None


def multi_crop_fn(augment: str | None, *, image_size: int, num_local: int,
                  local_size: int = 0, global_scale: tuple[float, float] = (0.4, 1.0),
                  local_scale: tuple[float, float] = (0.05, 0.4)) -> Callable:
  """The multi-crop views function of a preset, for ``make_train_step``.

  ``(key, images [n, H, W, C]) -> (global [2, n, S, S, C], local [V, n, s, s, C])``
  with ``S = image_size``, ``s = local_size`` (0: ``max(1, image_size // 2)``) and
  ``V = num_local``: ``sslit.augment.multi_crop_views`` of
  ``sslit.augment.multi_crop_configs(augment or "none", ...)``.
  """
  if augment is not None and not isinstance(augment, str):
    raise ValueError(f"local crops need augment as a preset name (one of "
                     f"{list(augment_lib.PRESETS)}) or None, got {augment!r}.")
  size = int(local_size) or max(1, int(image_size) // 2)
  g_a, g_b, local = augment_lib.multi_crop_configs(
      augment or "none", image_size=image_size, local_size=size,
      global_scale=tuple(global_scale), local_scale=tuple(local_scale))
  return lambda key, images: augment_lib.multi_crop_views(
      key, images, g_a, g_b, local, num_local=int(num_local))


def _make_augment_fn(o: FitOptions, dataset: Any) -> Callable | None:
  augment = o.augment
  if o.local_crops:
    return multi_crop_fn(augment, image_size=dataset.image_shape[0],
                         num_local=o.local_crops, local_size=o.local_crop_size,
                         global_scale=o.global_crop_scale,
                         local_scale=o.local_crop_scale)
  if augment is None or callable(augment):
    return augment
  if isinstance(augment, str):
    cfg_a, cfg_b = augment_lib.preset(augment, image_size=dataset.image_shape[0])
  else:
    cfg_a, cfg_b = augment
  return lambda key, images: augment_lib.two_views(key, images, cfg_a, cfg_b)


def _normalized(augment_fn: Callable | None, dataset: Any) -> Callable:
  mean = np.asarray(getattr(dataset, "mean", 0.0), np.float32)
  std = np.asarray(getattr(dataset, "std", 1.0), np.float32)
  if np.any(std <= 0):
    raise ValueError(f"dataset.std must be > 0, got {std}.")


  def views(key, images):
    if augment_fn is None:
      x_a = x_b = images
    else:
      x_a, x_b = augment_fn(key, images)  # or stacked global and local views
    # The one preprocessing shared with evaluation (features see what training saw).
    return data_lib.preprocess(x_a, mean, std), data_lib.preprocess(x_b, mean, std)
  return views
