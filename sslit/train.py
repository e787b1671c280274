"""Self-supervised pretraining: the train state, the composed step, and ``fit``.

The step is built by composition, ``make_train_step(apply_fn, loss_fn, optimizer,
...)``: two augmented views made on device from uint8 images (key folded with the
step), the model's training application (mutable ``batch_stats``), an objective
``(loss, aux)`` from ``sslit.objectives``, an Optax update, BYOL's EMA target, and
an online linear probe trained on stop-gradient representations. Swapping the
objective, the optimiser or the augmentation is a change of argument.

``fit`` runs the loop: initialisation through ``jax.eval_shape``, replicated
state on a data-parallel mesh, restore-or-init from the newest checkpoint, a
jitted step with the state donated, and host work only every ``log_every`` steps
(metrics to ``metrics.jsonl`` and, if tensorboard is installed, TensorBoard
events; the progress bar), on the checkpoint schedule and on the evaluator
schedule. Library code never reads a config object: everything
is a keyword argument.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslit import checkpoint as checkpoint_lib
from sslit import parallel

__all__ = [
    "TrainState", "FitResult", "NonFiniteLossError", "make_schedule",
    "ema_momentum_schedule", "decay_mask", "make_optimizer", "make_train_step",
    "fit", "images_to_float",
]

OPTIMIZERS = ("adamw", "lars", "sgd", "adam")
# Representation statistics (computed on logging steps only).
STATS_KEYS = ("rep_std_mean", "rep_std_min", "rep_effective_rank", "proj_std_mean",
              "proj_std_min")


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; training stopped, checkpoints kept."""

  def __init__(self, step: int, last_checkpoint: int | None, workdir: str | None):
    self.step = step
    self.last_checkpoint = last_checkpoint
    where = (f"the last good checkpoint (step {last_checkpoint}) is kept in {workdir}"
             if last_checkpoint is not None else "no checkpoint had been written yet")
    super().__init__(
        f"the loss became non-finite at step {step}; training stopped and {where}. "
        f"Lower the learning rate or add warm-up steps, then run the same command "
        f"again to resume.")


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly (a pytree; all leaves arrays).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: model parameters.
    batch_stats: BatchNorm running statistics (``{}`` for models without).
    opt_state: Optax state of ``params``.
    ema_params: BYOL's target-network parameters (``{}`` for other objectives).
    probe_params: online linear probe ``{"kernel": [r, c], "bias": [c]}``
      (``{}`` when the probe is off).
    probe_opt_state: Optax state of the probe.
    key: typed PRNG key; the key of step ``t`` is ``fold_in(key, t)``.
  """
  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  probe_params: Any
  probe_opt_state: Any
  key: Any


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
# Schedules and optimisers.


def make_schedule(*, learning_rate: float, batch_size: int, num_steps: int,
                  warmup_steps: int = 0, end_factor: float = 0.0,
                  scale_by_batch: bool = True) -> optax.Schedule:
  """Linear warm-up to the peak, then cosine decay to ``end_factor * peak``.

  ``peak = learning_rate * batch_size / 256`` when ``scale_by_batch`` (the linear
  scaling rule of Goyal et al. 2017, as in SimCLR/VICReg/BYOL), else
  ``learning_rate``.

  Args:
    learning_rate: base learning rate (per 256 examples if ``scale_by_batch``).
    batch_size: global batch size.
    num_steps: total steps (warm-up included).
    warmup_steps: linear warm-up length from 0.
    end_factor: final learning rate as a fraction of the peak.
    scale_by_batch: apply the linear scaling rule.

  Returns:
    An Optax schedule ``step -> learning rate``.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if not 0 <= warmup_steps <= num_steps:
    raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}], got {warmup_steps}.")
  peak = learning_rate * (batch_size / 256.0 if scale_by_batch else 1.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(num_steps, warmup_steps + 1), end_value=peak * end_factor)


