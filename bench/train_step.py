"""Images/s of one VICReg training step: sslit (JAX) against PyTorch, same run.

The step, identical on both sides: two views of a float batch ([b, H, W, C]; the
second view is the horizontal flip of the first, so no augmentation cost is
measured), backbone + projector in training mode (BatchNorm batch statistics)
on each view, VICReg 25/25/1, gradients, AdamW (lr 1e-3, weight decay 1e-4).
float32 unless ``--dtype bfloat16``. Models:

- ``convnet``: the default model of ``sslit train`` (ConvNet 16-32-64, 2x2
  average pooling, last map pooled to 2x2 bins, projector 1024-1024), 28x28x1.
- ``mlp``: MLP 784-1024-1024-512 with a 1024-1024 projector, 28x28x1.
- ``resnet18``: ResNet-18 with the CIFAR stem, projector 1024-1024, 32x32x3.
- ``resnet50``: ResNet-50 (bottlenecks, torchvision v1.5) with the ImageNet stem,
  projector 1024-1024, 224x224x3: the ImageNet-shaped step.

sslit is timed through ``sslit.train.make_train_step`` (jitted, state donated;
online probe and statistics off), compiled with ``sslit.parallel.
step_compiler_options`` as ``sslit.train.fit`` does. Images/s counts one image per
example (both views are included in the step).

CPU (default): sslit on one device and on two virtual CPU devices (data parallel
over a ``"data"`` mesh), and on one device compiled with XLA's default library
fusions (the row "XLA default": what the step options change); PyTorch with 2
intra-op threads; median of per-step times. ``--dtype bfloat16`` on CPU: PyTorch
autocast(bfloat16) on the CPU against sslit's bfloat16 compute dtype.

GPU (``--platform gpu``): both on the first CUDA device; time of ``--iters``
back-to-back steps ended by one synchronisation. ``--dtype bfloat16``: sslit with a
bfloat16 compute dtype (parameters float32) against PyTorch autocast(bfloat16) with
channels-last tensors. Extra sslit rows: the step with the "vicreg" augmentation
preset applied on device to uint8 images (the real per-epoch cost,
50,000 / images/s), and model FLOP utilisation (MFU) from XLA's cost analysis of
the compiled flip-view step over ``--peak_tflops`` (default: H100 SXM dense,
989 for bfloat16, 495 for float32, which XLA and cuDNN run as TF32).

``--rounds R`` repeats every row R times in turn (torch, then each sslit variant, then
again) and reports the median over the rounds: on a machine whose speed drifts this
is the fairer comparison.

Usage: ``python bench/train_step.py [--quick] [--rounds R] [--models convnet,mlp,resnet18]``;
``python bench/train_step.py --platform gpu --models resnet18 --batch 512
--dtype bfloat16``; the ImageNet-shaped step against PyTorch eager and
``torch.compile``: ``python bench/train_step.py --platform gpu --models resnet50
--batch 256 --dtype bfloat16 --torch_compile`` (on a CPU, ``--models resnet50``
uses batch 8). ``--profile DIR`` also traces 5 of sslit's steps per model
(``jax.profiler``, Perfetto format, under ``DIR/<model>``) and prints the 15 ops that
took the most time, on the accelerator's streams (or XLA:CPU's ops on a CPU): what a
profile shows before anything is changed. On a GPU those are the kernels' own times;
on a CPU XLA runs some ops (convolutions) asynchronously, so an op's time there may
include waiting for an earlier one: read the CPU list as a rough guide only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small batches, few iterations")
  p.add_argument("--models", default="convnet,mlp,resnet18")
  p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--batch", type=int, default=None, help="batch size for every model")
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--rounds", type=int, default=1,
                 help="interleaved rounds per model (each row: median over rounds)")
  p.add_argument("--torch_compile", action="store_true",
                 help="also time the PyTorch step under torch.compile (GPU)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="device peak for MFU (GPU); default H100 SXM dense")
  p.add_argument("--profile", default="",
                 help="also trace 5 steps of sslit's (flip-view) step per model into "
                      "this directory and print the ops that took the most time")
  return p.parse_args(argv)


if __name__ == "__main__" and _parse().platform == "cpu":
  os.environ["XLA_FLAGS"] = " ".join(
      [f for f in os.environ.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")] +
      ["--xla_force_host_platform_device_count=2"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sslit import augment, models, objectives, parallel, train  # noqa: E402

try:
  from jax.extend.core import jaxprs_in_params as _jaxprs_in_params  # noqa: E402
except ImportError:  # older jax
  _jaxprs_in_params = jax.core.jaxprs_in_params

PROJ = (1024, 1024)
SPECS = {
    "convnet": dict(backbone="convnet", kwargs={"channels": (16, 32, 64)}, shape=(28, 28, 1)),
    "mlp": dict(backbone="mlp", kwargs={"widths": (1024, 1024, 512)}, shape=(28, 28, 1)),
    "resnet18": dict(backbone="resnet18", kwargs={}, shape=(32, 32, 3)),
    "resnet50": dict(backbone="resnet50", kwargs={}, shape=(224, 224, 3)),
}


def _flip_views(key, images):
  del key
  return images, images[:, :, ::-1, :]


def _vicreg_views(image_size):
  cfg_a, cfg_b = augment.preset("vicreg", image_size=image_size)
  return lambda key, images: augment.two_views(key, images, cfg_a, cfg_b)


def _jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs (2 per multiply-add) of a closed jaxpr, recursively.

  The usual "model FLOPs" of MFU: independent of the XLA version and of the backend's
  fusions (after GPU compilation convolutions are cuDNN calls that XLA's own cost
  analysis may not count).
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in lc])
    elif eqn.primitive.name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec
      # lhs dilation (the input gradient of a strided conv) multiplies inserted zeros:
      # those are not model FLOPs.
      total += (2.0 * np.prod(eqn.outvars[0].aval.shape) * rhs[rhs_spec[1]]
                * np.prod([rhs[i] for i in rhs_spec[2:]])
                / np.prod(eqn.params["lhs_dilation"] or (1,)))
    elif eqn.primitive.name == "cond":  # the step's statistics branch is off: count
      total += _jaxpr_flops(eqn.params["branches"][0].jaxpr)  # the false branch only
      continue
    for sub in _jaxprs_in_params(eqn.params):
      total += _jaxpr_flops(sub)
  return total


def _time(run, iters: int, per_step: bool) -> float:
  """Seconds per step: median of synchronised steps, or mean of back-to-back ones."""
  if per_step:
    times = []
    for _ in range(iters):
      t = time.perf_counter()
      run(1)
      times.append(time.perf_counter() - t)
    return float(np.median(times))
  t = time.perf_counter()
  run(iters)
  return (time.perf_counter() - t) / iters


def top_ops(trace_dir: str, n: int = 15) -> list[tuple[str, float, float]]:
  """``(op, milliseconds, share)`` of the ``n`` ops that took the most time in a trace.

  Reads the Perfetto trace that ``jax.profiler.trace(..., create_perfetto_trace=True)``
  wrote under ``trace_dir``: the events of the accelerator's streams when there are
  any, else the host's XLA:CPU ops (Python frames and runtime calls left out). The
  share is of the total over the events kept.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {p for p, name in names.items() if name.startswith("/device:")}
  runtime = ("$", "end: ", "PjitFunction")
  totals = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    if device:
      if e.get("pid") not in device:
        continue
    elif e["name"].startswith(runtime) or "::" in e["name"]:
      continue
    totals[e["name"]] += float(e.get("dur", 0.0)) / 1e3
  whole = sum(totals.values()) or 1.0
  return [(op, ms, ms / whole) for op, ms in totals.most_common(n)]


