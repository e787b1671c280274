"""The run directory: its lock, ``config.json``, the run signature, older runs.

What a run directory must agree on before anything is written into it, in one
place for the run API (``sslit.runs``) and the loop (``sslit.train.fit``):

* :class:`RunLock` — one writer at a time (``fcntl.flock`` on ``<workdir>/.lock``);
* :func:`ensure_writable` and :func:`prepare_workdir` — the directory is writable
  and holds no other run; ``config.json`` (and ``config_history.jsonl``);
* :func:`run_signature` and :func:`config_signature` — the settings every
  checkpoint stores and a resumed run must share (``sslit.checkpoint`` compares
  them);
* the defaults of fields that runs written earlier predate (``LATER_OPTIONS``,
  ``LATER_MODEL_FIELDS``, ``LATER_SIGNATURE_FIELDS``), so those runs still resume.

No JAX at import: the command line checks a run directory before JAX starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from typing import Any, Mapping

import ml_collections

from sslit import config as config_lib

__all__ = ["RunLock", "RunLockedError", "ensure_writable", "prepare_workdir",
           "run_signature", "config_signature", "SIGNATURE_FIELDS",
           "LATER_SIGNATURE_FIELDS", "LATER_OPTIONS", "LATER_MODEL_FIELDS"]

ConfigDict = ml_collections.ConfigDict


class RunLockedError(RuntimeError):
  """Another process holds the run directory's lock."""


def _distributed_process() -> tuple[int, int] | None:
  """``(process_id, num_processes)`` if ``jax.distributed`` is initialised, else None.

  ``jax.distributed.is_initialized()`` first, so a single-process program's XLA
  backend is not started by asking (its flags may still be set after the lock).
  """
  import jax  # pylint: disable=g-import-not-at-top  (the lock is taken before JAX starts)
  if not jax.distributed.is_initialized():
    return None
  return jax.process_index(), jax.process_count()


