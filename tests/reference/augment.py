"""Float64 NumPy / PIL / SciPy references for sslit.augment (never imports sslit).

Each function follows the published definition it names (torchvision's transforms,
PIL's resampling), written the slow, obvious way.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import scipy.ndimage
from PIL import Image, ImageOps

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L")


def hflip(img: np.ndarray) -> np.ndarray:
  """Mirror ``[H, W, C]`` left-right."""
  return np.asarray(img)[:, ::-1]


def grayscale(img: np.ndarray) -> np.ndarray:
  """``[H, W, 3] -> [H, W, 1]`` luma."""
  img = np.asarray(img, np.float64)
  if img.shape[-1] == 1:
    return img
  return (LUMA[0] * img[..., 0] + LUMA[1] * img[..., 1]
          + LUMA[2] * img[..., 2])[..., None]


def pil_grayscale_uint8(img: np.ndarray) -> np.ndarray:
  """PIL's own ``convert("L")`` of a uint8 RGB image, ``[H, W, 1]`` uint8."""
  return np.asarray(Image.fromarray(img, "RGB").convert("L"))[..., None]


def pil_solarize_uint8(img: np.ndarray, threshold: int) -> np.ndarray:
  """PIL's ``ImageOps.solarize`` (inverts pixels >= threshold), per channel."""
  chans = [np.asarray(ImageOps.solarize(Image.fromarray(img[..., c], "L"),
                                        threshold)) for c in range(img.shape[-1])]
  return np.stack(chans, axis=-1)


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
  img = np.asarray(img, np.float64)
  return np.where(img >= threshold, 1.0 - img, img)


def pil_resized_crop(img: np.ndarray, box, size) -> np.ndarray:
  """``PIL.Image.crop(box).resize(size, BILINEAR)`` on float32 ("F") channels.

  Args:
    img: ``[H, W, C]`` float.
    box: ``(top, left, h, w)`` integers.
    size: output ``(H', W')``.
  """
  top, left, h, w = (int(round(float(b))) for b in box)
  out = []
  for c in range(img.shape[-1]):
    ch = Image.fromarray(np.ascontiguousarray(img[..., c], np.float32))
    ch = ch.crop((left, top, left + w, top + h))
    ch = ch.resize((size[1], size[0]), Image.BILINEAR)
    out.append(np.asarray(ch, np.float64))
  return np.stack(out, axis=-1)


def crop_box(u, height, width, scale, ratio, tries=10):
  """torchvision ``RandomResizedCrop.get_params`` as its Python loop, driven by ``u``.

  ``u`` holds ``tries`` uniforms for the area, ``tries`` for the log aspect ratio,
  then one each for the top and left offsets. Returns ``(top, left, h, w)``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for t in range(tries):
    target_area = area * (scale[0] + (scale[1] - scale[0]) * float(u[t]))
    aspect = math.exp(log_ratio[0]
                      + (log_ratio[1] - log_ratio[0]) * float(u[tries + t]))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if 0 < w <= width and 0 < h <= height:
      i = math.floor(float(u[2 * tries]) * (height - h + 1))
      j = math.floor(float(u[2 * tries + 1]) * (width - w + 1))
      return i, j, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = round(w / min(ratio))
  elif in_ratio > max(ratio):
    h = height
    w = round(h * max(ratio))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def gaussian_kernel(sigma: float, size: int) -> np.ndarray:
  t = np.arange(size) - size // 2
  k = np.exp(-t.astype(np.float64) ** 2 / (2.0 * sigma ** 2))
  return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float, size: int) -> np.ndarray:
  """Direct 2-D convolution with the outer-product kernel, reflect padding."""
  img = np.asarray(img, np.float64)
  k1 = gaussian_kernel(sigma, size)
  k2 = np.outer(k1, k1)
  r = size // 2
  pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
  out = np.zeros_like(img)
  for di in range(size):
    for dj in range(size):
      out += k2[di, dj] * pad[di:di + img.shape[0], dj:dj + img.shape[1]]
  return out


def gaussian_blur_scipy(img: np.ndarray, sigma: float, size: int) -> np.ndarray:
  """The same filter through ``scipy.ndimage.correlate1d`` ("mirror" = torch reflect)."""
  k = gaussian_kernel(sigma, size)
  out = scipy.ndimage.correlate1d(np.asarray(img, np.float64), k, axis=0,
                                  mode="mirror")
  return scipy.ndimage.correlate1d(out, k, axis=1, mode="mirror")


def adjust_brightness(img, factor):
  return np.clip(np.asarray(img, np.float64) * factor, 0.0, 1.0)


def adjust_contrast(img, factor):
  img = np.asarray(img, np.float64)
  mean = grayscale(img).mean()
  return np.clip(factor * img + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(img, factor):
  img = np.asarray(img, np.float64)
  if img.shape[-1] == 1:
    return img
  return np.clip(factor * img + (1.0 - factor) * grayscale(img), 0.0, 1.0)


def adjust_hue(img, shift):
  """Per-pixel ``colorsys`` HSV round trip with ``h -> (h + shift) mod 1``."""
  img = np.asarray(img, np.float64)
  if img.shape[-1] == 1:
    return img
  out = np.empty_like(img)
  for i in range(img.shape[0]):
    for j in range(img.shape[1]):
      h, s, v = colorsys.rgb_to_hsv(*img[i, j])
      out[i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return out


JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def pipeline(img, p, *, out_size, kernel_size, threshold=0.5):
  """One view from drawn parameters ``p`` (numpy scalars), SimCLR's order.

  ``p``: box, flip, jitter, brightness, contrast, saturation, hue, order,
  grayscale, blur, sigma, solarize.
  """
  x = pil_resized_crop(np.asarray(img, np.float64), p["box"], out_size)
  if p["flip"]:
    x = hflip(x)
  if p["jitter"]:
    factors = (p["brightness"], p["contrast"], p["saturation"], p["hue"])
    for op in p["order"]:
      x = JITTER[int(op)](x, float(factors[int(op)]))
  if p["grayscale"] and x.shape[-1] == 3:
    x = np.repeat(grayscale(x), 3, axis=-1)
  if p["blur"]:
    x = gaussian_blur(x, float(p["sigma"]), kernel_size)
  if p["solarize"]:
    x = solarize(x, threshold)
  return x