def bench_jax(name: str, batch: int, iters: int, devices, *, dtype=jnp.float32,
              augmented: bool = False, per_step: bool = True,
              compiler_options: dict | None = None,
              profile_dir: str = "") -> tuple[float, float]:
  """(seconds per step, XLA flops per step) of sslit's step; ``profile_dir``: also
  trace 5 more steps there (``jax.profiler``, with a Perfetto trace)."""
  spec = SPECS[name]
  model = models.build_model(spec["backbone"], backbone_kwargs=spec["kwargs"],
                             projector=PROJ, dtype=dtype)
  mesh = parallel.make_mesh(devices)
  rng = np.random.default_rng(0)
  if augmented:
    x = rng.integers(0, 256, (batch, *spec["shape"]), dtype=np.uint8)
    augment_fn = _vicreg_views(spec["shape"][0])
  else:
    x = rng.random((batch, *spec["shape"]), np.float32)
    augment_fn = _flip_views
  v = models.init_variables(model, jax.random.key(0),
                            jnp.zeros((2, *spec["shape"]), jnp.float32))
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
      opt_state=tx.init(v["params"]), ema_params={}, probe_params={}, probe_opt_state={},
      key=jax.random.key(0))
  state = parallel.replicate(state, mesh)
  step = train.make_train_step(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
      objectives.get_objective("vicreg").fn, tx, augment_fn=augment_fn,
      stats_every=10**9)
  b = parallel.shard_batch({"image": x, "label": np.zeros(batch, np.int32)}, mesh)
  flops = _jaxpr_flops(jax.make_jaxpr(step)(state, b).jaxpr)
  if compiler_options is None:  # what sslit.train.fit uses
    compiler_options = parallel.step_compiler_options(mesh)
  step = jax.jit(step, donate_argnums=0).lower(state, b).compile(
      compiler_options=compiler_options)
  box = [state]

  def run(k):
    for _ in range(k):
      box[0], m = step(box[0], b)
    jax.block_until_ready(m["loss"])

  run(3)  # compile + warm-up
  seconds = _time(run, iters, per_step)
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      run(5)
  return seconds, flops


