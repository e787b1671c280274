"""The ``sslit`` command: a thin argument parser over ``sslit.runs``.

``sslit train`` runs the main job (the shipped ``default`` config) in
``runs/default`` and resumes it when run again; ``--config.<field>=<value>``
overrides a field; ``sslit reproduce <name>`` starts ``python -m experiments <name>``
in a new process. Exit status: 0 success, 1 a failure with a one-line message, 2 a
usage error. JAX is imported only after the config set the CPU device count.
"""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
import threading
import warnings
from typing import Sequence

from sslit import config as config_lib
from sslit import rundir
from sslit import runs

__all__ = ["main"]

_USAGE = """usage: sslit <command> [options]

commands:
  train       pretrain (default: the main job, VICReg on Fashion-MNIST) then evaluate
  eval        linear probe / kNN / baselines of the newest checkpoint of a run
  analyze     information, bound and effective-rank monitor on a run's checkpoint
  embed       write a run's representations of a split as .npz (with the labels)
  reproduce   run a paper experiment from a repository checkout:
              sslit reproduce <name> [args...]  (= python -m experiments <name> ...)

options (train, eval, analyze, embed):
  --config NAME_OR_PATH      a config file, or a shipped name (default 'default';
                             also 'smoke'; ./experiments/configs/ is searched too)
  --config.<field>=<value>   override a config field (dotted for nested fields)
  --workdir DIR              run directory (default runs/<config name>)
  --num_examples N           analyze: held-out images (default analysis.num_examples)
  --verbose                  on an error, print the full traceback after the message
  --resume_with_changes      train: resume a run although its optimisation settings
                             (learning_rate, warmup_steps, end_lr_factor,
                             weight_decay, momentum, grad_clip, num_steps) changed
  --split train|test         embed: the split (default test)
  --outputs rep[,proj,pred]  embed: the network outputs to write (default rep)
  --out PATH                 embed: the .npz file (default in the run directory;
                             never a record of a run directory, nor a directory)
  --results PATH             eval, analyze: the .json file of the results instead
                             of the run directory (e.g. for a read-only run)
  --target                   embed: the run's target network (BYOL's/MoCo's target,
                             DINO's teacher, or the average of average_weights)
  --torch_checkpoint PATH    eval, analyze, embed: a PyTorch ResNet state_dict
                             (torchvision layout) instead of a run's checkpoint; data
                             and settings from --config, results in --workdir
  --arch resnet18|resnet50   with --torch_checkpoint (default: read from the keys)
  --stem imagenet|cifar      with --torch_checkpoint (default: read from conv1)
  --stem_padding N           with --torch_checkpoint (solo-learn CIFAR ResNets: 2)

many hosts (train, eval, analyze, embed; see docs/training.md):
  --coordinator_address H:P  process 0's address (or JAX_COORDINATOR_ADDRESS)
  --num_processes N          number of processes (or JAX_NUM_PROCESSES)
  --process_id I             this process's index (or JAX_PROCESS_ID)
  --distributed              jax.distributed.initialize() with cluster auto-detection
                             (TPU pods, SLURM, Open MPI, Kubernetes)
"""
_COMMANDS = ("train", "eval", "analyze", "embed", "reproduce")
_VALUE_OPTIONS = {"--config": str, "--workdir": str, "--num_examples": int,
                  "--split": str, "--outputs": str, "--out": str, "--results": str,
                  "--coordinator_address": str, "--num_processes": int,
                  "--process_id": int, "--torch_checkpoint": str, "--arch": str,
                  "--stem": str, "--stem_padding": int}
_FLAGS = ("--resume_with_changes", "--distributed", "--verbose", "--target")


def _parse(argv: Sequence[str]) -> tuple[str, argparse.Namespace,
                                         list[tuple[str, str]]]:
  argv = list(argv)
  if argv and argv[0] in ("-h", "--help"):
    print(_USAGE)
    raise SystemExit(0)
  command = "train"
  if argv and not argv[0].startswith("-"):
    command, argv = argv[0], argv[1:]
  if command not in _COMMANDS:
    raise config_lib.ConfigError(f"unknown command {command!r}; choose "
                                 f"{', '.join(_COMMANDS[:-1])} or {_COMMANDS[-1]}.")
  if command == "reproduce":
    if not argv or argv[0].startswith("-"):
      raise config_lib.ConfigError("usage: sslit reproduce <name> [args...]")
    return command, argparse.Namespace(name=argv[0], rest=argv[1:]), []
  args = argparse.Namespace(**{o[2:]: None for o in _VALUE_OPTIONS},
                            **{f[2:]: False for f in _FLAGS})
  overrides: list[tuple[str, str]] = []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg in ("-h", "--help"):
      print(_USAGE)
      raise SystemExit(0)
    if arg in _FLAGS:
      setattr(args, arg[2:], True)
      i += 1
      continue
    name, eq, value = arg.partition("=")
    if name not in _VALUE_OPTIONS and not name.startswith("--config."):
      raise config_lib.ConfigError(f"unknown option {arg!r}; see `sslit --help`.")
    if not eq:
      if i + 1 >= len(argv):
        raise config_lib.ConfigError(f"option {name} needs a value.")
      value, i = argv[i + 1], i + 1
    if name.startswith("--config."):
      overrides.append((name[len("--config."):], value))
    else:
      try:
        setattr(args, name[2:], _VALUE_OPTIONS[name](value))
      except ValueError:
        raise config_lib.ConfigError(
            f"{name} expects a whole number, got {value!r}.") from None
    i += 1
  return command, args, overrides


