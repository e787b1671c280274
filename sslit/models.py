"""Flax backbones and SSL heads, and the pure functions that apply them.

Backbones (``BACKBONES``): ``"mlp"`` (:class:`MLP`), ``"convnet"`` (:class:`ConvNet`,
the fast small CNN for 28x28 grayscale images), ``"resnet18"`` and ``"resnet50"``
(:class:`ResNet18`, :class:`ResNet50`, CIFAR or ImageNet stem). Heads: the
VICReg/Barlow projector, the SimCLR projector, the BYOL projector and predictor, all
:class:`ProjectionHead`; SwAV's prototypes and DINO's weight-normalised head.
:func:`build_model` assembles an :class:`SSLModel` whose ``__call__(x, *, train)``
returns ``{"rep", "proj", "pred", "prototypes", "dino"}`` (the ones it has).

Every piecewise-linear non-linearity records its input with
``self.sow("preactivations", name, h)`` (ReLU, leaky-ReLU, abs), and every max-pool
records the int32 argmax of each window, so that ``sslit.cpa`` reads exact activation
regions (:func:`preactivation_fn`). Recording costs nothing unless the collection is
mutable: Flax drops a ``sow`` into an immutable collection, and the argmax is only
computed when the collection is mutable.

Precision: parameters are always float32; ``dtype`` sets the compute dtype (e.g.
``jnp.bfloat16``), and every output of :class:`SSLModel` is cast back to float32.

This is the only sslit module that imports Flax.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate

__all__ = [
    "ACTIVATIONS", "BACKBONES", "PROJECTORS", "MLP", "ConvNet", "ResNet",
    "ResNet18", "ResNet50", "ProjectionHead", "SSLModel", "build_model",
    "init_variables", "make_apply_fn", "single_input_fn", "preactivation_fn",
    "param_count", "adaptive_avg_matrix", "normalize_prototypes",
]

PREACTIVATIONS = "preactivations"
ACTIVATIONS = ("relu", "leaky_relu", "abs", "gelu", "gelu_exact")
_PIECEWISE = ("relu", "leaky_relu", "abs")
OUTPUTS = ("rep", "proj", "pred", "dino")

# torchvision's ResNet init: Kaiming normal, fan-out, for every convolution.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# ------------------------------------------------------------------ helpers


def _activate(module: nn.Module, h: jax.Array, name: str, activation: str = "relu",
              negative_slope: float = 0.01) -> jax.Array:
  """Apply ``activation`` to ``h``, recording ``h`` first if it is piecewise linear."""
  if activation in _PIECEWISE:
    module.sow(PREACTIVATIONS, name, h)
  if activation == "relu":
    return nn.relu(h)
  if activation == "leaky_relu":
    return jnp.where(h >= 0, h, negative_slope * h)
  if activation == "abs":
    return jnp.abs(h)
  if activation == "gelu":  # tanh approximation (JAX's default)
    return nn.gelu(h)
  if activation == "gelu_exact":  # x Φ(x) with the error function (PyTorch's GELU)
    return nn.gelu(h, approximate=False)
  raise ValueError(f"unknown activation {activation!r}; choose one of "
                   f"{list(ACTIVATIONS)}.")


def _window_argmax(module: nn.Module, x: jax.Array, name: str, window: int,
                   stride: int, pad: int) -> None:
  """Record the int32 argmax (row-major index inside the window) of a max-pool."""
  if not module.is_mutable_collection(PREACTIVATIONS):
    return
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
               constant_values=-jnp.inf)
  oh = (h + 2 * pad - window) // stride + 1
  ow = (w + 2 * pad - window) // stride + 1
  patches = [xp[:, di:di + stride * (oh - 1) + 1:stride,
                dj:dj + stride * (ow - 1) + 1:stride, :]
             for di in range(window) for dj in range(window)]
  idx = jnp.argmax(jnp.stack(patches, axis=-1), axis=-1).astype(jnp.int32)
  module.sow(PREACTIVATIONS, name, idx)


def _pool2x2(module: nn.Module, x: jax.Array, kind: str, name: str) -> jax.Array:
  """2x2 stride-2 pooling by reshape (odd trailing rows/columns are dropped)."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  if kind == "max":
    _window_argmax(module, x, name, window=2, stride=2, pad=0)
  x = x.reshape(n, h // 2, 2, w // 2, 2, c)
  if kind == "max":
    return jnp.max(x, axis=(2, 4))
  return jnp.mean(x, axis=(2, 4))


def adaptive_avg_matrix(size: int, out: int) -> np.ndarray:
  """``[out, size]`` averaging matrix of PyTorch's ``adaptive_avg_pool`` bins.

  Row ``i`` averages ``[floor(i·size/out), ceil((i+1)·size/out))``: the bins of the
  ConvNet's ``final_pool="2x2"``, so ``a @ map @ a.T`` pools a ``[size, size]`` map.
  """
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def _adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
  """Average-pool ``[n, h, w, c]`` to ``[n, out, out, c]`` (PyTorch's bins)."""
  ph = jnp.asarray(adaptive_avg_matrix(x.shape[1], out), x.dtype)
  pw = jnp.asarray(adaptive_avg_matrix(x.shape[2], out), x.dtype)
  return jnp.einsum("ph,nhwc,qw->npqc", ph, x, pw)


def _check_image(x: Any, name: str = "x") -> None:
  _validate.check_rank(x, 4, name, layout="[n, H, W, C] (NHWC images)")
  _validate.check_float(x, name)


def _batch_norm(train: bool, dtype: Any, name: str, **kw) -> nn.BatchNorm:
  # momentum 0.9 here is PyTorch's momentum 0.1; epsilon as in PyTorch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name, **kw)


# ---------------------------------------------------------------- backbones


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  ``widths[:-1]`` are hidden layers ``Dense [-> BatchNorm] -> activation``; the last
  layer ``Dense(widths[-1])`` is linear unless ``activate_output`` (then it gets the
  same ``[BatchNorm ->] activation``). A Dense that a BatchNorm follows has no bias
  (the BatchNorm's own bias takes its place). Pre-activations are recorded as
  ``relu{i}`` (whatever the piecewise activation; none for GELU).

  Attributes:
    widths: layer widths; the representation has ``widths[-1]`` features.
    activation: "relu", "leaky_relu", "abs", "gelu" (tanh approximation) or
      "gelu_exact" (with the error function, as PyTorch's ``nn.GELU()``).
    negative_slope: leaky-ReLU slope for negative inputs.
    batch_norm: BatchNorm after every hidden Dense (which then has no bias).
    activate_output: apply the activation (and BN) to the last layer too.
    dtype: compute dtype (params stay float32).
  """
  widths: Sequence[int] = (512, 512, 512)
  activation: str = "relu"
  negative_slope: float = 0.01
  batch_norm: bool = False
  activate_output: bool = False
  dtype: Any = jnp.float32

  def validate(self) -> None:
    _validate.check_choice(self.activation, ACTIVATIONS, "activation")
    if len(self.widths) == 0 or any(int(w) <= 0 for w in self.widths):
      raise ValueError(f"widths must be a non-empty sequence of positive ints, got "
                       f"{tuple(self.widths)}.")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    self.validate()
    if x.ndim < 2:
      raise ValueError(f"x must be [n, ...] (a batch), got shape {x.shape}.")
    _validate.check_float(x, "x")
    h = x.reshape(x.shape[0], -1)
    last = len(self.widths) - 1
    for i, width in enumerate(self.widths):
      normed = self.batch_norm and (i < last or self.activate_output)
      # A BatchNorm subtracts the batch mean, so a bias before it gets a zero
      # gradient (up to rounding, which Adam would amplify): none there.
      h = nn.Dense(int(width), use_bias=not normed, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f"dense{i}")(h)
      if i < last or self.activate_output:
        if normed:
          h = _batch_norm(train, self.dtype, f"bn{i}")(h)
        h = _activate(self, h, f"relu{i}", self.activation, self.negative_slope)
    return h


class ConvNet(nn.Module):
  """Small fast CNN: stages of 3x3 conv (no bias) + BatchNorm + ReLU.

  2x2 stride-2 pooling between stages (average by default: XLA:CPU's max-pool
  backward is costly), then the final pooling: ``"2x2"`` average-pools the last map
  to 2x2 bins (PyTorch's adaptive bins) and flattens it (representation
  ``4 * channels[-1]``), ``"gap"`` is the global average (``channels[-1]``),
  ``"none"`` flattens the whole last map. For 28x28 inputs and the default
  channels, the 2x2 representation has 512 features.

  Recorded: ``relu{i}`` per stage, and ``maxpool{i}`` (int32 window argmax, index
  ``2*row + col``) when ``pool="max"``.

  Attributes:
    channels: output channels per stage.
    pool: "avg" or "max", the pooling between stages.
    final_pool: "2x2", "gap" or "none".
    dtype: compute dtype.
  """
  channels: Sequence[int] = (32, 64, 128)
  pool: str = "avg"
  final_pool: str = "2x2"
  dtype: Any = jnp.float32

  def validate(self) -> None:
    _validate.check_choice(self.pool, ("avg", "max"), "pool")
    _validate.check_choice(self.final_pool, ("2x2", "gap", "none"), "final_pool")
    if len(self.channels) == 0 or any(int(c) <= 0 for c in self.channels):
      raise ValueError(f"channels must be a non-empty sequence of positive ints, "
                       f"got {tuple(self.channels)}.")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    self.validate()
    _check_image(x)
    h = x
    for i, ch in enumerate(self.channels):
      if i > 0:
        h = _pool2x2(self, h, self.pool, f"maxpool{i - 1}")
      h = nn.Conv(int(ch), (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_conv_init,
                  name=f"conv{i}")(h)
      h = _batch_norm(train, self.dtype, f"bn{i}")(h)
      h = _activate(self, h, f"relu{i}")
    if self.final_pool == "gap":
      return jnp.mean(h, axis=(1, 2))
    if self.final_pool == "2x2":
      h = _adaptive_avg_pool(h, 2)
    return h.reshape(h.shape[0], -1)


class BasicBlock(nn.Module):
  """ResNet basic block (two 3x3 convs), torchvision layout."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_conv_init)
    y = conv(self.features, (3, 3), (self.strides,) * 2, padding=((1, 1), (1, 1)),
             name="conv1")(x)
    y = _batch_norm(train, self.dtype, "bn1")(y)
    y = _activate(self, y, "relu1")
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    r = x
    if x.shape[-1] != self.features or self.strides != 1:
      r = conv(self.features, (1, 1), (self.strides,) * 2, padding="VALID",
               name="downsample_conv")(x)
      r = _batch_norm(train, self.dtype, "downsample_bn")(r)
    return _activate(self, r + y, "relu_out")


class Bottleneck(nn.Module):
  """ResNet bottleneck block (1x1, 3x3 with the stride, 1x1 x4), torchvision v1.5."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=_conv_init)
    out = self.features * self.expansion
    y = conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = _activate(self, _batch_norm(train, self.dtype, "bn1")(y), "relu1")
    y = conv(self.features, (3, 3), (self.strides,) * 2, padding=((1, 1), (1, 1)),
             name="conv2")(y)
    y = _activate(self, _batch_norm(train, self.dtype, "bn2")(y), "relu2")
    y = conv(out, (1, 1), padding="VALID", name="conv3")(y)
    y = _batch_norm(train, self.dtype, "bn3")(y)
    r = x
    if x.shape[-1] != out or self.strides != 1:
      r = conv(out, (1, 1), (self.strides,) * 2, padding="VALID",
               name="downsample_conv")(x)
      r = _batch_norm(train, self.dtype, "downsample_bn")(r)
    return _activate(self, r + y, "relu_out")


class ResNet(nn.Module):
  """ResNet backbone (no classifier); the representation is the global average pool.

  ``cifar_stem=True``: 3x3 stride-1 convolution, no max-pool (for 32x32 inputs).
  ``cifar_stem=False``: the ImageNet stem, 7x7 stride-2 convolution and 3x3 stride-2
  max-pool (its int32 argmax recorded as ``stem_maxpool``, index ``3*row + col``).

  Attributes:
    stage_sizes: blocks per stage.
    block: "basic" or "bottleneck".
    cifar_stem: which stem.
    width: channels of the stem and the first stage (doubled at each stage; the
      bottleneck's output has 4x as many).
    stem_padding: zero padding of the stem convolution on each side; None: 1 for
      the CIFAR stem, 3 for the ImageNet stem ("same" size). solo-learn's CIFAR
      ResNets pad their 3x3 stem by 2 (a 32x32 image gives 34x34 maps).
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  cifar_stem: bool = True
  width: int = 64
  stem_padding: int | None = None
  dtype: Any = jnp.float32

  def validate(self) -> None:
    _validate.check_choice(self.block, ("basic", "bottleneck"), "block")
    if int(self.width) <= 0:
      raise ValueError(f"width must be a positive int, got {self.width!r}.")
    if self.stem_padding is not None and int(self.stem_padding) < 0:
      raise ValueError(f"stem_padding must be None or an int >= 0, got "
                       f"{self.stem_padding!r}.")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    self.validate()
    _check_image(x)
    pad = self.stem_padding
    if pad is None:
      pad = 1 if self.cifar_stem else 3
    pad = ((int(pad), int(pad)),) * 2
    if self.cifar_stem:
      h = nn.Conv(self.width, (3, 3), padding=pad, use_bias=False,
                  dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_conv_init,
                  name="stem_conv")(x)
    else:
      h = nn.Conv(self.width, (7, 7), (2, 2), padding=pad,
                  use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=_conv_init, name="stem_conv")(x)
    h = _batch_norm(train, self.dtype, "stem_bn")(h)
    h = _activate(self, h, "stem_relu")
    if not self.cifar_stem:
      _window_argmax(self, h, "stem_maxpool", window=3, stride=2, pad=1)
      h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = BasicBlock if self.block == "basic" else Bottleneck
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        h = block_cls(self.width * 2 ** i, strides=strides, dtype=self.dtype,
                      name=f"layer{i + 1}_{j}")(h, train=train)
    return jnp.mean(h, axis=(1, 2))


class ResNet18(ResNet):
  """ResNet-18 (basic blocks 2-2-2-2); CIFAR stem by default. Representation 512-d."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  cifar_stem: bool = True


class ResNet50(ResNet):
  """ResNet-50 (bottlenecks 3-4-6-3); ImageNet stem by default. Representation 2048-d."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = "bottleneck"
  cifar_stem: bool = False


BACKBONES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
}


# -------------------------------------------------------------------- heads


class ProjectionHead(nn.Module):
  """``(Dense -> BatchNorm -> ReLU) x (len(widths) - 1) -> Dense(widths[-1])``.

  The hidden Dense layers have no bias: the BatchNorm that follows subtracts the
  batch mean, so such a bias could not learn (its gradient is zero up to rounding,
  which Adam's normalisation amplifies into steps of full size) and its BatchNorm
  bias plays its part. Recorded: ``relu{i}`` for the hidden layers (piecewise-linear
  activations only). Without BatchNorm (DINO's head: ``Dense -> GELU``) the hidden
  Dense layers have a bias.

  Attributes:
    widths: output width of every Dense.
    last_bias: bias on the last Dense (VICReg's reference code has none).
    batch_norm: BatchNorm after every hidden Dense.
    activation: of the hidden layers, one of ``ACTIVATIONS`` (e.g. "relu", "gelu").
    dtype: compute dtype.
  """
  widths: Sequence[int] = (2048, 2048, 2048)
  last_bias: bool = True
  batch_norm: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    last = len(self.widths) - 1
    h = x
    for i, width in enumerate(self.widths):
      bias = self.last_bias if i == last else not self.batch_norm
      h = nn.Dense(int(width), use_bias=bias, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f"dense{i}")(h)
      if i < last:
        if self.batch_norm:
          h = _batch_norm(train, self.dtype, f"bn{i}")(h)
        h = _activate(self, h, f"relu{i}", self.activation)
    return h


# name -> (widths, last_bias)
PROJECTORS: dict[str, tuple[tuple[int, ...], bool]] = {
    "vicreg": ((2048, 2048, 2048), False),
    "barlow": ((2048, 2048, 2048), False),
    "simclr": ((2048, 128), True),
    "byol": ((4096, 256), True),
    "dino": ((2048, 2048, 256), True),
}
# Projectors whose hidden layers are not Dense -> BatchNorm -> ReLU: DINO's head
# (Caron et al. 2021: Linear-GELU-Linear-GELU-Linear to a 256-d bottleneck, no BN).
PROJECTOR_LAYERS: dict[str, dict[str, Any]] = {
    "dino": {"batch_norm": False, "activation": "gelu_exact"}}
BYOL_PREDICTOR_HIDDEN = 4096


def _unit_rows(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _prototypes_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32
                     ) -> jax.Array:
  """Standard normal rows scaled to unit norm (uniform directions)."""
  return _unit_rows(jax.random.normal(key, shape, dtype))


class SSLModel(nn.Module):
  """Backbone + optional projector, predictor, prototypes or DINO head.

  ``__call__(x, *, train, upto=None)`` returns a dict with ``"rep"`` ``[n, r]``,
  ``"proj"`` ``[n, p]`` (if a projector) and ``"pred"`` ``[n, p]`` (if a predictor),
  all float32; with ``prototypes = P > 0`` also ``"prototypes"``: SwAV's trainable
  ``[P, p]`` prototype matrix (the parameter ``params["prototypes"]``, rows of unit
  norm at initialisation; see :func:`normalize_prototypes`); with ``dino_head = K >
  0`` also ``"dino"`` ``[n, K]``: DINO's weight-normalised last layer,
  ``unit(proj) @ unit_rows(V).T`` with the parameter ``params["dino_head"] = V``
  ``[K, p]`` (weight normalisation with the gain fixed at 1, DINO's
  ``norm_last_layer``; gradients flow through both normalisations); with
  ``dino_head_gain`` each output row ``k`` has a trainable gain ``g_k``
  (``params["dino_head_gain"]`` ``[K]``, initialised to 1: DINO's
  ``norm_last_layer=False``), ``"dino" = (unit(proj) @ unit_rows(V).T) * g``. ``upto``
  ("rep", "proj", "pred" or "dino") stops after that output, so analysis code does
  not pay for the heads.

  Attributes:
    backbone: a backbone module (see ``BACKBONES``).
    projector: a :class:`ProjectionHead` or None.
    predictor: a :class:`ProjectionHead` or None (BYOL's online predictor).
    prototypes: number ``P`` of SwAV prototypes (0: none; needs a projector).
    dino_head: number ``K`` of outputs of DINO's weight-normalised head (0: none;
      needs a projector, whose output is then the head's bottleneck).
    dino_head_gain: the head's per-output gain is trainable (False: fixed at 1).
  """
  backbone: nn.Module
  projector: nn.Module | None = None
  predictor: nn.Module | None = None
  prototypes: int = 0
  dino_head: int = 0
  dino_head_gain: bool = False

  def outputs(self) -> tuple[str, ...]:
    """The output names this model produces."""
    out = ["rep"]
    if self.projector is not None:
      out.append("proj")
      if self.predictor is not None:
        out.append("pred")
      if self.dino_head:
        out.append("dino")
    return tuple(out)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               upto: str | None = None) -> dict[str, jax.Array]:
    if upto is not None:
      _validate.check_choice(upto, self.outputs(), "output")
    out = {}
    h = self.backbone(x, train=train)
    out["rep"] = h.astype(jnp.float32)
    if upto == "rep" or self.projector is None:
      return out
    h = self.projector(h, train=train)
    out["proj"] = h.astype(jnp.float32)
    if upto == "proj":
      return out
    if self.prototypes:
      out["prototypes"] = self.param("prototypes", _prototypes_init,
                                     (int(self.prototypes), h.shape[-1]))
    if upto in (None, "dino") and self.dino_head:
      v = self.param("dino_head", _prototypes_init, (int(self.dino_head), h.shape[-1]))
      out["dino"] = _unit_rows(out["proj"]) @ _unit_rows(v).T
      if self.dino_head_gain:
        out["dino"] = out["dino"] * self.param("dino_head_gain", nn.initializers.ones,
                                               (int(self.dino_head),))
    if upto in (None, "pred") and self.predictor is not None:
      out["pred"] = self.predictor(h, train=train).astype(jnp.float32)
    return out


def _widths(value: Any, name: str) -> tuple[int, ...]:
  try:
    widths = tuple(int(w) for w in value)
  except TypeError:
    raise ValueError(f"{name} must be a sequence of ints, got {value!r}.") from None
  if not widths or any(w <= 0 for w in widths):
    raise ValueError(f"{name} must be a non-empty sequence of positive ints, got "
                     f"{value!r}.")
  return widths


def build_model(backbone: str, *, backbone_kwargs: Mapping[str, Any] | None = None,
                projector: str | Sequence[int] | None = "vicreg",
                predictor: bool | Sequence[int] = False, prototypes: int = 0,
                dino_head: int = 0, dino_head_gain: bool = False,
                dtype: Any = jnp.float32) -> SSLModel:
  """Build an :class:`SSLModel` from names.

  Args:
    backbone: "mlp", "convnet", "resnet18" or "resnet50".
    backbone_kwargs: attributes of the backbone class (e.g. ``{"widths": (64, 32)}``
      for the MLP, ``{"cifar_stem": False}`` for a ResNet).
    projector: "vicreg"/"barlow" (2048-2048-2048, Linear-BN-ReLU x2 + Linear without
      bias), "simclr" (2048-128), "byol" (4096-256), "dino" (DINO's head before its
      weight-normalised layer: Linear-GELU x2 + Linear, 2048-2048-256, biases, no
      BatchNorm), a sequence of widths (VICReg layout, last Dense with bias), or
      None (no projector). The hidden Linear layers of the BatchNorm layouts have no
      bias (a BatchNorm follows each).
    predictor: False, True (BYOL's 4096-BN-ReLU-p predictor, p the projector's
      output width) or a sequence of widths ending with the projector's width.
    prototypes: number of SwAV prototypes ``P`` (0: none), a ``[P, p]`` parameter
      with ``p`` the projector's output width.
    dino_head: number ``K`` of outputs of DINO's weight-normalised head (0: none),
      a ``[K, p]`` parameter (see :class:`SSLModel`).
    dino_head_gain: give the head a trainable gain per output (DINO's
      ``norm_last_layer=False``; needs ``dino_head > 0``).
    dtype: compute dtype (float32 or bfloat16); parameters are always float32.

  Returns:
    The (unbound) model.

  Raises:
    ValueError: unknown backbone/projector name or backbone option, bad widths, a
      predictor, prototypes or head without a projector, or a predictor whose
      output width is not the projector's.
  """
  _validate.check_choice(backbone, tuple(BACKBONES), "backbone")
  cls = BACKBONES[backbone]
  kwargs = dict(backbone_kwargs or {})
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for backbone {backbone!r}; valid "
                     f"options are {sorted(fields)}.")
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                              jnp.dtype(jnp.float16), jnp.dtype(jnp.float64)):
    raise ValueError(f"dtype must be a floating dtype (float32 or bfloat16), got "
                     f"{dtype}.")
  # Lists (e.g. from a config file) become tuples: modules stay hashable, so the
  # compiled initialiser is cached and the model can be a static jit argument.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  net = cls(**kwargs, dtype=dtype)
  net.validate()

  head = None
  if projector is not None:
    if isinstance(projector, str):
      _validate.check_choice(projector, tuple(PROJECTORS), "projector")
      widths, last_bias = PROJECTORS[projector]
      layers = PROJECTOR_LAYERS.get(projector, {})
    else:
      widths, last_bias, layers = _widths(projector, "projector"), True, {}
    head = ProjectionHead(widths=widths, last_bias=last_bias, dtype=dtype, **layers)

  pred = None
  if predictor is not False and predictor is not None:
    if head is None:
      raise ValueError("predictor needs a projector (got projector=None).")
    if predictor is True:
      pwidths = (BYOL_PREDICTOR_HIDDEN, head.widths[-1])
    else:
      pwidths = _widths(predictor, "predictor")
      if pwidths[-1] != head.widths[-1]:
        raise ValueError(f"predictor's output width {pwidths[-1]} must equal the "
                         f"projector's output width {head.widths[-1]}.")
    pred = ProjectionHead(widths=pwidths, last_bias=True, dtype=dtype)
  if not isinstance(prototypes, (int, np.integer)) or prototypes < 0:
    raise ValueError(f"prototypes must be an int >= 0, got {prototypes!r}.")
  if prototypes and head is None:
    raise ValueError("prototypes need a projector (got projector=None).")
  if not isinstance(dino_head, (int, np.integer)) or dino_head < 0:
    raise ValueError(f"dino_head must be an int >= 0, got {dino_head!r}.")
  if dino_head and head is None:
    raise ValueError("dino_head needs a projector (got projector=None).")
  if not isinstance(dino_head_gain, (bool, np.bool_)):
    raise ValueError(f"dino_head_gain must be a bool, got {dino_head_gain!r}.")
  if dino_head_gain and not dino_head:
    raise ValueError("dino_head_gain needs a DINO head (dino_head > 0).")
  return SSLModel(backbone=net, projector=head, predictor=pred,
                  prototypes=int(prototypes), dino_head=int(dino_head),
                  dino_head_gain=bool(dino_head_gain))