def bench_torch(name: str, batch: int, iters: int, *, gpu: bool = False,
                bf16: bool = False, compile_step: bool = False) -> float:
  """Seconds per step of the same step in PyTorch (CPU: 2 threads; GPU: cuda:0)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  if gpu:
    torch.backends.cudnn.benchmark = True
  else:
    torch.set_num_threads(2)
  torch.manual_seed(0)
  dev = torch.device("cuda" if gpu else "cpu")
  fmt = torch.channels_last if bf16 else torch.contiguous_format
  spec = SPECS[name]

  def projector(d):
    return nn.Sequential(nn.Linear(d, PROJ[0]), nn.BatchNorm1d(PROJ[0]), nn.ReLU(),
                         nn.Linear(PROJ[0], PROJ[1]))

  if name == "convnet":
    layers, c_in = [], 1
    for i, c in enumerate((16, 32, 64)):
      if i:
        layers.append(nn.AvgPool2d(2))
      layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
      c_in = c
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    net = nn.Sequential(*layers, projector(4 * 64))
  elif name == "mlp":
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                        nn.ReLU(), nn.Linear(1024, 512), projector(512))
  else:
    class Block(nn.Module):
      """Basic block (two 3x3), or bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

      def __init__(self, cin, width, stride, bottleneck):
        super().__init__()
        cout = 4 * width if bottleneck else width
        if bottleneck:
          convs = [nn.Conv2d(cin, width, 1, bias=False),
                   nn.Conv2d(width, width, 3, stride, 1, bias=False),
                   nn.Conv2d(width, cout, 1, bias=False)]
        else:
          convs = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                   nn.Conv2d(cout, cout, 3, 1, 1, bias=False)]
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c.out_channels) for c in convs)
        self.down = None
        if stride != 1 or cin != cout:
          self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

      def forward(self, x):
        y = x
        for k, (conv, bn) in enumerate(zip(self.convs, self.bns)):
          y = bn(conv(y))
          y = torch.relu(y) if k < len(self.convs) - 1 else y
        return torch.relu(y + (x if self.down is None else self.down(x)))

    bottleneck = name == "resnet50"
    if bottleneck:  # the ImageNet stem
      layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1)]
    else:  # the CIFAR stem
      layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, (width, blocks) in enumerate(zip((64, 128, 256, 512),
                                            (3, 4, 6, 3) if bottleneck else (2,) * 4)):
      for j in range(blocks):
        layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1, bottleneck))
        cin = 4 * width if bottleneck else width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(*layers, projector(cin))

  def vicreg(za, zb):
    n, d = za.shape
    inv = torch.nn.functional.mse_loss(za, zb)
    za = za - za.mean(0)
    zb = zb - zb.mean(0)
    std_a = torch.sqrt(za.var(0) + 1e-4)
    std_b = torch.sqrt(zb.var(0) + 1e-4)
    var = torch.mean(torch.relu(1 - std_a)) / 2 + torch.mean(torch.relu(1 - std_b)) / 2
    ca = za.T @ za / (n - 1)
    cb = zb.T @ zb / (n - 1)
    off = lambda c: (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return 25 * inv + 25 * var + off(ca) + off(cb)

  net = net.to(dev, memory_format=fmt)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
  x = torch.rand(batch, spec["shape"][2], spec["shape"][0], spec["shape"][1], device=dev)
  x = x.contiguous(memory_format=fmt)
  net.train()

  def forward(v):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      return net(v).float()  # the objective in float32, as sslit's

  def step():
    opt.zero_grad(set_to_none=True)
    loss = vicreg(forward(x), forward(torch.flip(x, dims=[3])))
    loss.backward()
    opt.step()
    return loss

  if compile_step:
    step = torch.compile(step)

  def run(k):
    for _ in range(k):
      loss = step()
    if gpu:
      torch.cuda.synchronize()
    return loss

  run(3)
  return _time(run, iters, per_step=not gpu)


PEAK_TFLOPS = {"bfloat16": 989.0, "float32": 495.0}  # H100 SXM dense (TF32 for float32)


def main(argv=None) -> int:
  args = _parse(argv)
  gpu = args.platform == "gpu"
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  bf16 = args.dtype == "bfloat16"
  sizes = {"convnet": 256, "mlp": 256, "resnet18": 128, "resnet50": 8}
  iters = 10
  if args.quick:
    sizes = {"convnet": 256, "mlp": 256, "resnet18": 32, "resnet50": 2}
    iters = 3
  if gpu:
    sizes = {"convnet": 512, "mlp": 512, "resnet18": 512, "resnet50": 256}
    iters = 50
  if args.batch:
    sizes = {k: args.batch for k in sizes}
  iters = args.iters or iters
  peak = args.peak_tflops or PEAK_TFLOPS[args.dtype]
  print(f"jax {jax.__version__}, devices {jax.devices()}, cpu count {os.cpu_count()}, "
        f"dtype {args.dtype}, {iters} steps, {args.rounds} round(s)")
  print(f"{'model':9s} {'batch':>5s} {'impl':22s} {'ms/step':>9s} {'img/s':>8s} "
        f"{'vs torch':>8s} {'epoch 50k':>9s} {'TFLOP/s':>8s} {'MFU':>6s}")
  for name in args.models.split(","):
    b = sizes[name]
    profile = os.path.join(args.profile, name) if args.profile else ""
    runs = [("torch" + (" (cuda)" if gpu else " (2 thr)"),
             lambda: (bench_torch(name, b, iters, gpu=gpu, bf16=bf16), float("nan")))]
    if args.torch_compile:
      runs.append(("torch.compile", lambda: (bench_torch(
          name, b, iters, gpu=gpu, bf16=bf16, compile_step=True), float("nan"))))
    if gpu:
      dev = jax.devices()[:1]
      runs.append(("sslit", lambda: bench_jax(name, b, iters, dev, dtype=dtype,
                                              per_step=False, profile_dir=profile)))
      runs.append(("sslit + vicreg augment", lambda: bench_jax(
          name, b, iters, dev, dtype=dtype, augmented=True, per_step=False)))
    else:
      one, two = jax.devices()[:1], jax.devices()[:2]
      runs.append(("sslit 1 dev, XLA default", lambda: bench_jax(
          name, b, iters, one, dtype=dtype, compiler_options={})))
      runs.append(("sslit 1 dev", lambda: bench_jax(name, b, iters, one, dtype=dtype,
                                                    profile_dir=profile)))
      # last: a two-device program slowed the one-device step timed right after it
      runs.append(("sslit 2 dev", lambda: bench_jax(name, b, iters, two, dtype=dtype)))
    # --rounds: every implementation once per round, in turn, so that a slow spell of
    # the machine hits all of them; each row is the median over the rounds.
    times = {impl: [] for impl, _ in runs}
    flops_of = {}
    for _ in range(args.rounds):
      for impl, run in runs:
        t, f = run()
        times[impl].append(t)
        flops_of[impl] = f
    rows = [(impl, float(np.median(times[impl])), flops_of[impl]) for impl, _ in runs]
    t_torch = rows[0][1]
    # the flip-view step's FLOPs (the same math for PyTorch)
    model_flops = next(f for impl, _, f in rows if impl in ("sslit", "sslit 1 dev"))
    for impl, t, flops in rows:
      flops = model_flops if impl.startswith("torch") else flops
      tflops = flops / t / 1e12
      mfu = f"{100 * tflops / peak:5.1f}%" if gpu and flops == flops else "-"
      print(f"{name:9s} {b:5d} {impl:22s} {1e3 * t:9.2f} {b / t:8.0f} "
            f"{t_torch / t:7.2f}x {5e4 * t / b:8.2f}s {tflops:8.2f} {mfu:>6s}",
            flush=True)
    if profile:
      print(f"  profile of 5 sslit steps ({profile}; the last round's), most time first:")
      for op, ms, share in top_ops(profile):
        print(f"  {ms / 5:10.2f} ms/step {100 * share:5.1f}%  {op}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