def ema_momentum_schedule(*, base: float = 0.996, num_steps: int) -> optax.Schedule:
  """BYOL's target momentum: ``tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2``.

  Rises from ``base`` at step 0 to 1 at step ``K = num_steps`` (Grill et al. 2020).
  """
  def schedule(step):
    frac = jnp.clip(step / max(num_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0
  return schedule


def decay_mask(params: Any) -> Any:
  """True for the parameters that get weight decay and LARS adaptation.

  Biases and normalisation scales/offsets (every parameter of rank <= 1) are
  excluded, as in the SimCLR/BYOL/VICReg LARS recipes.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(name: str, *, learning_rate: float | optax.Schedule,
                   weight_decay: float = 0.0, momentum: float = 0.9,
                   trust_coefficient: float = 0.001, b1: float = 0.9, b2: float = 0.999,
                   grad_clip: float | None = None) -> optax.GradientTransformation:
  """An Optax optimiser by name: ``"adamw"``, ``"lars"``, ``"sgd"`` or ``"adam"``.

  Weight decay (AdamW, LARS, SGD) and LARS's trust ratio apply only where
  ``decay_mask`` is True (not to biases and norm parameters).

  Args:
    name: optimiser name.
    learning_rate: a float or a schedule (see ``make_schedule``).
    weight_decay: decoupled (AdamW) or added-to-gradient (LARS, SGD) weight decay.
    momentum: momentum of LARS and SGD.
    trust_coefficient: LARS trust coefficient (eta).
    b1, b2: Adam moments.
    grad_clip: clip the global gradient norm to this value first (None: no clip).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}.")
  if name == "adamw":
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  elif name == "adam":
    tx = optax.adam(learning_rate, b1=b1, b2=b2)
  elif name == "lars":
    tx = optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=momentum)
  else:
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.sgd(learning_rate, momentum=momentum or None))
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx


# ----------------------------------------------------------------------------
# The step.


def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images are passed through as float32."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _representation_stats(rep: jax.Array, proj: jax.Array | None) -> dict:
  from sslit import estimators  # pylint: disable=g-import-not-at-top
  rep = rep.astype(jnp.float32)
  std = jnp.std(rep, axis=0)
  out = {"rep_std_mean": jnp.mean(std), "rep_std_min": jnp.min(std),
         "rep_effective_rank": estimators.effective_rank(rep)}
  if proj is not None:
    pstd = jnp.std(proj.astype(jnp.float32), axis=0)
    out["proj_std_mean"] = jnp.mean(pstd)
    out["proj_std_min"] = jnp.min(pstd)
  return out


