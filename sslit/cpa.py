"""Networks as continuous piecewise-affine (CPA) maps: slopes, regions, noise model.

A network built from affine layers and ReLU, leaky-ReLU, absolute value or max-pool
non-linearities (BatchNorm in eval mode) is a CPA spline: the input space is split
into regions ω and on each region ``f(x) = A_ω x + b_ω``. This module computes the
per-sample slope ``A(x) = ∂f/∂x`` and offset ``b(x) = f(x) − A(x) x``, the exact
region of a point (the activation pattern recorded by the network), distances to
region boundaries, and the Gaussian-mixture picture of SPEC §2: with input noise
``x ~ N(x_n, σ² I)`` that stays inside the region of ``x_n``,
``z | n ~ N(f(x_n), σ² A_n A_nᵀ)``. Smooth activations (GELU, tanh, ...) go through the
same code, where the slope is the first-order (Taylor) approximation.

Conventions: ``fn`` maps ONE input (any shape, flattened to ``d`` in C order) to a
1-D output ``[k]``; ``x`` is a batch ``[n, ...]``. ``pre_fn`` maps one input to the
pre-activations that decide its region: a pytree whose floating leaves are the inputs
of ReLU / leaky-ReLU / abs (their sign is the pattern) and whose integer leaves are
max-pool argmax indices; it may also return a pair ``(z, pre)`` with ``pre`` a
mapping (the form of ``sslit.models.preactivation_fn``). Entropies are in nats.

The mixture math is in ``sslit.mixture`` (its ``output_covariance``,
``conditional_entropy`` and ``separation_ratio`` are re-exported here;
``representation_information`` computes the slope statistics here and hands them to
``mixture.information_from_slopes``). This module imports only jax, numpy, scipy
(host-side, normality tests), ``sslit.mixture``, ``sslit._validate`` and
``sslit.parallel`` (per-device work and one-matrix-at-a-time LAPACK calls).
Calls on a batch-sharded ``x`` give the single-device result; ``jacobian`` and
``representation_information`` take an optional ``mesh`` to work per device.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate
from sslit import mixture
from sslit import parallel
from sslit.mixture import (ConditionalEntropy, conditional_entropy,  # noqa: F401
                           output_covariance, separation_ratio)

Array = jax.Array

_MODES = ("fwd", "rev", "auto")
_ACTIVATIONS = ("relu", "leaky_relu", "abs", "linear")


# ----------------------------------------------------------------------------
# Checks and plumbing.


def _check_x(x: Any, name: str = "x") -> None:
  shape = _validate.shape_of(x)
  if len(shape) < 2:
    raise ValueError(
        f"{name} must be a batch [n, ...] of rank >= 2 (a leading batch axis and the "
        f"input's own axes), got shape {shape}; for one input use {name}[None].")
  _validate.check_float(x, name)
  if shape[0] < 1:
    raise ValueError(f"{name} has an empty batch axis, got shape {shape}.")


def _check_chunk_size(chunk_size: Any) -> None:
  if chunk_size is not None:
    _validate.check_count(chunk_size, "chunk_size", minimum=1)


def _output_shape(fn: Callable, x: Any, name: str = "fn") -> tuple[int, ...]:
  """Static output shape of ``fn`` on one input; checks that it is ``[k]``."""
  item = jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
  out = jax.eval_shape(fn, item)
  if not hasattr(out, "shape"):
    raise ValueError(
        f"{name} must map one input of shape {item.shape} to a single 1-D array "
        f"[k], got a {type(out).__name__} {jax.tree.map(lambda a: a.shape, out)}.")
  if len(out.shape) != 1:
    raise ValueError(
        f"{name} must map one input of shape {item.shape} to a 1-D output [k], got "
        f"output shape {tuple(out.shape)}; flatten or select the output first.")
  return tuple(out.shape)


def _is_tracing(tree: Any) -> bool:
  """True inside a transformation (the caller's jit/vmap/grad) or for traced args."""
  if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(tree)):
    return True
  # Also inside the caller's jit when x is concrete (fn may close over its tracers):
  # there every new array, a constant included, is a tracer.
  return isinstance(jnp.zeros(()), jax.core.Tracer)


# Compiled programs per user fn, keyed on the printed jaxpr: each call builds a new
# ``body`` closure, so ``jax.jit(body)``'s cache (keyed on the function object) and a
# static-jaxpr ``jit`` (a ``Jaxpr`` hashes by identity) would recompile every time;
# jitting ``fn`` itself would make its parameters compile-time constants. The text
# names every primitive, parameter, shape and dtype: equal text, equal program of
# (consts, args). Entries die with ``fn`` (weak keys), at most 16 each.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict[str, Callable]]" = (
    weakref.WeakKeyDictionary())


