"""The training step: the train state and ``make_train_step`` (composed, pure, jitted by ``fit``).

``make_train_step(apply_fn, loss_fn, optimizer, *, kind, ...)`` builds
``step(state, batch) -> (state, metrics)``: views made on device from uint8 images
(key folded with the step; two views, or 2 global + V local crops), the model's
training application (mutable ``batch_stats``), an objective of
``sslit.objectives`` called as its ``kind`` says (``pair``, ``byol``, ``simsiam``,
``moco``, ``dino``, ``swav``), an Optax update, the EMA target where the kind has
one, and an online linear probe on stop-gradient representations. The host loop
that runs it is ``sslit.train.fit``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sslit import estimators
from sslit import models
from sslit import objectives as objectives_lib

__all__ = ["TrainState", "STATS_KEYS", "make_train_step", "images_to_float",
           "view_pairs", "dino_logits_output"]

# Representation statistics (computed on logging steps only).
STATS_KEYS = ("rep_std_mean", "rep_std_min", "rep_effective_rank", "proj_std_mean",
              "proj_std_min")


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly (a pytree; all leaves arrays).

  Attributes:
    step: int32 scalar, number of updates applied.
    params: model parameters.
    batch_stats: BatchNorm running statistics (``{}`` for models without).
    opt_state: Optax state of ``params``.
    ema_params: the target network of the objective's kind: BYOL's target and
      MoCo's key encoder: an EMA of ``params``; DINO: ``{"params": EMA of params,
      "center": [K]}``; SwAV with a queue: ``{"queue": [2, L, k], "filled": int32}``
      (the objective state that is not parameters); ``{}`` for the other kinds.
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


def images_to_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images are passed through as float32."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _representation_stats(rep: jax.Array, proj: jax.Array | None) -> dict:
  rep = rep.astype(jnp.float32)
  std = jnp.std(rep, axis=0)
  out = {"rep_std_mean": jnp.mean(std), "rep_std_min": jnp.min(std),
         "rep_effective_rank": estimators.effective_rank(rep)}
  if proj is not None:
    pstd = jnp.std(proj.astype(jnp.float32), axis=0)
    out["proj_std_mean"] = jnp.mean(pstd)
    out["proj_std_min"] = jnp.min(pstd)
  return out


def _mean_aux(auxes: Sequence[dict]) -> dict:
  """Entry-wise mean of the aux dicts of several view pairs."""
  return jax.tree.map(lambda *xs: sum(xs) / len(xs), *auxes)


def _zero_prototypes(tree: Mapping, frozen: jax.Array) -> dict:
  """``tree`` with its ``"prototypes"`` entry zeroed where ``frozen``."""
  p = tree["prototypes"]
  return {**tree, "prototypes": jnp.where(frozen, jnp.zeros_like(p), p)}


def _has_queue(state: TrainState) -> bool:
  """Whether the state carries SwAV's queue (static: the pytree's structure)."""
  return isinstance(state.ema_params, Mapping) and "queue" in state.ema_params


def _push_queue(queue_state: Mapping, z: jax.Array, active: jax.Array) -> dict:
  """SwAV's queue after a step: ``z`` ``[2, n, k]`` in front, the oldest ``n`` rows
  out, ``filled`` counting up to ``L``; unchanged while ``active`` is False."""
  queue, filled = queue_state["queue"], queue_state["filled"]
  length, n = queue.shape[1], z.shape[1]
  pushed = jnp.concatenate([z.astype(queue.dtype), queue[:, :length - n]], axis=1)
  return {"queue": jnp.where(active, pushed, queue),
          "filled": jnp.where(active, jnp.minimum(filled + n, length), filled)}


def dino_logits_output(outputs: Mapping) -> str:
  """Which model output holds DINO's logits: the weight-normalised head when the
  model has one (``"dino"``), else the projector's last layer (``"proj"``)."""
  return "dino" if "dino" in outputs else "proj"


