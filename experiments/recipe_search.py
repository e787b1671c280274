"""Search for the default training recipe: train a candidate, probe it, log a row.

Runs exactly what ``sslit train`` runs for a config (the CLI's own config loading,
overrides, model, data, device setup and ``train.FitOptions``), for a
given number of steps or seconds, then linear-probes (and optionally kNN) several
representations of the trained network, of the same network at random
initialisation (BatchNorm statistics calibrated) and of the raw pixels.

During the search the probe is fitted on the first 50,000 training images and
scored on the last 10,000 (``--split val``), so that no choice is made on the test
split; ``--split test`` fits on all 60,000 and scores on the test split (final
candidates only). Baseline numbers are cached per (architecture, representation,
split, seed) in ``--cache``.

Command (one row appended to ``--out``, a JSON-lines file)::

  python experiments/recipe_search.py --config experiments/configs/recipe_a.py \\
      --steps 600 --reps 2x2,gap --split val [--config.<field>=<value> ...]

``--timing N`` instead trains N steps without probing and prints the ms/step
measured after compilation (and the load average), for clean timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="config file (default: default.py)")
  p.add_argument("--steps", type=int, default=None, help="num_steps override")
  p.add_argument("--seconds", type=float, default=0.0,
                 help="wall-clock cap on training (0: none)")
  p.add_argument("--reps", default="model",
                 help="comma list of representations: model (as configured), "
                      "gap, 2x2, none (conv nets), proj")
  p.add_argument("--split", choices=("val", "test"), default="val")
  p.add_argument("--fit-n", type=int, default=50000,
                 help="val split: fit the probe on train[:fit_n] (<= 50000)")
  p.add_argument("--knn", action="store_true", help="also kNN (k=20)")
  p.add_argument("--no-baselines", action="store_true")
  p.add_argument("--calibrated", action="store_true",
                 help="also probe the trained network with its BatchNorm statistics "
                      "calibrated as the random-init baseline's (on unaugmented "
                      "training batches) instead of its running statistics")
  p.add_argument("--target", action="store_true",
                 help="also probe the target network (e.g. the average of "
                      "--config.average_weights) and the trained one, both with "
                      "calibrated BatchNorm statistics")
  p.add_argument("--eval-every", type=int, default=0,
                 help="also probe (val, --reps) every this many steps during training")
  p.add_argument("--timing", type=int, default=0,
                 help="only time this many steps (no probe)")
  p.add_argument("--tag", default="")
  p.add_argument("--table", action="store_true",
                 help="print the rows of --out as a Markdown table and exit")
  p.add_argument("--out", default="/tmp/sslit_recipe_runs.jsonl")
  p.add_argument("--cache", default="/tmp/sslit_recipe_baselines.json")
  args, rest = p.parse_known_args(argv)
  overrides = []
  for arg in rest:
    if not arg.startswith("--config.") or "=" not in arg:
      p.error(f"unknown argument {arg!r}")
    name, _, value = arg[len("--config."):].partition("=")
    overrides.append((name, value))
  return args, overrides


def _loadavg() -> str:
  try:
    return " ".join(open("/proc/loadavg").read().split()[:3])
  except OSError:
    return "?"


def main(argv=None) -> int:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  if args.table:
    print(table(args.out))
    return 0
  t_start = time.perf_counter()
  from sslit import config as config_lib  # imports no JAX
  from sslit import runs
  config = config_lib.load_config(args.config or config_lib.DEFAULT_CONFIG)
  config_lib.apply_overrides(config, overrides)
  if args.steps:
    config.num_steps = int(args.steps)
  if args.timing:
    config.num_steps = int(args.timing)
  if args.seconds:
    config.max_train_seconds = float(args.seconds)
  runs.start_devices(config)

  import jax
  import numpy as np
  from sslit import evaluate, features, models, train

  train_ds, test_ds = runs.load_datasets(config)
  model = runs.build_model(config)
  mesh = runs.make_mesh(config)
  options = runs.fit_options(config)
  num_classes = int(train_ds.num_classes)
  mean, std = train_ds.mean, train_ds.std

  # Probe data: fit on train[:50k] / score on train[50k:] (val) or all / test.
  tr_img, tr_lab = train_ds.get(np.arange(len(train_ds)))
  if args.split == "val":
    fit_data = (tr_img[:args.fit_n], tr_lab[:args.fit_n])
    score_data = (tr_img[50000:], tr_lab[50000:])
  else:
    fit_data = (tr_img, tr_lab)
    score_data = test_ds.get(np.arange(len(test_ds)))

  reps = [r for r in args.reps.split(",") if r]
  bb = dict(config_lib.plain(config.model.backbone_kwargs))
  conv = config.model.backbone == "convnet"
  import jax.numpy as jnp
  # Conv nets: embed the whole last map once ("none"), then pool it on the host
  # exactly as ConvNet's final_pool would ("gap", "2x2" with PyTorch's bins).
  map_model = models.build_model(
      config.model.backbone, backbone_kwargs={**bb, "final_pool": "none"},
      projector=None, dtype=jnp.dtype(config.model.get("dtype", "float32"))) if conv else None
  map_fn = models.make_apply_fn(map_model, "rep") if conv else None
  rep_fn = models.make_apply_fn(model, "rep")
  proj_fn = models.make_apply_fn(model, "proj") if "proj" in reps else None
  model_pool = bb.get("final_pool", "2x2")

  def pooled(feats, rep):
    ch = int(bb.get("channels", (32, 64, 128))[-1])
    side = int(round((feats.shape[1] // ch) ** 0.5))
    m = feats.reshape(feats.shape[0], side, side, ch)
    if rep == "gap":
      return m.mean(axis=(1, 2))
    if rep == "2x2":
      a = models.adaptive_avg_matrix(side, 2)
      return np.einsum("ph,nhwc,qw->npqc", a, m, a).reshape(m.shape[0], -1)
    return feats

  def rep_features(variables):
    """{rep: (fit_x, fit_y, score_x, score_y)} for every probed representation."""
    ev_bs = int(config.eval.batch_size)
    out = {}
    def ext(fn):
      f = features.extract_features(fn, variables, fit_data, batch_size=ev_bs,
                                    mean=mean, std=std)
      s = features.extract_features(fn, variables, score_data, batch_size=ev_bs,
                                    mean=mean, std=std)
      return f[0], f[1], s[0], s[1]
    if conv and any(r in ("gap", "2x2", "none", "model") for r in reps):
      fx, fy, sx, sy = ext(map_fn)
      for rep in reps:
        if rep in ("gap", "2x2", "none", "model"):
          r = model_pool if rep == "model" else rep
          out[rep] = (pooled(fx, r), fy, pooled(sx, r), sy)
    for rep in reps:
      if rep == "model" and rep not in out:
        out[rep] = ext(rep_fn)
      if rep == "proj":
        out[rep] = ext(proj_fn)
    return out

  def probe_all(variables, *, knn):
    out = {}
    for rep, (fx, fy, sx, sy) in rep_features(variables).items():
      out[rep] = evaluate.evaluate_features(fx, fy, sx, sy, num_classes=num_classes,
                                            l2=float(config.eval.l2),
                                            steps=int(config.eval.steps),
                                            ks=(20,) if knn else ())
    return out

  evaluators = []
  if args.eval_every and not args.timing:
    def evaluator(step, variables):
      out = {f"val/{rep}/linear_top1": r["linear_top1"]
             for rep, r in probe_all(variables, knn=False).items()}
      print(f"  [eval step {step}] " + json.dumps(out), file=sys.stderr, flush=True)
      return out
    evaluators.append(evaluator)
    options = dataclasses.replace(options, eval_every=int(args.eval_every))

  options = dataclasses.replace(options, checkpoint_every=0, progress=False)
  t_fit = time.perf_counter()
  result = train.fit(model=model, dataset=train_ds, workdir=None, mesh=mesh,
                     evaluators=evaluators, options=options)
  fit_s = time.perf_counter() - t_fit
  hist = [h for h in result.history if "loss" in h]
  compile_s = next((h["compile_s"] for h in hist if "compile_s" in h), None)
  ips = [h["images_per_s"] for h in hist if "images_per_s" in h]
  ms_step = (1000.0 * config.batch_size / float(np.median(ips))) if ips else None
  steps_per_epoch = len(train_ds) // int(config.batch_size)
  row = {
      "tag": args.tag, "config": args.config or "default.py",
      "overrides": dict(overrides), "steps": result.step,
      "epochs": round(result.step / steps_per_epoch, 2),
      "batch_size": int(config.batch_size), "fit_s": round(fit_s, 1),
      "compile_s": compile_s and round(compile_s, 1),
      "ms_per_step": ms_step and round(ms_step, 1), "loadavg": _loadavg(),
      "final_loss": hist[-1]["loss"] if hist else None,
      "final": {k: hist[-1][k] for k in hist[-1] if k.startswith(("rep_", "proj_std", "probe_acc"))} if hist else {},
      "split": args.split,
  }
  if evaluators:
    row["curve"] = [h for h in result.history if any(k.startswith("val/") for k in h)]
  print(f"trained {result.step} steps in {fit_s:.1f}s (compile {compile_s}s, "
        f"{ms_step} ms/step median, load {_loadavg()})", file=sys.stderr, flush=True)
  if args.timing:
    row["timing_only"] = True
    _append(args.out, row)
    print(json.dumps(row))
    return 0

  cache = {}
  if os.path.exists(args.cache):
    with open(args.cache) as f:
      cache = json.load(f)
  arch = json.dumps([config.model.backbone, bb, list(config.model.projector or [])
                     if not isinstance(config.model.projector, str)
                     else config.model.projector, int(config.seed)], sort_keys=True)
  t_eval = time.perf_counter()
  row["probe"] = {}
  trained = probe_all(result.variables, knn=args.knn)
  others = {}
  if args.target:
    target = runs.target_of(config, result.state.ema_params)
    if target is None:
      raise SystemExit("--target: this run keeps no target network (set "
                       "--config.average_weights for objectives without one)")
  if args.calibrated or args.target:  # --target compares like for like with it
    others["trained_calibrated"] = probe_all(runs.target_variables(
        config, model, result.variables, result.variables["params"], train_ds),
        knn=args.knn)
  if args.target:
    others["target"] = probe_all(runs.target_variables(
        config, model, result.variables, target, train_ds), knn=args.knn)
  key = f"{arch}|{args.split}|{args.fit_n}|knn={args.knn}"
  if not args.no_baselines and not all(f"{key}|{r}" in cache for r in reps):
    rand = features.random_init_variables(
        model, jax.random.key(int(config.seed)), train_ds,
        num_batches=int(config.eval.calibration_batches))
    for rep, r in probe_all(rand, knn=args.knn).items():
      cache[f"{key}|{rep}"] = r
  for rep in reps:
    res = {"trained": trained[rep], **{k: v[rep] for k, v in others.items()}}
    if not args.no_baselines:
      res["random_init"] = cache[f"{key}|{rep}"]
    row["probe"][rep] = {k: {m: round(x, 2) for m, x in r.items()
                             if m in ("linear_top1", "knn20_top1")}
                         for k, r in res.items()}
    row["probe"][rep]["dim"] = res["trained"]["feature_dim"]
  if not args.no_baselines:
    key = f"raw|{args.split}|{args.fit_n}|knn={args.knn}"
    if key not in cache:
      f_x, f_y = features.raw_pixel_features(fit_data, mean=mean, std=std)
      s_x, s_y = features.raw_pixel_features(score_data, mean=mean, std=std)
      cache[key] = evaluate.evaluate_features(
          f_x, f_y, s_x, s_y, num_classes=num_classes, l2=float(config.eval.l2),
          steps=int(config.eval.steps), ks=(20,) if args.knn else ())
    row["raw_pixels"] = {m: round(x, 2) for m, x in cache[key].items()
                         if m in ("linear_top1", "knn20_top1")}
    with open(args.cache, "w") as f:
      json.dump(cache, f)
  row["eval_s"] = round(time.perf_counter() - t_eval, 1)
  row["total_s"] = round(time.perf_counter() - t_start, 1)
  _append(args.out, row)
  print(json.dumps(row))
  return 0


def table(path: str) -> str:
  """The rows of a results file as Markdown: one row per (run, representation)."""
  lines = ["| tag | overrides | split | steps | epochs | ms/step (load) | rep (dim) "
           "| trained | random init | raw pixels | margin |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for r in rows:
    if r.get("timing_only"):
      continue
    raw = r.get("raw_pixels", {}).get("linear_top1")
    ov = " ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
    for rep, p in r.get("probe", {}).items():
      tr = p["trained"]["linear_top1"]
      rnd = p.get("random_init", {}).get("linear_top1")
      margin = (tr - max(rnd, raw)) if rnd is not None and raw is not None else None
      knn = p["trained"].get("knn20_top1")
      tr_s = f"{tr:.2f}" + (f" (kNN {knn:.2f})" if knn is not None else "")
      lines.append(
          f"| {r['tag']} | {ov} | {r['split']} | {r['steps']} | {r['epochs']} | "
          f"{r['ms_per_step']} ({r['loadavg'].split()[0]}) | {rep} ({p['dim']}) | "
          f"{tr_s} | {rnd} | {raw} | "
          f"{'' if margin is None else f'{margin:+.2f}'} |")
  return "\n".join(lines)


def _append(path, row):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  sys.exit(main())