def normalize_prototypes(params: Any) -> Any:
  """``params`` with the rows of ``params["prototypes"]`` scaled to unit norm.

  SwAV re-normalises its prototypes after every update; parameters without
  prototypes are returned unchanged.
  """
  if not isinstance(params, Mapping) or "prototypes" not in params:
    return params
  return {**params, "prototypes": _unit_rows(params["prototypes"])}


# ------------------------------------------------------- pure applications


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module) -> Callable[..., Any]:
  # One compiled initialiser per model: re-initialising (another seed, the same
  # shapes) reuses it instead of compiling the random-number graph again.
  return jax.jit(lambda key, x: model.init(key, x, train=False,
                                           mutable=["params", "batch_stats"]))


def init_variables(model: SSLModel, key: jax.Array, x: jax.Array) -> dict[str, Any]:
  """Initialise ``{"params", "batch_stats"}`` from an example batch ``x``.

  Only ``x``'s shape (minus the batch size) and dtype matter; BatchNorm running
  statistics start at mean 0, variance 1. Jitted (and the compiled initialiser is
  cached per model), so large nets initialise fast;
  ``jax.eval_shape(lambda k: init_variables(model, k, x), key)`` gives the shapes for
  free.

  Args:
    model: an :class:`SSLModel` (or any module taking ``(x, *, train)``).
    key: a PRNG key.
    x: ``[n, ...]`` float example input.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` is ``{}`` without BN).
  """
  _validate.check_float(x, "x")
  if np.ndim(x) < 2:
    raise ValueError(f"x must be a batch [n, ...], got shape {np.shape(x)}.")
  if np.ndim(x) == 4:  # images: one is enough (eval-mode BN), keeps init cheap
    x = x[:1]
  try:
    init = _jitted_init(model)
  except TypeError:  # an unhashable module
    init = _jitted_init.__wrapped__(model)
  variables = init(key, x)
  return {"params": variables["params"],
          "batch_stats": variables.get("batch_stats", {})}