def _jit_call(body: Callable, *args: Any, owner: Any = None) -> Any:
  """``body(*args)`` compiled as one program, with closed-over arrays as arguments.

  Inside a trace (the caller's ``jit``) it is inlined. Otherwise the body is traced
  to a jaxpr and that jaxpr is jitted with its constants (e.g. the parameters ``fn``
  closes over) passed as arguments, so compile time does not grow with the parameter
  count and no eager op copies a large result. Compiled programs are reused while
  ``owner`` (the user's ``fn``) is alive and traces to the same jaxpr.
  """
  if _is_tracing(args):
    return body(*args)
  closed, out_shape = jax.make_jaxpr(body, return_shape=True)(*args)
  try:
    per_owner = _COMPILED.setdefault(owner, {}) if owner is not None else None
  except TypeError:  # not weak-referenceable: no reuse
    per_owner = None
  text = str(closed.jaxpr) if per_owner is not None else ""
  run = per_owner.get(text) if per_owner is not None else None
  if run is None:
    run = jax.jit(functools.partial(jax.core.eval_jaxpr, closed.jaxpr))
    if per_owner is not None:
      if len(per_owner) >= 16:
        per_owner.clear()
      per_owner[text] = run
  flat_out = run(closed.consts, *jax.tree.leaves(args))
  return jax.tree.unflatten(jax.tree.structure(out_shape), flat_out)


def _map(f: Callable, xs: Any, chunk_size: int | None) -> Any:
  """``vmap(f)(xs)``, or in chunks of ``chunk_size`` written in place (``_map_batched``)."""
  return _map_batched(jax.vmap(f), xs, chunk_size)


def _flat_fn(fn: Callable, item_shape: tuple[int, ...]) -> Callable:
  def g(v):
    return fn(v.reshape(item_shape))
  return g


def _split_pre(out: Any) -> Any:
  """The pre-activation pytree from ``pre_fn``'s output (``pre`` or ``(z, pre)``)."""
  if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)
      and hasattr(out[0], "shape")):
    return out[1]
  return out


def _pre_leaves(pre_fn: Callable, x_one: Array) -> tuple[list[Array], list[Array]]:
  """Floating (sign) leaves and integer (argmax) leaves of one input's pattern."""
  leaves = jax.tree.leaves(_split_pre(pre_fn(x_one)))
  floats = [l for l in leaves if jnp.issubdtype(l.dtype, jnp.floating)]
  ints = [l for l in leaves if not jnp.issubdtype(l.dtype, jnp.floating)]
  return floats, ints


def _check_pre_fn(pre_fn: Callable, x: Any) -> None:
  item = jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
  out = jax.eval_shape(lambda v: _split_pre(pre_fn(v)), item)
  leaves = jax.tree.leaves(out)
  if not leaves:
    raise ValueError(
        "pre_fn returned no arrays; it must return the pre-activations of one input "
        "(a pytree of arrays, or a pair (z, pre) with pre a dict).")


# ----------------------------------------------------------------------------
# Slopes and offsets.


def jacobian(fn: Callable[[Array], Array], x: Array, *, mode: str = "fwd",
             chunk_size: int | None = None, mesh: Any = None) -> Array:
  """Exact per-sample slopes ``A(x_i) = ∂fn/∂x (x_i)``.

  ``A[i] = J_fn(x_i)`` with ``x_i`` flattened in C order, so that
  ``fn(x_i + δ) ≈ fn(x_i) + A[i] @ δ.ravel()`` (exact inside the CPA region of a
  ReLU / leaky-ReLU / abs / max-pool network; first order for smooth activations).

  Cost: ``mode="fwd"`` (``jax.jacfwd``, the default) pushes ``d`` tangents through the
  network, ``"rev"`` (``jax.jacrev``) pulls ``k`` cotangents back; ``"auto"`` uses
  reverse mode when ``k < d``. Memory: the result is ``n·k·d`` floats plus, per
  chunk, ``chunk_size`` times one sample's tangents.

  Args:
    fn: function of ONE input ``x[i]`` (shape ``x.shape[1:]``) returning ``[k]``,
      e.g. ``functools.partial(apply_fn, params)`` in eval mode.
    x: batch ``[n, ...]``, floating.
    mode: ``"fwd"`` | ``"rev"`` | ``"auto"``.
    chunk_size: if set, the batch is processed ``chunk_size`` samples at a time
      (a loop writing into the result in place), so the tangents of all samples
      never coexist.
    mesh: optional ``jax.sharding.Mesh``: each device computes the slopes of its
      own shard of the batch (``shard_map`` over all mesh axes; ``n`` divisible by
      the mesh size), in chunks of ``chunk_size``. Without it a sharded ``x`` still
      gives the same result, partitioned as the compiler sees fit.

  Returns:
    ``[n, k, d]`` slopes, ``d = prod(x.shape[1:])``, dtype of ``fn``'s output.
  """
  _check_x(x)
  _validate.check_choice(mode, _MODES, "mode")
  _check_chunk_size(chunk_size)
  (k,) = _output_shape(fn, x)
  d = math.prod(x.shape[1:])
  if mode == "auto":
    mode = "rev" if k < d else "fwd"
  g = _flat_fn(fn, tuple(x.shape[1:]))
  jac = jax.jacfwd(g) if mode == "fwd" else jax.jacrev(g)

  def local(x):
    return _map(jac, x.reshape(x.shape[0], d), chunk_size)

  return _jit_call(lambda x: parallel.shard_rows(local, mesh, x, name="x"), x,
                   owner=fn)


