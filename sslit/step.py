"""The training step: the train state and ``make_train_step`` (composed, pure, jitted by ``fit``).

``make_train_step(apply_fn, loss_fn, optimizer, *, method, ...)`` builds
``step(state, batch) -> (state, metrics)``: views made on device from uint8 images
(key folded with the step; two views, or 2 global + V local crops), the model's
training application (mutable ``batch_stats``), the objective called by its method
(``sslit.methods``: which outputs it reads, its target network, its state), an
Optax update, the method's state update, an optional weight average and an online
linear probe on stop-gradient representations. The host loop that runs it is
``sslit.train.fit``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sslit import estimators
from sslit import methods as methods_lib
from sslit import models
from sslit.methods import dino_logits_output, view_pairs

__all__ = ["TrainState", "STATS_KEYS", "make_train_step", "images_to_float",
           "view_pairs", "dino_logits_output", "init_ema_params", "target_params",
           "check_average_momentum"]

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
    ema_params: the state of the method (``sslit.methods``): BYOL's target and
      MoCo's key encoder: an EMA of ``params``; DINO: ``{"params": EMA of params,
      "center": [K]}``; SwAV with a queue: ``{"queue": [2, L, k], "filled": int32}``
      (the objective state that is not parameters); ``{}`` for the other methods;
      ``"average"`` joins the dict with a weight average.
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




def init_ema_params(method: methods_lib.Method | str, params: Any, outputs: Mapping, *,
                    queue_length: int = 0, average: bool = False,
                    settings: methods_lib.Settings | None = None) -> Any:
  """``TrainState.ema_params`` at initialisation: the method's ``init_state``.

  ``params`` (BYOL's, MoCo's target), ``{"params", "center"}`` (DINO's teacher and
  centre, one entry per logit of ``outputs``), ``{"queue", "filled"}`` (SwAV with a
  queue of ``queue_length``) or ``{}``; with ``average``, ``"average": params``
  joins the dict (the weight average of :func:`make_train_step`).
  """
  method = methods_lib.get_method(method)
  settings = settings or methods_lib.Settings(queue_length=queue_length)
  state = method.init_state(settings, params, outputs)
  return {**state, "average": params} if average else state


def check_average_momentum(momentum: float, method: methods_lib.Method | str) -> None:
  """A weight average's momentum: in [0, 1), and only where no target network is."""
  method = methods_lib.get_method(method)
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"average_weights must be in [0, 1) (0: no average), got {momentum}.")
  if momentum and method.momentum:
    raise ValueError(f"average_weights is for objectives without a target network; "
                     f"method {method.name!r} has one (its EMA, ema_momentum): probe it "
                     f"with eval.target=True instead.")


def target_params(method: methods_lib.Method | str, ema_params: Any) -> Any:
  """The parameters of the network kept beside the online one, or None.

  The method's target (BYOL's and MoCo's EMA, DINO's teacher
  ``ema_params["params"]``), else the weight average (``ema_params["average"]``,
  with ``average_momentum`` > 0).
  """
  method = methods_lib.get_method(method)
  if method.momentum:
    return method.target(ema_params)
  return ema_params.get("average") if isinstance(ema_params, Mapping) else None


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


def _statistics(step: jax.Array, out: Mapping, every: int) -> dict:
  """The representation statistics on steps ``(t + 1) % every == 0``, zeros otherwise
  (inside a ``lax.cond``, so the SVD stays off most steps)."""
  operands = (jax.lax.stop_gradient(out["rep"]),
              None if out.get("proj") is None else jax.lax.stop_gradient(out["proj"]))
  stats_fn = lambda operands: _representation_stats(*operands)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(stats_fn, operands))
  return jax.lax.cond((step + 1) % every == 0, stats_fn, lambda _: zeros, operands)


def _views(augment_fn: Callable | None, key: jax.Array, images: jax.Array):
  """``(views, num_local)``: the global views, then the local ones."""
  if augment_fn is None:
    x = images_to_float(images)
    return (x, x), 0
  first, second = augment_fn(key, images)
  if first.ndim == 5:  # multi-crop: stacked global and local views
    return tuple(first) + tuple(second), len(second)
  return (first, second), 0


def _apply_views(apply_fn: Callable, variables: Mapping, xs: Sequence[jax.Array], *,
                 in_one_pass: bool):
  """Per-view outputs and the last mutated collections.

  View after view, or with ``in_one_pass`` one application per view size on the
  views of that size concatenated; the mutated collections of each pass feed the
  next.
  """
  if in_one_pass:
    groups = {}
    for i, x in enumerate(xs):
      groups.setdefault(tuple(x.shape[1:]), []).append(i)
    passes = list(groups.values())
  else:
    passes = [[i] for i in range(len(xs))]
  outs, mut = [None] * len(xs), {}
  for group in passes:
    x = xs[group[0]] if len(group) == 1 else jnp.concatenate([xs[i] for i in group])
    out, mut = apply_fn(variables, x)
    variables = {**variables, **{k: v for k, v in mut.items() if k in variables}}
    # Per-sample outputs split back into the group's views (once), the rest shared.
    parts = {k: jnp.split(v, len(group)) if k in models.OUTPUTS else [v] * len(group)
             for k, v in out.items()}
    for j, i in enumerate(group):
      outs[i] = {k: v[j] for k, v in parts.items()}
  return outs, mut


