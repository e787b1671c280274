"""sslit.checkpoint: round trip, keep-last-K, atomicity, corrupt fallback, checksums,
run signatures, structure checks, the keep rule. (RunLock: tests/test_robustness.py.)"""

from __future__ import annotations

import glob
import json
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


def test_a_full_disk_as_tensorstore_reports_it_is_an_enospc_oserror(tmp_path,
                                                                  monkeypatch):
  """A real full disk (a 600 KiB tmpfs, 2026-12-06) reaches orbax's save as
  TensorStore's ValueError; the manager says it as ENOSPC, other errors pass."""
  import errno  # pylint: disable=g-import-not-at-top
  m = checkpoint.CheckpointManager(tmp_path / "ckpt")
  m.save(1, _state(1))
  seen = ('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local '
          'file "x/ocdbt.process_0/": Failed to write 92293 bytes to file 12: No '
          "space left on device [os_error_code='28']")
  for raised, want in ((ValueError(seen), OSError), (ValueError("other"), ValueError)):
    def failing(*args, raised=raised, **kwargs):
      raise raised
    monkeypatch.setattr(m._manager, "save", failing)  # pylint: disable=protected-access
    with pytest.raises(want) as info:
      m.save(2, _state(2))
    if want is OSError:
      assert info.value.errno == errno.ENOSPC and info.value.__cause__ is raised
      assert str(tmp_path / "ckpt") in info.value.filename
    else:
      assert info.value is raised
  monkeypatch.undo()
  assert m.all_steps() == [1]  # the earlier checkpoint is kept
  m.close()


def test_orbax_noise_of_a_full_disk_is_dropped_and_other_failures_keep_theirs(
    tmp_path, monkeypatch, caplog):
  """Observed on a 600 KiB tmpfs: the failing save's threads log tracebacks on the
  absl logger and leave 'Event loop is closed' unraisables; a full disk drops them
  (its OSError says it), another failure keeps its logs."""
  import logging  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  class Unraisable:
    def __init__(self, error):
      self.error = error

    def __del__(self):
      raise self.error

  seen = []  # what reaches the hook that was installed before the save
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
  asyncio_log = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_log, "level", logging.NOTSET)  # restored afterwards
  m = checkpoint.CheckpointManager(tmp_path / "ckpt")
  space = "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"
  for raised in (ValueError(space), ValueError("other")):
    def failing(*args, raised=raised, **kwargs):
      logging.getLogger("absl").error("writer thread: %s", raised)
      Unraisable(RuntimeError("Event loop is closed"))  # dropped, always
      Unraisable(KeyError("kept"))  # passed on at once
      raise raised
    monkeypatch.setattr(m._manager, "save", failing)  # pylint: disable=protected-access
    caplog.clear()
    with pytest.raises((OSError, ValueError)):
      m.save(2, _state(2))
    logged = [r.getMessage() for r in caplog.records if r.name == "absl"]
    assert logged == ([] if raised.args[0] == space else ["writer thread: other"])
    # and asyncio's exit-time reports of the failed write tasks are silenced
    assert asyncio_log.level == logging.CRITICAL
  assert seen == ["'kept'", "'kept'"]
  Unraisable(RuntimeError("Event loop is closed"))  # after the full disk: still dropped
  Unraisable(KeyError("later"))
  assert seen[2:] == ["'later'"]
  m.close()


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
  with pytest.raises(checkpoint.CheckpointError, match="none of the checkpoints") as e:
    m.restore(checkpoint.abstract_like(_state(0)))
  assert "\n" not in str(e.value) and len(str(e.value)) < 400  # one short line
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


def _big_state(seed):
  """A state whose data file is mostly array bytes (a 64x64 float32 leaf)."""
  rng = np.random.default_rng(seed)
  tree = {"params": {"w": rng.standard_normal((64, 64)).astype(np.float32)},
          "key": jax.random.key(seed)}
  return parallel.replicate(tree, parallel.make_mesh())


def _flip_one_bit(directory, step):
  """Flip one bit in the middle of the step's largest array-data file."""
  files = glob.glob(os.path.join(directory, str(step), "state", "**", "d", "*"),
                    recursive=True)
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(data)


def test_flipped_bit_in_newest_falls_back_with_one_short_warning(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=3)
  m.save(1, _big_state(1))
  m.save(2, _big_state(2))
  _flip_one_bit(tmp_path, 2)
  with pytest.warns(RuntimeWarning) as record:
    restored, _, step = m.restore(checkpoint.abstract_like(_big_state(0)))
  assert step == 1 and _equal(restored, _big_state(1))
  (w,) = [str(r.message) for r in record]
  # Caught by the checksum (orbax reads the flipped bit without complaint).
  assert "step 2" in w and "checksum mismatch in leaf params/w" in w and "\n" not in w
  assert os.path.isdir(tmp_path / "2.corrupt")
  m.close()