def _check_output(model: SSLModel, output: str) -> None:
  _validate.check_choice(output, model.outputs() if isinstance(model, SSLModel)
                         else OUTPUTS, "output")


def make_apply_fn(model: SSLModel, output: str | Sequence[str] = "rep"
                  ) -> Callable[[Any, jax.Array], Any]:
  """Pure eval-mode ``apply_fn(variables, x) -> [n, k]`` for one output.

  BatchNorm uses its running statistics; nothing is mutated. Not jitted (compose it
  under your own ``jit``/``vmap``/``jacfwd``).

  Args:
    model: an :class:`SSLModel`.
    output: "rep", "proj", "pred" or "dino"; or a sequence of them, and then
      ``apply_fn`` returns ``{name: [n, k_name]}`` from one forward pass (the
      network runs once, up to the deepest output asked for).
  """
  if isinstance(output, str):
    _check_output(model, output)

    def apply_fn(variables, x):
      return model.apply(variables, x, train=False, upto=output)[output]
    return apply_fn
  names = tuple(output)
  if not names:
    raise ValueError("output is an empty sequence: name at least one output.")
  for name in names:
    _check_output(model, name)
  # The heads after the projector ("pred", "dino") are siblings: asking for both
  # needs the whole network.
  heads = {"pred", "dino"} & set(names)
  upto = None if len(heads) > 1 else max(names, key=OUTPUTS.index)

  def apply_all(variables, x):
    out = model.apply(variables, x, train=False, upto=upto)
    return {name: out[name] for name in names}
  return apply_all


