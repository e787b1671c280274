"""Keyed, on-device view generation for self-supervised learning.

Pure functions of ``(key, images, cfg)``, vmapped over the batch and jittable with the
config static (:class:`AugmentConfig` is a frozen, hashable dataclass). The pipeline,
in the order of the SimCLR/BYOL/VICReg torchvision recipes:

1. random resized crop (torchvision's box sampler) + bilinear resize to
   ``image_size`` + horizontal flip, all as one separable linear map per sample,
   ``out = R_y @ img @ R_xᵀ`` (the flip reverses the rows of ``R_x``);
2. color jitter (brightness, contrast, saturation, hue), applied with ``jitter_prob``,
   in a random order per sample (torchvision's and SimCLR's behaviour) or the fixed
   order brightness, contrast, saturation, hue;
3. grayscale (ITU-R 601-2 luma, replicated to 3 channels) with ``grayscale_prob``;
4. Gaussian blur with a per-sample sigma, a separable reflect-padded filter written as
   ``B_y @ img @ B_xᵀ``, with ``blur_prob``;
5. solarization (``x >= threshold -> 1 - x``) with ``solarize_prob``.

Images are ``[n, H, W, C]`` with ``C`` 1 or 3, uint8 (divided by 255) or float in
[0, 1]; views are float32 in [0, 1]. For ``C = 1`` saturation, hue and grayscale are
identities. Normalisation (mean/std) is not done here.

Both views of a training step come from one key folded with the step number, inside
the jitted step::

  step_key = jax.random.fold_in(key, step)
  x_a, x_b = two_views(step_key, batch["image"], cfg_a, cfg_b)

Multi-crop (SwAV, DINO): :func:`multi_crop_configs` turns a preset into two global
crops at the full size and a local-crop config at a smaller size, and
:func:`multi_crop_views` draws them all from one key::

  cfgs = multi_crop_configs("byol", image_size=32, local_size=16)
  global_views, local_views = multi_crop_views(step_key, images, *cfgs, num_local=6)

This module imports only jax and numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate

__all__ = [
    "AugmentConfig", "PRESETS", "preset", "augment_batch", "two_views",
    "multi_crop_configs", "multi_crop_views",
    "sample_params", "apply_params", "sample_crop_box", "resize_matrix",
    "resized_crop", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "adjust_hue", "rgb_to_grayscale", "gaussian_kernel1d", "gaussian_blur",
    "solarize", "default_blur_kernel_size",
]

# ITU-R 601-2 luma weights, as PIL's convert("L").
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_CROP_TRIES = 10


def _pair(value: Any, name: str) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a pair (low, high), got {value!r}.") from None
  if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
    raise ValueError(f"{name} must be a pair with low <= high, got {value!r}.")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Static description of one view's augmentation (hashable: a ``jit`` static arg).

  The defaults do nothing; :func:`preset` gives the published recipes.

  Attributes:
    image_size: output ``(H', W')`` (an int means square); None keeps the input size.
    crop_scale: ``(low, high)`` area fraction of the random resized crop, or None for
      no crop (the whole image is resized to ``image_size``).
    crop_ratio: ``(low, high)`` aspect ratio (width / height), sampled log-uniformly.
    flip_prob: probability of a horizontal flip.
    jitter_prob: probability of applying color jitter.
    brightness, contrast, saturation: factor drawn from
      ``[max(0, 1 - s), 1 + s]``; 0 disables the operation.
    hue: shift drawn from ``[-hue, hue]`` (fraction of a turn, at most 0.5).
    jitter_order: "random" (a random permutation per sample) or "fixed"
      (brightness, contrast, saturation, hue).
    grayscale_prob: probability of converting to grayscale (RGB only).
    blur_prob: probability of a Gaussian blur.
    blur_sigma: ``(low, high)`` range of the blur's standard deviation, pixels.
    blur_kernel_size: odd kernel size; None: ``default_blur_kernel_size`` of the
      output size (10 % of it, made odd, at least 3 — SimCLR's choice).
    solarize_prob: probability of solarization.
    solarize_threshold: pixels ``>= threshold`` are inverted.
  """
  image_size: Any = None
  crop_scale: Any = None
  crop_ratio: Any = (3 / 4, 4 / 3)
  flip_prob: float = 0.0
  jitter_prob: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0
  jitter_order: str = "random"
  grayscale_prob: float = 0.0
  blur_prob: float = 0.0
  blur_sigma: Any = (0.1, 2.0)
  blur_kernel_size: int | None = None
  solarize_prob: float = 0.0
  solarize_threshold: float = 0.5

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    if self.image_size is not None:
      size = self.image_size
      size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
      if len(size) != 2 or any(int(s) != s or int(s) <= 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (H, W), got "
                         f"{self.image_size!r}.")
      set_("image_size", (int(size[0]), int(size[1])))
    if self.crop_scale is not None:
      lo, hi = _pair(self.crop_scale, "crop_scale")
      if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got "
                         f"{self.crop_scale!r}.")
      set_("crop_scale", (lo, hi))
    lo, hi = _pair(self.crop_ratio, "crop_ratio")
    if lo <= 0:
      raise ValueError(f"crop_ratio must be positive, got {self.crop_ratio!r}.")
    set_("crop_ratio", (lo, hi))
    for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob",
                 "solarize_prob"):
      p = float(getattr(self, name))
      if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
      set_(name, p)
    for name in ("brightness", "contrast", "saturation", "hue"):
      s = float(getattr(self, name))
      if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"{name} must be >= 0, got {s}.")
      set_(name, s)
    if self.hue > 0.5:
      raise ValueError(f"hue must be in [0, 0.5], got {self.hue}.")
    _validate.check_choice(self.jitter_order, ("random", "fixed"), "jitter_order")
    lo, hi = _pair(self.blur_sigma, "blur_sigma")
    if lo <= 0:
      raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma!r}.")
    set_("blur_sigma", (lo, hi))
    k = self.blur_kernel_size
    if k is not None and (int(k) != k or k < 1 or k % 2 == 0):
      raise ValueError(f"blur_kernel_size must be a positive odd int, got {k!r}.")
    set_("solarize_threshold", float(self.solarize_threshold))


