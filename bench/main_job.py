"""Where the minutes of the main job go: ``sslit train`` split into its phases.

Runs the README's main command (``sslit train``, the default config) in fresh run
directories, one per seed, as a subprocess timed from outside, and reads back the
``timings.json`` each run writes: data set build and statistics, model and step
setup, compilation (the first step), training, the offline probes (trained, random
init, raw pixels) and the report, next to the whole command's wall time and the
probe accuracies (with ``--set eval.target=true``, the target network's as well).
The peer of this bench is the same command on another CPU: every
row names the CPU model and whether it has AVX-512 (``lscpu``), since the same step
takes about twice as long with AVX2 only.

``--isa avx2`` asks XLA to generate AVX2 code only (``--xla_cpu_max_isa=AVX2``). It
changes XLA's own kernels, not the libraries XLA calls for convolutions and matrix
products, which pick their instructions from the CPU. Measured on a 2-core AMD EPYC
with AVX-512 (2026-12-06): the then default command (2000 steps) took 226 s
with it and 235 s without, with the same accuracies, so it is **not** a stand-in for an AVX2-only CPU
(498 s measured on one); it only shows what XLA's own code contributes.

Usage: ``python bench/main_job.py [--seeds 0,1,2] [--isa avx2] [--steps N]
[--set FIELD=VALUE ...] [--out bench/RESULTS_main_job.md]``; ``--set`` passes
``--config.FIELD=VALUE`` to every run (a candidate recipe timed as a whole command
before it becomes the default). The data set must be installed
(``apt-get install dataset-fashion-mnist``); the first run also builds it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PHASES = ("data_s", "setup_s", "compile_s", "fit_s", "eval_s", "report_s")
ACCURACIES = ("trained", "target", "random_init", "raw_pixels")


def cpu_description() -> str:
  """``model name`` and the widest vector ISA, from lscpu (or /proc/cpuinfo)."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    text = open("/proc/cpuinfo").read()
  model = next((l.split(":", 1)[1].strip() for l in text.splitlines()
                if l.lower().startswith("model name")), "unknown CPU")
  flags = next((l.split(":", 1)[1].split() for l in text.splitlines()
                if l.lower().startswith("flags")), [])
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  cores = os.cpu_count()
  return f"{model}, {cores} cores, {isa}"


def run_once(seed: int, *, isa: str | None, steps: int | None, workdir: str,
             sets: tuple[str, ...] = ()) -> dict:
  env = dict(os.environ)
  if isa:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_max_isa={isa.upper()}"
                        ).strip()
  cmd = [sys.executable, "-m", "sslit.cli", "train", "--workdir", workdir,
         f"--config.seed={seed}"]
  if steps:
    cmd.append(f"--config.num_steps={steps}")
  cmd += [f"--config.{s}" for s in sets]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "timings.json")) as f:
    timings = json.load(f)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return {"seed": seed, "wall_s": wall, **{k: timings.get(k) for k in PHASES},
          "train_s": (timings.get("fit_s") or 0) - (timings.get("compile_s") or 0),
          "steps": timings.get("steps_trained"),
          "trained": results["trained"]["linear_top1"],
          "target": results.get("target", {}).get("linear_top1"),
          "random_init": results.get("random_init", {}).get("linear_top1"),
          "raw_pixels": results.get("raw_pixels", {}).get("linear_top1")}


def table(rows: list[dict], header: str) -> str:
  cols = ["seed", "wall_s", "data_s", "setup_s", "compile_s", "train_s", "eval_s",
          "report_s", "steps", "trained", "target", "random_init", "raw_pixels"]
  if not any(r.get("target") is not None for r in rows):
    cols.remove("target")  # no run probed a target network (eval.target)
  out = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    out.append("| " + " | ".join(
        (f"{r[c]:.2f}" if c in ACCURACIES else f"{r[c]:.1f}")
        if isinstance(r.get(c), float) else str(r.get(c)) for c in cols) + " |")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seeds", default="0")
  p.add_argument("--isa", choices=("avx2",), default=None)
  p.add_argument("--steps", type=int, default=None, help="override num_steps")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config override for every run (repeatable)")
  p.add_argument("--out", default=None, help="append the table to this Markdown file")
  args = p.parse_args(argv)
  for s in args.set:
    if "=" not in s:
      p.error(f"--set takes FIELD=VALUE, got {s!r}")
  rows = []
  for seed in (int(s) for s in args.seeds.split(",")):
    with tempfile.TemporaryDirectory(prefix="sslit-main-job-") as tmp:
      rows.append(run_once(seed, isa=args.isa, steps=args.steps,
                           workdir=os.path.join(tmp, "run"), sets=tuple(args.set)))
    print(json.dumps(rows[-1]), flush=True)
  header = (f"### `python bench/main_job.py --seeds {args.seeds}"
            f"{' --isa ' + args.isa if args.isa else ''}"
            f"{' --steps %d' % args.steps if args.steps else ''}"
            f"{''.join(' --set ' + s for s in args.set)}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"CPU: {cpu_description()}; seconds; accuracies: linear-probe top-1 (%) "
            f"on the test split.")
  text = table(rows, header)
  print(text)
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n" + text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
