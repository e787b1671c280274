"""Large data sets through grain: decode in worker processes, resumable iterator state.

:func:`grain_batches` yields the same host batches as ``sslit.data.batch_iterator``
(global step ``s`` is batch ``s % S`` of epoch ``s // S`` of
``epoch_permutation(N, seed, epoch)``; host ``p`` of ``P`` gets rows ``[p*B/P,
(p+1)*B/P)``), but reads and decodes them in ``workers`` grain worker processes
(a ``grain.DataLoader`` over the data set's picklable ``records``), and carries
grain's iterator state with every batch, for checkpoints.

The sampler (:class:`StepSampler`) is grain's index sampler protocol, sharded by
JAX process through ``grain.ShardOptions``. grain hands sampler positions to its
workers round robin (worker ``w`` of ``W`` reads positions ``w, w+W, ...`` of this
process's shard and batches them), and returns the workers' batches in turn; the
sampler maps positions to records so that output batch ``s`` is exactly global step
``s``'s rows for this host, whatever ``W``. Batches are therefore the same with any
number of workers, and equal to the in-memory path's (``tests/test_loader.py``).

The iterator state is grain's own (``DataLoaderIterator.get_state()``, JSON
bytes). ``fit`` stores the state reached after the last batch consumed by a
checkpointed step with the checkpoint (one file per process) and restores it on
resume; a state saved with another worker count (or none) is replaced by the state
at the resumed step, which this sampler determines.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Any, Iterator

import numpy as np

__all__ = ["StepSampler", "grain_batches", "host_batches", "Prefetch", "saved_state",
           "default_workers", "state_at_step"]

# Sampler length when the iterator runs forever (grain needs a length): 2**40 steps.
_FOREVER_STEPS = 1 << 40


def default_workers() -> int:
  """Worker processes by default: the cores this process may use, less one (>= 1).

  The remaining core runs the training loop (dispatch, host-to-device copies) and
  grain's main-process side.
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, cores - 1)


class StepSampler:
  """grain sampler: position → record, so output batches follow the global steps.

  grain's ``_SamplerMapDataset`` asks for global index ``g = i * P + p`` for
  position ``i`` of process ``p``'s shard. With ``W' = max(W, 1)`` workers and
  local batch ``L``, position ``i`` is row ``r = t % L`` of batch ``b = t // L``
  of worker ``w = i % W'`` (``t = i // W'``), which grain returns as output batch
  ``s = b * W' + w`` = global step ``s``. That row is example
  ``epoch_permutation(N, seed, e)[(s % S) * B + p * L + r]`` with ``e = s // S``.

  Args:
    num_records: ``N``.
    batch_size: the global batch ``B``.
    process_count: ``P``.
    workers: grain's ``worker_count`` ``W`` (0: in the main process).
    seed: the shuffling seed.
    shuffle: whether epochs are shuffled.
    num_steps: the steps the sampler covers (None: 2**40).
  """

  def __init__(self, *, num_records: int, batch_size: int, process_count: int,
               workers: int, seed: int, shuffle: bool = True,
               num_steps: int | None = None):
    self.num_records = int(num_records)
    self.batch_size = int(batch_size)
    self.process_count = int(process_count)
    self.workers = int(workers)
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.local = self.batch_size // self.process_count
    self.steps_per_epoch = self.num_records // self.batch_size
    lanes = max(self.workers, 1)
    steps = _FOREVER_STEPS if num_steps is None else int(num_steps)
    self.num_steps = -(-steps // lanes) * lanes  # whole rounds of the workers
    self._epoch = (-1, None)

  def __len__(self) -> int:
    return self.num_steps * self.batch_size

  def __getstate__(self):
    return {**self.__dict__, "_epoch": (-1, None)}  # workers recompute the order

  def _order(self, epoch: int) -> np.ndarray:
    if self._epoch[0] != epoch:
      from sslit.data import epoch_permutation
      self._epoch = (epoch, epoch_permutation(self.num_records, seed=self.seed,
                                              epoch=epoch, shuffle=self.shuffle))
    return self._epoch[1]

  def __getitem__(self, index: int):
    import grain.python as grain
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"sampler index {index} out of range [0, {len(self)}).")
    p, i = index % self.process_count, index // self.process_count
    lanes = max(self.workers, 1)
    w, t = i % lanes, i // lanes
    b, r = divmod(t, self.local)
    step = b * lanes + w
    epoch, k = divmod(step, self.steps_per_epoch)
    key = int(self._order(epoch)[k * self.batch_size + p * self.local + r])
    return grain.RecordMetadata(index=index, record_key=key, rng=None)

  def __repr__(self) -> str:
    return (f"StepSampler(num_records={self.num_records}, batch_size={self.batch_size}, "
            f"process_count={self.process_count}, workers={self.workers}, "
            f"seed={self.seed}, shuffle={self.shuffle})")  # num_steps may change on resume


