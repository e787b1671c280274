"""One pass for both views, or one pass per view? F9's step, three ways.

The training step of F9, the main job of 2026-12-06 (``sslit train`` then: ConvNet
16-32-64, 2x2 bins, 1024-1024 projector, VICReg with variance weight 100, batch 128,
28x28 views; today's main job differs in its projector and views) runs each view
through the network on its own (``views_in_one_pass=False``), so that each view's
BatchNorm normalises with its own batch statistics, as in VICReg's code. Two
alternatives do the same arithmetic in fewer, larger programs:

* ``concat``: both views in one application of batch 256 (``views_in_one_pass=True``
  of the config; BatchNorm statistics over both views, a different loss);
* ``vmap``: both views in one application through ``jax.vmap`` over the view axis,
  BatchNorm statistics per view (the same loss as view after view, to float32
  rounding; the vmapped convolutions become one of batch 256).

The peer is view after view. Each variant is the jitted value and gradient of the
VICReg loss with respect to the parameters (augmentation and optimiser update are
the same in all three and left out); rounds alternate the variants so that a
drifting machine affects them alike. Prints the median ms of each and its ratio to
view after view, and the largest relative gradient difference of ``vmap``.

``--parts`` adds where the step's time goes, view after view: the backbone alone
(value and gradient of the sum of squares of the representation; the projector and
the loss then cost the rest), its forward pass alone, and the two augmented views of
the "simclr" preset (batch 128, uint8 images).

Usage: ``python bench/view_passes.py [--rounds 5] [--iters 20] [--parts]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sslit import augment, runs
from sslit.configs import default
from sslit.objectives import vicreg_loss

PASSES = ("view after view", "concat", "vmap")


def make_variants(batch: int = 128, seed: int = 0, parts: bool = False):
  """``(params, {name: jitted function of the parameters})``, F9's model."""
  config = default.get_config()
  config.model.projector = (1024, 1024)  # F9's (the views below are 28x28 as well)
  model = runs.build_model(config)
  std = float(config.objective_kwargs["std_coeff"])
  x = jnp.asarray(np.random.RandomState(seed).randn(2, batch, 28, 28, 1), jnp.float32)
  variables = model.init(jax.random.key(seed), x[0], train=False)
  params, stats = variables["params"], variables["batch_stats"]

  def apply(p, s, xi):
    out, mut = model.apply({"params": p, "batch_stats": s}, xi, train=True,
                           mutable=["batch_stats"])
    return out["proj"], mut["batch_stats"]

  def sequential(p):
    z_a, s1 = apply(p, stats, x[0])
    z_b, _ = apply(p, s1, x[1])
    return vicreg_loss(z_a, z_b, std_coeff=std)[0]

  def concat(p):
    z, _ = apply(p, stats, x.reshape((2 * batch,) + x.shape[2:]))
    return vicreg_loss(z[:batch], z[batch:], std_coeff=std)[0]

  def vmapped(p):
    z, _ = jax.vmap(apply, in_axes=(None, None, 0))(p, stats, x)
    return vicreg_loss(z[0], z[1], std_coeff=std)[0]

  fns = dict(zip(PASSES, (sequential, concat, vmapped)))
  fns = {k: jax.jit(jax.value_and_grad(f)) for k, f in fns.items()}
  if parts:
    def rep(p, xi):
      return model.apply({"params": p, "batch_stats": stats}, xi, train=True,
                         mutable=["batch_stats"])[0]["rep"]

    def backbone(p):
      return jnp.sum(rep(p, x[0]) ** 2) + jnp.sum(rep(p, x[1]) ** 2)

    images = jnp.asarray(np.random.RandomState(seed).randint(0, 256, (batch, 28, 28, 1)),
                         jnp.uint8)
    view_a, view_b = augment.preset("simclr", image_size=28)
    views = jax.jit(lambda key: augment.two_views(key, images, view_a, view_b))
    fns["backbone only"] = jax.jit(jax.value_and_grad(backbone))
    fns["backbone forward"] = jax.jit(lambda p: (rep(p, x[0]), rep(p, x[1])))
    fns["augmentation"] = lambda p: views(jax.random.key(seed + 1))
  return params, fns


def max_relative_difference(a, b) -> float:
  diffs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v)) /
                                          (jnp.max(jnp.abs(u)) + 1e-30)), a, b)
  return max(jax.tree.leaves(diffs))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--parts", action="store_true",
                      help="also time the backbone, its forward pass, the augmentation")
  args = parser.parse_args()
  params, fns = make_variants(parts=args.parts)
  first = {k: jax.block_until_ready(f(params)) for k, f in fns.items()}
  ref = first["view after view"]
  print(f"loss: {float(ref[0]):.6f} (view after view), "
        f"{float(first['vmap'][0]):.6f} (vmap); largest relative gradient "
        f"difference of vmap: {max_relative_difference(ref[1], first['vmap'][1]):.1e}")
  times = {k: [] for k in fns}
  for _ in range(args.rounds):
    for k, f in fns.items():
      t0 = time.perf_counter()
      for _ in range(args.iters):
        out = f(params)
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / args.iters * 1e3)
  base = statistics.median(times["view after view"])
  for k, ts in times.items():
    med = statistics.median(ts)
    versus = (f"{base / med:.2f}x the speed of view after view" if k in PASSES else
              f"{100 * med / base:.0f} % of the time of view after view")
    print(f"{k:16s} {med:7.1f} ms  ({versus}; rounds {min(ts):.1f}-{max(ts):.1f})")


if __name__ == "__main__":
  main()
