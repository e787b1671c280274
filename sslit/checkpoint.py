"""Checkpoints: atomic, checksummed saves, keep the last K, resume from the newest good one.

A thin wrapper over ``orbax.checkpoint.CheckpointManager``. A checkpoint holds two
items: ``state`` (any pytree of arrays: parameters, batch statistics, optimiser
state, EMA target, probe, RNG key) and ``meta`` (a JSON dict: step, data
position, anything small). Orbax writes each step into a temporary directory
and renames it when complete, so a process killed mid-save leaves no half
checkpoint behind; temporary leftovers are removed on the next start.

Integrity: ``meta`` also carries, under the reserved key ``"_sslit"``, a SHA-256
of the host bytes of every leaf of ``state`` (computed from the values being
saved) and the caller's run signature. ``restore`` checks the signature before
reading any array (:class:`SignatureMismatchError`), the saved tree's paths and
shapes against the target (:class:`StructureMismatchError`), and the checksums
after reading (:class:`ChecksumMismatchError`, a damaged checkpoint).

Typed PRNG keys (``jax.random.key``) are stored as their raw ``uint32`` data and
re-wrapped on restore. A newest checkpoint that cannot be read, or whose data do
not match their checksums, is moved aside (renamed ``<step>.corrupt``, never
deleted) with a one-line warning, and the previous one is used; it is moved only
once an older checkpoint has been read successfully, so an incompatible target
never displaces good checkpoints.

Keep rule: ``max_to_keep`` is ``None`` (keep all) or at least 1. Older steps are
deleted only right after a new step was saved and is listed as complete on
every process; opening a manager (with any ``max_to_keep``) or restoring never
deletes anything.

Multi-host: every process constructs the manager on the same (shared) directory
and calls ``save`` and ``restore`` with the same arguments; the arrays are global
``jax.Array`` over the mesh. Orbax splits the writing of replicated arrays
between the processes (each chunk is written once) and process 0 writes the
JSON ``meta`` (with the checksums it computed from its own copies) and renames
the finished step. A checkpoint counts as readable only if every process read
and verified it, so all processes resume from the same step; process 0 moves
unreadable ones aside and the others wait for it.

The run directory around the checkpoints (its lock, ``config.json``, the run
signature) is ``sslit.rundir``'s.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import warnings
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["CheckpointManager", "CheckpointError", "ChecksumMismatchError",
           "SignatureMismatchError", "StructureMismatchError", "abstract_like",
           "check_signature", "check_structure", "silence_shutdown_noise"]

_log = logging.getLogger(__name__)

# Reserved key of ``meta`` holding what sslit adds to every step.
_RESERVED = "_sslit"
_FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint directory holds checkpoints, but none can be used as asked."""

  reason: str | None = None  # a short form, without the directory, for summaries


class ChecksumMismatchError(CheckpointError):
  """A checkpoint's data do not match the checksums written with it (damaged)."""


class SignatureMismatchError(CheckpointError):
  """The checkpoint was written by a run with other settings than the current one."""


class StructureMismatchError(CheckpointError):
  """The saved tree (leaf paths, shapes) does not match the model being restored."""


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


# --- integrity: checksums, run signatures, tree structure -----------------------


def _flat(tree: Any) -> dict[str, Any]:
  """Leaves by their ``/``-joined path, named as orbax names them on disk.

  A ``TrainState`` field, a dict key and a tuple index all become one path
  component, so a target tree and the saved tree's metadata (nested dicts)
  give the same names.
  """
  return {"/".join(str(p) for p in k): v for k, v in ocp.tree.to_flat_dict(tree).items()}


def _digest(host: np.ndarray) -> str:
  data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
  return hashlib.sha256(data).hexdigest()


def _index_key(index: tuple, shape: tuple) -> str:
  """A shard's position, e.g. ``0:4,0:3``, independent of how the slice was spelled."""
  return ",".join("{}:{}".format(*sl.indices(n)[:2]) for sl, n in zip(index, shape))


def _leaf_record(x: Any) -> dict[str, Any]:
  """Checksum record of one leaf: the whole value, or this process's shards of it."""
  rec: dict[str, Any] = {"dtype": str(np.dtype(x.dtype))}
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      rec["sha256"] = _digest(np.asarray(x.addressable_data(0)))
    else:  # sharded across processes: only this process's shards can be hashed
      rec["shards"] = {}
      for shard in x.addressable_shards:
        key = _index_key(shard.index, x.shape)
        if key not in rec["shards"]:
          rec["shards"][key] = _digest(np.asarray(shard.data))
    return rec
  rec["sha256"] = _digest(np.asarray(x))
  return rec