def local_affine(fn: Callable[[Array], Array], x: Array, *, mode: str = "fwd",
                 chunk_size: int | None = None) -> tuple[Array, Array]:
  """Per-sample affine map ``(A, b)`` with ``fn(x') = A x' + b`` on x's region.

  ``A = ∂fn/∂x (x)`` (see ``jacobian``) and ``b = fn(x) − A x`` (``x`` flattened).
  For a CPA network the identity holds exactly for every ``x'`` with the same
  activation pattern as ``x``; for smooth activations it is the tangent plane.

  Args:
    fn: function of one input to ``[k]``.
    x: batch ``[n, ...]``.
    mode: as in ``jacobian``.
    chunk_size: as in ``jacobian``.

  Returns:
    ``(A [n, k, d], b [n, k])``.
  """
  _check_x(x)
  _validate.check_choice(mode, _MODES, "mode")
  _check_chunk_size(chunk_size)
  _output_shape(fn, x)
  a = jacobian(fn, x, mode=mode, chunk_size=chunk_size)
  n, d = x.shape[0], math.prod(x.shape[1:])

  def body(x, a):
    z = _map(fn, x, chunk_size)
    return z - jnp.einsum("nkd,nd->nk", a, x.reshape(n, d).astype(a.dtype))

  return a, _jit_call(body, x, a, owner=fn)


def _chain_order(dims: Sequence[int]) -> dict[tuple[int, int], int]:
  """Matrix-chain split points for factors ``F_i`` of shape ``[dims[i], dims[i+1]]``."""
  m = len(dims) - 1
  cost = {(i, i): 0 for i in range(m)}
  split = {}
  for length in range(2, m + 1):
    for i in range(m - length + 1):
      j = i + length - 1
      best = None
      for s in range(i, j):
        c = cost[(i, s)] + cost[(s + 1, j)] + dims[i] * dims[s + 1] * dims[j + 1]
        if best is None or c < best:
          best, split[(i, j)] = c, s
      cost[(i, j)] = best
  return split


def _slope_of(h: Array, activation: str, negative_slope: float) -> Array:
  if activation == "relu":
    return (h > 0).astype(h.dtype)
  if activation == "leaky_relu":
    return jnp.where(h > 0, 1.0, negative_slope).astype(h.dtype)
  if activation == "abs":
    return jnp.sign(h)
  return jnp.ones_like(h)


def _act(h: Array, activation: str, negative_slope: float) -> Array:
  if activation == "relu":
    return jax.nn.relu(h)
  if activation == "leaky_relu":
    return jnp.where(h > 0, h, negative_slope * h)
  if activation == "abs":
    return jnp.abs(h)
  return h