def _log(message: str) -> None:
  print(message, file=sys.stderr)


def cmd_train(args, overrides) -> int:
  config = config_lib.load_config(args.config or config_lib.DEFAULT_CONFIG)
  config_lib.apply_overrides(config, overrides)
  name = config.get("name", None) or os.path.splitext(
      os.path.basename(args.config or config_lib.DEFAULT_CONFIG))[0]
  workdir = args.workdir or os.path.join("runs", name)
  result = runs.train(config, workdir, log=_log,
                      resume_with_changes=args.resume_with_changes)
  if result.results is not None:
    print("sslit train: linear probe on the test split\n" + runs.summary(result.results,
                                                                        workdir))
  if result.report:
    print(f"sslit train: report written to {result.report}")
  return 0


def _open(args, overrides) -> runs.Run:
  if args.workdir is None:
    raise config_lib.ConfigError("this command needs --workdir DIR (a run directory, "
                                 "or where to write with --torch_checkpoint).")
  if args.torch_checkpoint:
    config = config_lib.load_config(args.config or config_lib.DEFAULT_CONFIG)
    config_lib.apply_overrides(config, overrides)
    return runs.open_torch_run(args.torch_checkpoint, workdir=args.workdir,
                               config=config, arch=args.arch or "auto",
                               stem=args.stem or "auto", stem_padding=args.stem_padding)
  return runs.open_run(args.workdir, overrides=overrides)


def _output(args, option: str, suffix: str) -> str | None:
  """The output file of ``option``, checked; None: the run directory, which must
  then be writable (checked before any work)."""
  path = getattr(args, option[2:])
  if path is not None:
    return rundir.check_output_path(path, suffix=suffix, option=option)
  if args.workdir is not None and os.path.isdir(args.workdir) and not \
      args.torch_checkpoint and not rundir.is_writable(args.workdir):
    raise config_lib.ConfigError(
        f"the run directory {args.workdir} is not writable; write the output "
        f"elsewhere with {option} PATH{suffix}.")
  return None


def cmd_eval(args, overrides) -> int:
  path = _output(args, "--results", ".json")
  run = _open(args, overrides)
  results = runs.offline_eval(run.config, run.model, run.variables, run.train_ds,
                              run.test_ds, step=run.step, workdir=run.workdir,
                              target=run.target, path=path)
  print(f"sslit eval: step {run.step}\n" + runs.summary(
      results, None if path is not None else run.workdir))
  if path is not None:
    print(f"sslit eval: results written to {path}")
  elif run.config.get("report", True):
    runs.write_report(run.workdir)
  return 0


def cmd_analyze(args, overrides) -> int:
  path = _output(args, "--results", ".json")
  run = _open(args, overrides)
  result = runs.analyze(run, num_examples=args.num_examples, path=path)
  for k in sorted(result):
    print(f"{k}: {result[k]}")
  if "monitor/cpa/output_noise" in result:
    a = run.config.analysis
    print(f"CPA model z = f(x + sigma eps) + tau eta: sigma = {a.sigma}, output noise "
          f"tau = {result['monitor/cpa/output_noise']:.4g} (= "
          f"{a.relative_output_noise} x sigma x RMS slope)")
  if path is None and run.config.get("report", True):
    runs.write_report(run.workdir)  # its figures now include this analysis
  return 0


def cmd_embed(args, overrides) -> int:
  _output(args, "--out", ".npz")
  run = _open(args, overrides)
  outputs = tuple(o.strip() for o in (args.outputs or "rep").split(",") if o.strip())
  path = runs.embed(run, split=args.split or "test", outputs=outputs, path=args.out,
                    max_examples=args.num_examples, target=args.target)
  network = "the target network's " if args.target else ""
  print(f"sslit embed: {network}{', '.join(outputs)} of the {args.split or 'test'} split "
        f"at step {run.step} written to {path}")
  return 0


