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

__all__ = ["RunLock", "RunLockedError", "ensure_writable", "is_writable",
           "check_run_directory", "check_output_path", "read_config_json",
           "prepare_workdir", "write_config",
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
  """Create ``workdir`` and check that it is writable (PermissionError naming it).

  A name that is not valid UTF-8 is refused first (TensorBoard fails on it later).
  """
  try:
    os.fspath(workdir).encode("utf-8")
  except UnicodeEncodeError:
    raise ValueError(f"workdir {os.fspath(workdir)!r} is not a valid UTF-8 name; "
                     f"choose a --workdir whose name is.") from None
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
                 "views_in_one_pass": bool, "average_weights": float,
                 "data_workers": lambda v: None if int(v) < 0 else int(v)}


def is_writable(path: str | os.PathLike) -> bool:
  """Whether this process may create files in the directory ``path``."""
  return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def read_config_json(workdir: str | os.PathLike) -> dict | None:
  """A run directory's ``config.json`` as a dict; None if there is none.

  Raises:
    ConfigError: the file is there but is not a JSON object (torn or foreign),
      naming the file.
  """
  path = os.path.join(os.fspath(workdir), "config.json")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return None
  except IsADirectoryError:
    raise config_lib.ConfigError(f"{path} is a directory, not a run's config.json.") \
        from None
  try:
    stored = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise config_lib.ConfigError(
        f"{path} is not a run's config.json (not valid JSON: {e}); it is torn or not "
        f"sslit's. A run's config.json is restored by running `sslit train` with its "
        f"config again.") from None
  if not isinstance(stored, dict):
    raise config_lib.ConfigError(f"{path} is not a run's config.json (it holds a "
                                 f"{type(stored).__name__}, not an object).")
  return stored


# What makes a stored config.json a run's (every run config has these fields).
_RUN_CONFIG_KEYS = ("objective", "model", "dataset")


def check_run_directory(workdir: str | os.PathLike) -> None:
  """Refuse a ``workdir`` that exists, is not empty and holds no sslit run.

  A run directory is one whose ``config.json`` is a run config, or (its
  ``config.json`` missing or torn) one with a ``checkpoints/`` directory; a
  directory holding only a lock file left by a refused command counts as empty.
  So sslit never writes its ``config.json`` and ``metrics.jsonl`` over a user's
  files of the same name.

  Raises:
    ConfigError: ``workdir`` is a file, or a non-empty directory without a run.
  """
  workdir = os.fspath(workdir)
  if not os.path.exists(workdir):
    return
  if not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir {workdir} is a file, not a directory; "
                                 f"choose a new or empty directory.")
  entries = set(os.listdir(workdir))
  if entries <= {".lock"}:
    return
  try:
    stored = read_config_json(workdir)
  except config_lib.ConfigError:
    stored = "torn"
  if isinstance(stored, dict) and all(k in stored for k in _RUN_CONFIG_KEYS):
    return
  if stored in (None, "torn") and os.path.isdir(os.path.join(workdir, "checkpoints")):
    return  # a run whose config.json was lost or damaged: its checkpoints say whose
  what = ("its config.json is not a run's" if "config.json" in entries else
          f"it holds {', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''}")
  raise config_lib.ConfigError(
      f"--workdir {workdir} is not empty and holds no sslit run ({what}); sslit "
      f"would write config.json, metrics.jsonl and checkpoints/ there. Choose a new "
      f"or empty directory.")


# A run directory's own records, which no output (``--out``, ``--results``) replaces.
_RUN_RECORDS = ("config.json", "config_history.jsonl", "metrics.jsonl", "timings.json",
                ".lock")


def _run_directory_of(path: str) -> str | None:
  """The run directory that holds ``path`` (at any depth), or None."""
  directory = os.path.dirname(path)
  while True:
    if os.path.isfile(os.path.join(directory, "config.json")) and (
        os.path.isdir(os.path.join(directory, "checkpoints"))
        or os.path.isfile(os.path.join(directory, "metrics.jsonl"))):
      return directory
    parent = os.path.dirname(directory)
    if parent == directory:
      return None
    directory = parent