def _probe_step(optimizer, params, opt_state, rep: jax.Array, batch: Mapping):
  """One update of the online linear probe on ``stop_gradient(rep)``: params, state
  and metrics (``{}``, unchanged, when the probe is off)."""
  if not params:
    return params, opt_state, {}
  feats = jax.lax.stop_gradient(rep).astype(jnp.float32)
  labels, mask = batch["label"], batch.get("mask")
  weight = (jnp.ones(labels.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
  denom = jnp.maximum(weight.sum(), 1.0)

  def probe_loss(pp):
    logits = feats @ pp["kernel"] + pp["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * weight) / denom, logits

  (loss, logits), grads = jax.value_and_grad(probe_loss, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return optax.apply_updates(params, updates), opt_state, {
      "probe_loss": loss, "probe_acc": jnp.sum(correct * weight) / denom}


def make_train_step(apply_fn: Callable, loss_fn: Callable,
                    optimizer: optax.GradientTransformation, *,
                    method: methods_lib.Method | str = "pair",
                    augment_fn: Callable | None = None,
                    learning_rate_fn: optax.Schedule | None = None,
                    probe_optimizer: optax.GradientTransformation | None = None,
                    stats_every: int = 1, views_in_one_pass: bool = False,
                    average_momentum: float = 0.0, **settings: Any) -> Callable:
  """Compose views, model, method, objective and optimiser into one training step.

  ``step(state, batch) -> (state, metrics)``, pure (``jax.jit`` it, donating the
  state): the views ``augment_fn(fold_in(state.key, state.step), images)`` (two, or
  stacked global and local crops; None: the images twice), their outputs
  ``apply_fn`` view after view (``views_in_one_pass``: one pass per view size, as
  DINO's and SwAV's code), ``method.loss`` (how ``loss_fn`` is called, see
  ``sslit.methods``), the Optax update through ``method.mask_updates`` and
  ``method.project_params``, ``method.update_state``, the weight average
  ``average <- m average + (1 - m) params`` (``average_momentum`` m > 0, methods
  without a target network; never in the loss) and the online probe (softmax
  regression on ``stop_gradient(rep)`` of view 0, weighted by ``batch["mask"]``).
  Representation statistics on steps ``(t + 1) % stats_every == 0`` (zeros else).

  Args:
    apply_fn: ``(variables, x) -> (outputs, mutated)`` with ``"rep"`` and the heads.
    loss_fn: an objective's ``fn``; optimizer: Optax transformation of ``params``.
    method: a ``sslit.methods.Method`` or its name (the objective's ``kind``).
    augment_fn, learning_rate_fn, probe_optimizer: views, ``lr`` logged, probe.
    **settings: ``sslit.methods.Settings`` fields (``ema_momentum_fn``, ...).

  Returns:
    ``step``; metrics: float32 ``loss``, scalar aux terms, the method's,
    ``grad_norm``, ``lr``, ``probe_*`` and the statistics.
  """
  method = methods_lib.get_method(method)
  settings = methods_lib.Settings(**settings)
  method.check(settings)
  check_average_momentum(average_momentum, method)
  forward = functools.partial(_apply_views, apply_fn, in_one_pass=views_in_one_pass)

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    key = jax.random.fold_in(state.key, state.step)
    xs, num_local = _views(augment_fn, key, batch["image"])

    given = lambda outs, target: methods_lib.StepOutputs(
        loss_fn, outs, num_local, target, state.ema_params, state.step, key, settings)

    def loss_of(params):
      outs, mut = forward({"params": params, "batch_stats": state.batch_stats}, xs)
      stats = mut.get("batch_stats", state.batch_stats)
      target = lambda p, views, output="proj": [jax.lax.stop_gradient(o[output]) for o in
          forward({"params": p, "batch_stats": stats}, [xs[i] for i in views])[0]]
      loss, aux = method.loss(given(outs, target))
      return loss, (aux, stats, outs)

    (loss, (aux, batch_stats, outs)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    o = given(outs, None)  # after the loss: no target network to run
    grads = method.mask_updates(grads, state.step, settings)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = method.mask_updates(updates, state.step, settings)
    params = method.project_params(optax.apply_updates(state.params, updates))
    ema_params, method_metrics = method.update_state(o, params, aux)
    if average_momentum:
      ema_params = {**ema_params, "average": methods_lib.ema(
          average_momentum, ema_params["average"], params)}
    probe_params, probe_opt_state, probe_metrics = _probe_step(
        probe_optimizer, state.probe_params, state.probe_opt_state, o.outs[0]["rep"], batch)
    metrics = {"loss": loss, **method_metrics,
               **{k: v for k, v in aux.items() if k != "loss" and jnp.ndim(v) == 0},
               "grad_norm": optax.tree.norm(grads), **probe_metrics,
               **_statistics(state.step, o.outs[0], stats_every)}
    if learning_rate_fn is not None:
      metrics["lr"] = learning_rate_fn(state.step)
    return TrainState(state.step + 1, params, batch_stats, opt_state, ema_params,
                      probe_params, probe_opt_state, state.key), {
                          k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return step
