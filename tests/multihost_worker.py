"""Helpers for the training tests, and a worker run as a separate process.

``DigitsDataset`` is a small in-memory stand-in with the ``sslit.data.Dataset``
interface (scikit-learn's bundled 8x8 digits), so training tests do not depend on
prepared tfds files. Run as a script, this file trains a tiny MLP with
``sslit.train.fit`` (or only checkpoints) in one of three modes:

- ``resume``: single process; ``--kill_at N`` sends SIGKILL to itself when the
  data pipeline produces batch ``N`` (a crash in the middle of training); the
  final parameters are written to ``--out`` (``.npz``).
- ``multihost``: one of ``--num_processes`` processes started with
  ``jax.distributed.initialize`` on localhost (CPU collectives over gloo), each
  reading its own shard of every global batch. With ``--workdir`` all processes
  write checkpoints into that one directory every ``--checkpoint_every`` steps;
  ``--stall_save_at N`` makes the save of step ``N`` stop after every process
  has written its data and before the step is committed; process 0 then creates
  ``<out>.stalled`` and all wait (at most 5 minutes, and only while their parent
  lives), so that the caller can SIGKILL every process in the middle of a save.
- ``checkpoint``: like ``multihost`` but without training: the processes save
  ``small_state(1)`` and ``small_state(2)`` as steps 1 and 2 into ``--workdir``,
  process 0 overwrites every file of step 2 with garbage, all restore (falling
  back to step 1), save step 2 again and restore it; each process writes what it
  restored and saw to ``<out>.<process_id>.npz``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np


class DigitsDataset:
  """The 8x8 digits as uint8 ``[n, 8, 8, 1]`` images (a ``sslit.data.Dataset`` stand-in)."""

  name = "digits"
  num_classes = 10
  image_shape = (8, 8, 1)

  def __init__(self, split: str = "train", n: int | None = None):
    # The file behind sklearn.datasets.load_digits, read without importing
    # scikit-learn (about a second per worker process).
    import importlib.util  # pylint: disable=g-import-not-at-top
    root = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    raw = np.loadtxt(os.path.join(root, "datasets", "data", "digits.csv.gz"), delimiter=",")
    images = np.round(raw[:, :-1].reshape(-1, 8, 8) / 16.0 * 255.0).astype(np.uint8)[..., None]
    labels = raw[:, -1].astype(np.int32)
    cut = 1500
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    self.split = split
    self.images, self.labels = images[sl][:n], labels[sl][:n]
    train = images[:cut].astype(np.float64) / 255.0
    self.mean = np.array([train.mean()], np.float32)
    self.std = np.array([train.std()], np.float32)

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices):
    indices = np.asarray(indices)
    return self.images[indices], self.labels[indices]


def tiny_model(objective: str = "vicreg", *, widths=(32, 16), projector=(32, 32)):
  """A tiny MLP with a projector and the heads ``objective`` needs (a predictor for
  BYOL, SimSiam and MoCo v3, 16 prototypes for SwAV)."""
  from sslit import methods, models, objectives  # pylint: disable=g-import-not-at-top
  heads = methods.get_method(objectives.get_objective(objective).kind).heads(
      tuple(projector))
  predictor = (16, projector[-1]) if heads.get("predictor") else False
  return models.build_model("mlp", backbone_kwargs={"widths": tuple(widths)},
                            projector=tuple(projector), predictor=predictor,
                            prototypes=16 if heads.get("prototypes") else 0)


FIT_KWARGS = dict(objective="vicreg", batch_size=32, num_steps=16, optimizer="adamw",
                  learning_rate=1e-3, warmup_steps=2, log_every=4, progress=False,
                  seed=3)


def small_state(seed: int) -> dict:
  """A small checkpointable tree as host arrays (the typed key is built on load)."""
  rng = np.random.default_rng(seed)
  return {"params": {"w": rng.standard_normal((3, 4)).astype(np.float32),
                     "b": rng.standard_normal(4).astype(np.float32)},
          "step": np.int32(seed), "ema": {}}


def _garble(directory: str) -> None:
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")


def _checkpoint_mode(args) -> None:
  import warnings  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from sslit import checkpoint, loader, parallel  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()

  def state(seed):
    tree = dict(small_state(seed), key=jax.random.key(seed))
    return parallel.replicate(tree, mesh)

  m = checkpoint.CheckpointManager(args.workdir, max_to_keep=3)
  # Each process's data iterator state: one file per process in the step.
  m.save(1, state(1), meta={"data_step": 1},
         data_state=f"iterator of process {jax.process_index()}".encode())
  m.save(2, state(2), meta={"data_step": 2})
  multihost_utils.sync_global_devices("saved")
  if jax.process_index() == 0:
    _garble(os.path.join(args.workdir, "2"))
  multihost_utils.sync_global_devices("garbled")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fallback, meta, step = m.restore(checkpoint.abstract_like(state(0)))
  warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
  listed = sorted(os.listdir(args.workdir))
  m.save(2, state(2), meta={"data_step": 2})
  steps_after = m.all_steps()
  again, _, step_again = m.restore(checkpoint.abstract_like(state(0)))
  m.close()
  host = lambda t: {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                    for path, v in jax.tree_util.tree_flatten_with_path(
                        parallel.to_host(t))[0]}
  np.savez(f"{args.out}.{jax.process_index()}.npz", step=step, step_again=step_again,
           data_step=meta["data_step"], warned=np.array(warned, dtype=str),
           data_state=loader.saved_state(args.workdir, 1).decode(),
           listed=np.array(listed, dtype=str), steps_after=np.array(steps_after),
           **{"fallback/" + k: v for k, v in host(fallback).items()},
           **{"again/" + k: v for k, v in host(again).items()})


def _killing(iterator, kill_at: int):
  for i, batch in enumerate(iterator):
    if i == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    yield batch


def _stall_in_save(step: int, marker: str, max_wait_s: float = 300.0) -> None:
  """Make the save of checkpoint ``step`` stop just before it is committed.

  Orbax saves in three phases: every process writes its part of the arrays into
  ``<step>.orbax-checkpoint-tmp-*``; process 0 finalizes the items (merges the
  per-process array indexes) and renames the directory; all meet at a barrier.
  Process 0 stops at the start of the finalization of the ``state`` item, writes
  ``marker`` and waits; the other processes wait at the barrier. What a SIGKILL
  then leaves is a crash in the middle of a multi-host save.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  finalize = ocp.StandardCheckpointHandler.finalize
  parent = os.getppid()

  def stalled(self, directory):
    parts = os.path.normpath(os.fspath(directory)).split(os.sep)
    if any(p.startswith(f"{step}.orbax-checkpoint-tmp") for p in parts):
      with open(marker, "w") as f:
        f.write(os.fspath(directory))
      # Until the caller's SIGKILL; never outlive a caller that died first.
      deadline = time.monotonic() + max_wait_s
      while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.2)
      os._exit(3)  # pylint: disable=protected-access
    return finalize(self, directory)

  ocp.StandardCheckpointHandler.finalize = stalled


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("mode", choices=("resume", "multihost", "checkpoint"))
  p.add_argument("--workdir", default=None)
  p.add_argument("--out", required=True)
  p.add_argument("--kill_at", type=int, default=-1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--checkpoint_every", type=int, default=0)
  p.add_argument("--stall_save_at", type=int, default=-1)
  args = p.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  from sslit import parallel, train  # pylint: disable=g-import-not-at-top
  from sslit import data  # pylint: disable=g-import-not-at-top

  if args.mode in ("multihost", "checkpoint"):
    parallel.initialize(coordinator_address=f"localhost:{args.port}",
                        num_processes=args.num_processes, process_id=args.process_id)
    assert jax.process_count() == args.num_processes
  if args.mode == "checkpoint":
    _checkpoint_mode(args)
    return 0
  ds = DigitsDataset()
  mesh = parallel.make_mesh()
  iterator_fn = None
  if args.kill_at >= 0:
    def iterator_fn(start):
      it = data.batch_iterator(ds, FIT_KWARGS["batch_size"], seed=FIT_KWARGS["seed"],
                               start_step=start)
      return _killing(it, args.kill_at - start)
  if args.stall_save_at >= 0:
    _stall_in_save(args.stall_save_at, f"{args.out}.stalled")
  kwargs = dict(FIT_KWARGS)
  if args.mode == "resume":
    kwargs["checkpoint_every"] = 4
  elif args.workdir is not None:
    kwargs["checkpoint_every"] = args.checkpoint_every
  result = train.fit(model=tiny_model(), dataset=ds, workdir=args.workdir, mesh=mesh,
                     data_iterator_fn=iterator_fn, options=train.FitOptions(**kwargs))
  params = parallel.to_host(result.state.params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  if jax.process_index() == 0:
    np.savez(args.out, step=result.step, resumed=-1 if result.resumed_from is None
             else result.resumed_from, **flat)
  return 0


if __name__ == "__main__":
  sys.exit(main())
