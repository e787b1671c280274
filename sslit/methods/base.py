"""The ``Method`` type: what the training step and the run layer ask a method.

A method is one frozen dataclass of pure functions (no Flax state in it): the model
outputs and heads it needs, how its state (``TrainState.ema_params``: an EMA target,
DINO's centre, SwAV's queue) starts and changes after each update, which network
``eval.target`` probes, and how its loss is called on the outputs of one step.
``sslit.step.make_train_step`` composes these functions and holds no branch on the
method; ``sslit.methods`` keeps one instance per method, by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from sslit import optim

Array = jax.Array


class Settings(NamedTuple):
  """A run's choices that a method reads (the method fields of ``FitOptions``).

  Attributes:
    ema_momentum_fn: ``step -> tau`` of the target network (methods with
      ``momentum``; see ``sslit.optim.ema_momentum_schedule``).
    teacher_temperature_fn: DINO's ``step -> t_t``; None: the loss's own value.
    queue_length: SwAV's queue length ``L`` (0: none).
    queue_start_step: step from which SwAV's queue fills.
    freeze_prototypes_steps: SwAV's prototypes get no update for this many steps.
    embedding: the model output a two-view loss sees (``"proj"``; ``"rep"`` is
      used for a model without that output).
  """
  ema_momentum_fn: Callable | None = None
  teacher_temperature_fn: Callable | None = None
  queue_length: int = 0
  queue_start_step: int = 0
  freeze_prototypes_steps: int = 0
  embedding: str = "proj"


class StepOutputs(NamedTuple):
  """What the step hands a method's ``loss`` and ``update_state``.

  Attributes:
    loss_fn: the objective's function (``sslit.objectives.get_objective(...).fn``).
    outs: the online network's outputs, one dict per view (``"rep"``, ``"proj"``,
      ...), the two global views first, then the ``num_local`` local ones.
    num_local: number of local views.
    target: ``target(params, views, output="proj") -> [array per view]``: the
      given views (indices into ``outs``) embedded by the network of ``params``
      (training-mode BatchNorm on the online network's updated statistics,
      discarded), stop-gradient.
    ema_params: ``TrainState.ema_params`` before the step.
    step: int32 scalar, the step's index.
    key: typed PRNG key of the step (the augmentation's; fold it in before use).
    settings: the run's :class:`Settings`.
  """
  loss_fn: Callable
  outs: Sequence[Mapping[str, Array]]
  num_local: int
  target: Callable
  ema_params: Any
  step: Array
  key: Array
  settings: Settings


def no_state(settings: Settings, params: Any, outputs: Mapping) -> dict:
  """The state of a method that keeps none: ``{}``."""
  del settings, params, outputs
  return {}


def keep_state(o: StepOutputs, params: Any, aux: Mapping) -> tuple[Any, dict]:
  """The state after a step of a method whose state does not change."""
  del params, aux
  return o.ema_params, {}


def no_target(ema_params: Any) -> None:
  """No target network (the weight average, if any, is found by the step)."""
  del ema_params


def identity(tree: Any, *args: Any) -> Any:
  """``tree`` unchanged (the default of ``mask_updates`` and ``project_params``)."""
  del args
  return tree


def no_heads(projector: Any) -> dict:
  """No extra head besides the backbone and the projector."""
  del projector
  return {}


def no_configuration(loss_fn: Callable, options: Any) -> dict:
  """No setting derived from ``FitOptions`` beyond the common ones."""
  del loss_fn, options
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """One SSL method: the pure functions the step and the run layer call.

  Attributes:
    name: the method's name (``Objective.kind`` of the objectives that use it).
    loss: ``loss(o: StepOutputs) -> (loss, aux)``: how the objective is called on
      the step's outputs.
    outputs: model outputs the loss reads besides ``"rep"`` (checked by ``fit``
      before compiling).
    heads: ``heads(projector) -> dict`` of ``sslit.models.build_model`` keywords
      the method needs given the projector widths (``predictor``, ``prototypes``
      or ``dino_head`` set to True or to widths).
    momentum: keeps a target network updated as ``tau ema + (1 - tau) params``
      (needs ``Settings.ema_momentum_fn``; no weight average beside it).
    init_state: ``init_state(settings, params, outputs) -> ema_params``.
    update_state: ``update_state(o, params, aux) -> (ema_params, metrics)`` after
      the update (``params`` the updated ones).
    target: ``target(ema_params) -> params or None``: the network ``eval.target``
      probes.
    mask_updates: ``mask_updates(tree, step, settings) -> tree`` applied to the
      gradients and to the updates (SwAV's frozen prototypes).
    project_params: ``project_params(params) -> params`` after the update (SwAV's
      unit-norm prototypes).
    configure: ``configure(loss_fn, options) -> dict`` of :class:`Settings` fields
      the method derives from ``FitOptions`` (DINO's teacher temperature).
    options: ``FitOptions`` fields only this method reads; a run of another
      method must leave them at their default.
  """
  name: str
  loss: Callable[[StepOutputs], tuple[Array, dict]]
  outputs: tuple[str, ...] = ()
  heads: Callable[[Any], dict] = no_heads
  momentum: bool = False
  init_state: Callable[[Settings, Any, Mapping], Any] = no_state
  update_state: Callable[[StepOutputs, Any, Mapping], tuple[Any, dict]] = keep_state
  target: Callable[[Any], Any] = no_target
  mask_updates: Callable[..., Any] = identity
  project_params: Callable[[Any], Any] = identity
  configure: Callable[[Callable, Any], dict] = no_configuration
  options: tuple[str, ...] = ()

  def check(self, settings: Settings) -> None:
    """A ValueError when ``settings`` lack what the method needs."""
    if self.momentum and settings.ema_momentum_fn is None:
      raise ValueError(f"method {self.name!r} keeps a target network and needs "
                       f"ema_momentum_fn (see sslit.optim.ema_momentum_schedule).")


def settings_for(method: Method, loss_fn: Callable, options: Any) -> Settings:
  """The :class:`Settings` of a run of ``method`` with ``FitOptions`` ``options``."""
  ema_fn = (optim.ema_momentum_schedule(base=options.ema_momentum,
                                        num_steps=options.num_steps)
            if method.momentum else None)
  return Settings(ema_momentum_fn=ema_fn, queue_length=options.queue_length,
                  queue_start_step=options.queue_start_step,
                  freeze_prototypes_steps=options.freeze_prototypes_steps,
                  **method.configure(loss_fn, options))


def view_pairs(num_local: int) -> tuple[tuple[int, int], ...]:
  """The view pairs of a two-view objective with ``num_local`` local crops.

  ``(0, 1)`` (the two global views), then every local view ``2 + l`` paired with
  each global view: ``1 + 2 * num_local`` pairs, averaged with equal weights.
  """
  return ((0, 1),) + tuple((g, 2 + l) for l in range(num_local) for g in (0, 1))


def embedding_of(out: Mapping[str, Array], embedding: str) -> Array:
  """``out[embedding]``, or the representation for a model without that output."""
  return out[embedding] if embedding in out else out["rep"]


def mean_over_pairs(o: StepOutputs, pair_loss: Callable[[int, int], tuple]) -> tuple:
  """``pair_loss(i, j)`` averaged (loss and every aux entry) over :func:`view_pairs`."""
  results = [pair_loss(i, j) for i, j in view_pairs(o.num_local)]
  if len(results) == 1:
    return results[0]
  losses, auxes = zip(*results)
  return (sum(losses) / len(losses),
          jax.tree.map(lambda *xs: sum(xs) / len(xs), *auxes))


def ema(tau: Any, average: Any, params: Any) -> Any:
  """``tau * average + (1 - tau) * params``, leaf by leaf."""
  return jax.tree.map(lambda a, p: tau * a + (1.0 - tau) * p, average, params)


def momentum_metrics(o: StepOutputs) -> tuple[Any, dict]:
  """The step's target momentum ``tau_t`` and its metric."""
  tau = o.settings.ema_momentum_fn(o.step)
  return tau, {"ema_momentum": jnp.asarray(tau, jnp.float32)}