def init_ema_params(kind: str, params: Any, outputs: Mapping, *, queue_length: int = 0,
                    average: bool = False) -> Any:
  """``TrainState.ema_params`` at initialisation for ``kind``.

  ``params`` (BYOL's, MoCo's target), ``{"params", "center"}`` (DINO's teacher and
  centre, one entry per logit of ``outputs``), ``{"queue", "filled"}`` (SwAV with a
  queue of ``queue_length``) or ``{}``; with ``average``, ``"average": params``
  joins the dict (the weight average of :func:`make_train_step`).
  """
  needs = objectives_lib.KIND_STATE.get(kind, ())
  if average:  # the weight average (kinds without a target network)
    return {**init_ema_params(kind, params, outputs, queue_length=queue_length),
            "average": params}
  if kind == "swav" and queue_length:  # SwAV's queue, one per global crop
    k = outputs["proj"].shape[-1]
    return {"queue": jnp.zeros((2, int(queue_length), k), jnp.float32),
            "filled": jnp.zeros((), jnp.int32)}
  if "center" in needs:  # one centre entry per DINO logit
    k = outputs[dino_logits_output(outputs)].shape[-1]
    return {"params": params, "center": jnp.zeros((k,), jnp.float32)}
  return params if "ema" in needs else {}


def check_average_momentum(momentum: float, kind: str) -> None:
  """A weight average's momentum: in [0, 1), and only where no target network is."""
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"average_weights must be in [0, 1) (0: no average), got {momentum}.")
  if momentum and "ema" in objectives_lib.KIND_STATE[kind]:
    raise ValueError(f"average_weights is for objectives without a target network; "
                     f"kind {kind!r} has one (its EMA, ema_momentum): probe it with "
                     f"eval.target=True instead.")


def target_params(kind: str, ema_params: Any) -> Any:
  """The parameters of the network kept beside the online one, or None.

  BYOL's and MoCo's EMA target (``ema_params``), DINO's teacher
  (``ema_params["params"]``), or the weight average of the other kinds
  (``ema_params["average"]``, with ``average_momentum`` > 0).
  """
  if kind in ("byol", "moco"):
    return ema_params or None
  if not isinstance(ema_params, Mapping):
    return None
  return ema_params.get("params" if kind == "dino" else "average")


def view_pairs(num_local: int) -> tuple[tuple[int, int], ...]:
  """The view pairs of a two-view objective with ``num_local`` local crops.

  ``(0, 1)`` (the two global views), then every local view ``2 + l`` paired with
  each global view: ``1 + 2 * num_local`` pairs, averaged with equal weights.
  """
  return ((0, 1),) + tuple((g, 2 + l) for l in range(num_local) for g in (0, 1))