def single_input_fn(model: SSLModel, variables: Any, output: str = "rep"
                    ) -> Callable[[jax.Array], jax.Array]:
  """``fn(x_one) -> [k]`` on one unbatched input (e.g. ``[H, W, C]``), eval mode.

  The form ``sslit.cpa`` differentiates: ``jax.jacfwd(fn)(x_one)`` is the slope.
  """
  apply_fn = make_apply_fn(model, output)

  def fn(x_one):
    return apply_fn(variables, x_one[None])[0]
  return fn


def _flatten_sown(tree: Any, prefix: str = "") -> dict[str, jax.Array]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, tuple):  # sow appends one entry per call
      if len(value) == 1:
        flat[path] = value[0]
      else:
        for i, v in enumerate(value):
          flat[f"{path}/{i}"] = v
    elif isinstance(value, Mapping):
      flat.update(_flatten_sown(value, path))
    else:
      flat[path] = value
  return flat


def preactivation_fn(model: SSLModel, variables: Any, output: str = "rep"
                     ) -> Callable[[jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
  """``fn(x_one) -> (z [k], pre)`` with every recorded pre-activation of one input.

  ``pre`` maps a flat path (e.g. ``"backbone/layer1_0/relu1"``) to the unbatched
  array recorded there: float arrays are inputs of ReLU/leaky-ReLU/abs (their sign
  pattern is the activation region), int32 arrays are max-pool window argmaxes.
  Only the layers that ``output`` depends on are included. Eval mode.
  """
  _check_output(model, output)

  def fn(x_one):
    out, state = model.apply(variables, x_one[None], train=False, upto=output,
                             mutable=[PREACTIVATIONS])
    pre = _flatten_sown(state.get(PREACTIVATIONS, {}))
    return out[output][0], {k: v[0] for k, v in pre.items()}
  return fn


def param_count(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays (or ``ShapeDtypeStruct``)."""
  return int(sum(int(np.prod(getattr(leaf, "shape", np.shape(leaf))))
                 for leaf in jax.tree_util.tree_leaves(tree)))