def make_train_step(apply_fn: Callable, loss_fn: Callable,
                    optimizer: optax.GradientTransformation, *, kind: str = "pair",
                    augment_fn: Callable | None = None,
                    learning_rate_fn: optax.Schedule | None = None,
                    ema_momentum_fn: optax.Schedule | None = None,
                    probe_optimizer: optax.GradientTransformation | None = None,
                    stats_every: int = 1, embedding: str = "proj") -> Callable:
  """Compose augmentation, model, objective and optimiser into one training step.

  The step is pure (``jax.jit`` it, donating the state):
  ``step(state, batch) -> (state, metrics)``, with
  ``key_t = fold_in(state.key, state.step)``; ``x_a, x_b = augment_fn(key_t, images)``;
  ``out_v, stats = apply_fn({"params", "batch_stats"}, x_v)`` per view (BatchNorm
  statistics of each view's batch, running statistics updated view after view as
  in the reference implementations); then

  - ``kind == "pair"``: ``loss, aux = loss_fn(e_a, e_b)`` with ``e = out[embedding]``
    (``"proj"``, falling back to ``"rep"`` for models without a projector);
  - ``kind == "byol"``: the target network (``state.ema_params``) embeds both views
    (training-mode BatchNorm, its statistics discarded) and
    ``loss, aux = loss_fn(p_a, p_b, t_a, t_b, z_a, z_b)``; after the update
    ``ema <- tau_t ema + (1 - tau_t) params`` with ``tau_t = ema_momentum_fn(t)``.

  An online linear probe (softmax regression on ``stop_gradient(rep_a)``, labels
  from the batch, weighted by ``batch["mask"]``) is updated by ``probe_optimizer``
  when ``state.probe_params`` is non-empty; it never affects the backbone.

  Args:
    apply_fn: training application ``(variables, x) -> (outputs, mutated)``, e.g.
      ``lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])``;
      ``outputs`` has ``"rep"`` and ``"proj"``/``"pred"`` as the model provides.
    loss_fn: an objective's ``fn`` (see ``sslit.objectives.get_objective``).
    optimizer: Optax transformation for ``params``.
    kind: ``"pair"`` or ``"byol"`` (the objective's kind).
    augment_fn: ``(key, images [b, H, W, C]) -> (x_a, x_b)``; None: both views are
      the images as float in [0, 1].
    learning_rate_fn: schedule, only for logging ``lr``.
    ema_momentum_fn: BYOL target momentum schedule (required for ``"byol"``).
    probe_optimizer: Optax transformation of the online probe.
    stats_every: representation statistics (per-dimension std, effective rank)
      are computed on steps ``t`` with ``(t + 1) % stats_every == 0`` only (inside a
      ``lax.cond``; zeros otherwise), to keep the SVD off most steps.
    embedding: model output fed to a ``"pair"`` objective.

  Returns:
    ``step(state: TrainState, batch: {"image", "label", "mask"?}) -> (TrainState, metrics)``
    where ``metrics`` is a flat dict of scalars: ``loss``, every aux term,
    ``grad_norm``, ``lr``, ``probe_loss``, ``probe_acc``, and the statistics.
  """
  if kind not in ("pair", "byol"):
    raise ValueError(f"unknown objective kind {kind!r}; expected 'pair' or 'byol'.")
  if kind == "byol" and ema_momentum_fn is None:
    raise ValueError("kind='byol' needs ema_momentum_fn (see ema_momentum_schedule).")

  def views(key, images):
    if augment_fn is None:
      x = images_to_float(images)
      return x, x
    return augment_fn(key, images)

  def embed(out):
    if embedding in out:
      return out[embedding]
    return out["rep"]

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    key = jax.random.fold_in(state.key, state.step)
    x_a, x_b = views(key, batch["image"])

    def loss_of(params):
      out_a, mut = apply_fn({"params": params, "batch_stats": state.batch_stats}, x_a)
      stats = mut.get("batch_stats", state.batch_stats)
      out_b, mut = apply_fn({"params": params, "batch_stats": stats}, x_b)
      stats = mut.get("batch_stats", stats)
      if kind == "pair":
        loss, aux = loss_fn(embed(out_a), embed(out_b))
      else:
        target = {"params": state.ema_params, "batch_stats": stats}
        t_a = jax.lax.stop_gradient(apply_fn(target, x_a)[0]["proj"])
        t_b = jax.lax.stop_gradient(apply_fn(target, x_b)[0]["proj"])
        loss, aux = loss_fn(out_a["pred"], out_b["pred"], t_a, t_b,
                            out_a["proj"], out_b["proj"])
      return loss, (aux, stats, out_a["rep"], out_a.get("proj"))

    (loss, (aux, new_stats, rep, proj)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = {"loss": loss}
    metrics.update({k: v for k, v in aux.items() if k != "loss"})
    metrics["grad_norm"] = optax.tree.norm(grads)
    if learning_rate_fn is not None:
      metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)

    ema_params = state.ema_params
    if kind == "byol":
      tau = ema_momentum_fn(state.step)
      ema_params = jax.tree.map(lambda e, p: tau * e + (1.0 - tau) * p, ema_params, params)
      metrics["ema_momentum"] = jnp.asarray(tau, jnp.float32)

    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if probe_params:
      feats = jax.lax.stop_gradient(rep).astype(jnp.float32)
      labels = batch["label"]
      mask = batch.get("mask")
      weight = (jnp.ones(labels.shape, jnp.float32) if mask is None
                else mask.astype(jnp.float32))

      def probe_loss(pp):
        logits = feats @ pp["kernel"] + pp["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        denom = jnp.maximum(weight.sum(), 1.0)
        return jnp.sum(ce * weight) / denom, logits

      (p_loss, logits), p_grads = jax.value_and_grad(probe_loss, has_aux=True)(probe_params)
      p_updates, probe_opt_state = probe_optimizer.update(p_grads, probe_opt_state,
                                                          probe_params)
      probe_params = optax.apply_updates(probe_params, p_updates)
      correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
      metrics["probe_loss"] = p_loss
      metrics["probe_acc"] = jnp.sum(correct * weight) / jnp.maximum(weight.sum(), 1.0)

    def stats_fn(operands):
      return _representation_stats(*operands)

    operands = (jax.lax.stop_gradient(rep), None if proj is None else jax.lax.stop_gradient(proj))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(stats_fn, operands))
    do_stats = (state.step + 1) % stats_every == 0
    metrics.update(jax.lax.cond(do_stats, stats_fn, lambda _: zeros, operands))

    new_state = TrainState(
        step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state,
        ema_params=ema_params, probe_params=probe_params,
        probe_opt_state=probe_opt_state, key=state.key)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return new_state, metrics

  return step