def make_train_step(apply_fn: Callable, loss_fn: Callable,
                    optimizer: optax.GradientTransformation, *, kind: str = "pair",
                    augment_fn: Callable | None = None,
                    learning_rate_fn: optax.Schedule | None = None,
                    ema_momentum_fn: optax.Schedule | None = None,
                    teacher_temperature_fn: Callable | None = None,
                    probe_optimizer: optax.GradientTransformation | None = None,
                    stats_every: int = 1, embedding: str = "proj",
                    queue_start_step: int = 0,
                    freeze_prototypes_steps: int = 0,
                    views_in_one_pass: bool = False,
                    average_momentum: float = 0.0) -> Callable:
  """Compose augmentation, model, objective and optimiser into one training step.

  The step is pure (``jax.jit`` it, donating the state):
  ``step(state, batch) -> (state, metrics)``, with
  ``key_t = fold_in(state.key, state.step)``; the views come from
  ``augment_fn(key_t, images)``: two global views ``x_a, x_b`` and, with
  multi-crop, ``V`` local views; ``out_v, stats = apply_fn({"params",
  "batch_stats"}, x_v)`` per view (BatchNorm statistics of each view's batch,
  running statistics updated view after view, as VICReg's and BYOL's reference
  code; with ``views_in_one_pass`` one application per view size on the views
  concatenated, as DINO's and SwAV's); then, by ``kind`` (the objective's, see
  ``sslit.objectives.KIND_STATE``):

  - ``"pair"``: ``loss, aux = loss_fn(e_a, e_b)`` with ``e = out[embedding]``
    (``"proj"``, falling back to ``"rep"`` for models without a projector);
  - ``"byol"``: the target network (``state.ema_params``) embeds the views
    (training-mode BatchNorm, its statistics discarded) and
    ``loss, aux = loss_fn(p_a, p_b, t_a, t_b, z_a, z_b)``;
  - ``"simsiam"``: ``loss_fn(p_a, p_b, z_a, z_b)`` (the online network's own
    projections are the stop-gradient targets; no EMA);
  - ``"moco"``: ``loss_fn(q_a, q_b, k_a, k_b)``, queries ``q = pred`` of the online
    network, keys ``k = proj`` of the momentum encoder ``state.ema_params``;
  - ``"dino"``: ``loss_fn(student [m, n, K], teacher [2, n, K], center,
    teacher_temperature=teacher_temperature_fn(t))``: the student's logits of all
    ``m = 2 + V`` views (``out["dino"]``, the weight-normalised head, when the model
    has one; else ``out["proj"]``), the teacher's (``state.ema_params["params"]``)
    of the two global views only; ``state.ema_params["center"]`` is replaced by
    ``aux["center"]``;
  - ``"swav"``: ``loss_fn(z [m, n, k], out["prototypes"] [P, k])``; after the update
    the prototype rows are scaled back to unit norm. With a queue
    (``state.ema_params = {"queue": [2, L, k], "filled"}``, see
    ``sslit.train.FitOptions.queue_length``): ``loss_fn(..., queue=queue)`` once
    ``filled == L``; from step ``queue_start_step`` on, the two global crops'
    projections of the step (before its update) are pushed in front of the
    queue, the oldest ``n`` rows dropping out.

  A two-view kind (pair, byol, simsiam, moco) with ``V`` local views averages its
  loss and aux over the pairs of :func:`view_pairs` (the target network then
  embeds every view). For ``"byol"``, ``"moco"`` and ``"dino"``, after the update
  ``ema <- tau_t ema + (1 - tau_t) params`` with ``tau_t = ema_momentum_fn(t)``. The
  kinds without a target network (pair, simsiam, swav) may keep an average of the
  weights for evaluation only (``average_momentum`` m > 0): after the update
  ``state.ema_params["average"] <- m * average + (1 - m) * params``; it never enters
  the loss (:func:`target_params` finds either network in the state).

  An online linear probe (softmax regression on ``stop_gradient(rep_a)``, labels
  from the batch, weighted by ``batch["mask"]``) is updated by ``probe_optimizer``
  when ``state.probe_params`` is non-empty; it never affects the backbone.

  Args:
    apply_fn: training application ``(variables, x) -> (outputs, mutated)``, e.g.
      ``lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])``;
      ``outputs`` has ``"rep"`` and ``"proj"``/``"pred"``/``"prototypes"`` as the
      model provides.
    loss_fn: an objective's ``fn`` (see ``sslit.objectives.get_objective``).
    optimizer: Optax transformation for ``params``.
    kind: the objective's kind, one of ``sslit.objectives.KIND_STATE``.
    augment_fn: ``(key, images [b, H, W, C]) -> (x_a, x_b)``, or for multi-crop
      ``(global [2, b, H, W, C], local [V, b, h, w, C])`` (as
      ``sslit.augment.multi_crop_views`` returns); None: both views are the images
      as float in [0, 1].
    learning_rate_fn: schedule, only for logging ``lr``.
    ema_momentum_fn: target momentum schedule (required for byol, moco, dino).
    teacher_temperature_fn: DINO's ``step -> t_t`` (e.g. a partial of
      ``sslit.objectives.dino_teacher_temperature``); None: the objective's own.
    probe_optimizer: Optax transformation of the online probe.
    stats_every: representation statistics (per-dimension std, effective rank)
      are computed on steps ``t`` with ``(t + 1) % stats_every == 0`` only (inside a
      ``lax.cond``; zeros otherwise), to keep the SVD off most steps.
    embedding: model output fed to a ``"pair"`` objective.
    queue_start_step: SwAV's queue fills from this step on.
    freeze_prototypes_steps: SwAV's prototypes get neither a gradient nor an update
      (weight decay included) during the first this many steps, as the paper's
      ``freeze_prototypes_niters``.
    views_in_one_pass: the views of each size (the global crops; the local crops)
      go through the network as one concatenated batch, so that BatchNorm
      normalises with statistics over all of them and updates its running
      statistics once per size, as DINO's and SwAV's reference code; the target
      network does the same. False: view after view (statistics per view).
    average_momentum: momentum of the weight average kept in
      ``state.ema_params["average"]`` (0: none; in [0, 1); kinds without a target
      network only, whose ``ema_params`` then start with ``"average"`` = the
      initial parameters).

  Returns:
    ``step(state: TrainState, batch: {"image", "label", "mask"?}) -> (TrainState, metrics)``
    where ``metrics`` is a flat dict of scalars: ``loss``, every scalar aux term
    (DINO's ``center`` is state, not a metric), ``grad_norm``, ``lr``,
    ``probe_loss``, ``probe_acc``, ``ema_momentum``, ``teacher_temperature`` and
    the statistics.
  """
  kinds = tuple(objectives_lib.KIND_STATE)
  if kind not in kinds:
    raise ValueError(f"unknown objective kind {kind!r}; expected one of {list(kinds)}.")
  uses_ema = "ema" in objectives_lib.KIND_STATE[kind]
  if uses_ema and ema_momentum_fn is None:
    raise ValueError(f"kind={kind!r} needs ema_momentum_fn (see ema_momentum_schedule).")
  check_average_momentum(average_momentum, kind)

  def views(key, images):
    if augment_fn is None:
      x = images_to_float(images)
      return (x, x), ()
    first, second = augment_fn(key, images)
    if first.ndim == 5:  # multi-crop: stacked global and local views
      return tuple(first), tuple(second)
    return (first, second), ()

  def embed(out):
    if embedding in out:
      return out[embedding]
    return out["rep"]

  def passes(xs):
    """Groups of view indices that go through the network together."""
    if not views_in_one_pass:
      return [[i] for i in range(len(xs))]
    groups = {}
    for i, x in enumerate(xs):
      groups.setdefault(tuple(x.shape[1:]), []).append(i)
    return list(groups.values())

  def apply_views(variables, xs):
    """Per-view outputs and the last mutated collections, one pass per group."""
    outs, mut = [None] * len(xs), {}
    for group in passes(xs):
      x = xs[group[0]] if len(group) == 1 else jnp.concatenate([xs[i] for i in group])
      out, mut = apply_fn(variables, x)
      variables = {**variables, **{k: v for k, v in mut.items() if k in variables}}
      # Per-sample outputs split back into the group's views (once), the rest shared.
      parts = {k: jnp.split(v, len(group)) if k in models.OUTPUTS else [v] * len(group)
               for k, v in out.items()}
      for j, i in enumerate(group):
        outs[i] = {k: v[j] for k, v in parts.items()}
    return outs, mut

  def online(params, stats, xs):
    """Outputs of every view, BatchNorm statistics chained pass after pass."""
    outs, mut = apply_views({"params": params, "batch_stats": stats}, xs)
    return outs, mut.get("batch_stats", stats)

  def target_of(target_params, stats, xs, output="proj"):
    outs, _ = apply_views({"params": target_params, "batch_stats": stats}, xs)
    return [jax.lax.stop_gradient(o[output]) for o in outs]

  def two_view_loss(state, stats, outs, xs, num_local):
    needed = sorted({v for pair in view_pairs(num_local) for v in pair})
    t = (dict(zip(needed, target_of(state.ema_params, stats, [xs[v] for v in needed])))
         if kind in ("byol", "moco") else {})

    def pair_loss(i, j):
      o_i, o_j = outs[i], outs[j]
      if kind == "pair":
        return loss_fn(embed(o_i), embed(o_j))
      if kind == "byol":
        return loss_fn(o_i["pred"], o_j["pred"], t[i], t[j], o_i["proj"], o_j["proj"])
      if kind == "simsiam":
        return loss_fn(o_i["pred"], o_j["pred"], o_i["proj"], o_j["proj"])
      return loss_fn(o_i["pred"], o_j["pred"], t[i], t[j])  # moco

    results = [pair_loss(i, j) for i, j in view_pairs(num_local)]
    if len(results) == 1:
      return results[0]
    losses, auxes = zip(*results)
    return sum(losses) / len(losses), _mean_aux(auxes)

  def multi_view_loss(state, stats, outs, xs, step):
    if kind == "swav":
      z, protos = jnp.stack([o["proj"] for o in outs]), outs[0]["prototypes"]
      if not _has_queue(state):
        return loss_fn(z, protos)
      queue = state.ema_params["queue"]
      full = state.ema_params["filled"] >= queue.shape[1]
      return jax.lax.cond(full, lambda: loss_fn(z, protos, queue=queue),
                          lambda: loss_fn(z, protos))
    output = dino_logits_output(outs[0])
    student = jnp.stack([o[output] for o in outs])
    teacher = jnp.stack(target_of(state.ema_params["params"], stats, xs[:2], output))
    kw = {}
    if teacher_temperature_fn is not None:
      kw["teacher_temperature"] = teacher_temperature_fn(step)
    return loss_fn(student, teacher, state.ema_params["center"], **kw)

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    key = jax.random.fold_in(state.key, state.step)
    global_views, local_views = views(key, batch["image"])
    xs = global_views + local_views

    def loss_of(params):
      outs, stats = online(params, state.batch_stats, xs)
      if kind in ("dino", "swav"):
        loss, aux = multi_view_loss(state, stats, outs, xs, state.step)
      else:
        loss, aux = two_view_loss(state, stats, outs, xs, len(local_views))
      global_proj = (jnp.stack([outs[0]["proj"], outs[1]["proj"]])
                     if _has_queue(state) else None)
      return loss, (aux, stats, outs[0]["rep"], outs[0].get("proj"), global_proj)

    (loss, (aux, new_stats, rep, proj, global_proj)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    frozen = (state.step < freeze_prototypes_steps
              if freeze_prototypes_steps and "prototypes" in grads else None)
    if frozen is not None:
      grads = _zero_prototypes(grads, frozen)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    if frozen is not None:
      updates = _zero_prototypes(updates, frozen)
    params = optax.apply_updates(state.params, updates)
    if kind == "swav":
      params = models.normalize_prototypes(params)

    metrics = {"loss": loss}
    if _has_queue(state):
      queue, filled = state.ema_params["queue"], state.ema_params["filled"]
      metrics["queue_used"] = (filled >= queue.shape[1]).astype(jnp.float32)
    metrics.update({k: v for k, v in aux.items() if k != "loss" and jnp.ndim(v) == 0})
    metrics["grad_norm"] = optax.tree.norm(grads)
    if learning_rate_fn is not None:
      metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    if kind == "dino" and teacher_temperature_fn is not None:
      metrics["teacher_temperature"] = teacher_temperature_fn(state.step)

    ema_params = state.ema_params
    if _has_queue(state):
      ema_params = {**ema_params, **_push_queue(
          ema_params, jax.lax.stop_gradient(global_proj), state.step >= queue_start_step)}
    if uses_ema:
      tau = ema_momentum_fn(state.step)
      ema = lambda e, p: jax.tree.map(lambda a, b: tau * a + (1.0 - tau) * b, e, p)
      if kind == "dino":
        ema_params = {"params": ema(ema_params["params"], params),
                      "center": aux["center"]}
      else:
        ema_params = ema(ema_params, params)
      metrics["ema_momentum"] = jnp.asarray(tau, jnp.float32)
    if average_momentum:
      m = average_momentum
      ema_params = {**ema_params, "average": jax.tree.map(
          lambda a, p: m * a + (1.0 - m) * p, ema_params["average"], params)}

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
