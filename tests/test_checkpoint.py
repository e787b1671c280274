"""sslit.checkpoint: round trip, keep-last-K, atomicity, corrupt fallback."""

from __future__ import annotations

import glob
import os

import jax
import numpy as np
import pytest

from sslit import checkpoint, parallel


def _state(seed=0):
  rng = np.random.default_rng(seed)
  mesh = parallel.make_mesh()
  tree = {"params": {"w": rng.standard_normal((3, 4)).astype(np.float32),
                     "b": np.zeros(4, np.float32)},
          "step": np.int32(seed), "ema": {}, "key": jax.random.key(seed)}
  return parallel.replicate(tree, mesh)


def _equal(a, b):
  a = parallel.to_host(a)
  b = parallel.to_host(b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _corrupt(directory, step):
  files = [f for f in glob.glob(os.path.join(directory, str(step), "**"), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, "wb") as fh:
      fh.write(b"\x00garbage")


def test_round_trip_bitwise_with_key_sharding_and_meta(tmp_path):
  state = _state(1)
  with checkpoint.CheckpointManager(tmp_path, max_to_keep=2) as m:
    m.save(7, state, meta={"data_step": 7, "seed": 1})
    restored, meta, step = m.restore(checkpoint.abstract_like(state))
  assert step == 7 and meta == {"data_step": 7, "seed": 1, "step": 7}
  assert _equal(restored, state)
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  assert restored["params"]["w"].sharding == state["params"]["w"].sharding
  # The restored key draws the same numbers.
  np.testing.assert_array_equal(jax.random.normal(restored["key"], (3,)),
                                jax.random.normal(state["key"], (3,)))


def test_keeps_last_k_and_restores_newest(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=2)
  for s in (1, 2, 3):
    m.save(s, _state(s))
  assert m.all_steps() == [2, 3]
  restored, _, step = m.restore(checkpoint.abstract_like(_state(0)))
  assert step == 3 and _equal(restored, _state(3))
  raw, _, _ = m.restore_raw()
  np.testing.assert_array_equal(raw["params"]["w"], parallel.to_host(_state(3))["params"]["w"])
  m.close()


def test_unfinished_temporary_save_is_ignored(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _state(1))
  m.close()
  # What a kill during a save leaves: a temporary directory, never a step directory.
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-12345" / "state")
  m = checkpoint.CheckpointManager(tmp_path)
  assert m.latest_step() == 1
  _, _, step = m.restore(checkpoint.abstract_like(_state(0)))
  assert step == 1


def test_corrupt_newest_falls_back_with_warning_and_is_kept_aside(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=3)
  m.save(1, _state(1))
  m.save(2, _state(2))
  _corrupt(tmp_path, 2)
  with pytest.warns(RuntimeWarning, match="step 2 .*could not be restored"):
    restored, _, step = m.restore(checkpoint.abstract_like(_state(0)))
  assert step == 1 and _equal(restored, _state(1))
  assert os.path.isdir(tmp_path / "2.corrupt")  # moved, not deleted
  m.save(2, _state(2))  # the step can be written again
  assert m.all_steps() == [1, 2]
  m.close()


def test_all_corrupt_raises_and_moves_nothing(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _state(1))
  _corrupt(tmp_path, 1)
  with pytest.raises(checkpoint.CheckpointError, match="none of the checkpoints"):
    m.restore(checkpoint.abstract_like(_state(0)))
  assert os.path.isdir(tmp_path / "1")
  m.close()


def test_empty_directory_restores_none(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path / "new")
  assert m.restore(checkpoint.abstract_like(_state(0))) is None
  m.close()


def test_unwritable_directory_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match="writable"):
    checkpoint.CheckpointManager(blocker / "ckpt")