def test_flipped_bit_in_the_only_step_is_a_clear_error(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _big_state(1))
  _flip_one_bit(tmp_path, 1)
  for restore in (lambda: m.restore(checkpoint.abstract_like(_big_state(0))), m.restore_raw):
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"none of the checkpoints .*step 1: checksum mismatch in leaf params/w") as e:
      restore()
    assert "\n" not in str(e.value)
  with pytest.raises(checkpoint.ChecksumMismatchError, match="params/w"):
    m.restore(checkpoint.abstract_like(_big_state(0)), step=1)
  assert m.all_steps() == [1] and not glob.glob(str(tmp_path / "*.corrupt*"))
  m.close()


def test_checkpoint_without_checksums_still_restores(tmp_path):
  # A step written before checksums existed: meta without the reserved record.
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _state(1), meta={"seed": 1})
  path = tmp_path / "1" / "meta" / "metadata"
  meta = json.loads(path.read_text())
  assert set(meta["_sslit"]["checksums"]) == {"params/w", "params/b", "step", "key"}
  del meta["_sslit"]
  path.write_text(json.dumps(meta))
  m.close()
  m = checkpoint.CheckpointManager(tmp_path)
  restored, meta, step = m.restore(checkpoint.abstract_like(_state(0)),
                                   signature={"lr": 0.1})
  assert step == 1 and meta == {"seed": 1, "step": 1} and _equal(restored, _state(1))
  m.close()


def test_signature_is_stored_and_a_changed_one_is_refused(tmp_path):
  sig = {"learning_rate": 0.1, "batch_size": 8, "num_steps": 100, "widths": (4, 4)}
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _state(1), signature=sig)
  assert m.signature() == {**sig, "widths": [4, 4]}
  _, _, step = m.restore(checkpoint.abstract_like(_state(0)), signature=sig)
  assert step == 1
  changed = {**sig, "learning_rate": 0.2, "num_steps": 200, "seed": 3}
  for restore in (lambda s: m.restore(checkpoint.abstract_like(_state(0)), signature=s),
                  lambda s: m.restore_raw(signature=s)):
    with pytest.raises(checkpoint.SignatureMismatchError) as e:
      restore(changed)
    msg = str(e.value)
    assert ("learning_rate 0.1 → 0.2, num_steps 100 → 200, seed \"<absent>\" → 3" in msg
            and "another workdir" in msg and "step 1" in msg), msg
  assert m.all_steps() == [1] and not glob.glob(str(tmp_path / "*.corrupt*"))
  checkpoint.check_signature(None, changed)  # nothing stored: nothing to compare
  with pytest.raises(TypeError, match="JSON"):
    m.save(2, _state(2), signature={"fn": object()})
  m.close()


def test_model_that_does_not_fit_names_the_leaf_and_both_shapes(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path)
  m.save(1, _state(1))
  m.save(2, _state(2))
  wider = _state(0)
  wider["params"]["w"] = np.zeros((3, 5), np.float32)
  with pytest.raises(checkpoint.StructureMismatchError,
                     match=r"params/w has shape \(3, 4\) in the checkpoint but \(3, 5\) "
                           r"in the model"):
    m.restore(checkpoint.abstract_like(wider))
  extra = _state(0)
  extra["params"]["v"] = np.zeros(2, np.float32)
  with pytest.raises(checkpoint.StructureMismatchError,
                     match=r"params/v \(shape \(2,\)\) is in the model but not in the"):
    m.restore(checkpoint.abstract_like(extra))
  assert m.all_steps() == [1, 2] and not glob.glob(str(tmp_path / "*.corrupt*"))
  m.close()


@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_keep_below_one_is_refused(tmp_path, keep):
  with pytest.raises(ValueError, match="max_to_keep .*keep_checkpoints"):
    checkpoint.CheckpointManager(tmp_path, max_to_keep=keep)
  assert not os.listdir(tmp_path)


def test_smaller_keep_deletes_only_after_a_new_save(tmp_path):
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=3)
  for s in (1, 2, 3):
    m.save(s, _state(s))
  m.close()
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=1)
  assert m.all_steps() == [1, 2, 3]  # opening deletes nothing
  m.restore(checkpoint.abstract_like(_state(0)))
  m.save(3, _state(3))  # an existing step: not saved again, nothing deleted
  assert m.all_steps() == [1, 2, 3]
  m.save(4, _state(4))
  assert m.all_steps() == [4] and sorted(os.listdir(tmp_path)) == ["4"]
  m.close()
  m = checkpoint.CheckpointManager(tmp_path, max_to_keep=None)
  m.save(5, _state(5))
  assert m.all_steps() == [4, 5]
  with pytest.raises(ValueError, match="reserved"):
    m.save(6, _state(6), meta={"_sslit": 1})
  m.close()