# ----------------------------------------------------------------------------
# Host side.


def _prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Run ``iterator`` in a background thread, ``size`` items ahead."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()
  stop = threading.Event()

  def worker():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # re-raised in the consumer
      q.put(e)
      return
    q.put(sentinel)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


class _MetricsWriter:
  """Append-only JSON lines; on resume, lines after the restored step are dropped.

  With ``tensorboard_dir``, each record also goes to TensorBoard (if installed).
  """

  def __init__(self, path: str | None, *, resume_step: int, enabled: bool,
               tensorboard_dir: str | None = None):
    self.path = path if enabled else None
    self.tensorboard = None
    if enabled and tensorboard_dir is not None:
      self.tensorboard = _open_tensorboard(tensorboard_dir, resume_step=resume_step)
    if self.path is None:
      return
    if os.path.exists(self.path):
      kept = []
      with open(self.path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut short by a kill
          if rec.get("step", 0) <= resume_step:
            kept.append(json.dumps(rec))
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.write("".join(k + "\n" for k in kept))
      os.replace(tmp, self.path)

  def write(self, record: Mapping[str, Any]) -> None:
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self.tensorboard is not None:
      self.tensorboard.write(record)

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


def _open_tensorboard(logdir: str, *, resume_step: int) -> "_TensorBoardWriter | None":
  """A TensorBoard writer, or None (one INFO line) when tensorboard is not installed."""
  try:
    return _TensorBoardWriter(logdir, resume_step=resume_step)
  except ImportError:
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger(__name__).info(
        "tensorboard is not installed: metrics go to metrics.jsonl only.")
    return None


class _TensorBoardWriter:
  """The numeric entries of each metrics record as TensorBoard scalar events.

  Written with tensorboard's own event writer (no TensorFlow). The event file is
  opened at the first record, so a run with nothing to log leaves no file. It
  starts with ``SessionLog.START`` at ``resume_step + 1``: TensorBoard then drops
  the events of earlier files with larger steps, as ``metrics.jsonl`` drops its
  lines after the restored step.
  """

  def __init__(self, logdir: str, *, resume_step: int):
    # Raises ImportError without tensorboard.
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    # pylint: enable=g-import-not-at-top
    self._event_pb2, self._summary_pb2, self._writer_cls = (
        event_pb2, summary_pb2, EventFileWriter)
    self.logdir, self.resume_step = logdir, resume_step
    self._writer = None

  def write(self, record: Mapping[str, Any]) -> None:
    step = int(record["step"])
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in record.items()
              if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
      return
    now = time.time()
    if self._writer is None:
      self._writer = self._writer_cls(self.logdir)
      self._writer.add_event(self._event_pb2.Event(
          wall_time=now, step=self.resume_step + 1,
          session_log=self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)))
    self._writer.add_event(self._event_pb2.Event(
        wall_time=now, step=step, summary=self._summary_pb2.Summary(value=values)))
    self._writer.flush()  # as metrics.jsonl: on disk once written

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def append_metrics(workdir: str | os.PathLike, record: Mapping[str, Any], *,
                   tensorboard: bool = True) -> None:
  """Append one record to a finished run's ``metrics.jsonl`` (and TensorBoard events).

  For results computed after ``fit`` (offline evaluation, ``sslit analyze``), so they
  sit beside the training metrics in both places.

  Args:
    workdir: the run directory.
    record: ``{"step": int, name: value, ...}``; non-numeric values go to the JSON
      line only.
    tensorboard: also write the numeric values as scalar events under
      ``<workdir>/tensorboard/`` when tensorboard is installed.
  """
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps(dict(record)) + "\n")
  if not tensorboard:
    return
  writer = _open_tensorboard(os.path.join(workdir, "tensorboard"),
                             resume_step=int(record["step"]))
  if writer is not None:
    try:
      writer.write(record)
    finally:
      writer.close()


