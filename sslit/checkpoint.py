"""Checkpoints: atomic saves, keep the last K, resume from the newest good one.

A thin wrapper over ``orbax.checkpoint.CheckpointManager``. A checkpoint holds two
items: ``state`` (any pytree of arrays: parameters, batch statistics, optimiser
state, EMA target, probe, RNG key) and ``meta`` (a JSON dict: step, data
position, anything small). Orbax writes each step into a temporary directory
and renames it when complete, so a process killed mid-save leaves no half
checkpoint behind; temporary leftovers are removed on the next start.

Typed PRNG keys (``jax.random.key``) are stored as their raw ``uint32`` data and
re-wrapped on restore. A newest checkpoint that cannot be read is moved aside
(renamed ``<step>.corrupt``, never deleted) with a warning, and the previous one is
used; it is moved only once an older checkpoint has been read successfully, so
an incompatible target never displaces good checkpoints.

Multi-host: every process constructs the manager on the same (shared) directory
and calls ``save`` and ``restore`` with the same arguments; the arrays are global
``jax.Array`` over the mesh. Orbax splits the writing of replicated arrays
between the processes (each chunk is written once) and process 0 writes the
JSON ``meta`` and renames the finished step. A checkpoint counts as readable only
if every process read it, so all processes resume from the same step; process 0
moves unreadable ones aside and the others wait for it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["CheckpointManager", "CheckpointError", "abstract_like"]


class CheckpointError(RuntimeError):
  """No checkpoint in a directory could be restored although some exist."""


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_keys_to_data(abstract: Any) -> Any:
  def conv(x):
    if not _is_key(x):
      return x
    data = jax.eval_shape(jax.random.key_data, x)
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  return jax.tree.map(conv, abstract)


def _data_to_keys(abstract: Any, restored: Any) -> Any:
  def conv(a, r):
    if _is_key(a):
      impl = getattr(a.dtype, "_impl", None)
      return (jax.random.wrap_key_data(r) if impl is None
              else jax.random.wrap_key_data(r, impl=impl))
    return r
  return jax.tree.map(conv, abstract, restored)


def _on_every_process(ok: bool) -> bool:
  """Whether ``ok`` holds on every process (a collective when multi-host)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(ok, np.int32))
  return bool(np.all(flags))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any) -> Any:
  """``jax.ShapeDtypeStruct`` (with sharding where known) for each leaf of ``tree``."""
  def conv(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(conv, tree)


class CheckpointManager:
  """Save and restore training state under ``directory`` (one sub-directory per step).

  Args:
    directory: where checkpoints live (created if missing).
    max_to_keep: keep only the newest ``max_to_keep`` checkpoints (None: all).

  Raises:
    PermissionError: if ``directory`` cannot be created or written.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise PermissionError(
          f"cannot create checkpoint directory {self.directory!r}: {e.strerror}; "
          f"choose a writable --workdir.") from e
    if not os.access(self.directory, os.W_OK):
      raise PermissionError(f"checkpoint directory {self.directory!r} is not writable; "
                            f"choose a writable --workdir.")
    self.max_to_keep = max_to_keep
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints present, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, *, meta: dict[str, Any] | None = None) -> None:
    """Save ``state`` and ``meta`` as checkpoint ``step`` (blocking, atomic).

    Every process must call this (multi-host); replicated arrays are written once.

    Args:
      step: the training step the state is at (number of updates applied).
      state: pytree of arrays.
      meta: small JSON-serialisable dict (data position, seeds, ...).
    """
    meta = dict(meta or {})
    meta.setdefault("step", int(step))
    if int(step) in self._manager.all_steps():
      return
    self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                meta=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, *, step: int | None = None
              ) -> tuple[Any, dict[str, Any], int] | None:
    """Restore a checkpoint into the structure, dtypes and shardings of ``abstract_state``.

    With ``step=None`` the newest checkpoint is used; if it cannot be read it is
    renamed ``<step>.corrupt`` with a warning and the previous one is tried.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with ``sharding``), e.g.
        from ``jax.eval_shape`` of the initialiser.
      step: a specific step to restore (no fallback), or None for the newest.

    Returns:
      ``(state, meta, step)``, or None if the directory holds no checkpoint.

    Raises:
      CheckpointError: checkpoints exist but none could be restored.
    """
    target = _abstract_keys_to_data(abstract_state)
    restore_one = lambda s: self._restore_step(s, abstract_state, target)
    if step is not None:
      return restore_one(int(step))
    return self._newest_good(restore_one)

  def restore_raw(self, *, step: int | None = None
                  ) -> tuple[Any, dict[str, Any], int] | None:
    """Restore without a target: nested dicts of NumPy arrays as saved (keys as data).

    For reading a run's parameters without rebuilding its optimiser (``sslit
    eval``). The arrays are read on the host whatever devices and processes wrote
    them (a checkpoint of a two-process run reads in one process). Same fallback
    as :meth:`restore`.
    """
    def restore_one(s):
      # Without a target orbax would rebuild the saved shardings, which name the
      # devices of the run that wrote them; NumPy leaves ask for host arrays.
      handler = ocp.StandardCheckpointHandler()
      try:
        saved = handler.metadata(epath.Path(self.directory) / str(s) / "state")
      finally:
        handler.close()
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved)
      restored = self._manager.restore(
          s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                     meta=ocp.args.JsonRestore()))
      return restored["state"], dict(restored["meta"]), s
    if step is not None:
      return restore_one(int(step))
    return self._newest_good(restore_one)

  def _newest_good(self, restore_one):
    steps = self.all_steps()
    if not steps:
      return None
    errors = []
    for s in reversed(steps):
      try:
        result, error = restore_one(s), None
      except Exception as e:  # corrupt or incompatible: try the previous one
        result, error = None, e
      # All processes must resume from the same step.
      if not _on_every_process(error is None):
        errors.append((s, error or CheckpointError(
            f"step {s} was read by this process but not by every process")))
        continue
      # An older checkpoint reads fine, so the newer ones are corrupt: move them
      # aside (never delete) so that training can write those steps again.
      for bad, e in errors:
        moved = self._move_aside(bad)
        warnings.warn(
            f"checkpoint at step {bad} in {self.directory} could not be restored "
            f"({type(e).__name__}: {str(e)[:200]}); moved it to {moved} and resumed "
            f"from step {s} instead.", RuntimeWarning, stacklevel=3)
      return result
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} could be restored "
        f"(nothing was moved or deleted):\n  " +
        "\n  ".join(f"step {s}: {type(e).__name__}: {e}" for s, e in errors) +
        "\nMove the directory aside to start from scratch.") from errors[0][1]

  def _restore_step(self, step: int, abstract_state: Any, target: Any):
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    state = _data_to_keys(abstract_state, restored["state"])
    return state, dict(restored["meta"]), step

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst = src + ".corrupt"
    if jax.process_index() == 0 and os.path.exists(src):
      i = 1
      while os.path.exists(dst):
        dst = f"{src}.corrupt{i}"
        i += 1
      shutil.move(src, dst)
    # No process may list the steps again before the move is done.
    _sync_processes(f"sslit_checkpoint_move_aside_{step}")
    self._manager.close()
    self._manager = self._make_manager()
    return dst

  def close(self) -> None:
    """Wait for pending writes and release resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
