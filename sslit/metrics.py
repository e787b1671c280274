"""Run metrics: one writer, one reader, for the loop, the report and the experiments.

A run directory's ``metrics.jsonl`` holds one JSON object per line: ``step`` plus
metric names; lines may carry different keys (training terms every N steps,
evaluator and monitor results on their own schedules, offline evaluation and
analysis appended after training). With the ``tensorboard`` package installed,
every numeric value also goes to ``<workdir>/tensorboard/`` as a scalar event of the
same name and step (written with tensorboard's own event writer, no TensorFlow).

- :class:`MetricsWriter`: the training loop's writer; on resume it drops the lines
  after the restored step, so a resumed run's file equals an uninterrupted one's.
- :func:`append`: one record after training (offline evaluation, ``sslit
  analyze``).
- :func:`read_records`, :func:`read_series`, :func:`series`: the readers (lines
  cut short by a kill are skipped and reported, never fatal).
- :class:`PhaseClock`: the wall-clock seconds of a command's phases and the CPU
  model (``timings.json`` of ``sslit train``).
- :func:`write_probe_correct`, :func:`read_probe_correct`: the offline probes'
  per-example correctness on the test split (``probe_correct.npz``), from which the
  report computes paired intervals.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MetricsWriter", "TensorBoardWriter", "open_tensorboard", "append",
           "read_records", "read_series", "series", "flatten", "is_number",
           "METRICS_FILE", "PhaseClock", "cpu_model", "PROBE_CORRECT",
           "write_probe_correct", "read_probe_correct"]

METRICS_FILE = "metrics.jsonl"
PROBE_CORRECT = "probe_correct.npz"
Series = dict[str, tuple[np.ndarray, np.ndarray]]


def is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_series(path: str | os.PathLike) -> tuple[Series, list[str]]:
  """Reads ``metrics.jsonl`` into per-metric series.

  Args:
    path: the JSON-lines file (or the run directory).

  Returns:
    ``(series, problems)``: ``series[name] = (steps [t], values [t])`` sorted by
    step (numeric values only, nested records flattened with ``/``; non-finite
    values kept), and a list of human-readable notes on lines that were skipped.
  """
  records, problems = read_records(path)
  points: dict[str, list[tuple[float, float]]] = {}
  for record in records:
    step = float(record["step"])
    for key, value in flatten(record).items():
      if key != "step" and is_number(value):
        points.setdefault(key, []).append((step, float(value)))
  out = {}
  for key, pts in points.items():
    pts.sort(key=lambda p: p[0])
    arr = np.asarray(pts, dtype=np.float64)
    out[key] = (arr[:, 0], arr[:, 1])
  return out, problems


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = value
  return out


class MetricsWriter:
  """Append-only JSON lines; on resume, lines after the restored step are dropped.

  With ``tensorboard_dir``, each record also goes to TensorBoard (if installed).
  """

  def __init__(self, path: str | None, *, resume_step: int, enabled: bool,
               tensorboard_dir: str | None = None):
    self.path = path if enabled else None
    self.tensorboard = None
    if enabled and tensorboard_dir is not None:
      self.tensorboard = open_tensorboard(tensorboard_dir, resume_step=resume_step)
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


def open_tensorboard(logdir: str, *, resume_step: int) -> "TensorBoardWriter | None":
  """A TensorBoard writer, or None (one INFO line) when tensorboard is not installed."""
  try:
    return TensorBoardWriter(logdir, resume_step=resume_step)
  except ImportError:
    logging.getLogger(__name__).info(
        "tensorboard is not installed: metrics go to metrics.jsonl only.")
    return None


class TensorBoardWriter:
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


def append(workdir: str | os.PathLike, record: Mapping[str, Any], *,
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
  writer = open_tensorboard(os.path.join(workdir, "tensorboard"),
                             resume_step=int(record["step"]))
  if writer is not None:
    try:
      writer.write(record)
    finally:
      writer.close()


def read_records(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
  """The records of a ``metrics.jsonl`` file (or of a run directory's).

  Returns:
    ``(records, problems)``: the JSON objects with a numeric ``step`` in file
    order, and a note per skipped line (cut short by a kill, not JSON, no step).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return [], [f"{path.name} not found"]
  records, problems = [], []
  with path.open() as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        problems.append(f"{path.name} line {lineno}: not JSON ({e.msg})")
        continue
      if not isinstance(record, Mapping) or not is_number(record.get("step")):
        problems.append(f"{path.name} line {lineno}: no numeric 'step'")
        continue
      records.append(dict(record))
  return records, problems


def write_probe_correct(workdir: str | os.PathLike,
                        correct: Mapping[str, Any]) -> pathlib.Path:
  """Writes the probes' per-example correctness as ``<workdir>/probe_correct.npz``.

  Args:
    workdir: the run directory.
    correct: ``{network: [N] bool}`` (e.g. ``trained``, ``random_init``,
      ``raw_pixels``), each on the same ``N`` test examples in the same order.

  Returns:
    The path written (atomically: a temporary file, then renamed).
  """
  arrays = {k: np.asarray(v, dtype=bool).reshape(-1) for k, v in correct.items()}
  sizes = {k: v.size for k, v in arrays.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f"correct: every network must be scored on the same examples, "
                     f"got sizes {sizes}.")
  path = pathlib.Path(workdir) / PROBE_CORRECT
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
  return path


def read_probe_correct(workdir: str | os.PathLike
                       ) -> tuple[dict[str, np.ndarray] | None, str | None]:
  """``({network: [N] bool}, None)`` from ``probe_correct.npz``, or ``(None, why)``.

  A missing file gives ``(None, None)``; an unreadable one ``(None, reason)``.
  """
  path = pathlib.Path(workdir) / PROBE_CORRECT
  if not path.exists():
    return None, None
  try:
    with np.load(path) as f:
      out = {k: np.asarray(f[k], dtype=bool) for k in f.files}
  except Exception as e:  # pylint: disable=broad-except  (truncated, not a zip, ...)
    return None, f"{PROBE_CORRECT}: unreadable ({type(e).__name__}: {e})"
  if len({v.size for v in out.values()}) > 1:
    return None, f"{PROBE_CORRECT}: networks scored on different numbers of examples"
  return out, None


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int],
                                                                      list[float]]:
  """``(steps, values)`` of one numeric metric over a run's records, in file order."""
  steps, values = [], []
  for r in records:
    if key in r and is_number(r[key]):
      steps.append(int(r["step"]))
      values.append(float(r[key]))
  return steps, values


class PhaseClock:
  """Wall-clock seconds of the phases of a command (``timings.json``)."""

  def __init__(self):
    self.t0 = self.mark = time.perf_counter()
    self.laps: dict[str, float] = {}

  def lap(self, name: str) -> None:
    """Record the seconds since the previous lap (or the start) as ``name``."""
    now = time.perf_counter()
    self.laps[name], self.mark = now - self.mark, now

  def write(self, path: str, *, steps: int, device: str | None = None) -> None:
    """The laps, ``total_s``, ``steps_trained``, ``cpu``, ``machine`` (and
    ``device``, e.g. ``"1 x cpu"``, when given) as JSON."""
    import platform  # pylint: disable=g-import-not-at-top
    record = {**self.laps, "total_s": time.perf_counter() - self.t0,
              "steps_trained": steps, "cpu": cpu_model(), "machine": platform.machine()}
    if device:
      record["device"] = device
    with open(path, "w") as f:
      json.dump(record, f, indent=2)


def cpu_model() -> str:
  """The CPU's model name (Linux ``/proc/cpuinfo``), for timings read elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or "unknown"
