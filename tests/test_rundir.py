"""sslit.rundir and the commands around a run directory: what is refused before anything
is written, readers beside a running train and on a read-only run, one line per error.

Runs are the shipped smoke config (seconds). The subprocess tests start fresh
interpreters (a train beside readers, a dtype mode or platform set in the
environment); they run side by side to keep the suite short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from sslit import checkpoint, cli, data, objectives, rundir, train
from tests.fit_utils import run_fit, subprocess_env
from tests.multihost_worker import DigitsDataset, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A smoke run without the costly parts: no monitor, evaluation or report.
QUICK = ["--config.monitor_every=0", "--config.eval.enabled=false",
         "--config.report=false"]
# The fixture run's settings: the same command resumes it.
SAME = ["--config.num_steps=10", "--config.checkpoint_every=5", "--config.log_every=5"]


_env = subprocess_env  # this checkout, CPU only (tests/fit_utils.py)


def _sslit(*argv, **env):
  return subprocess.Popen([sys.executable, "-m", "sslit.cli", *argv], cwd=ROOT,
                          env=_env(**env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _run(argv, capfd):
  code = cli.main(argv)
  captured = capfd.readouterr()
  return code, captured.out + captured.err


def _one_error_line(err: str) -> str:
  """The one ``sslit: error:`` line of ``err`` (progress lines may precede it)."""
  lines = [l for l in err.splitlines() if l.startswith("sslit: error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  assert err.rstrip().endswith(lines[0]), err  # nothing after it
  return lines[0]


def _tree(path) -> dict:
  """Every file and directory under ``path``: size and modification time (ns)."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      p = os.path.join(root, name)
      st = os.lstat(p)
      out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
  return out