def _to_python(tree: Mapping[str, Any]) -> dict:
  return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
          for k, v in tree.items()}


def fit(*, model: Any, objective: Any, dataset: Any, batch_size: int, num_steps: int,
        workdir: str | os.PathLike | None = None,
        augment: Any = None,
        optimizer: str = "adamw", learning_rate: float = 1e-3,
        weight_decay: float = 1e-4, momentum: float = 0.9, warmup_steps: int = 0,
        end_lr_factor: float = 0.0, scale_lr_by_batch: bool = True,
        grad_clip: float | None = None,
        ema_momentum: float = 0.996, probe: bool = True, probe_learning_rate: float = 1e-3,
        objective_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0, mesh: Any = None,
        log_every: int = 50, checkpoint_every: int = 0, keep_checkpoints: int = 3,
        resume: bool = True, evaluators: Sequence[Callable] = (), eval_every: int = 0,
        progress: bool = True, max_train_seconds: float | None = None,
        normalize: bool = True,
        data_iterator_fn: Callable | None = None,
        tensorboard: bool = True) -> FitResult:
  """Pretrain ``model`` with a self-supervised ``objective`` on ``dataset``.

  Args:
    model: a ``sslit.models.SSLModel`` (Flax module; ``apply(v, x, train=...)``
      returns ``{"rep", "proj"?, "pred"?}``); BYOL objectives need a predictor.
    objective: a name for ``sslit.objectives.get_objective`` or an ``Objective``.
    dataset: a ``sslit.data.Dataset`` (``get``, ``num_classes``, ``image_shape``).
    batch_size: global batch size (all devices and processes); must divide by
      the device count.
    num_steps: total number of updates (the schedule's length).
    workdir: run directory for ``metrics.jsonl``, ``tensorboard/`` and
      ``checkpoints/`` (None: keep nothing on disk).
    augment: ``(cfg_a, cfg_b)`` for ``sslit.augment.two_views``, a preset name, a
      callable ``(key, images) -> (x_a, x_b)``, or None (no augmentation).
    optimizer: ``"adamw"``, ``"lars"``, ``"sgd"`` or ``"adam"``.
    learning_rate: base learning rate, scaled by ``batch_size / 256`` if
      ``scale_lr_by_batch``; linear warm-up then cosine to ``end_lr_factor * peak``.
    weight_decay, momentum, warmup_steps, end_lr_factor, scale_lr_by_batch,
      grad_clip: optimiser and schedule settings (see ``make_optimizer``).
    ema_momentum: BYOL's base target momentum (cosine-increased to 1).
    probe: train an online linear probe on stop-gradient representations.
    probe_learning_rate: Adam learning rate of the online probe.
    objective_kwargs: overrides passed to ``get_objective``.
    seed: seeds initialisation, augmentation and the data order.
    mesh: a ``parallel.make_mesh()`` mesh (default: all devices).
    log_every: host sync, metrics line and progress update every this many steps.
    checkpoint_every: save every this many steps (0: only at the end); needs
      ``workdir``.
    keep_checkpoints: keep the newest K checkpoints.
    resume: restore the newest good checkpoint in ``workdir`` if there is one.
    evaluators: callables ``(step, variables) -> dict[str, float]`` run on the
      host every ``eval_every`` steps and at the end; results go to ``metrics.jsonl``.
    eval_every: evaluator period in steps (0: only at the end).
    progress: show a tqdm progress bar (process 0 only).
    max_train_seconds: stop early (with a checkpoint) after this much training
      time; the schedule is still the one of ``num_steps``.
    normalize: standardise each view with the data set's per-channel training
      statistics, ``x = (view - dataset.mean) / dataset.std``, the convention of
      ``sslit.evaluate.preprocess`` (evaluation applies the same to clean images).
    data_iterator_fn: ``(start_step) -> iterator of host batches`` replacing
      ``sslit.data.batch_iterator`` (each batch is this process's part).
    tensorboard: also write every numeric metric (same name and step as in
      ``metrics.jsonl``) as TensorBoard scalar events under
      ``<workdir>/tensorboard/`` when the ``tensorboard`` package is importable
      (process 0 only; nothing without ``workdir``).

  Returns:
    A ``FitResult`` (final state, eval variables, logged history, final step,
    the step resumed from).

  Raises:
    NonFiniteLossError: the loss became NaN/inf (checkpoints up to then kept).
    ValueError: bad arguments (unknown objective/optimizer, batch size not
      divisible by the device count, BYOL without a predictor, ...).
  """
  from sslit import objectives as objectives_lib  # pylint: disable=g-import-not-at-top

  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if log_every < 1:
    raise ValueError(f"log_every must be >= 1, got {log_every}.")
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(batch_size, mesh)
  local_batch = parallel.process_local_batch_size(batch_size, mesh)
  is_chief = jax.process_index() == 0

  obj = (objectives_lib.get_objective(objective, **dict(objective_kwargs or {}))
         if isinstance(objective, str) else objective)
  augment_fn = _make_augment_fn(augment, dataset)
  if normalize:
    augment_fn = _normalized(augment_fn, dataset)

  schedule = make_schedule(learning_rate=learning_rate, batch_size=batch_size,
                           num_steps=num_steps, warmup_steps=warmup_steps,
                           end_factor=end_lr_factor, scale_by_batch=scale_lr_by_batch)
  tx = make_optimizer(optimizer, learning_rate=schedule, weight_decay=weight_decay,
                      momentum=momentum, grad_clip=grad_clip)
  probe_tx = optax.adam(probe_learning_rate)
  ema_fn = (ema_momentum_schedule(base=ema_momentum, num_steps=num_steps)
            if obj.kind == "byol" else None)

  def train_apply(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  # Shapes first (no FLOPs): the view shape, the model's variables and outputs.
  h, w, c = dataset.image_shape
  dummy = jax.ShapeDtypeStruct((2, h, w, c), jnp.uint8)
  if augment_fn is None:
    view = jax.ShapeDtypeStruct((2, h, w, c), jnp.float32)
  else:
    view = jax.eval_shape(lambda k, x: augment_fn(k, x)[0], jax.random.key(0), dummy)
  init_vars = lambda k: _init_variables(model, k, jnp.zeros(view.shape, view.dtype))
  abstract_vars = jax.eval_shape(init_vars, jax.random.key(0))
  outputs = jax.eval_shape(lambda v, x: train_apply(v, x)[0], abstract_vars, view)
  if obj.kind == "byol" and ("pred" not in outputs or "proj" not in outputs):
    raise ValueError(f"objective {obj.name!r} needs a model with a projector and a "
                     f"predictor (build_model(..., predictor=True)); the model outputs "
                     f"{sorted(outputs)}.")
  rep_dim = outputs["rep"].shape[-1]
  num_classes = int(dataset.num_classes)

  def init_state(key):
    k_model, k_train = jax.random.split(key)
    variables = init_vars(k_model)
    params = variables["params"]
    probe_params = ({"kernel": jnp.zeros((rep_dim, num_classes), jnp.float32),
                     "bias": jnp.zeros((num_classes,), jnp.float32)} if probe else {})
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
        ema_params=params if obj.kind == "byol" else {},
        probe_params=probe_params,
        probe_opt_state=probe_tx.init(probe_params) if probe else {},
        key=k_train)

  replicated = parallel.replicated_sharding(mesh)
  root_key = jax.random.key(seed)
  abstract_state = jax.eval_shape(init_state, root_key)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)

  manager = None
  metrics_path = tensorboard_dir = None
  if workdir is not None:
    workdir = os.path.abspath(os.fspath(workdir))
    _ensure_writable(workdir)
    manager = checkpoint_lib.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                               max_to_keep=keep_checkpoints)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if tensorboard:
      tensorboard_dir = os.path.join(workdir, "tensorboard")

  state, resumed_from = None, None
  if manager is not None and resume:
    restored = manager.restore(abstract_state)
    if restored is not None:
      state, _, resumed_from = restored
  if state is None:
    state = jax.jit(init_state, out_shardings=state_sharding)(root_key)
  start = int(resumed_from or 0)

  step_fn = make_train_step(
      train_apply, obj.fn, tx, kind=obj.kind, augment_fn=augment_fn,
      learning_rate_fn=schedule, ema_momentum_fn=ema_fn,
      probe_optimizer=probe_tx, stats_every=log_every)
  jstep = jax.jit(step_fn, donate_argnums=0,
                  out_shardings=(state_sharding, replicated),
                  compiler_options=parallel.step_compiler_options(mesh))

  writer = _MetricsWriter(metrics_path, resume_step=start, enabled=is_chief,
                          tensorboard_dir=tensorboard_dir)
  history: list = []
  if start >= num_steps:
    if manager is not None:
      manager.close()
    return FitResult(state, _variables(state), history, start, resumed_from)

  if data_iterator_fn is None:
    from sslit import data as data_lib  # pylint: disable=g-import-not-at-top
    batches = data_lib.batch_iterator(
        dataset, batch_size, seed=seed, shuffle=True, drop_remainder=True,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=start)
  else:
    batches = data_iterator_fn(start)
  batches = _prefetch(iter(batches))

  bar = None
  if progress and is_chief:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=num_steps, initial=start, unit="step", dynamic_ncols=True,
               desc="train")

  pending: list = []  # (step, loss) not yet checked for finiteness
  last_saved = manager.latest_step() if manager is not None else None
  t_train0 = time.perf_counter()
  t_mark, steps_mark, compile_s = None, 0, None
  step = start
  try:
    while step < num_steps:
      try:
        batch = next(batches)
      except StopIteration:
        raise RuntimeError(f"the data iterator ended at step {step} before num_steps="
                           f"{num_steps}; it must cycle over epochs.") from None
      batch = {k: batch[k] for k in ("image", "label", "mask") if k in batch}
      state, metrics = jstep(state, parallel.shard_batch(batch, mesh))
      step += 1
      pending.append((step, metrics["loss"]))
      if t_mark is None:  # first step: compilation; time the rest
        jax.block_until_ready(metrics["loss"])
        t_mark, steps_mark = time.perf_counter(), step
        compile_s = t_mark - t_train0
      if bar is not None:
        bar.update(1)

      last = step == num_steps
      out_of_time = (max_train_seconds is not None and
                     time.perf_counter() - t_train0 > max_train_seconds)
      do_log = step % log_every == 0 or last or out_of_time
      do_ckpt = manager is not None and (
          last or out_of_time or (checkpoint_every and step % checkpoint_every == 0))
      do_eval = bool(evaluators) and (last or out_of_time or
                                      (eval_every and step % eval_every == 0))
      if not (do_log or do_ckpt or do_eval):
        continue

      losses = jax.device_get([l for _, l in pending])
      for (s, _), l in zip(pending, losses):
        if not np.isfinite(l):
          raise NonFiniteLossError(s, last_saved, workdir)
      pending.clear()

      if do_log:
        now = time.perf_counter()
        record = {"step": step}
        host = _to_python(parallel.to_host(metrics))
        if step % log_every:  # statistics are computed on multiples of log_every only
          host = {k: v for k, v in host.items() if k not in STATS_KEYS}
        record.update(host)
        if step > steps_mark:
          record["images_per_s"] = (step - steps_mark) * batch_size / (now - t_mark)
        if compile_s is not None:
          record["compile_s"], compile_s = compile_s, None
        record["elapsed_s"] = now - t_train0
        t_mark, steps_mark = now, step
        writer.write(record)
        history.append(record)
        if bar is not None:
          post = {"loss": f"{record['loss']:.4g}"}
          if "images_per_s" in record:
            post["img/s"] = f"{record['images_per_s']:.0f}"
          if "probe_acc" in record:
            post["probe"] = f"{record['probe_acc']:.3f}"
          bar.set_postfix(post, refresh=False)
      if do_eval:
        variables = _variables(state)
        record = {"step": step}
        for ev in evaluators:
          record.update({k: (float(v) if np.ndim(v) == 0 else v)
                         for k, v in dict(ev(step, variables)).items()})
        writer.write(record)
        history.append(record)
      if do_ckpt:
        manager.save(step, state, meta={"step": step, "data_step": step, "seed": seed,
                                        "batch_size": batch_size, "num_steps": num_steps})
        last_saved = step
      if out_of_time and not last:
        # Say so: a silent early stop looks like a finished schedule.
        note = {"step": step, "stopped_early": 1.0,
                "max_train_seconds": float(max_train_seconds)}
        writer.write(note)
        history.append(note)
        if is_chief:
          import sys  # pylint: disable=g-import-not-at-top
          print(f"fit: stopped at step {step} of {num_steps}: max_train_seconds="
                f"{max_train_seconds:g} reached (checkpoint saved; run again with a "
                f"larger cap to continue the schedule)", file=sys.stderr)
        break
  finally:
    batches.close()
    writer.close()
    if bar is not None:
      bar.close()
    if manager is not None:
      manager.close()
  return FitResult(state, _variables(state), history, step, resumed_from)