def cmd_reproduce(args) -> int:
  """``python -m experiments <name> ...`` in the current directory (a checkout)."""
  if not os.path.isfile(os.path.join("experiments", "__main__.py")):
    raise config_lib.ConfigError(
        "sslit reproduce runs the paper experiments of a repository checkout: run it "
        "from the repository root (where experiments/ is), or run `python -m "
        "experiments <name>` there.")
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
  return subprocess.call([sys.executable, "-m", "experiments", args.name, *args.rest],
                         env=env)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``sslit`` command; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  verbose = "--verbose" in argv
  previous = warnings.formatwarning
  if not verbose:  # a warning is one line, without the source line it came from
    warnings.formatwarning = _one_line_warning
    _quiet_full_disk_threads()
  try:
    return _main(argv, verbose)
  finally:
    warnings.formatwarning = previous


def _main(argv: list[str], verbose: bool) -> int:
  try:
    command, args, overrides = _parse(argv)
    if command == "reproduce":
      return cmd_reproduce(args)
    runs.start_distributed(coordinator_address=args.coordinator_address,
                           num_processes=args.num_processes,
                           process_id=args.process_id, auto=args.distributed)
    if command == "analyze":
      # CPA analysis runs batched LAPACK kernels (see parallel.serialize_cpu_lapack).
      from sslit import parallel  # pylint: disable=g-import-not-at-top  (after the config)
      parallel.serialize_cpu_lapack()
    return {"train": cmd_train, "eval": cmd_eval, "analyze": cmd_analyze,
            "embed": cmd_embed}[command](args, overrides)
  except config_lib.ConfigError as e:
    _report(e, verbose)
    return 2
  except KeyboardInterrupt:
    print("sslit: interrupted; run the same command again to resume.", file=sys.stderr)
    if "sslit.checkpoint" in sys.modules:  # orbax may be stopping mid-save
      sys.modules["sslit.checkpoint"].silence_shutdown_noise()
    return 130
  except Exception as e:  # pylint: disable=broad-except
    try:
      expected = _is_expected(e)
    except Exception:  # pylint: disable=broad-except  (JAX itself failed to start)
      expected = False
    _report(e, verbose, expected=expected)
    return 1


def _quiet_full_disk_threads() -> None:
  """Background writers (TensorBoard's event thread) that die of a full disk report
  it (about 35 lines) while the command's own one line says it: their report is
  dropped. Installed for the whole command, since the thread may report before
  the command's error reaches ``main``."""
  previous = threading.excepthook
  if getattr(previous, "sslit_full_disk", False):
    return

  def hook(args):
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno == errno.ENOSPC):
      previous(args)
  hook.sslit_full_disk = True
  threading.excepthook = hook


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  del filename, lineno, line
  return f"sslit: {category.__name__}: {message}\n"


def _report(e: Exception, verbose: bool, expected: bool = True) -> None:
  """One short paragraph naming the problem; the traceback only with --verbose.

  An error sslit does not expect is said in one line too (its type and first
  line), with the hint that --verbose shows where it came from.
  """
  if not expected:
    print(f"sslit: error: {_unexpected(e)}", file=sys.stderr)
  elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
    print(f"sslit: error: no space left on the device ({e.filename or e}); the "
          f"checkpoints written before are kept: free some space and run the same "
          f"command again to resume.", file=sys.stderr)
  else:
    print(f"sslit: error: {e}", file=sys.stderr)
  if verbose:
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exception(e, file=sys.stderr)


def _unexpected(e: Exception) -> str:
  """One line for an error without a message of sslit's own."""
  first = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
  first = first if len(first) <= 300 else first[:297] + "..."
  platforms = os.environ.get("JAX_PLATFORMS")
  if platforms and _no_backend():
    return (f"JAX could not start the platform JAX_PLATFORMS={platforms} asks for "
            f"({type(e).__name__}{': ' + first if first else ''}); unset "
            f"JAX_PLATFORMS or install the jaxlib for that platform.")
  return (f"{type(e).__name__}{': ' + first if first else ''} (run with --verbose "
          f"for the traceback)")


def _no_backend() -> bool:
  """Whether JAX was imported and cannot start its backend."""
  if "jax" not in sys.modules:
    return False
  try:
    sys.modules["jax"].devices()
  except Exception:  # pylint: disable=broad-except  (whatever the platform raised)
    return True
  return False


def _is_expected(e: Exception) -> bool:
  from sslit import checkpoint, rundir  # pylint: disable=g-import-not-at-top  (JAX)
  expected = (ValueError, TypeError, PermissionError, FileNotFoundError, ImportError,
              FloatingPointError, checkpoint.CheckpointError, rundir.RunLockedError)
  full_disk = isinstance(e, OSError) and e.errno == errno.ENOSPC
  return isinstance(e, expected) or full_disk


if __name__ == "__main__":
  sys.exit(main())