def _state(workdir):
  """The newest checkpoint's whole train state, host arrays by leaf path."""
  manager = checkpoint.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                         max_to_keep=None, read_only=True)
  try:
    state, _, step = manager.restore_raw()
  finally:
    manager.close()
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in
          __import__("orbax.checkpoint", fromlist=["tree"]).tree.to_flat_dict(
              state).items()}
  return flat, step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished smoke run of 10 steps (checkpoints 5 and 10), trained in this process."""
  workdir = tmp_path_factory.mktemp("rundir") / "run"
  code = cli.main(["train", "--config", "smoke", "--workdir", str(workdir), *SAME,
                   *QUICK])
  assert code == 0
  return workdir


@pytest.fixture
def copy(run, tmp_path):
  """A copy of the finished run that a test may change."""
  dst = tmp_path / "run"
  shutil.copytree(run, dst)
  return dst


# ------------------------------------------------ values checked before anything


@pytest.mark.parametrize("override, message", [
    ("grad_clip=-1", r"--config\.grad_clip must be >= 0"),
    ("seed=-1", r"--config\.seed must be in \[0, 2\*\*32\)"),
    ("seed=4294967296", r"--config\.seed must be in \[0, 2\*\*32\)"),
    ("seed=1e23", r"--config\.seed expects a int"),
    ("average_weights=2", r"--config\.average_weights must be in \[0, 1\)"),
    ("objective=simclr  objective_kwargs={'temperature':0.0}",
     r"--config\.objective_kwargs\.temperature must be > 0"),
    ("monitor_examples=0  monitor_every=5", r"--config\.monitor_examples must be >= 8"),
    ("ema_momentum=2", r"--config\.ema_momentum must be in \[0, 1\)"),
    ("momentum=-5", r"--config\.momentum must be in \[0, 1\)"),
    ("weight_decay=1e400", r"--config\.weight_decay='1e400' is not a finite number"),
    ("num_steps=10**10", r"not a valid int literal"),
    ("num_steps=10000000000", r"--config\.num_steps must be a whole number of "
                              r"magnitude below 2\*\*31"),
    ("eval.steps=0", r"--config\.eval\.steps must be >= 1"),
    ("eval.baselines=('rw',)", r"--config\.eval\.baselines must be"),
    ("analysis.sigma=0", r"--config\.analysis\.sigma must be > 0"),
])
def test_a_bad_value_is_refused_by_its_name_and_config_json_is_untouched(
    override, message, copy, capfd):
  before = (copy / "config.json").read_bytes()
  tree = _tree(copy)
  code, out = _run(["train", "--config", "smoke", "--workdir", str(copy), *SAME,
                    *QUICK, *(f"--config.{o}" for o in override.split("  "))], capfd)
  assert code == 2, out
  assert __import__("re").search(message, _one_error_line(out)), out
  assert (copy / "config.json").read_bytes() == before
  assert _tree(copy) == tree  # nothing written, not even the lock


def test_a_missing_or_torn_config_json_stays_so_when_the_command_is_refused(
    copy, capfd):
  argv = ["train", "--config", "smoke", "--workdir", str(copy), *SAME, *QUICK]
  wrong_model = argv + ["--config.model.projector=(32, 32)"]
  original = (copy / "config.json").read_bytes()
  for torn in (b'{"objective": "vic', None):  # torn, then missing
    if torn is None:
      (copy / "config.json").unlink()
    else:
      (copy / "config.json").write_bytes(torn)
    code, out = _run(wrong_model, capfd)
    assert code == 1 and "model" in _one_error_line(out), out
    assert (copy / "config.json").read_bytes() == torn if torn else not (
        copy / "config.json").exists()
  # The reader names the file it cannot read.
  (copy / "config.json").write_bytes(b'{"objective": "vic')
  code, out = _run(["eval", "--workdir", str(copy)], capfd)
  assert code == 2 and f"{copy / 'config.json'} is not a run's config.json" in \
      _one_error_line(out), out
  # The right command resumes (nothing left to train) and writes config.json again.
  code, out = _run(argv, capfd)
  assert code == 0, out
  assert json.loads((copy / "config.json").read_bytes()) == json.loads(original)
  # --resume_with_changes records a change only when the run goes on with it.
  code, out = _run(wrong_model + ["--config.num_steps=12", "--resume_with_changes"],
                   capfd)
  assert code == 2 and not (copy / "config_history.jsonl").exists(), out
  code, out = _run(argv + ["--config.num_steps=12", "--resume_with_changes"], capfd)
  assert code == 0, out
  history = [json.loads(l) for l in (copy / "config_history.jsonl").read_text().split(
      "\n") if l]
  assert [h["changed"] for h in history] == [{"num_steps": [10, 12]}]


# ------------------------------------------------ nothing of the user's overwritten


def test_out_and_workdir_never_replace_what_is_not_sslit_s(copy, tmp_path, capfd):
  config_json = (copy / "config.json").read_bytes()
  out_dir = tmp_path / "existing"
  out_dir.mkdir()
  for out, why in ((copy / "config.json", "does not end in .npz"),
                   (copy / "metrics.npz", None),
                   (copy / "checkpoints" / "x.npz", "is a record of the run directory"),
                   (out_dir, "is a directory"),
                   (tmp_path / "no" / "e.npz", "does not exist")):
    code, text = _run(["embed", "--workdir", str(copy), "--out", str(out)], capfd)
    if why is None:  # a new .npz file beside the run's records is fine
      assert code == 0 and np.load(out)["step"] == 10, text
      continue
    assert code == 2 and why in _one_error_line(text), text
  assert (copy / "config.json").read_bytes() == config_json
  assert sorted(os.listdir(out_dir)) == []
  assert not [p for p in _tree(copy) if ".tmp" in p]
  # A user's directory with their own config.json and metrics is not a run.
  user = tmp_path / "mine"
  user.mkdir()
  (user / "config.json").write_text('{"learning": "my own"}')
  (user / "metrics.jsonl").write_text('{"step": 1, "mine": 1}\n')
  mine = _tree(user)
  code, text = _run(["train", "--config", "smoke", "--workdir", str(user), *QUICK],
                    capfd)
  assert code == 2 and "is not empty and holds no sslit run" in _one_error_line(text)
  assert _tree(user) == mine
  (user / "config.json").unlink()
  code, text = _run(["train", "--config", "smoke", "--workdir", str(user), *QUICK],
                    capfd)
  assert code == 2 and "holds metrics.jsonl" in _one_error_line(text)
  # An unreadable run directory: the reader asks for --results/--out elsewhere.
  import unittest.mock  # pylint: disable=g-import-not-at-top
  with unittest.mock.patch.object(rundir, "is_writable", lambda p: False):
    for command, option in (("eval", "--results"), ("embed", "--out"),
                            ("analyze", "--results")):
      code, text = _run([command, "--workdir", str(copy)], capfd)
      assert code == 2 and f"not writable; write the output elsewhere with {option}" \
          in _one_error_line(text), text


# ------------------------------------------------ readers beside a train, read-only


def test_readers_beside_a_train_leave_it_bitwise_intact_and_read_a_read_only_run(
    tmp_path, capfd):
  """``eval``, ``embed`` and ``analyze`` in a loop beside a train that saves every
  step; the train ends with the state of the same train run alone. Then the run
  made read-only is evaluated, embedded and analysed with outputs elsewhere, and
  not a byte of it changes."""
  argv = ["train", "--config", "smoke", "--config.num_steps=30",
          "--config.checkpoint_every=1", "--config.log_every=10", *QUICK]
  beside, alone = tmp_path / "beside", tmp_path / "alone"
  procs = [_sslit(*argv, "--workdir", str(beside)),
           _sslit(*argv, "--workdir", str(alone))]
  readers = []
  try:
    while procs[0].poll() is None:
      if not any(n.isdigit() for n in os.listdir(beside / "checkpoints")) if (
          beside / "checkpoints").is_dir() else True:
        time.sleep(0.2)
        continue
      for reader in (["eval", "--config.eval.steps=5", "--config.eval.baselines=()"],
                     ["embed", "--num_examples=64"],
                     ["analyze", "--num_examples=16", "--config.analysis.cpa_examples=2"]):
        running = procs[0].poll() is None  # the train saves while this reader reads
        readers.append((reader[0], cli.main([*reader, "--workdir", str(beside)]),
                        running))
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
  assert any(running for _, _, running in readers), readers  # one overlapped at least
  assert all(code == 0 for _, code, _ in readers), readers
  got, step = _state(str(beside))
  want, want_step = _state(str(alone))
  assert step == want_step == 30 and sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  capfd.readouterr()

  # Read-only: every output elsewhere, the run unchanged to the byte and the ns.
  out = tmp_path / "out"
  out.mkdir()
  subprocess.run(["chmod", "-R", "a-w", str(alone)], check=True)
  try:
    tree = _tree(alone)
    for argv in (["eval", "--results", str(out / "results.json"),
                  "--config.eval.steps=5", "--config.eval.baselines=()"],
                 ["embed", "--out", str(out / "e.npz"), "--num_examples=64"],
                 ["analyze", "--results", str(out / "analysis.json"),
                  "--num_examples=16", "--config.analysis.cpa_examples=2"]):
      code, text = _run([*argv, "--workdir", str(alone)], capfd)
      assert code == 0, text
    assert _tree(alone) == tree
    assert json.loads((out / "results.json").read_text())["step"] == 30
    assert int(np.load(out / "e.npz")["step"]) == 30
    assert json.loads((out / "analysis.json").read_text())["step"] == 30
  finally:
    subprocess.run(["chmod", "-R", "u+w", str(alone)], check=True)


# ------------------------------------------------ one line for each error


def test_errors_are_one_line_each(copy, tmp_path, capfd):
  """Cases that printed tracebacks: each is one line now, its exit status non-zero."""
  text_file = tmp_path / "weights.pth"
  text_file.write_text("not a state dict")
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  raises = tmp_path / "raises.py"
  raises.write_text("def get_config():\n  raise RuntimeError('no such thing')\n")
  a_dict = tmp_path / "a_dict.py"
  a_dict.write_text("def get_config():\n  return {'objective': 'vicreg'}\n")
  not_a_dir = tmp_path / "data_file"
  not_a_dir.write_text("x")
  bad_metrics = tmp_path / "bad_metrics"
  shutil.copytree(copy, bad_metrics)
  (bad_metrics / "metrics.jsonl").unlink()
  (bad_metrics / "metrics.jsonl").mkdir()
  cases = [
      (["eval", "--workdir", str(tmp_path / "t1"), "--config", "smoke",
        "--torch_checkpoint", str(text_file)], None),
      (["eval", "--workdir", str(tmp_path / "t2"), "--config", "smoke",
        "--torch_checkpoint", str(empty)], None),
      (["train", "--config", str(raises), "--workdir", str(tmp_path / "r")],
       "get_config() raised RuntimeError: no such thing"),
      (["train", "--config", str(a_dict), "--workdir", str(tmp_path / "d")],
       "lacks the fields"),
      (["train", "--config", "smoke", "--config.dataset=fashion_mnist",
        f"--config.data_dir={not_a_dir}", "--workdir", str(tmp_path / "f")], None),
      (["train", "--config", "smoke", "--workdir", str(bad_metrics),
        "--config.num_steps=12", "--resume_with_changes", *QUICK], "metrics.jsonl"),
      (["train", "--config", "smoke", "--workdir",
        os.fsdecode(bytes(tmp_path) + b"/\xff\xfe"), *QUICK], "not a valid UTF-8 name"),
  ]
  for argv, message in cases:
    code, out = _run(argv, capfd)
    assert code in (1, 2), (argv, out)
    line = _one_error_line(out)
    assert message is None or message in line, (argv, out)


def test_another_run_s_checkpoint_planted_as_the_newest_is_one_line(copy, tmp_path,
                                                                    capfd):
  # Another run's checkpoint (another model, another signature) planted as the newest.
  planted = tmp_path / "planted"
  shutil.copytree(copy, planted)
  manager = checkpoint.CheckpointManager(tmp_path / "other", max_to_keep=None)
  with checkpoint.CheckpointManager(planted / "checkpoints", read_only=True) as mine:
    signature = mine.signature()
  manager.save(99, {"params": {"w": np.zeros((8, 32), np.float32)}}, signature=dict(
      signature, model=dict(signature["model"], projector=[32, 16])))
  manager.close()
  shutil.copytree(tmp_path / "other" / "99", planted / "checkpoints" / "99")
  for command in (["eval"], ["embed"], ["analyze", "--num_examples=16"]):
    code, out = _run([*command, "--workdir", str(planted)], capfd)
    line = _one_error_line(out)
    assert code == 1 and "written by a run with other settings (model" in line, out


# A command's process where background threads die (as TensorBoard's event writer
# does on a full disk, while the command reports the same error in one line).
FULL_DISK_THREADS = """
import errno, sys, threading
from sslit import cli
assert cli.main(["eval", "--workdir", sys.argv[1] + "/none"]) == 2
def die(error):
  raise error