def _variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _init_variables(model: Any, key: jax.Array, x: jax.Array) -> dict:
  try:
    from sslit import models  # pylint: disable=g-import-not-at-top
    init = models.init_variables
  except (ImportError, AttributeError):  # a bare Flax module
    init = lambda m, k, v: dict(m.init(k, v, train=False))
  variables = dict(init(model, key, x))
  variables.setdefault("batch_stats", {})
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def _make_augment_fn(augment: Any, dataset: Any) -> Callable | None:
  if augment is None or callable(augment):
    return augment
  from sslit import augment as augment_lib  # pylint: disable=g-import-not-at-top
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

  # The one preprocessing shared with evaluation (features must see what training saw).
  from sslit.evaluate import preprocess  # pylint: disable=g-import-not-at-top

  def views(key, images):
    if augment_fn is None:
      x_a = x_b = images
    else:
      x_a, x_b = augment_fn(key, images)
    return preprocess(x_a, mean, std), preprocess(x_b, mean, std)
  return views


def _ensure_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"cannot create workdir {workdir!r}: {e.strerror}; choose "
                          f"a writable --workdir.") from e
  probe_path = os.path.join(workdir, f".write_test_{os.getpid()}")
  try:
    with open(probe_path, "w") as f:
      f.write("ok")
    os.remove(probe_path)
  except OSError as e:
    raise PermissionError(f"workdir {workdir!r} is not writable ({e.strerror}); choose "
                          f"a writable --workdir.") from e