def _views(**kw) -> AugmentConfig:
  return AugmentConfig(**kw)


def preset(name: str, *, image_size: int | tuple[int, int] | None,
           options: Mapping[str, Any] | None = None
           ) -> tuple[AugmentConfig, AugmentConfig]:
  """The two views' configs of a published recipe.

  - "simclr" (Chen et al. 2020): crop 0.08-1, flip, jitter p=0.8 with
    (0.8, 0.8, 0.8, 0.2), grayscale p=0.2, blur p=0.5 on both views.
  - "byol" (Grill et al. 2020) and "vicreg" (Bardes et al. 2022, same recipe):
    crop 0.08-1, flip, jitter p=0.8 with (0.4, 0.4, 0.2, 0.1), grayscale 0.2,
    asymmetric blur p=1.0 / 0.1 and solarization p=0 / 0.2.
  - "fashion_mnist" (the project's, for 28x28 grayscale): crop 0.08-1, flip,
    brightness/contrast jitter 0.4 with p=0.8, on both views.
  - "none": no augmentation (only the resize to ``image_size``).

  Args:
    name: one of ``PRESETS``.
    image_size: output size (int or ``(H, W)``; None: the input's).
    options: :class:`AugmentConfig` fields set to these values in both views, e.g.
      ``{"crop_scale": (0.2, 1.0), "solarize_prob": 0.2}`` (lists become tuples).

  Returns:
    ``(cfg_a, cfg_b)``.

  Raises:
    ValueError: an unknown preset or option name, or a bad option value.
  """
  _validate.check_choice(name, PRESETS, "augmentation preset")
  cfg_a, cfg_b = _preset(name, image_size)
  if not options:
    return cfg_a, cfg_b
  fields = [f.name for f in dataclasses.fields(AugmentConfig)]
  unknown = sorted(set(options) - set(fields))
  if unknown:
    raise ValueError(f"unknown augmentation option(s) {unknown}; the options are the "
                     f"fields of sslit.augment.AugmentConfig: {fields}.")
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  return (dataclasses.replace(cfg_a, **values), dataclasses.replace(cfg_b, **values))