def check_output_path(path: str | os.PathLike, *, suffix: str,
                      option: str = "--out") -> str:
  """Check a command's output file before anything is computed; its absolute path.

  Refused: a directory, a name without ``suffix``, a directory that does not exist
  or cannot be written, and any record or checkpoint of a run directory
  (``config.json``, ``metrics.jsonl``, ... , ``checkpoints/``). An existing file
  of the right kind (an earlier output) is replaced.

  Raises:
    ConfigError: naming ``option``, the path and what to do.
  """
  path = os.path.abspath(os.fspath(path))
  def refuse(why):
    raise config_lib.ConfigError(f"{option} {path} {why}; give a new {suffix} file "
                                 f"in a writable directory.")
  if os.path.isdir(path):
    refuse("is a directory")
  if not path.endswith(suffix):
    refuse(f"does not end in {suffix}")
  if os.path.lexists(path) and not os.path.isfile(path):
    refuse("exists and is not a regular file")
  run = _run_directory_of(path)
  if run is not None and (os.path.basename(path) in _RUN_RECORDS or "checkpoints" in
                          os.path.relpath(path, run).split(os.sep)[:-1]):
    refuse(f"is a record of the run directory {run}")
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    refuse("is in a directory that does not exist")
  if not is_writable(parent):
    refuse("is in a directory this process cannot write")
  return path


def prepare_workdir(workdir: str, config: ConfigDict, *,
                    resume_with_changes: bool = False, write: bool = True) -> dict:
  """Create ``workdir``, check it is writable and holds no other run; write config.json.

  A run may resume with changes of ``config.RESUMABLE_FIELDS`` (evaluation, logging,
  checkpoint cadence); with ``resume_with_changes`` also of
  ``config.CHANGEABLE_ON_REQUEST`` (learning rate, warm-up, weight decay, momentum,
  clipping, number of steps). Each accepted change of the latter is appended to
  ``config_history.jsonl`` (old and new values), so nothing is lost.

  ``write=False`` checks only (processes other than 0 of a multi-host run, and
  ``sslit.runs.train``, which writes with :func:`write_config` once training is
  set up and its checkpoint accepted). A ``config.json`` missing or torn is not
  compared (the checkpoints' signature is, by ``fit``).

  Returns:
    ``{field: (old, new)}`` of the optimisation settings that changed.

  Raises:
    ConfigError: ``workdir`` holds a run whose other fields differ, or is a
      non-empty directory that holds no run (:func:`check_run_directory`).
  """
  check_run_directory(workdir)
  ensure_writable(workdir)
  resolved = config_lib.to_dict(config)
  changed = {}
  try:
    previous = read_config_json(workdir)
  except config_lib.ConfigError:
    previous = None  # torn: the checkpoints' signature decides
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
  if write:
    write_config(workdir, config, changed)
  return changed


def write_config(workdir: str, config: ConfigDict | dict,
                 changed: Mapping[str, Any]) -> None:
  """Write ``config.json`` (atomically) and append ``changed`` to config_history.jsonl.

  ``changed``: the ``{field: (old, new)}`` of :func:`prepare_workdir`, recorded
  only here, once the run goes on with them.
  """
  if changed:
    with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
      f.write(json.dumps({"time": time.time(), "changed": dict(changed)}) + "\n")
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(config_lib.to_dict(config), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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
  ``LATER_SIGNATURE_FIELDS`` that differ from their default, plus ``extra`` (e.g.
  the model and data set of a config). Stored with every checkpoint and compared
  on resume.
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
  The dtype mode is part of it when 64-bit types are on (``JAX_ENABLE_X64``): a
  float32 run does not continue in float64, nor the reverse. Call it after JAX
  started (``sslit.runs.start_devices``).
  """
  import jax  # pylint: disable=g-import-not-at-top  (read once the config set JAX up)
  model = {k: v for k, v in config_lib.to_dict(config.model).items()
           if not (k in LATER_MODEL_FIELDS and not v)}
  sig = {"model": model, "dataset": config.dataset,
         "cpu_devices": config.get("cpu_devices", 0)}
  if jax.config.read("jax_enable_x64"):  # absent when off: earlier runs still resume
    sig["jax_enable_x64"] = True
  return sig