class RunLock:
  """An exclusive lock on a run directory, held while a run writes into it.

  ``fcntl.flock`` on ``<workdir>/.lock``, which then holds the holder's pid, host
  and start time (JSON). The operating system releases the lock when the holder
  exits, however it exits (``kill -9`` included), so a lock left by a dead process
  never blocks; the file itself stays (emptied on a clean exit).

  Multi-host (``jax.distributed`` initialised): every process enters the lock;
  process 0 alone takes it and tells the others (a collective) whether it got it,
  so either all processes run or all raise. On a filesystem where ``flock`` is not
  supported, a ``RuntimeWarning`` says that the directory is not locked and the
  run goes on. Child processes forked while the lock is held share it: it is
  released when the last of them exits.

  Args:
    workdir: the run directory (created if missing).

  Raises:
    RunLockedError: on entering, if another process holds the lock.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.path = os.path.join(self.workdir, ".lock")
    self._fd: int | None = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  @property
  def locked(self) -> bool:
    """Whether this process holds the lock now."""
    return self._fd is not None

  def acquire(self) -> None:
    """Take the lock; raise ``RunLockedError`` at once if another process holds it."""
    if self._fd is not None:
      return
    dist = _distributed_process()
    error = None
    if dist is None or dist[0] == 0:
      try:
        self._take()
      except Exception as e:  # pylint: disable=broad-except  # tell the others first
        error = e
    if dist is not None and dist[1] > 1:
      import numpy as np  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not ok and error is None:  # not process 0: report what process 0 met
        holder = _read_holder(self.path)
        error = RunLockedError(
            _locked_message(self.workdir, holder) if holder else
            f"process 0 could not lock workdir {self.workdir}; see its error.")
    if error is not None:
      raise error

  def _take(self) -> None:
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise PermissionError(f"cannot create the lock file {self.path!r}: {e.strerror}; "
                            f"choose a writable --workdir.") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise RunLockedError(_locked_message(self.workdir, _read_holder(self.path))) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      warnings.warn(f"cannot lock {self.workdir} ({e.strerror}: the filesystem does not "
                    f"support flock); nothing keeps a second run out of it.",
                    RuntimeWarning, stacklevel=3)
      return
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime(
                  "%Y-%m-%d %H:%M:%S UTC")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Release the lock (a no-op if not held)."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read_holder(path: str) -> dict[str, Any]:
  # The holder writes its record right after taking the lock: wait briefly for it.
  for _ in range(20):
    try:
      with open(path) as f:
        text = f.read()
      if text.strip():
        return json.loads(text)
    except (OSError, ValueError):
      pass
    time.sleep(0.05)
  return {}



def _locked_message(workdir: str, holder: dict[str, Any]) -> str:
  who = (f"pid {holder.get('pid')} on host {holder.get('host')} since "
         f"{holder.get('since')}" if holder.get("pid") else
         "another process (its pid could not be read from the lock file)")
  return f"workdir {workdir} is in use by {who}; wait for it or use another --workdir."


def ensure_writable(workdir: str) -> None:
  """Create ``workdir`` and check that it is writable (PermissionError naming it)."""
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


# FitOptions fields that configs gained over time, with their type (``sslit.runs``
# builds FitOptions with them only when the config has them).
LATER_OPTIONS = {"local_crops": int, "local_crop_size": int, "global_crop_scale": tuple,
                 "local_crop_scale": tuple, "queue_length": int,
                 "queue_start_step": int, "freeze_prototypes_steps": int,
                 "views_in_one_pass": bool, "average_weights": float}


def prepare_workdir(workdir: str, config: ConfigDict, *,
                    resume_with_changes: bool = False, write: bool = True) -> dict:
  """Create ``workdir``, check it is writable and holds no other run; write config.json.

  A run may resume with changes of ``config.RESUMABLE_FIELDS`` (evaluation, logging,
  checkpoint cadence); with ``resume_with_changes`` also of
  ``config.CHANGEABLE_ON_REQUEST`` (learning rate, warm-up, weight decay, momentum,
  clipping, number of steps). Each accepted change of the latter is appended to
  ``config_history.jsonl`` (old and new values), so nothing is lost.

  ``write=False`` (processes other than 0 of a multi-host run) checks only.

  Returns:
    ``{field: (old, new)}`` of the optimisation settings that changed.

  Raises:
    ConfigError: ``workdir`` holds a run whose other fields differ.
  """
  ensure_writable(workdir)
  resolved = config_lib.to_dict(config)
  path = os.path.join(workdir, "config.json")
  changed = {}
  if os.path.exists(path):
    with open(path) as f:
      try:
        previous = json.load(f)
      except json.JSONDecodeError:
        previous = None
    if previous is not None:
      previous = _with_absent_defaults(previous, resolved)
      differ = sorted(k for k in set(previous) | set(resolved)
                      if previous.get(k) != resolved.get(k)
                      and k not in config_lib.RESUMABLE_FIELDS)
      changeable = [k for k in differ if k in config_lib.CHANGEABLE_ON_REQUEST]
      fixed = [k for k in differ if k not in config_lib.CHANGEABLE_ON_REQUEST]
      if fixed or (changeable and not resume_with_changes):
        hint = ("" if fixed else " To resume this run with these optimisation "
                "settings, add --resume_with_changes.")
        raise config_lib.ConfigError(
            f"workdir {workdir} holds a run with a different config (fields "
            f"{', '.join(differ)} differ); use another --workdir, or the same config "
            f"to resume that run.{hint}")
      changed = {k: (previous.get(k), resolved.get(k)) for k in changeable}
  if not write:
    return changed
  if changed:
    with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
      f.write(json.dumps({"time": time.time(), "changed": changed}) + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(resolved, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return changed


def _with_absent_defaults(stored: dict, current: dict) -> dict:
  """A stored ``config.json`` with the fields it predates at their default value.

  A field of ``current`` that ``stored`` lacks (added to ``configs/default.py``
  after the run was written, e.g. ``local_crops`` or ``model.prototypes``) takes
  the default config's value, or the one in ``_BEFORE_THE_FIELD`` where the default
  is not what runs did before the field existed, so the run still resumes when the
  field is left at that value. Free-form option dicts (``*_kwargs``) are compared
  as they are.
  """
  def fill(stored, current, defaults, prefix=""):
    out = dict(stored)
    for k, v in current.items():
      if k not in defaults or k.endswith("_kwargs"):
        continue
      if k not in stored:
        out[k] = _BEFORE_THE_FIELD.get(prefix + k, defaults[k])
      elif isinstance(stored[k], dict) and isinstance(v, dict) and isinstance(
          defaults[k], dict):
        out[k] = fill(stored[k], v, defaults[k], f"{prefix}{k}.")
    return out
  defaults = config_lib.to_dict(config_lib.load_config(config_lib.DEFAULT_CONFIG))
  return fill(stored, current, defaults)


# What a run did before these fields existed, where the main job's default differs
# (``eval`` is resumable: a run written before ``eval.calibrate`` resumes either way).
_BEFORE_THE_FIELD = {"augment_options": {}}


# Model fields added after runs were checkpointed: in the checkpoint signature only
# when they differ from their default (0), so earlier runs' checkpoints still resume.
LATER_MODEL_FIELDS = ("prototypes", "dino_head", "dino_head_gain")


SIGNATURE_FIELDS = ("objective", "objective_kwargs", "batch_size", "num_steps",
                    "augment", "optimizer", "learning_rate", "weight_decay",
                    "momentum", "warmup_steps", "end_lr_factor", "scale_lr_by_batch",
                    "grad_clip", "ema_momentum", "probe", "probe_learning_rate",
                    "seed", "normalize")
# Fields added after runs were checkpointed: part of the signature only when they
# differ from their default, so the checkpoints of earlier runs still resume.
LATER_SIGNATURE_FIELDS = ("local_crops", "local_crop_size", "global_crop_scale",
                          "local_crop_scale", "teacher_temperature_warmup_steps",
                          "queue_length", "queue_start_step", "freeze_prototypes_steps",
                          "views_in_one_pass", "average_weights")


def run_signature(options: Any, extra: Mapping[str, Any] | None = None) -> dict:
  """The settings that define a run's trajectory, as a small JSON-ready dict.

  ``SIGNATURE_FIELDS`` of ``options`` (a ``sslit.train.FitOptions``; an objective
  or augmentation given as an object is named by its ``name`` or ``repr``), the
  ``LATER_SIGNATURE_FIELDS`` that differ from their default, plus ``extra`` (e.g. the model and data set of a
  config). Stored with every checkpoint and compared on resume.
  """
  def plain(v):
    return json.loads(json.dumps(v, default=lambda x: getattr(x, "name", repr(x))))
  sig = {f: plain(getattr(options, f)) for f in SIGNATURE_FIELDS}
  defaults = {f.name: f.default for f in dataclasses.fields(options)}
  sig.update({f: plain(getattr(options, f)) for f in LATER_SIGNATURE_FIELDS
              if plain(getattr(options, f)) != plain(defaults[f])})
  sig.update({k: plain(v) for k, v in dict(extra or {}).items()})
  return sig


def config_signature(config: ConfigDict) -> dict:
  """What a run's checkpoints must agree on besides ``FitOptions``: model and data.

  The ``extra`` of :func:`run_signature` for a run of ``sslit.runs.train``.
  """
  model = {k: v for k, v in config_lib.to_dict(config.model).items()
           if not (k in LATER_MODEL_FIELDS and not v)}
  return {"model": model, "dataset": config.dataset,
          "cpu_devices": config.get("cpu_devices", 0)}