def _checksums(data_tree: Any) -> dict[str, dict[str, Any]]:
  return {name: _leaf_record(x) for name, x in _flat(data_tree).items()}


def _verify(restored: Any, checksums: dict[str, Any] | None, where: str) -> None:
  """Raise ``ChecksumMismatchError`` if a leaf this process holds does not match.

  Leaves restored with another dtype than saved (orbax casts to the target's
  dtype), and leaves sharded across processes whose shards this process does not
  hold, are not checked.
  """
  if not checksums:
    _log.debug("%s has no checksums (written before they existed); not verified", where)
    return
  checked = 0
  for name, x in _flat(restored).items():
    rec = checksums.get(name)
    if rec is None or rec.get("dtype") != str(np.dtype(x.dtype)):
      continue
    bad = False
    if "sha256" in rec:
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
          continue
        x = x.addressable_data(0)
      bad = _digest(np.asarray(x)) != rec["sha256"]
    else:
      shards = getattr(x, "addressable_shards", None)
      if shards is None:  # a host array: the whole value, recorded shard by shard
        shards = []
        host = np.asarray(x)
        for key, digest in rec.get("shards", {}).items():
          index = tuple(slice(*map(int, part.split(":")))
                        for part in key.split(",") if part)
          bad = bad or _digest(host[index]) != digest
      for shard in shards:
        digest = rec.get("shards", {}).get(_index_key(shard.index, x.shape))
        bad = bad or (digest is not None and _digest(np.asarray(shard.data)) != digest)
    if bad:
      error = ChecksumMismatchError(
          f"checksum mismatch in leaf {name} of {where}: its data changed on disk "
          f"after they were written")
      error.reason = f"checksum mismatch in leaf {name}"
      raise error
    checked += 1
  _log.debug("%s: %d leaves verified against their checksums", where, checked)


def _json_normal(d: dict[str, Any], name: str) -> dict[str, Any]:
  if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
    raise TypeError(f"{name} must be a dict with str keys, got {type(d).__name__}.")
  try:
    return json.loads(json.dumps(d))
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be JSON-serialisable (numbers, strings, lists, "
                    f"dicts): {e}.") from e


_ABSENT = "<absent>"


def check_signature(stored: dict[str, Any] | None, current: dict[str, Any] | None, *,
                    where: str = "the checkpoint", ignore: tuple[str, ...] = ()) -> None:
  """Raise ``SignatureMismatchError`` if two run signatures differ in any field.

  A run signature is a small JSON dict of the settings that define a run's
  trajectory (learning rate, batch size, number of steps, objective, model, seed,
  ...): the caller chooses the fields. Values are compared after a JSON round
  trip (a tuple equals the list it is saved as). Nothing is compared when either
  is None (a checkpoint written without one, or a caller that passes none).

  Args:
    stored: the signature saved with a checkpoint (``CheckpointManager.signature``).
    current: the signature of the run about to continue from it.
    where: how the message names the checkpoint.
    ignore: fields not compared (a reader ignores the settings a run may resume
      with changed, e.g. the learning rate).

  Raises:
    SignatureMismatchError: listing every differing field as ``old → new``.
  """
  if stored is None or current is None:
    return
  stored = _json_normal(stored, "the stored signature")
  current = _json_normal(current, "signature")
  differ = sorted(k for k in set(stored) | set(current)
                  if stored.get(k, _ABSENT) != current.get(k, _ABSENT) and k not in ignore)
  if differ:
    changes = ", ".join(f"{k} {json.dumps(stored.get(k, _ABSENT))} → "
                        f"{json.dumps(current.get(k, _ABSENT))}" for k in differ)
    raise SignatureMismatchError(
        f"{where} was written by a run with other settings ({changes}); to continue "
        f"that run, use its settings; to start a new run, use another workdir (or "
        f"move this one aside). Nothing was moved or deleted.")