def _preset(name, image_size):
  common = dict(image_size=image_size, crop_scale=(0.08, 1.0), flip_prob=0.5,
                jitter_prob=0.8)
  if name == "simclr":
    cfg = _views(**common, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                 grayscale_prob=0.2, blur_prob=0.5)
    return cfg, cfg
  if name in ("byol", "vicreg"):
    jitter = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                  grayscale_prob=0.2)
    return (_views(**common, **jitter, blur_prob=1.0, solarize_prob=0.0),
            _views(**common, **jitter, blur_prob=0.1, solarize_prob=0.2))
  if name == "fashion_mnist":
    cfg = _views(**common, brightness=0.4, contrast=0.4)
    return cfg, cfg
  cfg = _views(image_size=image_size)
  return cfg, cfg


PRESETS = ("simclr", "vicreg", "byol", "fashion_mnist", "none")


# ------------------------------------------------------------- primitives


def _crop_box_from_uniforms(u: jax.Array, height: int, width: int,
                            scale: tuple[float, float],
                            ratio: tuple[float, float]) -> jax.Array:
  """torchvision's box sampler driven by ``2 * _CROP_TRIES + 2`` uniforms in [0, 1)."""
  area = float(height * width)
  u_s, u_r = u[:_CROP_TRIES], u[_CROP_TRIES:2 * _CROP_TRIES]
  u_i, u_j = u[2 * _CROP_TRIES], u[2 * _CROP_TRIES + 1]
  target = area * (scale[0] + (scale[1] - scale[0]) * u_s)
  lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(lr0 + (lr1 - lr0) * u_r)
  w = jnp.round(jnp.sqrt(target * aspect))
  h = jnp.round(jnp.sqrt(target / aspect))
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(ok)
  w, h = w[first], h[first]
  top = jnp.floor(u_i * (height - h + 1))
  left = jnp.floor(u_j * (width - w + 1))
  # Fallback: central crop with the aspect ratio clamped to `ratio`.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    fw, fh = round(height * max(ratio)), height
  else:
    fw, fh = width, height
  fb = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.float32)
  box = jnp.stack([top, left, h, w]).astype(jnp.float32)
  return jnp.where(jnp.any(ok), box, fb)