def _map_batched(f: Callable, xs: Any, chunk_size: int | None) -> Any:
  """``f`` on the whole batch (axis 0 of every leaf of ``xs``), or on chunks.

  Chunks are computed in a loop and written into a preallocated result with
  ``dynamic_update_slice`` (in place in XLA), so the peak is the result plus one
  chunk's work; the last chunk is shifted back to end at ``n`` (a few samples are
  recomputed) instead of padding or concatenating, which would copy the result.
  ``f`` takes a whole chunk, so a chunk-level ``lax.cond`` stays a real branch.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None or chunk_size >= n:
    return f(xs)
  num = -(-n // chunk_size)
  shapes = jax.eval_shape(f, jax.tree.map(lambda a: a[:chunk_size], xs))
  init = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1:], s.dtype), shapes)

  def step(i, out):
    start = jnp.minimum(i * chunk_size, n - chunk_size)
    chunk = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk_size), xs)
    return jax.tree.map(
        lambda o, y: jax.lax.dynamic_update_slice_in_dim(o, y, start, 0), out,
        f(chunk))

  return jax.lax.fori_loop(0, num, step, init)


def mlp_jacobian(layers: Sequence[tuple[Array, Array]], x: Array, *,
                 activation: str = "relu", negative_slope: float = 0.01,
                 capacity: float | None = None,
                 chunk_size: int | None = None) -> Array:
  """Slopes of a dense MLP as the product of masked weight matrices (fast path).

  For ``h_l = a(h_{l-1} W_l + b_l)`` (``a`` after every layer but the last) the
  slope at ``x`` is exactly ``A = W_Lᵀ D_{L-1} W_{L-1}ᵀ ··· D_1 W_1ᵀ``, with ``D_l``
  the diagonal of ``a'`` at the pre-activations of ``x`` (ReLU: 0/1, leaky-ReLU:
  ``negative_slope``/1, abs: ±1). The chain is multiplied in the order of fewest
  flops (matrix-chain order on the static widths), each step one large matmul over
  the batch, and without the ``k × k`` identity that ``jax.jacrev`` starts from.
  Equal to ``jacobian(fn, x)`` for the same MLP; use it when the weights are at hand.

  ``capacity`` (ReLU's zero slopes): keep, per sample and hidden layer, only the
  ``ceil(capacity · h_l)`` units with non-zero slope, gathered into dense blocks, so
  the chain costs about ``capacity²``… ``capacity`` of the dense flops (≈ 0.55× at
  the ≈ 50 % activity of a He-initialised ReLU net). The result is exact: when any
  sample of a chunk has more active units than the capacity, that chunk takes the
  dense path instead (``lax.cond``; both are compiled).

  Args:
    layers: ``[(W_1 [d, h_1], b_1 [h_1]), ..., (W_L [h_{L-1}, k], b_L [k])]``
      (Flax ``Dense`` kernel layout).
    x: batch ``[n, ...]``, flattened to ``[n, d]``.
    activation: ``"relu"`` | ``"leaky_relu"`` | ``"abs"`` | ``"linear"``.
    negative_slope: leaky-ReLU slope for negative inputs.
    capacity: ``None`` (dense) or a fraction in ``(0, 1]`` of each hidden layer's
      units kept per sample.
    chunk_size: as in ``jacobian``.

  Returns:
    ``[n, k, d]`` slopes.
  """
  _check_x(x)
  _validate.check_choice(activation, _ACTIVATIONS, "activation")
  _check_chunk_size(chunk_size)
  if capacity is not None and not (isinstance(capacity, (int, float))
                                   and 0 < capacity <= 1):
    raise ValueError(f"capacity must be None or a fraction in (0, 1], got "
                     f"{capacity!r}.")
  if not layers:
    raise ValueError("layers must hold at least one (kernel, bias) pair, got none.")
  n, d = x.shape[0], math.prod(x.shape[1:])
  width = d
  for i, (w, b) in enumerate(layers):
    ws, bs = _validate.shape_of(w), _validate.shape_of(b)
    if len(ws) != 2 or ws[0] != width or bs != (ws[1],):
      raise ValueError(
          f"layers[{i}] must be (kernel [{width}, h], bias [h]); got kernel {ws} and "
          f"bias {bs}.")
    width = ws[1]
  num = len(layers)
  hidden = [w.shape[1] for w, _ in layers[:-1]]
  k = layers[-1][0].shape[1]
  # Factors F_0 = W_Lᵀ, ..., F_{L-1} = W_1ᵀ; dims[i] x dims[i+1] is F_i's shape;
  # junction i (between F_i and F_{i+1}) is hidden layer num - 2 - i.
  dims = [k] + hidden[::-1] + [d]
  split = _chain_order(dims)
  caps = [max(1, math.ceil(capacity * h)) for h in hidden] if capacity else hidden
  cdims = [k] + caps[::-1] + [d]
  csplit = _chain_order(cdims)

  def slopes(v):
    out, h = [], v
    for i, (w, b) in enumerate(layers[:-1]):
      pre = h @ w + b
      out.append(_slope_of(pre, activation, negative_slope))
      h = _act(pre, activation, negative_slope)
    return out

  def chain(factors, split, scale):
    def prod(i, j):
      if i == j:
        return factors[i]
      s = split[(i, j)]
      left, right = prod(i, s), prod(s + 1, j)
      m = scale[s]
      if m is None:
        return left @ right
      if left.shape[0] <= right.shape[1]:
        return (left * m[None, :]) @ right
      return left @ (m[:, None] * right)
    return prod(0, num - 1)

  def dense_one(v):
    masks = slopes(v)
    factors = [layers[num - 1 - i][0].T for i in range(num)]
    return chain(factors, split, [masks[num - 2 - i] for i in range(num - 1)])

  def sparse_one(v):
    masks = slopes(v)
    keep = [jnp.argsort(m == 0, stable=True)[:c] for m, c in zip(masks, caps)]
    vals = [m[i] for m, i in zip(masks, keep)]
    factors = []
    for i in range(num):
      f = layers[num - 1 - i][0].T        # rows: layer num-1-i's outputs
      if i > 0:
        f = f[keep[num - 1 - i]]           # rows are hidden layer num - 1 - i
      if i < num - 1:
        f = f[:, keep[num - 2 - i]] * vals[num - 2 - i][None, :]
      factors.append(f)
    return chain(factors, csplit, [None] * (num - 1))

  def batch(xs):
    if capacity is None or caps == hidden:
      return jax.vmap(dense_one)(xs)
    active = jax.vmap(lambda v: jnp.stack(
        [jnp.sum(m != 0) for m in slopes(v)]))(xs)
    fits = jnp.all(active <= jnp.asarray(caps))
    return jax.lax.cond(fits, jax.vmap(sparse_one), jax.vmap(dense_one), xs)

  def body(x):
    return _map_batched(batch, x.reshape(n, d), chunk_size)

  return _jit_call(body, x)


# ----------------------------------------------------------------------------
# Regions.

_GOLDEN = np.uint32(0x9E3779B9)


def _pack_bits(bits: Array) -> Array:
  """Pack a bool vector into uint32 words (little-endian within a word)."""
  pad = (-bits.shape[0]) % 32
  bits = jnp.pad(bits, (0, pad)).reshape(-1, 32).astype(jnp.uint32)
  return jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)


def _code_one(pre_fn: Callable, x_one: Array) -> Array:
  floats, ints = _pre_leaves(pre_fn, x_one)
  words = []
  if floats:
    words.append(_pack_bits(jnp.concatenate([(l > 0).ravel() for l in floats])))
  if ints:
    words.append(jnp.concatenate([l.ravel().astype(jnp.uint32) for l in ints]))
  return jnp.concatenate(words)


def region_ids(pre_fn: Callable[[Array], Any], x: Array, *,
               chunk_size: int | None = None) -> Array:
  """Exact region codes: the packed activation pattern of every input.

  The code of ``x_i`` is the sign bit (``pre > 0``) of every floating leaf of
  ``pre_fn(x_i)`` (ReLU / leaky-ReLU / abs inputs), packed 32 to a ``uint32`` word,
  followed by every integer leaf (max-pool argmax) as one word each. Two inputs lie
  in the same CPA region iff their code rows are equal; ``bytes(np.asarray(c))`` of
  a row is a hashable key.

  Args:
    pre_fn: one input -> pre-activation pytree, or ``(z, pre)`` with ``pre`` a dict.
    x: batch ``[n, ...]``.
    chunk_size: as in ``jacobian``.

  Returns:
    ``uint32 [n, w]`` codes, ``w = ceil(#sign units / 32) + #argmax entries``.
  """
  _check_x(x)
  _check_chunk_size(chunk_size)
  _check_pre_fn(pre_fn, x)
  return _jit_call(
      lambda x: _map(functools.partial(_code_one, pre_fn), x, chunk_size), x,
      owner=pre_fn)


def _mix(h: Array) -> Array:
  """The 32-bit murmur3 finaliser (a bijection that spreads bits)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def count_codes(codes: Array) -> Array:
  """Number of distinct rows of ``codes [n, w]`` (jittable, exact up to 2⁻⁶⁴ odds).

  Rows are sorted by two independent 32-bit hashes and adjacent rows compared
  word by word, so equal rows always count once; distinct rows count twice only if
  they share both hashes and interleave, which has probability ~n²·2⁻⁶⁴.

  Args:
    codes: ``[n, w]`` integer codes (e.g. from ``region_ids``).

  Returns:
    int32 scalar.
  """
  _validate.check_rank(codes, 2, "codes", layout="[n, w]")
  return _count_codes(jnp.asarray(codes))


@jax.jit
def _count_codes(codes: Array) -> Array:
  c = codes.astype(jnp.uint32)
  n, w = c.shape
  pos = jnp.arange(w, dtype=jnp.uint32)
  h1 = jnp.sum(_mix(c * jnp.uint32(2654435761) + pos * _GOLDEN), axis=1,
               dtype=jnp.uint32)
  h2 = jnp.sum(_mix((c ^ jnp.uint32(0x5BD1E995)) + _mix(pos + jnp.uint32(1))),
               axis=1, dtype=jnp.uint32)
  _, _, order = jax.lax.sort((h1, h2, jnp.arange(n)), num_keys=2)
  s = c[order]
  new = jnp.any(s[1:] != s[:-1], axis=1)
  return 1 + jnp.sum(new, dtype=jnp.int32)


def count_regions(pre_fn: Callable[[Array], Any], x: Array, *,
                  chunk_size: int | None = None) -> Array:
  """Number of distinct CPA regions hit by the inputs ``x``.

  ``count_codes(region_ids(pre_fn, x))``.

  Args:
    pre_fn: as in ``region_ids``.
    x: batch ``[n, ...]``.
    chunk_size: as in ``jacobian``.

  Returns:
    int32 scalar in ``[1, n]``.
  """
  return count_codes(region_ids(pre_fn, x, chunk_size=chunk_size))


def same_region(pre_fn: Callable[[Array], Any], x: Array, x_other: Array, *,
                chunk_size: int | None = None) -> Array:
  """Whether ``x[i]`` and ``x_other[i]`` have the same activation pattern.

  Args:
    pre_fn: as in ``region_ids``.
    x: batch ``[n, ...]``.
    x_other: batch of the same shape.
    chunk_size: as in ``jacobian``.

  Returns:
    bool ``[n]``.
  """
  _check_x(x)
  _check_x(x_other, "x_other")
  _validate.check_same_shape(x, x_other, "x", "x_other")
  a = region_ids(pre_fn, x, chunk_size=chunk_size)
  b = region_ids(pre_fn, x_other, chunk_size=chunk_size)
  return jnp.all(a == b, axis=1)


def boundary_distance(pre_fn: Callable[[Array], Any], x: Array, direction: Array,
                      *, per_neuron: bool = False,
                      chunk_size: int | None = None) -> Array | tuple[Array, Any]:
  """Distance from ``x`` along ``direction`` to the nearest region boundary.

  With ``u = direction / ‖direction‖`` and ``h_j``, ``g_j = ∂h_j/∂x · u`` the value
  and directional derivative of each sign unit (floating leaf of ``pre_fn``),
  unit ``j`` changes sign at ``t_j = −h_j / g_j``; the distance is
  ``min {t_j : t_j > 0}`` (``inf`` if no unit ever changes). Inside a region of a CPA
  network every pre-activation is affine in the input, so this is EXACT for ReLU /
  leaky-ReLU / abs networks of any depth (MLPs, convolutions, eval-mode BatchNorm).
  It is the first-order distance per unit for smooth networks. Max-pool argmax
  switches (integer leaves) are not located: with max-pools the result is an upper
  bound on the distance to the nearest pattern change.

  Args:
    pre_fn: as in ``region_ids``.
    x: batch ``[n, ...]``.
    direction: ``[n, ...]`` (one per input) or ``x.shape[1:]`` (shared), non-zero.
    per_neuron: also return every unit's ``t_j`` (``inf`` when ``t_j <= 0``).
    chunk_size: as in ``jacobian``.

  Returns:
    ``[n]`` distances in input units (Euclidean), or ``(distances, t)`` with ``t``
    a list, one ``[n, ...]`` array per floating leaf of ``pre_fn``.
  """
  _check_x(x)
  _check_chunk_size(chunk_size)
  _check_pre_fn(pre_fn, x)
  ds = _validate.shape_of(direction)
  if ds == tuple(x.shape[1:]):
    direction = jnp.broadcast_to(jnp.asarray(direction), x.shape)
  elif ds != tuple(x.shape):
    raise ValueError(
        f"direction must have shape {tuple(x.shape)} (one per input) or "
        f"{tuple(x.shape[1:])} (shared), got {ds}.")
  _validate.check_float(direction, "direction")

  def one(args):
    v, u = args
    u = u / jnp.linalg.norm(u.ravel())
    f = lambda v: _pre_leaves(pre_fn, v)[0]
    h, g = jax.jvp(f, (v,), (u.astype(v.dtype),))
    ts = [jnp.where((-hh / gg) > 0, -hh / gg, jnp.inf) for hh, gg in zip(h, g)]
    best = (jnp.min(jnp.stack([jnp.min(t) for t in ts])) if ts
            else jnp.asarray(jnp.inf, v.dtype))
    return best, ts

  def body(x, direction):
    return _map(one, (x, direction.astype(x.dtype)), chunk_size)

  dist, ts = _jit_call(body, x, direction, owner=pre_fn)
  return (dist, ts) if per_neuron else dist


# ----------------------------------------------------------------------------
# The Gaussian-mixture picture (SPEC §2): the mixture math is in sslit.mixture.


def noise_model_check(key: Array, fn: Callable[[Array], Array], x: Array, *,
                      sigmas: Sequence[float], num_samples: int = 256,
                      pre_fn: Callable[[Array], Any] | None = None,
                      mode: str = "fwd", chunk_size: int | None = None,
                      alpha: float = 0.05) -> dict[str, Any]:
  """Monte-Carlo check of SPEC §2's noise model (assumption A1) per σ and input.

  For each σ and input ``x_n``, draw ``M = num_samples`` copies ``x_n + σ ε`` and
  report: (a) ``stay``: the fraction whose activation pattern equals ``x_n``'s
  (needs ``pre_fn``; NaN without it); (b) ``cov_error``:
  ``‖Ĉ − σ² A Aᵀ‖_F / ‖σ² A Aᵀ‖_F``, ``Ĉ`` the unbiased covariance of the outputs;
  (c) ``mean_error``: ``‖mean − fn(x_n)‖ / sqrt(tr σ² A Aᵀ)``; (d) ``pvalues``:
  D'Agostino–Pearson normality p-values per output dimension (scipy, host-side).
  Under A1, stay = 1, ``cov_error`` is Monte-Carlo noise (≈ sqrt((k+1)/M)·O(1)),
  ``mean_error`` ≈ M^{-1/2}, and p-values are uniform (about ``alpha`` of them below
  ``alpha``). The Monte-Carlo part is one jitted program per σ.

  Args:
    key: ``jax.random.key``.
    fn: function of one input to ``[k]``.
    x: batch ``[n, ...]``.
    sigmas: noise standard deviations (> 0).
    num_samples: copies per input (≥ 20 for the normality test).
    pre_fn: pre-activations of one input (see ``region_ids``), for ``stay``.
    mode: slope mode, as in ``jacobian``.
    chunk_size: inputs processed at a time (bounds the ``n·M`` copies in memory).
    alpha: level for the reported rejection rate of the normality test.

  Returns:
    dict of NumPy arrays: ``sigmas [S]``, ``stay [S, n]``, ``cov_error [S, n]``,
    ``mean_error [S, n]``, ``pvalues [S, n, k]``, and summaries per σ:
    ``stay_mean [S]``, ``cov_error_median [S]``, ``mean_error_median [S]``,
    ``normal_reject_rate [S]`` (fraction of p-values below ``alpha``).
  """
  import scipy.stats  # host-side only

  _check_x(x)
  _check_chunk_size(chunk_size)
  _validate.check_choice(mode, _MODES, "mode")
  _output_shape(fn, x)
  sig = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
  if sig.ndim != 1 or sig.size == 0:
    raise ValueError(f"sigmas must be a non-empty 1-D sequence, got {sigmas!r}.")
  for s in sig:
    _validate.check_sigma(s, "sigmas")
  _validate.check_count(num_samples, "num_samples", minimum=20)
  if pre_fn is not None:
    _check_pre_fn(pre_fn, x)
  n = x.shape[0]
  a = jacobian(fn, x, mode=mode, chunk_size=chunk_size)

  def mc(key, sigma, x, a):
    def one(args):
      key, v, a1 = args
      eps = jax.random.normal(key, (num_samples,) + v.shape, v.dtype)
      xs = v[None] + sigma * eps
      z0 = fn(v)
      dz = jax.vmap(fn)(xs) - z0[None]  # centred on fn(x) for float accuracy
      mean = dz.mean(0)
      c = (dz - mean).T @ (dz - mean) / (num_samples - 1)
      model = sigma**2 * (a1 @ a1.T)
      cov_err = jnp.linalg.norm(c - model) / jnp.linalg.norm(model)
      mean_err = jnp.linalg.norm(mean) / jnp.sqrt(jnp.trace(model))
      if pre_fn is None:
        stay = jnp.nan
      else:
        c0 = _code_one(pre_fn, v)
        cs = jax.vmap(functools.partial(_code_one, pre_fn))(xs)
        stay = jnp.mean(jnp.all(cs == c0[None], axis=1))
      return stay, cov_err, mean_err, dz
    keys = jax.random.split(key, n)
    return _map(one, (keys, x, a), chunk_size)

  keys = jax.random.split(key, sig.size)
  out = {"stay": [], "cov_error": [], "mean_error": [], "pvalues": []}
  for kk, s in zip(keys, sig):
    stay, ce, me, dz = _jit_call(mc, kk, jnp.asarray(s, x.dtype), x, a, owner=fn)
    out["stay"].append(np.asarray(stay, np.float64))
    out["cov_error"].append(np.asarray(ce, np.float64))
    out["mean_error"].append(np.asarray(me, np.float64))
    out["pvalues"].append(scipy.stats.normaltest(np.asarray(dz, np.float64),
                                                 axis=1).pvalue)
  res = {"sigmas": sig, **{name: np.stack(v) for name, v in out.items()}}
  res["stay_mean"] = res["stay"].mean(axis=1)
  res["cov_error_median"] = np.median(res["cov_error"], axis=1)
  res["mean_error_median"] = np.median(res["mean_error"], axis=1)
  res["normal_reject_rate"] = (res["pvalues"] < alpha).mean(axis=(1, 2))
  return res


def representation_information(fn: Callable[[Array], Array], x: Array, *,
                               sigma: float, output_noise: float = 0.0,
                               relative_output_noise: float = 0.0,
                               mode: str = "fwd", chunk_size: int | None = None,
                               mesh: Any = None, method: str = "auto",
                               exact_neighbors: int = 8) -> dict[str, Array]:
  """The information quantities of SPEC §2–3 for a network and a set of inputs.

  Model: ``z = fn(x_n + σ ε) + τ η``, ``ε ~ N(0, I_d)``, ``η ~ N(0, I_k)``: under A1
  ``z | n ~ N(μ_n, Σ_n)``, ``μ_n = fn(x_n)``, ``Σ_n = σ² A_n A_nᵀ + τ² I_k``, equal
  weights. ``τ`` is ``output_noise`` or ``relative_output_noise · σ · s̄``,
  ``s̄² = (1/(n k)) Σ_n ‖A_n‖_F²``. Keys of the result (docs/cpa.md has the details):

  - ``h_cond`` = ``H(Z|n)``, mean of ``½ log det(2πe Σ_n)`` from the singular values
    of ``A_n`` (rank-aware for ``τ = 0``, see ``conditional_entropy``).
  - ``h_lower`` / ``h_upper`` = ``h_cond + mi_*``: Kolchinsky–Tracey bounds on
    ``H(Z)`` (Bhattacharyya / KL) on the full ``Σ_n``; ``mi_lower`` / ``mi_upper``,
    their pairwise parts ``−(1/n) Σ_i log (1/n) Σ_j e^{−D_ij}`` in ``[0, log n]``.
    ``method="exact"``: ``mixture.pairwise_bounds_exact``, ``O(n² k³)``;
    ``"scalable"``: ``mixture.pairwise_bounds``, ``O(n² k² + n·exact_neighbors·k³)``,
    the same ``h_upper`` and a certified lower bound on the exact ``h_lower``;
    ``"auto"``: exact up to ``mixture.AUTO_EXACT_MAX_N`` inputs.
  - ``exact_pairs`` / ``num_pairs``: pairs ``i < j`` with an exact Bhattacharyya
    term / all of them; ``lower_slack``: the exact Bhattacharyya bound lies in
    ``[h_lower, h_lower + lower_slack]`` (0 for the exact method).
  - ``gaussian_surrogate`` = ``½ log det(2πe Cov Z)`` (means' covariance, ddof 0,
    plus the mean ``Σ_n``); ``separation_ratio`` (with ``Σ_n``); ``min_rank`` /
    ``full_rank`` of the slopes ``A_n``; ``sigma``; ``output_noise`` (``τ``).

  With ``τ = 0`` and some ``A_n`` of rank ``< k`` there is no density in ``R^k``:
  ``h_lower = h_upper = −inf``, ``mi_* = lower_slack = NaN``.

  Args:
    fn: function of one input to ``[k]`` (eval mode).
    x: batch ``[n, ...]``, n ≥ 2.
    sigma: input-noise standard deviation (> 0), or a 1-D grid of them: the slopes
      are then computed once and every value of the result has a leading ``[m]``.
    output_noise: ``τ ≥ 0``, absolute, in the units of ``fn``'s output.
    relative_output_noise: ``ρ ≥ 0``: ``τ = ρ σ s̄``. At most one of the two > 0.
    mode: slope mode, as in ``jacobian``.
    chunk_size: as in ``jacobian``; ``[n, k, d]`` never exists at once when set.
    mesh: optional mesh: per-sample work per device's shard of the batch (as in
      ``jacobian``); the scalable bounds split their pairs over it too.
    method: ``"auto"``, ``"exact"`` or ``"scalable"``.
    exact_neighbors: for ``"scalable"``, as in ``mixture.pairwise_bounds``.

  Returns:
    dict of scalars (nats) with the keys above. Reference: Kolchinsky & Tracey,
    "Estimating mixture entropy with pairwise distances", Entropy 19(7):361, 2017.
  """
  _check_x(x)
  grid = np.ndim(sigma) == 1
  for v in np.atleast_1d(sigma) if grid else (sigma,):
    mixture.check_noise_model(v, output_noise=output_noise,
                              relative_output_noise=relative_output_noise,
                              method=method, exact_neighbors=exact_neighbors)
  _validate.check_choice(mode, _MODES, "mode")
  _check_chunk_size(chunk_size)
  (k,) = _output_shape(fn, x)
  n, d = x.shape[0], math.prod(x.shape[1:])
  if n < 2:
    raise ValueError(f"x needs at least 2 inputs for a mixture, got shape {x.shape}.")
  if mode == "auto":
    mode = "rev" if k < d else "fwd"
  g = _flat_fn(fn, tuple(x.shape[1:]))
  jac = jax.jacfwd(g) if mode == "fwd" else jax.jacrev(g)

  def per_chunk(v):  # v [m, d]: means, A Aᵀ and the singular values of A
    a = jax.vmap(jac)(v)
    # One SVD at a time (parallel.per_matrix: a batched one can deadlock XLA:CPU).
    s = parallel.per_matrix(lambda a1: jnp.linalg.svd(a1, compute_uv=False), a)
    return jax.vmap(g)(v), jax.vmap(lambda a1: a1 @ a1.T)(a), s

  def local(x):
    return _map_batched(per_chunk, x.reshape(x.shape[0], d), chunk_size)

  def body(x, sigma, tau_abs, rho):  # means, A Aᵀ, singular values
    stats = parallel.shard_rows(local, mesh, x, name="x")
    one = functools.partial(mixture.information_from_slopes, *stats, d=d,
                            output_noise=tau_abs, relative_output_noise=rho,
                            method=method, exact_neighbors=exact_neighbors, mesh=mesh)
    return jax.lax.map(one, sigma) if grid else one(sigma)

  return _jit_call(body, x, jnp.asarray(sigma, x.dtype),
                   jnp.asarray(output_noise, x.dtype),
                   jnp.asarray(relative_output_noise, x.dtype), owner=fn)