for error in (OSError(errno.ENOSPC, "No space left on device"), ValueError("not a full disk")):
  thread = threading.Thread(target=die, args=(error,))
  thread.start()
  thread.join()
"""


def test_dtype_mode_platform_interrupt_and_damage_in_fresh_processes(copy, run,
                                                                     tmp_path):
  """Four fresh interpreters side by side: a float32 run resumed with 64-bit
  types is refused; a platform that is not there is one line; Ctrl-C mid-save is
  one line and exit status 130, without orbax's thread tracebacks; a reader of a
  run whose newest step is damaged uses the previous one, says so in one line
  (without TensorStore's closed-loop reports) and moves nothing."""
  damaged = tmp_path / "damaged"
  shutil.copytree(run, damaged)
  for f in (damaged / "checkpoints" / "10" / "state").glob("ocdbt.process_*/d/*"):
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])  # the array data truncated
  damaged_tree = _tree(damaged / "checkpoints")
  reader = _sslit("embed", "--workdir", str(damaged), "--out", str(tmp_path / "e.npz"))
  threads = subprocess.Popen([sys.executable, "-c", FULL_DISK_THREADS, str(tmp_path)],
                             cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
  x64 = _sslit("train", "--config", "smoke", "--workdir", str(copy), *SAME, *QUICK,
               JAX_ENABLE_X64="1")
  gpu = _sslit("eval", "--workdir", str(copy), JAX_PLATFORMS="cuda")
  interrupted = tmp_path / "interrupted"
  sigint = _sslit("train", "--config", "smoke", "--workdir", str(interrupted),
                  "--config.num_steps=100000", "--config.checkpoint_every=1",
                  "--config.log_every=1", *QUICK)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and sigint.poll() is None and not (
        (interrupted / "checkpoints").is_dir()
        and any(n.isdigit() for n in os.listdir(interrupted / "checkpoints"))):
      time.sleep(0.05)
    sigint.send_signal(signal.SIGINT)
    outs = [p.communicate(timeout=300) for p in (x64, gpu, sigint, reader, threads)]
  finally:
    for p in (x64, gpu, sigint, reader, threads):
      if p.poll() is None:
        p.kill()
  (_, x64_err), (_, gpu_err), (_, sigint_err), (_, reader_err), (_, threads_err) = outs
  assert x64.returncode == 1, x64_err
  assert "jax_enable_x64" in _one_error_line(x64_err), x64_err
  assert gpu.returncode == 1 and "JAX_PLATFORMS=cuda" in _one_error_line(gpu_err)
  assert sigint.returncode == 130, sigint_err[-3000:]
  assert "Traceback" not in sigint_err and "interrupted" in sigint_err, sigint_err
  assert reader.returncode == 0 and int(np.load(tmp_path / "e.npz")["step"]) == 5
  warned = [l for l in reader_err.splitlines() if "could not be restored" in l]
  assert len(warned) == 1 and "checkpoint step 10" in warned[0] and "using step 5" in \
      warned[0], reader_err
  assert "Event loop is closed" not in reader_err and "Traceback" not in reader_err
  assert "warnings.warn" not in reader_err and "restore_raw(" not in reader_err
  assert _tree(damaged / "checkpoints") == damaged_tree  # a reader moves nothing
  # A background writer dying of a full disk is not reported again; another error is.
  assert threads.returncode == 0, threads_err
  assert "ENOSPC" not in threads_err and "No space left" not in threads_err, threads_err
  assert "Exception in thread" in threads_err and "not a full disk" in threads_err


# ------------------------------------------------ a NaN stop keeps a sane checkpoint


def _diverging_objective():
  """VICReg, plus 1e19 on a batch of two distinct images (finite: the loss diverged)
  and NaN on a batch of one image repeated."""
  base = objectives.get_objective("vicreg")

  def fn(z_a, z_b):
    loss, aux = base.fn(z_a, z_b)
    d2 = jnp.sum((z_a[:, None] - z_a[None]) ** 2, -1)
    same = jnp.mean(d2 < 1e-12)
    spread = jnp.max(jnp.abs(z_a - z_a[:1]))
    return loss + 1e19 * (same > 0.4) + 0.0 * jnp.log(spread), aux

  return objectives.Objective("diverging", "pair", fn)


def test_a_nan_stop_keeps_the_last_checkpoint_with_a_sane_loss(tmp_path, fast_compile):
  digits = DigitsDataset()

  def batches(start):
    for s, b in enumerate(data.batch_iterator(digits, 32, seed=0, start_step=start),
                          start=start):
      image = b["image"]
      if s == 5:  # step 6: two distinct images, half each: a loss of 1e19
        image = np.concatenate([np.repeat(image[:1], 16, 0), np.repeat(image[1:2], 16, 0)])
      elif s == 6:  # step 7: one image 32 times: NaN
        image = np.repeat(image[:1], 32, 0)
      yield dict(b, image=image)

  with pytest.raises(train.NonFiniteLossError, match="non-finite at step 7") as info:
    run_fit(model=tiny_model(), objective=_diverging_objective(), dataset=digits,
            batch_size=32, num_steps=20, log_every=1, checkpoint_every=1,
            keep_checkpoints=10, workdir=tmp_path, progress=False,
            data_iterator_fn=batches)
  assert info.value.step == 7 and info.value.last_checkpoint == 5
  assert [s for s, _, _ in info.value.diverged] == [6]
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=lambda n: (len(n), n)) == [
      "1", "2", "3", "4", "5", "6.diverged"]
  message = str(info.value)
  assert "last good checkpoint (step 5)" in message and "step 6 (loss 1e+19)" in message