def sample_crop_box(key: jax.Array, height: int, width: int, *,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """torchvision's ``RandomResizedCrop.get_params``, vectorised: one box.

  Ten candidates ``area = H W U(scale)``, ``aspect = exp(U(log ratio))``,
  ``w = round(sqrt(area aspect))``, ``h = round(sqrt(area / aspect))``; the first that
  fits is placed uniformly (``top = floor(U (H - h + 1))``); if none fits, the
  central crop with the aspect ratio clamped to ``ratio``.

  Returns:
    float32 ``[4]``: ``(top, left, h, w)``, integer-valued.
  """
  u = jax.random.uniform(key, (2 * _CROP_TRIES + 2,))
  return _crop_box_from_uniforms(u, height, width, tuple(scale), tuple(ratio))


def resize_matrix(start: jax.Array, length: jax.Array, in_size: int,
                  out_size: int) -> jax.Array:
  """``[out_size, in_size]`` bilinear weights of PIL's crop-then-resize along one axis.

  Output pixel ``i`` has centre ``c_i = start + (i + 1/2) length / out_size``; input
  pixel ``j`` in ``[start, start + length)`` gets weight
  ``max(0, 1 - |j + 1/2 - c_i| / s)``, ``s = max(1, length / out_size)`` (PIL's
  antialiased triangle filter when downscaling), and each row is normalised.
  """
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(length, jnp.float32)
  scale = length / out_size
  support = jnp.maximum(scale, 1.0)
  centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
  j = jnp.arange(in_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(j[None] + 0.5 - centre[:, None]) / support)
  inside = (j >= start) & (j < start + length)
  w = jnp.where(inside[None], w, 0.0)
  return w / jnp.sum(w, axis=1, keepdims=True)


def _sandwich(ry: jax.Array, x: jax.Array, rx: jax.Array) -> jax.Array:
  """``ry @ x @ rxᵀ`` per channel: ``[p, h] x [h, w, c] x [q, w] -> [p, q, c]``."""
  # Full float32 on every backend (no TF32/bf16 passes): the matrices are small and
  # a flip or an identity crop must stay exact.
  return jnp.einsum("ph,hwc,qw->pqc", ry, x, rx,
                    precision=jax.lax.Precision.HIGHEST)


def resized_crop(image: jax.Array, box: jax.Array, size: tuple[int, int], *,
                 flip: jax.Array | bool = False) -> jax.Array:
  """Crop ``box = (top, left, h, w)`` of ``image [H, W, C]`` and resize it to ``size``.

  Bilinear, as PIL's ``img.crop(box).resize(size[::-1], BILINEAR)`` on float images;
  ``flip`` mirrors the result horizontally (exactly).
  """
  h_in, w_in = image.shape[0], image.shape[1]
  ry = resize_matrix(box[0], box[2], h_in, size[0])
  rx = resize_matrix(box[1], box[3], w_in, size[1])
  rx = jnp.where(flip, rx[::-1], rx)
  return _sandwich(ry, image, rx)


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
  """Luma ``0.299 R + 0.587 G + 0.114 B`` of ``[..., 3]`` -> ``[..., 1]`` (C=1: as is)."""
  if image.shape[-1] == 1:
    return image
  # Written with slices: XLA:CPU reduces a size-3 minor axis slowly.
  return (GRAY_WEIGHTS[0] * image[..., 0:1] + GRAY_WEIGHTS[1] * image[..., 1:2]
          + GRAY_WEIGHTS[2] * image[..., 2:3])


def _blend(image: jax.Array, alpha: jax.Array, beta: jax.Array,
           gamma: jax.Array) -> jax.Array:
  """``clip(alpha x + beta gray(x) + gamma mean(gray(x)), 0, 1)``: every affine jitter."""
  gray = rgb_to_grayscale(image)
  out = alpha * image + beta * gray + gamma * jnp.mean(gray)
  return jnp.clip(out, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """``clip(factor x, 0, 1)`` (torchvision)."""
  return _blend(image, factor, 0.0, 0.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """``clip(factor x + (1 - factor) mean(gray(x)), 0, 1)``, mean over the image."""
  return _blend(image, factor, 0.0, 1.0 - factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """``clip(factor x + (1 - factor) gray(x), 0, 1)``, per pixel (C=1: identity)."""
  if image.shape[-1] == 1:
    return image
  return _blend(image, factor, 1.0 - factor, 0.0)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """Rotate the HSV hue by ``shift`` turns: ``h -> (h + shift) mod 1`` (C=1: identity).

  The HSV round trip of torchvision's ``adjust_hue`` (value and chroma are kept,
  only the hue moves), written with elementwise arithmetic only.
  """
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  minc = jnp.minimum(jnp.minimum(r, g), b)
  delta = maxc - minc
  safe = jnp.where(delta > 0, delta, 1.0)
  # Hue in sixths of a turn, in [-1, 5): sector offset + position inside the sector.
  is_r, is_g = maxc == r, maxc == g
  num = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
  h6 = jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0)) + num / safe + 6.0 * shift

  # HSV -> RGB without branches: channel n is V - V S clip(min(k, 4 - k), 0, 1) with
  # k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B; and V S = max - min.
  def channel(n):
    k = n + h6
    k = k - 6.0 * jnp.floor(k / 6.0)
    return maxc - delta * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def gaussian_kernel1d(sigma: jax.Array, size: int) -> jax.Array:
  """Normalised ``exp(-t² / 2σ²)`` for ``t = -(size//2) .. size//2`` (torchvision)."""
  t = jnp.arange(size, dtype=jnp.float32) - (size // 2)
  w = jnp.exp(-0.5 * (t / sigma) ** 2)
  return w / jnp.sum(w)


@functools.lru_cache(maxsize=64)
def _reflect_shifts(n: int, size: int) -> np.ndarray:
  """Static ``[size, n, n]`` one-hots: ``P[t][i, reflect(i + t - size//2)] = 1``."""
  r = size // 2
  p = np.zeros((size, n, n), np.float32)
  for t in range(size):
    idx = np.arange(n) + t - r
    idx = np.abs(idx)  # reflect without repeating the edge (torch/numpy "reflect")
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    p[t, np.arange(n), idx] = 1.0
  return p


def _blur_matrix(sigma: jax.Array, n: int, size: int) -> jax.Array:
  """``[n, n]`` matrix of the reflect-padded 1-D Gaussian filter."""
  return jnp.einsum("t,tij->ij", gaussian_kernel1d(sigma, size),
                    jnp.asarray(_reflect_shifts(n, size)),
                    precision=jax.lax.Precision.HIGHEST)


def default_blur_kernel_size(image_size: tuple[int, int]) -> int:
  """SimCLR's kernel: 10 % of the larger side, made odd, at least 3."""
  k = int(0.1 * max(image_size))
  k = k + 1 if k % 2 == 0 else k
  return max(k, 3)


def gaussian_blur(image: jax.Array, sigma: jax.Array, *,
                  kernel_size: int) -> jax.Array:
  """Separable Gaussian blur of ``[H, W, C]`` with reflect padding (torchvision).

  ``out = B_H img B_Wᵀ`` with ``B_n[i, j] = Σ_t k_t [reflect(i + t) = j]``; cost
  ``O(H W (H + W) C)``, no gathers.
  """
  h, w = image.shape[0], image.shape[1]
  if kernel_size // 2 >= min(h, w):
    raise ValueError(f"blur kernel_size {kernel_size} is too large for an image of "
                     f"{h}x{w}; it must be < 2 * min(H, W).")
  return _sandwich(_blur_matrix(sigma, h, kernel_size), image,
                   _blur_matrix(sigma, w, kernel_size))


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
  """``x -> 1 - x`` where ``x >= threshold``."""
  return jnp.where(image >= threshold, 1.0 - image, image)


# --------------------------------------------------------------- pipeline


def _output_size(cfg: AugmentConfig, image_shape) -> tuple[int, int]:
  return cfg.image_size if cfg.image_size is not None else (int(image_shape[0]),
                                                            int(image_shape[1]))


def _check_images(images: Any, name: str = "images") -> None:
  _validate.check_rank(images, 4, name, layout="[n, H, W, C]")
  dtype = images.dtype
  if not (dtype == jnp.uint8 or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"{name} must be uint8 or float in [0, 1], got dtype {dtype}.")
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must have 1 or 3 channels (NHWC), got shape "
                     f"{tuple(images.shape)}.")


_N_UNIFORMS = 2 * _CROP_TRIES + 2 + 15


def _sample_one(key: jax.Array, cfg: AugmentConfig, height: int,
                width: int) -> dict[str, jax.Array]:
  # One draw of all the uniforms a sample needs: each jax.random call is a separate
  # threefry graph, and a dozen of them made compilation several times slower.
  u = jax.random.uniform(key, (_N_UNIFORMS,))
  n_crop = 2 * _CROP_TRIES + 2
  v = u[n_crop:]
  p = {}
  if cfg.crop_scale is not None:
    p["box"] = _crop_box_from_uniforms(u[:n_crop], height, width, cfg.crop_scale,
                                       cfg.crop_ratio)
  else:
    p["box"] = jnp.array([0.0, 0.0, height, width], jnp.float32)
  p["flip"] = v[0] < cfg.flip_prob
  p["jitter"] = v[1] < cfg.jitter_prob

  def factor(ui, s):
    lo = max(0.0, 1.0 - s)
    return lo + (1.0 + s - lo) * ui
  p["brightness"] = factor(v[2], cfg.brightness)
  p["contrast"] = factor(v[3], cfg.contrast)
  p["saturation"] = factor(v[4], cfg.saturation)
  p["hue"] = cfg.hue * (2.0 * v[5] - 1.0)
  if cfg.jitter_order == "random":
    p["order"] = jnp.argsort(v[6:10]).astype(jnp.int32)
  else:
    p["order"] = jnp.arange(4, dtype=jnp.int32)
  p["grayscale"] = v[10] < cfg.grayscale_prob
  p["blur"] = v[11] < cfg.blur_prob
  p["sigma"] = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * v[12]
  p["solarize"] = v[13] < cfg.solarize_prob
  return p


def sample_params(key: jax.Array, cfg: AugmentConfig, *, batch_size: int,
                  image_shape: tuple[int, ...]) -> dict[str, jax.Array]:
  """Draw every random choice of a batch's views, one key per sample.

  Returns:
    dict of ``[n, ...]`` arrays: ``box`` ``[n, 4]`` (top, left, h, w in input
    pixels), ``flip``, ``jitter``, ``grayscale``, ``blur``, ``solarize`` (bool),
    ``brightness``, ``contrast``, ``saturation`` (factors), ``hue`` (shift),
    ``order`` ``[n, 4]`` (indices into ``JITTER_OPS``, applied left to right),
    ``sigma`` (blur).
  """
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: _sample_one(k, cfg, int(image_shape[0]),
                                        int(image_shape[1])))(keys)


def _jitter(x: jax.Array, p: dict[str, jax.Array], cfg: AugmentConfig) -> jax.Array:
  # Brightness, contrast and saturation are one affine "blend" each; row 3 (hue) is
  # the identity blend. Slots before the hue's position run before it, the rest after,
  # so the costly hue rotation is computed once whatever the order.
  one, zero = jnp.float32(1), jnp.float32(0)
  c, s = p["contrast"], p["saturation"]
  table = jnp.stack([
      jnp.stack([p["brightness"], zero, zero]),
      jnp.stack([c, zero, one - c]),
      jnp.stack([s, one - s, zero]) if x.shape[-1] == 3
      else jnp.stack([one, zero, zero]),
      jnp.stack([one, zero, zero])])
  slots = table[p["order"]]  # [4, 3]
  identity = jnp.array([1.0, 0.0, 0.0], jnp.float32)
  use_hue = x.shape[-1] == 3 and cfg.hue > 0
  if not use_hue:
    for k in range(4):
      x = _blend(x, *slots[k])
    return x
  hue_at = jnp.argmax(p["order"] == 3)
  for k in range(4):
    x = _blend(x, *jnp.where(k < hue_at, slots[k], identity))
  x = adjust_hue(x, p["hue"])
  for k in range(4):
    x = _blend(x, *jnp.where(k > hue_at, slots[k], identity))
  return x


def _apply_one(x: jax.Array, p: dict[str, jax.Array], cfg: AugmentConfig,
               out_size: tuple[int, int]) -> jax.Array:
  h, w, c = x.shape
  geometric = cfg.crop_scale is not None or out_size != (h, w)
  if geometric:
    x = resized_crop(x, p["box"], out_size, flip=p["flip"])
  elif cfg.flip_prob > 0:
    x = jnp.where(p["flip"], x[:, ::-1], x)
  if cfg.jitter_prob > 0 and (cfg.brightness or cfg.contrast or cfg.saturation
                              or cfg.hue):
    x = jnp.where(p["jitter"], _jitter(x, p, cfg), x)
  if cfg.grayscale_prob > 0 and c == 3:
    x = jnp.where(p["grayscale"], jnp.broadcast_to(rgb_to_grayscale(x), x.shape), x)
  if cfg.blur_prob > 0:
    size = cfg.blur_kernel_size or default_blur_kernel_size(out_size)
    eye_h, eye_w = jnp.eye(out_size[0]), jnp.eye(out_size[1])
    by = jnp.where(p["blur"], _blur_matrix(p["sigma"], out_size[0], size), eye_h)
    bx = jnp.where(p["blur"], _blur_matrix(p["sigma"], out_size[1], size), eye_w)
    x = _sandwich(by, x, bx)
  if cfg.solarize_prob > 0:
    x = jnp.where(p["solarize"], solarize(x, cfg.solarize_threshold), x)
  # Blur and hue are convex/exact only up to rounding: keep [0, 1] exactly.
  return jnp.clip(x, 0.0, 1.0)


def _to_float(images: jax.Array) -> jax.Array:
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def apply_params(images: jax.Array, params: dict[str, jax.Array],
                 cfg: AugmentConfig) -> jax.Array:
  """Apply drawn ``params`` (see :func:`sample_params`) to ``images [n, H, W, C]``."""
  _check_images(images)
  out_size = _output_size(cfg, images.shape[1:])
  if cfg.blur_prob > 0:
    size = cfg.blur_kernel_size or default_blur_kernel_size(out_size)
    if size // 2 >= min(out_size):
      raise ValueError(f"blur_kernel_size {size} is too large for output size "
                       f"{out_size}.")
  x = _to_float(images)
  return jax.vmap(lambda xi, pi: _apply_one(xi, pi, cfg, out_size))(x, params)


def augment_batch(key: jax.Array, images: jax.Array,
                  cfg: AugmentConfig) -> jax.Array:
  """One random view of every image.

  Args:
    key: PRNG key (``jax.random.key``); sample ``i`` uses ``split(key, n)[i]``.
    images: ``[n, H, W, C]``, ``C`` in {1, 3}, uint8 or float in [0, 1].
    cfg: the view's :class:`AugmentConfig` (static under ``jit``).

  Returns:
    float32 ``[n, H', W', C]`` in [0, 1], ``(H', W') = cfg.image_size`` or ``(H, W)``.
  """
  _check_images(images)
  if not isinstance(cfg, AugmentConfig):
    raise TypeError(f"cfg must be an AugmentConfig, got {type(cfg).__name__}.")
  params = sample_params(key, cfg, batch_size=images.shape[0],
                         image_shape=images.shape[1:])
  return apply_params(images, params, cfg)


def two_views(key: jax.Array, images: jax.Array, cfg_a: AugmentConfig,
              cfg_b: AugmentConfig) -> tuple[jax.Array, jax.Array]:
  """Two independent views: ``augment_batch`` with the two halves of ``split(key)``."""
  key_a, key_b = jax.random.split(key)
  return augment_batch(key_a, images, cfg_a), augment_batch(key_b, images, cfg_b)


def multi_crop_configs(name: str, *, image_size: int | tuple[int, int],
                       local_size: int | tuple[int, int],
                       global_scale: tuple[float, float] = (0.4, 1.0),
                       local_scale: tuple[float, float] = (0.05, 0.4)
                       ) -> tuple[AugmentConfig, AugmentConfig, AugmentConfig]:
  """Configs of the multi-crop recipe (SwAV, DINO) built on a :func:`preset`.

  The two global crops are the preset's two views with ``crop_scale=global_scale``
  at ``image_size``; the local crop is the first view with ``crop_scale=local_scale``
  at ``local_size``, its blur probability capped at 0.5 and no solarization (DINO's
  local transform).

  Args:
    name: one of ``PRESETS``.
    image_size: global crop size (e.g. 32 for 32px inputs; 224 in the papers).
    local_size: local crop size (e.g. 16; 96 in the papers).
    global_scale: area fraction of the global crops ((0.4, 1) in DINO; SwAV's
      (0.14, 1) for 224px).
    local_scale: area fraction of the local crops ((0.05, 0.4) in DINO; SwAV's
      (0.05, 0.14)).

  Returns:
    ``(global_a, global_b, local)`` configs.
  """
  cfg_a, cfg_b = preset(name, image_size=image_size)
  replace = dataclasses.replace
  local = replace(cfg_a, image_size=local_size, crop_scale=local_scale,
                  blur_prob=min(cfg_a.blur_prob, 0.5), solarize_prob=0.0)
  return (replace(cfg_a, crop_scale=global_scale),
          replace(cfg_b, crop_scale=global_scale), local)


def multi_crop_views(key: jax.Array, images: jax.Array, global_a: AugmentConfig,
                     global_b: AugmentConfig, local: AugmentConfig, *,
                     num_local: int) -> tuple[jax.Array, jax.Array]:
  """Two global crops and ``num_local`` local crops of every image, from one key.

  ``split(key, 2 + num_local)``: the first two keys give the global views
  (``augment_batch`` with ``global_a`` and ``global_b``), the others one local view
  each (``augment_batch`` with ``local``, vmapped over the keys). Jittable with the
  configs and ``num_local`` static.

  Args:
    key: PRNG key (``jax.random.key``).
    images: ``[n, H, W, C]``, ``C`` in {1, 3}, uint8 or float in [0, 1].
    global_a: config of the first global crop.
    global_b: config of the second global crop (same output size as ``global_a``).
    local: config of the local crops.
    num_local: number of local crops ``V >= 0``.

  Returns:
    ``(global_views, local_views)``: float32 ``[2, n, H_g, W_g, C]`` and
    ``[V, n, H_l, W_l, C]`` in [0, 1]. Feed ``concat`` of both, global first, as the
    ``m = 2 + V`` views of ``dino_loss``/``swav_loss``.
  """
  _check_images(images)
  for cfg in (global_a, global_b, local):
    if not isinstance(cfg, AugmentConfig):
      raise TypeError(f"configs must be AugmentConfig, got {type(cfg).__name__}.")
  size_a = _output_size(global_a, images.shape[1:])
  size_b = _output_size(global_b, images.shape[1:])
  if size_a != size_b:
    raise ValueError(f"the two global crops must have the same size, got {size_a} "
                     f"and {size_b}.")
  if not isinstance(num_local, (int, np.integer)) or num_local < 0:
    raise ValueError(f"num_local must be an int >= 0, got {num_local!r}.")
  keys = jax.random.split(key, 2 + int(num_local))
  global_views = jnp.stack([augment_batch(keys[0], images, global_a),
                            augment_batch(keys[1], images, global_b)])
  local_views = jax.vmap(lambda k: augment_batch(k, images, local))(keys[2:])
  return global_views, local_views