def _decode_transform(decode):
  import grain.python as grain

  class Decode(grain.MapTransform):
    """record → {"image": uint8 [H, W, C], "label": int32} (in a worker)."""

    def map(self, record):
      image, label = decode(record)
      return {"image": np.asarray(image, np.uint8), "label": np.int32(label)}

  return Decode()


def state_at_step(step: int, *, sampler: StepSampler, source: Any, process_index: int,
                  workers: int) -> bytes:
  """grain's ``DataLoaderIterator`` state after ``step`` batches of this sampler.

  The format of grain 0.2.18's ``DataLoader`` (``last_seen_indices`` per worker:
  the last sampler index it read; the last worker that produced a batch).
  """
  p, n_proc, local = int(process_index), sampler.process_count, sampler.local
  lanes = max(int(workers), 1)
  last_seen = {}
  for w in range(lanes):
    batches = max(0, -(-(int(step) - w) // lanes))  # steps s < step with s % W' == w
    # grain: last_seen = p - W'P + w P + next_index * W'P, next_index = batches * L.
    last_seen[str(w)] = p - lanes * n_proc + w * n_proc + batches * local * lanes * n_proc
  return json.dumps({
      "version": 2,
      "last_seen_indices": last_seen,
      "last_worker_index": (int(step) % lanes) - 1 if workers else -1,
      "worker_count": int(workers),
      "sampler": repr(sampler),
      "data_source": repr(source),
  }, indent=4).encode()


def grain_batches(dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1, start_step: int = 0,
                  num_steps: int | None = None, workers: int | None = None,
                  state: bytes | None = None,
                  worker_buffer_size: int = 2) -> Iterator[dict[str, Any]]:
  """Host batches of ``dataset`` read and decoded by grain worker processes.

  The batches of ``sslit.data.batch_iterator(dataset, batch_size, seed=seed,
  shuffle=shuffle, drop_remainder=True, process_index=..., process_count=...,
  start_step=start_step)``, bit for bit, plus grain's iterator state.

  Args:
    dataset: a ``sslit.data.Dataset`` with ``records`` (tfds sets of sslit's own or
      JPEG/PNG records, image folders).
    batch_size: the global batch ``B`` (divisible by ``process_count``).
    seed: the shuffling seed.
    shuffle: whether epochs are shuffled.
    process_index: this host's index ``p`` (``jax.process_index()``).
    process_count: the number of hosts ``P``.
    start_step: the global step of the first batch.
    num_steps: the last step (exclusive) the iterator may reach (None: forever).
    workers: grain worker processes (0: decode in this process; None:
      :func:`default_workers`).
    state: grain iterator state bytes saved after batch ``start_step - 1`` (from a
      checkpoint); None, or a state of another worker count: start from
      :func:`state_at_step`. A state of another data set or sampler is an error.
    worker_buffer_size: batches each worker prepares ahead.

  Yields:
    ``{"image": uint8 [B/P, H, W, C], "label": int32 [B/P], "mask": bool [B/P],
    "data_state": bytes}``: ``data_state`` is grain's iterator state after this
    batch.

  Raises:
    ValueError: the data set has no ``records``, bad batching arguments, or a
      ``state`` that is not at ``start_step`` of this data set and sampler.
  """
  import grain.python as grain

  from sslit import data as data_lib
  if getattr(dataset, "records", None) is None:
    raise ValueError(f"{dataset!r} has no records that worker processes can read (an "
                     f"in-memory data set): use sslit.data.batch_iterator.")
  n = len(dataset)
  data_lib.steps_per_epoch(n, batch_size, True, process_count)  # checks the batching
  if not 0 <= int(process_index) < int(process_count):
    raise ValueError(f"process_index must be in [0, {process_count}), got "
                     f"{process_index!r}.")
  workers = default_workers() if workers is None else int(workers)
  if workers < 0:
    raise ValueError(f"workers must be >= 0 (0: decode in this process), got {workers}.")
  source, decode = dataset.records
  if workers:
    # grain's worker start reads absl flags (its profiling switch): outside an absl
    # app nothing parsed them, and reading would raise; their defaults are meant.
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  sampler = StepSampler(num_records=n, batch_size=batch_size, process_count=process_count,
                        workers=workers, seed=seed, shuffle=shuffle, num_steps=num_steps)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_decode_transform(decode),
                  grain.Batch(batch_size // process_count, drop_remainder=True)],
      worker_count=workers, worker_buffer_size=worker_buffer_size,
      shard_options=grain.ShardOptions(shard_index=int(process_index),
                                       shard_count=int(process_count),
                                       drop_remainder=True),
      read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=batch_size))
  at_start = state_at_step(start_step, sampler=sampler, source=source,
                           process_index=process_index, workers=workers)
  if state is not None:
    saved = json.loads(state)
    expected = json.loads(at_start)
    if saved.get("worker_count") == workers:
      for field in ("sampler", "data_source", "last_seen_indices", "last_worker_index"):
        if saved.get(field) != expected[field]:
          raise ValueError(
              f"the saved data iterator state does not fit step {start_step} of this "
              f"run ({field}: saved {saved.get(field)!r}, expected {expected[field]!r}); "
              f"the checkpoint was written by another data set or batching.")
      at_start = state
  local = batch_size // process_count

  def generate():
    iterator = iter(loader)
    if start_step:
      iterator.set_state(at_start)
    step = int(start_step)
    try:
      while num_steps is None or step < num_steps:
        step += 1
        batch = next(iterator)
        yield {"image": batch["image"], "label": batch["label"],
               "mask": np.ones((local,), bool), "data_state": iterator.get_state()}
    except StopIteration:
      return
    finally:
      # grain 0.2.18's DataLoaderIterator has no close(); its dataset iterator's
      # stops the worker processes now rather than at garbage collection.
      close = getattr(getattr(iterator, "_iterator", None), "close", None)
      if close is not None:
        close()

  return generate()


def host_batches(dataset, batch_size: int, *, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0, num_steps: int | None = None,
                 workers: int | None = None,
                 state: bytes | None = None) -> Iterator[dict[str, Any]]:
  """Training batches of ``dataset``: grain for data read from disk, else a gather.

  A data set held in memory (``dataset.in_memory``, e.g. Fashion-MNIST or CIFAR)
  is batched by ``sslit.data.batch_iterator`` (one NumPy gather per batch, faster
  than any worker); one read from disk with ``records`` (image folders, JPEG tfds
  sets, any split too large for memory) by :func:`grain_batches`. Both yield the
  same batches (shuffled, ``drop_remainder=True``); arguments as there. Any other
  object with ``get(indices)`` is batched by ``batch_iterator``.
  """
  from sslit import data as data_lib
  if getattr(dataset, "records", None) is None or getattr(dataset, "in_memory", True):
    return data_lib.batch_iterator(dataset, batch_size, seed=seed, shuffle=True,
                                   drop_remainder=True, process_index=process_index,
                                   process_count=process_count, start_step=start_step)
  return grain_batches(dataset, batch_size, seed=seed, process_index=process_index,
                       process_count=process_count, start_step=start_step,
                       num_steps=num_steps, workers=workers, state=state)


def saved_state(checkpoint_dir: str | os.PathLike, step: int) -> bytes | None:
  """This process's data iterator state saved with checkpoint ``step``, or None.

  The file grain's orbax handler wrote in the step's ``data`` item
  (``process_<i>-of-<n>.json``; ``sslit.checkpoint.CheckpointManager.save(...,
  data_state=...)``).
  """
  import jax
  path = os.path.join(os.fspath(checkpoint_dir), str(int(step)), "data",
                      f"process_{jax.process_index()}-of-{jax.process_count()}.json")
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    return None


class Prefetch:
  """Runs a batch iterator in a background thread, ``size`` batches ahead.

  Batches carrying ``"data_state"`` (grain's iterator state after them) have it
  removed; :attr:`state` is the state after the last batch taken from here, i.e.
  the one to save with a checkpoint of the step that consumed it (None until a
  batch with a state was taken).
  """

  def __init__(self, iterator: Iterator, size: int = 2):
    self.state: bytes | None = None
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = object()
    self._thread = threading.Thread(target=self._work, args=(iter(iterator),),
                                    daemon=True)
    self._thread.start()

  def _work(self, iterator: Iterator) -> None:
    try:
      for item in iterator:
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          break
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._queue.put(e)
      return
    finally:
      close = getattr(iterator, "close", None)
      if close is not None and self._stop.is_set():
        close()
    self._queue.put(self._done)

  def __iter__(self) -> Prefetch:
    return self

  def __next__(self) -> dict[str, Any]:
    item = self._queue.get()
    if item is self._done:
      self._queue.put(item)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    if isinstance(item, dict) and "data_state" in item:
      item = dict(item)
      self.state = item.pop("data_state")
    return item

  def close(self) -> None:
    """Stop the thread (it closes the iterator, ending grain's workers)."""
    self._stop.set()