def check_structure(saved: Any, target: Any, *, where: str = "the checkpoint") -> None:
  """Raise ``StructureMismatchError`` if two trees differ in leaf paths or shapes.

  Args:
    saved: the saved tree's metadata (leaves with ``.shape``), or any pytree.
    target: the tree to restore into (``jax.ShapeDtypeStruct`` leaves, arrays).
    where: how the message names the checkpoint.

  Raises:
    StructureMismatchError: naming the first differing leaf path (in sorted
      order) and both shapes, and how many leaves differ in all.
  """
  a = {k: tuple(np.shape(v) if not hasattr(v, "shape") else v.shape)
       for k, v in _flat(saved).items()}
  b = {k: tuple(np.shape(v) if not hasattr(v, "shape") else v.shape)
       for k, v in _flat(target).items()}
  differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  if not differ:
    return
  k = differ[0]
  if k not in a:
    first = f"leaf {k} (shape {b[k]}) is in the model but not in the checkpoint"
  elif k not in b:
    first = f"leaf {k} (shape {a[k]}) is in the checkpoint but not in the model"
  else:
    first = f"leaf {k} has shape {a[k]} in the checkpoint but {b[k]} in the model"
  more = f" ({len(differ) - 1} more leaves differ)" if len(differ) > 1 else ""
  error = StructureMismatchError(
      f"{where} does not fit the model: {first}{more}; restore it with the model "
      f"that wrote it, or use another workdir to train this model from scratch. "
      f"Nothing was moved or deleted.")
  error.reason = f"does not fit the model: {first}"
  raise error


def _short(e: BaseException, limit: int = 160) -> str:
  """One line: the error's type and the first line of its message, truncated."""
  text = getattr(e, "reason", None) or (
      str(e).strip().splitlines()[0] if str(e).strip() else "")
  if not isinstance(e, CheckpointError):
    text = f"{type(e).__name__}: {text}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


# --- the manager -------------------------------------------------------------------


class CheckpointManager:
  """Save and restore training state under ``directory`` (one sub-directory per step).

  Args:
    directory: where checkpoints live (created if missing).
    max_to_keep: keep only the newest ``max_to_keep`` checkpoints (None: all).
      At least 1. Older steps are deleted only after a new step was saved
      successfully, never when a manager is opened.
    read_only: a reader's manager (``sslit eval``, ``analyze``, ``embed``): it
      writes, moves and deletes nothing (a save in progress beside it is left
      alone, a damaged newest step is skipped, not moved aside), takes no lock,
      and works in a directory it cannot write; ``save`` raises.

  Raises:
    ValueError: ``max_to_keep`` is not None or a positive int.
    PermissionError: if ``directory`` cannot be created or written (not
      ``read_only``).
    FileNotFoundError: ``read_only`` and ``directory`` does not exist.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               read_only: bool = False):
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, (int, np.integer))
        or max_to_keep < 1):
      raise ValueError(
          f"max_to_keep (the config's keep_checkpoints) must be None (keep all) or an "
          f"int >= 1, got {max_to_keep!r}: keeping 0 would delete every checkpoint "
          f"right after writing it. Use keep_checkpoints=1 or more, or "
          f"checkpoint_every=0 to save only at the end.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.read_only = bool(read_only)
    if self.read_only:
      if not os.path.isdir(self.directory):
        raise FileNotFoundError(f"no checkpoint directory {self.directory}.")
    else:
      try:
        os.makedirs(self.directory, exist_ok=True)
      except OSError as e:
        raise PermissionError(
            f"cannot create checkpoint directory {self.directory!r}: {e.strerror}; "
            f"choose a writable --workdir.") from e
      if not os.access(self.directory, os.W_OK):
        raise PermissionError(f"checkpoint directory {self.directory!r} is not "
                              f"writable; choose a writable --workdir.")
    self.max_to_keep = None if max_to_keep is None else int(max_to_keep)
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    # Orbax keeps everything: pruning is done by ``_prune``, after a save is complete
    # (orbax's own pruning also runs when finalising a step failed).
    if self.read_only:
      # A reader beside a running train: no directory made, no temporary directory
      # (the writer's save in progress) removed, nothing written.
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None, create=False, enable_async_checkpointing=False,
          cleanup_tmp_directories=False, read_only=True, save_interval_steps=0,
          save_root_metadata=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None, create=True, enable_async_checkpointing=False,
          cleanup_tmp_directories=True)
    absl = logging.getLogger("absl")
    absl.addFilter(_drop_read_only_note)
    try:
      return ocp.CheckpointManager(self.directory, options=options,
                                   item_names=("state", "meta", "data"))
    finally:
      absl.removeFilter(_drop_read_only_note)

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints present, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, *, meta: dict[str, Any] | None = None,
           signature: dict[str, Any] | None = None,
           data_state: bytes | None = None) -> None:
    """Save ``state`` and ``meta`` as checkpoint ``step`` (blocking, atomic).

    Every process must call this (multi-host); replicated arrays are written once.
    With the step saved, steps beyond the newest ``max_to_keep`` are deleted. A
    step that already exists is left as it is.

    Args:
      step: the training step the state is at (number of updates applied).
      state: pytree of arrays.
      meta: small JSON-serialisable dict (data position, seeds, ...); the key
        ``"_sslit"`` is reserved.
      signature: small JSON dict of the settings that define the run (see
        :func:`check_signature`), stored with the step and checked by
        ``restore(..., signature=...)``.
      data_state: this process's data iterator state (grain's JSON bytes): the
        step's item ``data``, one file per process (grain's orbax handler).
    """
    if self.read_only:
      raise ValueError(f"this manager of {self.directory} is read-only; open it with "
                       f"read_only=False to save.")
    meta = dict(meta or {})
    if _RESERVED in meta:
      raise ValueError(f"meta key {_RESERVED!r} is reserved for sslit's checksums and "
                       f"signature; rename that key.")
    meta.setdefault("step", int(step))
    info: dict[str, Any] = {"format": _FORMAT}
    if signature is not None:
      info["signature"] = _json_normal(signature, "signature")
    if int(step) in self._manager.all_steps():
      return
    data = _keys_to_data(state)
    # Only process 0 writes ``meta``: the others need not hash.
    info["checksums"] = _checksums(data) if jax.process_index() == 0 else {}
    meta[_RESERVED] = info
    items = {"state": ocp.args.StandardSave(data), "meta": ocp.args.JsonSave(meta)}
    if data_state is not None:
      import grain.python as grain
      items["data"] = grain.PyGrainCheckpointSave(SimpleNamespace(get_state=lambda: data_state))
    try:
      with _HeldSaveNoise():
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not _is_no_space(e):
        raise
      # A full disk reaches here from TensorStore as a ValueError
      # ("RESOURCE_EXHAUSTED ... No space left on device"): said as what it is.
      raise OSError(errno.ENOSPC, f"no space left on the device while saving "
                    f"checkpoint {int(step)} in {self.directory}",
                    os.fspath(self.directory)) from e
    self._prune(int(step))

  def _prune(self, new_step: int) -> None:
    """Delete steps beyond the newest ``max_to_keep``, once ``new_step`` is complete."""
    if self.max_to_keep is None:
      return
    self._manager.reload()
    steps = self.all_steps()
    if not _on_every_process(new_step in steps):
      warnings.warn(f"checkpoint step {new_step} in {self.directory} is not listed as "
                    f"complete after saving it; no older checkpoint was deleted.",
                    RuntimeWarning, stacklevel=3)
      return
    for s in steps[:-self.max_to_keep]:
      if s != new_step:
        self._manager.delete(s)

  def signature(self, step: int | None = None) -> dict[str, Any] | None:
    """The run signature saved with checkpoint ``step`` (default: the newest), or None."""
    step = self.latest_step() if step is None else int(step)
    if step is None:
      return None
    return self._read_meta(step)[1].get("signature")

  def restore(self, abstract_state: Any, *, step: int | None = None,
              signature: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any], int] | None:
    """Restore a checkpoint into the structure, dtypes and shardings of ``abstract_state``.

    With ``step=None`` the newest checkpoint is used; if it cannot be read or its
    data do not match their checksums, it is renamed ``<step>.corrupt`` with a
    one-line warning and the previous one is tried.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with ``sharding``), e.g.
        from ``jax.eval_shape`` of the initialiser.
      step: a specific step to restore (no fallback), or None for the newest.
      signature: the current run's signature; compared with the one saved with
        the step before anything is read (None: not compared).

    Returns:
      ``(state, meta, step)``, or None if the directory holds no checkpoint.

    Raises:
      SignatureMismatchError: the step was saved with another signature.
      StructureMismatchError: no step fits ``abstract_state`` (paths or shapes).
      ChecksumMismatchError: ``step`` was given and its data are damaged.
      CheckpointError: checkpoints exist but none could be restored.
    """
    target = _abstract_keys_to_data(abstract_state)
    restore_one = lambda s: self._restore_step(s, abstract_state, target, signature)
    if step is not None:
      return restore_one(int(step))
    return self._newest_good(restore_one)

  def restore_raw(self, *, step: int | None = None,
                  signature: dict[str, Any] | None = None, ignore: tuple[str, ...] = ()
                  ) -> tuple[Any, dict[str, Any], int] | None:
    """Restore without a target: nested dicts of NumPy arrays as saved (keys as data).

    For reading a run's parameters without rebuilding its optimiser (``sslit
    eval``). The arrays are read on the host whatever devices and processes wrote
    them (a checkpoint of a two-process run reads in one process). Same checks
    (checksums; the signature if given, but for the fields in ``ignore``) and
    fallback as :meth:`restore`.
    """
    def restore_one(s):
      meta, info = self._read_meta(s)
      where = f"checkpoint step {s} in {self.directory}"
      check_signature(info.get("signature"), signature, where=where, ignore=ignore)
      # Without a target orbax would rebuild the saved shardings, which name the
      # devices of the run that wrote them; NumPy leaves ask for host arrays.
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), self._saved_tree(s))
      restored = self._manager.restore(
          s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      _verify(restored["state"], info.get("checksums"), where)
      return restored["state"], meta, s
    if step is not None:
      return restore_one(int(step))
    return self._newest_good(restore_one)

  def _read_meta(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta without the reserved key, the reserved record)`` of a step."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    info = meta.pop(_RESERVED, None)
    return meta, (info if isinstance(info, dict) else {})

  def _saved_tree(self, step: int) -> Any:
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.metadata(epath.Path(self.directory) / str(step) / "state")
    finally:
      handler.close()

  def _newest_good(self, restore_one):
    # A reader beside a running train may see a step pruned while reading it: it
    # lists the steps again (the writer keeps the newest ones).
    for _ in range(4 if self.read_only else 0):
      result, vanished = self._newest_good_once(restore_one, skip_vanished=True)
      if not vanished:
        return result
      self._manager.reload()
    return self._newest_good_once(restore_one)[0]

  def _newest_good_once(self, restore_one, skip_vanished: bool = False):
    """``(result, False)``, or ``(None, True)`` if ``skip_vanished`` and a step that
    failed was deleted meanwhile and none of the older ones could be read."""
    steps = self.all_steps()
    if not steps:
      return None, False
    errors, vanished = [], False
    for s in reversed(steps):
      try:
        # A damaged step makes TensorStore's threads report on closed event loops
        # (a dozen tracebacks): the one warning below names the step and the cause.
        with _HeldSaveNoise(drop=lambda e: True):
          result, error = restore_one(s), None
      except SignatureMismatchError:
        raise  # another run's checkpoint, not a damaged one: nothing is moved
      except Exception as e:  # damaged or incompatible: try the previous one
        result, error = None, e
        _log.debug("checkpoint step %s in %s could not be restored", s, self.directory,
                   exc_info=e)
      if error is not None and skip_vanished and not os.path.isdir(
          os.path.join(self.directory, str(s))):
        vanished = True  # pruned by the writer while this reader read it
        continue
      # All processes must resume from the same step.
      if not _on_every_process(error is None):
        errors.append((s, error or CheckpointError(
            f"step {s} was read by this process but not by every process")))
        continue
      # An older checkpoint reads fine, so the newer ones are damaged: move them
      # aside (never delete) so that training can write those steps again.
      for bad, e in errors:
        if self.read_only:
          if os.path.isdir(os.path.join(self.directory, str(bad))):  # not pruned since
            warnings.warn(
                f"checkpoint step {bad} in {self.directory} could not be restored "
                f"({_short(e)}); using step {s} (left in place: read-only).",
                RuntimeWarning, stacklevel=4)
          continue
        moved = self._move_aside(bad)
        warnings.warn(
            f"checkpoint step {bad} in {self.directory} could not be restored "
            f"({_short(e)}); moved it to {moved}, resuming from step {s}.",
            RuntimeWarning, stacklevel=4)
      return result, False
    if vanished:
      return None, True
    for _, e in errors:
      if isinstance(e, StructureMismatchError):
        raise e  # the model changed: say how, rather than "none could be restored"
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} could be restored ("
        + "; ".join(f"step {s}: {_short(e, 100)}" for s, e in errors) +
        "); nothing was moved or deleted. Move the directory aside to start from "
        "scratch.") from errors[0][1]

  def _restore_step(self, step: int, abstract_state: Any, target: Any,
                    signature: dict[str, Any] | None = None):
    where = f"checkpoint step {step} in {self.directory}"
    meta, info = self._read_meta(step)
    check_signature(info.get("signature"), signature, where=where)
    check_structure(self._saved_tree(step), target, where=where)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    _verify(restored["state"], info.get("checksums"), where)
    state = _data_to_keys(abstract_state, restored["state"])
    return state, meta, step

  def move_aside(self, step: int, *, reason: str = "diverged") -> str:
    """Rename checkpoint ``step`` to ``<step>.<reason>`` (never deleted); the new path.

    Every process calls it (multi-host); process 0 moves. A training run moves
    the checkpoints written after its loss diverged, so it resumes before them.
    """
    if self.read_only:
      raise ValueError(f"this manager of {self.directory} is read-only.")
    return self._move_aside(step, reason)

  def _move_aside(self, step: int, reason: str = "corrupt") -> str:
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.{reason}"
    if jax.process_index() == 0 and os.path.exists(src):
      i = 1
      while os.path.exists(dst):
        dst = f"{src}.{reason}{i}"
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


class _HeldSaveNoise:
  """Holds orbax's error logs during a save; drops them if the disk was full.

  On a full disk orbax's writer threads log their tracebacks (the ``absl`` logger)
  and leave TensorStore callbacks on closed asyncio loops, which Python reports as
  unraisable ``RuntimeError('Event loop is closed')``: about 40 tracebacks of one
  cause, which the ``OSError`` raised from the save already names (and chains).
  The logs are held while the save runs and passed on unchanged unless it failed
  for lack of space; the closed-loop reports carry nothing and are dropped, also
  after a failed save (its threads report them later), as are asyncio's reports of
  the save's write tasks whose error was never retrieved (at interpreter exit).
  """

  def __init__(self, drop=None):
    self._drop = drop or _is_no_space  # which failures' logs go (default: a full disk)

  def __enter__(self):
    self.records = []
    self._logger = logging.getLogger("absl")
    self._logger.addFilter(self._hold)
    self._hook = sys.unraisablehook
    sys.unraisablehook = self._unraisable
    return self

  def _hold(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False

  def _unraisable(self, u) -> None:
    if not (isinstance(u.exc_value, RuntimeError)
            and str(u.exc_value) == "Event loop is closed"):
      self._hook(u)

  def __exit__(self, exc_type, exc, tb) -> None:
    self._logger.removeFilter(self._hold)
    if exc is not None and self._drop(exc):
      logging.getLogger("asyncio").setLevel(logging.CRITICAL)
      return  # the closed loops' reports keep being dropped
    if sys.unraisablehook == self._unraisable:
      sys.unraisablehook = self._hook
    for record in self.records:
      self._logger.handle(record)


def _drop_read_only_note(record: logging.LogRecord) -> bool:
  """Orbax's warning that a reader's directory is read-only: asked for, not news."""
  return "Given directory is read only" not in record.getMessage()


def silence_shutdown_noise() -> None:
  """Drop orbax's and TensorStore's reports while an interrupted program stops.

  After Ctrl-C during a save, orbax's writer threads log their tracebacks and
  TensorStore's callbacks report closed event loops (40 to 110 lines) after the
  command's own one line. The save in progress left only a temporary directory,
  ignored and removed by the next run, so nothing of them needs reading.
  """
  for name in ("absl", "asyncio"):
    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
  hook = sys.unraisablehook

  def unraisable(u):
    if not (isinstance(u.exc_value, RuntimeError)
            and str(u.exc_value) == "Event loop is closed"):
      hook(u)
  sys.unraisablehook = unraisable
  threading.excepthook = lambda args: None


def _is_no_space(error: BaseException) -> bool:
  """Whether ``error`` or an exception it was raised from is a full disk (ENOSPC),
  also as TensorStore words it (``No space left on device``, ``os_error_code=28``)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    text = str(error)
    if "No space left on device" in text or "os_error_code='28'" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


