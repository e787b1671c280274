"""Tests of sslit.augment against NumPy / PIL / SciPy references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslit import augment as aug
from tests.reference import augment as ref

KEY = jax.random.key(0)


def _rgb(rng, n=4, h=10, w=12, c=3):
  return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _np_params(params, i):
  return {k: np.asarray(v[i]) for k, v in params.items()}


# ---------------------------------------------------------- primitives


def test_flip_is_exact(rng):
  x = _rgb(rng)
  cfg = aug.AugmentConfig(flip_prob=1.0)
  out = aug.augment_batch(KEY, x, cfg)
  np.testing.assert_array_equal(out, x[:, :, ::-1].astype(np.float32) / 255)
  # folded into the resize matrix, the flip is still a mirror of the crop
  img = jnp.asarray(x[0], jnp.float32)
  box = jnp.array([1.0, 2.0, 7.0, 9.0])
  a = aug.resized_crop(img, box, (6, 5), flip=True)
  b = aug.resized_crop(img, box, (6, 5), flip=False)
  np.testing.assert_allclose(a, ref.hflip(np.asarray(b)), rtol=0, atol=1e-6)


def test_grayscale_weights_match_pil(rng):
  x = _rgb(rng, n=2)
  out = aug.augment_batch(KEY, x, aug.AugmentConfig(grayscale_prob=1.0))
  assert out.shape == x.shape
  for i in range(2):
    expect = ref.grayscale(x[i] / 255.0)
    np.testing.assert_allclose(out[i], np.repeat(expect, 3, -1), atol=1e-6)
    # PIL rounds to uint8: within half a grey level
    pil = ref.pil_grayscale_uint8(x[i]) / 255.0
    np.testing.assert_allclose(out[i, ..., :1], pil, atol=0.5 / 255 + 1e-6)


def test_solarize_threshold_matches_pil(rng):
  x = _rgb(rng, n=2)
  x[0, 0, :3, 0] = [127, 128, 129]  # around the threshold, both sides
  cfg = aug.AugmentConfig(solarize_prob=1.0, solarize_threshold=128 / 255)
  out = aug.augment_batch(KEY, x, cfg)
  for i in range(2):
    np.testing.assert_allclose(out[i], ref.pil_solarize_uint8(x[i], 128) / 255.0,
                               atol=1e-6)
  np.testing.assert_allclose(aug.solarize(jnp.array([0.49, 0.5, 0.9]), 0.5),
                             ref.solarize(np.array([0.49, 0.5, 0.9]), 0.5),
                             atol=1e-7)


@pytest.mark.parametrize("box,size", [
    ((0, 0, 10, 12), (10, 12)),   # identity
    ((2, 3, 5, 4), (10, 12)),     # upscaling, aspect change
    ((1, 0, 9, 12), (4, 5)),      # downscaling: PIL's antialiased triangle
    ((3, 5, 7, 7), (7, 7)),       # same size, shifted
])
def test_resized_crop_matches_pil(rng, box, size):
  img = rng.random((10, 12, 3)).astype(np.float32)
  out = aug.resized_crop(jnp.asarray(img), jnp.asarray(box, jnp.float32), size)
  np.testing.assert_allclose(out, ref.pil_resized_crop(img, box, size), atol=2e-5)


def test_crop_box_sampler_matches_torchvision_loop(rng):
  cases = [(10, 12, (0.08, 1.0), (3 / 4, 4 / 3)), (28, 28, (0.3, 1.0), (3 / 4, 4 / 3)),
           (8, 8, (0.9, 1.0), (3.0, 4.0)),    # nothing fits: ratio-clamped fallback
           (6, 20, (0.95, 1.0), (0.5, 0.6))]  # fallback on a wide image
  n = aug._CROP_TRIES * 2 + 2
  for h, w, scale, ratio in cases:
    u = rng.random((16, n)).astype(np.float32)
    got = jax.vmap(lambda ui: aug._crop_box_from_uniforms(ui, h, w, scale, ratio))(
        jnp.asarray(u))
    for i in range(16):
      np.testing.assert_array_equal(got[i], ref.crop_box(u[i], h, w, scale, ratio))


def test_blur_kernel_and_filter_match_direct_convolution(rng):
  np.testing.assert_allclose(aug.gaussian_kernel1d(0.7, 5),
                             ref.gaussian_kernel(0.7, 5), atol=1e-7)
  img = rng.random((9, 11, 3)).astype(np.float32)
  for sigma, size in [(0.5, 3), (1.3, 5), (2.0, 7)]:
    out = aug.gaussian_blur(jnp.asarray(img), sigma, kernel_size=size)
    np.testing.assert_allclose(out, ref.gaussian_blur(img, sigma, size), atol=1e-5)
    np.testing.assert_allclose(out, ref.gaussian_blur_scipy(img, sigma, size),
                               atol=1e-5)
  assert aug.default_blur_kernel_size((224, 224)) == 23
  assert aug.default_blur_kernel_size((28, 28)) == 3
  assert aug.default_blur_kernel_size((96, 96)) == 9


def test_color_jitter_ops_match_reference(rng):
  img = rng.random((5, 6, 3)).astype(np.float32)
  gray_img = img[..., :1]
  x = jnp.asarray(img)
  for f in (0.6, 1.4):
    np.testing.assert_allclose(aug.adjust_brightness(x, f),
                               ref.adjust_brightness(img, f), atol=1e-6)
    np.testing.assert_allclose(aug.adjust_contrast(x, f),
                               ref.adjust_contrast(img, f), atol=1e-6)
    np.testing.assert_allclose(aug.adjust_contrast(jnp.asarray(gray_img), f),
                               ref.adjust_contrast(gray_img, f), atol=1e-6)
    np.testing.assert_allclose(aug.adjust_saturation(x, f),
                               ref.adjust_saturation(img, f), atol=1e-6)
  for shift in (-0.3, 0.05, 0.45):
    np.testing.assert_allclose(aug.adjust_hue(x, shift), ref.adjust_hue(img, shift),
                               atol=1e-5)
  # C = 1: saturation and hue are identities
  np.testing.assert_array_equal(aug.adjust_saturation(jnp.asarray(gray_img), 0.3),
                                gray_img)
  np.testing.assert_array_equal(aug.adjust_hue(jnp.asarray(gray_img), 0.3), gray_img)


# ------------------------------------------------------------ pipeline

FULL = aug.AugmentConfig(
    image_size=(9, 8), crop_scale=(0.2, 1.0), flip_prob=0.5, jitter_prob=0.8,
    brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2, grayscale_prob=0.3,
    blur_prob=0.5, blur_sigma=(0.3, 1.5), blur_kernel_size=3, solarize_prob=0.4)


@jax.jit
def _full_views(key, x):
  """FULL's drawn parameters and views, one compilation shared by several tests."""
  params = aug.sample_params(key, FULL, batch_size=x.shape[0],
                             image_shape=x.shape[1:])
  return params, aug.augment_batch(key, x, FULL)


def test_full_pipeline_matches_reference_given_the_drawn_parameters(rng):
  x = _rgb(rng, n=8)
  params, out = _full_views(KEY, x)
  # the draw exercises the hue both first/last and between the other jitter ops
  hue_at = np.argmax(np.asarray(params["order"]) == 3, axis=1)[params["jitter"]]
  assert {0, 3} & set(hue_at) and {1, 2} & set(hue_at)
  assert out.shape == (8, 9, 8, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  for i in range(8):
    p = _np_params(params, i)
    expect = ref.pipeline(x[i] / 255.0, p, out_size=(9, 8), kernel_size=3)
    np.testing.assert_allclose(out[i], expect, atol=5e-5, err_msg=str(p))
  # determinism per key; another key (the step folded in) gives other views
  np.testing.assert_array_equal(_full_views(KEY, x)[1], out)
  other = _full_views(jax.random.fold_in(KEY, 1), x)[1]
  assert not np.allclose(other, out)


def test_grayscale_pipeline_matches_reference(rng):
  cfg, cfg_b = aug.preset("fashion_mnist", image_size=12)
  assert cfg == cfg_b
  x = rng.integers(0, 256, (6, 14, 14, 1), dtype=np.uint8)

  @jax.jit
  def views(key, x):
    params = aug.sample_params(key, cfg, batch_size=6, image_shape=x.shape[1:])
    return params, aug.apply_params(x, params, cfg)
  params, out = views(KEY, x)
  assert out.shape == (6, 12, 12, 1)
  for i in range(6):
    p = _np_params(params, i)
    np.testing.assert_allclose(
        out[i], ref.pipeline(x[i] / 255.0, p, out_size=(12, 12), kernel_size=3),
        atol=2e-5)


# Cheap to compile (no crop): used for jit = eager and the key structure.
CHEAP = aug.AugmentConfig(flip_prob=0.5, grayscale_prob=0.5, solarize_prob=0.5)


def test_jit_equals_eager_and_per_sample_keys(rng):
  x = _rgb(rng, n=6, h=5, w=4)
  two = jax.jit(aug.two_views, static_argnums=(2, 3))
  a, b = two(KEY, x, CHEAP, CHEAP)
  assert not np.allclose(a, b)
  k_a, k_b = jax.random.split(KEY)
  params = jax.jit(aug.sample_params, static_argnums=1,
                   static_argnames=("batch_size", "image_shape"))(
                       k_a, CHEAP, batch_size=6, image_shape=(5, 4, 3))
  # jit = eager (the eager run applies the jitted draw op by op)
  np.testing.assert_allclose(aug.apply_params(x, params, CHEAP), a, atol=1e-6)
  # uint8 and float inputs give the same views
  np.testing.assert_allclose(two(KEY, x.astype(np.float32) / 255, CHEAP, CHEAP)[0],
                             a, atol=1e-6)
  # the two views are augment_batch with the halves of split(key)
  np.testing.assert_allclose(
      jax.jit(aug.augment_batch, static_argnums=2)(k_b, x, CHEAP), b, atol=1e-6)
  # sample i depends only on split(key, n)[i] and image i
  keys = jax.random.split(k_a, 6)
  one_params = jax.jit(lambda k: aug._sample_one(k, CHEAP, 5, 4))
  for i in (1, 4):
    p = jax.tree_util.tree_map(lambda v: v[None], one_params(keys[i]))
    np.testing.assert_allclose(aug.apply_params(x[i:i + 1], p, CHEAP)[0], a[i],
                               atol=1e-6)


def test_batch_sharded_views_equal_unsharded(rng):
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py sets 2 fake CPU devices)")
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  x = _rgb(rng, n=6, h=5, w=4)
  xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  fn = jax.jit(aug.augment_batch, static_argnums=2)
  np.testing.assert_allclose(fn(KEY, xs, CHEAP), fn(KEY, x, CHEAP), atol=1e-6)


def test_sampled_parameters_have_the_configured_distribution():
  n = 4000
  params = jax.jit(lambda k: aug.sample_params(k, FULL, batch_size=n,
                                               image_shape=(20, 30, 3)))(KEY)
  tol = 4 * np.sqrt(0.25 / n)
  for name, p in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.3), ("blur", 0.5),
                  ("solarize", 0.4)]:
    assert abs(float(np.mean(params[name])) - p) < tol, name
  for name, s in [("brightness", 0.4), ("contrast", 0.4), ("saturation", 0.4)]:
    v = np.asarray(params[name])
    assert v.min() >= 1 - s and v.max() <= 1 + s and abs(v.mean() - 1) < 0.02
  assert np.abs(params["hue"]).max() <= 0.2
  sig = np.asarray(params["sigma"])
  assert sig.min() >= 0.3 and sig.max() <= 1.5
  np.testing.assert_array_equal(np.sort(params["order"], axis=1),
                                np.tile(np.arange(4), (n, 1)))
  fixed = dataclasses.replace(FULL, jitter_order="fixed")
  order = aug.sample_params(KEY, fixed, batch_size=3, image_shape=(20, 30, 3))["order"]
  np.testing.assert_array_equal(order, np.tile(np.arange(4), (3, 1)))
  # all 24 orders occur, about equally often
  codes = np.asarray(params["order"]) @ np.array([64, 16, 4, 1])
  assert len(np.unique(codes)) == 24
  top, left, h, w = np.asarray(params["box"]).T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 20).all() and (left + w <= 30).all()
  # torchvision's sampler: area fraction within scale up to rounding
  frac = h * w / 600
  assert frac.min() >= 0.2 * 0.8 and frac.max() <= 1.0


# -------------------------------------------------------------- presets


def test_presets():
  a, b = aug.preset("vicreg", image_size=32)
  assert (a.blur_prob, b.blur_prob, a.solarize_prob, b.solarize_prob) == (
      1.0, 0.1, 0.0, 0.2)
  assert a.image_size == (32, 32) and a.crop_scale == (0.08, 1.0)
  assert (a.brightness, a.contrast, a.saturation, a.hue, a.jitter_prob,
          a.grayscale_prob) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)
  assert aug.preset("byol", image_size=32) == (a, b)
  s, s2 = aug.preset("simclr", image_size=(24, 32))
  assert s == s2 and s.image_size == (24, 32) and s.brightness == 0.8
  f, _ = aug.preset("fashion_mnist", image_size=28)
  assert f.crop_scale == (0.08, 1.0) and f.saturation == 0 and f.hue == 0
  assert f.brightness > 0 and f.contrast > 0 and f.grayscale_prob == 0
  hash(a)  # static under jit
  none_a, none_b = aug.preset("none", image_size=(10, 12))
  assert none_a == none_b == aug.AugmentConfig(image_size=(10, 12))
  x = np.arange(2 * 10 * 12 * 1, dtype=np.uint8).reshape(2, 10, 12, 1)
  np.testing.assert_array_equal(aug.augment_batch(KEY, x, none_a),
                                x.astype(np.float32) / 255)


def test_preset_options_set_the_fields_of_both_views():
  a, b = aug.preset("vicreg", image_size=32,
                    options={"crop_scale": [0.2, 1.0], "solarize_prob": 0.3})
  assert a == aug.AugmentConfig(
      image_size=32, crop_scale=(0.2, 1.0), flip_prob=0.5, jitter_prob=0.8,
      brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2,
      blur_prob=1.0, solarize_prob=0.3)
  assert (b.blur_prob, b.solarize_prob, b.crop_scale) == (0.1, 0.3, (0.2, 1.0))
  hash(a)  # a list became a tuple: still static under jit
  assert aug.preset("simclr", image_size=8, options=None) == aug.preset(
      "simclr", image_size=8)
  with pytest.raises(ValueError, match=r"unknown augmentation option\(s\) \['sharpness'\]"):
    aug.preset("simclr", image_size=8, options={"sharpness": 0.5})
  with pytest.raises(ValueError, match="solarize_prob must be a probability"):
    aug.preset("simclr", image_size=8, options={"solarize_prob": 2.0})


# ---------------------------------------------------------------- errors


def test_bad_input_raises_clear_errors():
  cfg = aug.AugmentConfig(flip_prob=0.5)
  with pytest.raises(ValueError, match="unknown augmentation preset 'moco'"):
    aug.preset("moco", image_size=32)
  with pytest.raises(ValueError, match=r"images must be \[n, H, W, C\].*\(8, 8, 3\)"):
    aug.augment_batch(KEY, np.zeros((8, 8, 3), np.uint8), cfg)
  with pytest.raises(ValueError, match="1 or 3 channels.*\\(2, 8, 8, 2\\)"):
    aug.augment_batch(KEY, np.zeros((2, 8, 8, 2), np.uint8), cfg)
  with pytest.raises(TypeError, match="uint8 or float.*int32"):
    aug.augment_batch(KEY, np.zeros((2, 8, 8, 3), np.int32), cfg)
  with pytest.raises(TypeError, match="cfg must be an AugmentConfig"):
    aug.augment_batch(KEY, np.zeros((2, 8, 8, 3), np.uint8), {"flip_prob": 0.5})
  with pytest.raises(ValueError, match="flip_prob must be a probability.*1.5"):
    aug.AugmentConfig(flip_prob=1.5)
  with pytest.raises(ValueError, match="crop_scale must satisfy"):
    aug.AugmentConfig(crop_scale=(0.0, 0.5))
  with pytest.raises(ValueError, match="crop_scale must be a pair with low <= high"):
    aug.AugmentConfig(crop_scale=(0.5, 0.2))
  with pytest.raises(ValueError, match="blur_kernel_size must be a positive odd"):
    aug.AugmentConfig(blur_kernel_size=4)
  with pytest.raises(ValueError, match="hue must be in"):
    aug.AugmentConfig(hue=0.7)
  with pytest.raises(ValueError, match="image_size must be"):
    aug.AugmentConfig(image_size=(3, 0))
  with pytest.raises(ValueError, match="unknown jitter_order 'sorted'"):
    aug.AugmentConfig(jitter_order="sorted")
  with pytest.raises(ValueError, match="blur_kernel_size 9 is too large"):
    aug.augment_batch(KEY, np.zeros((2, 4, 4, 3), np.uint8),
                      aug.AugmentConfig(blur_prob=1.0, blur_kernel_size=9))


# ---------------------------------------------------------- multi-crop


def test_multi_crop_configs():
  g_a, g_b, local = aug.multi_crop_configs("byol", image_size=32, local_size=16)
  base_a, base_b = aug.preset("byol", image_size=32)
  assert g_a == dataclasses.replace(base_a, crop_scale=(0.4, 1.0))
  assert g_b == dataclasses.replace(base_b, crop_scale=(0.4, 1.0))
  assert local.image_size == (16, 16) and local.crop_scale == (0.05, 0.4)
  assert local.blur_prob == 0.5 and local.solarize_prob == 0.0
  assert local.brightness == base_a.brightness


def test_multi_crop_views_reuse_augment_batch(rng):
  # Each view is augment_batch with its own key of split(key, 2 + V): jitted, the
  # vmap over the local keys gives the same as one call per key. One program (the
  # compile is what costs here).
  x = _rgb(rng, n=3, h=16, w=16)
  cfgs = aug.multi_crop_configs("none", image_size=16, local_size=8)

  @jax.jit
  def run(k, im):
    keys = jax.random.split(k, 4)
    return (aug.multi_crop_views(k, im, *cfgs, num_local=2),
            [aug.augment_batch(keys[0], im, cfgs[0]),
             aug.augment_batch(keys[3], im, cfgs[2])],
            aug.sample_params(keys[2], cfgs[2], batch_size=64, image_shape=(16, 16)))

  (glob, loc), (want_global, want_local), params = run(KEY, x)
  assert glob.shape == (2, 3, 16, 16, 3) and loc.shape == (2, 3, 8, 8, 3)
  assert glob.dtype == loc.dtype == jnp.float32
  assert 0.0 <= float(jnp.min(loc)) and float(jnp.max(glob)) <= 1.0
  np.testing.assert_allclose(glob[0], want_global, atol=1e-6)
  np.testing.assert_allclose(loc[1], want_local, atol=1e-6)
  assert not np.allclose(glob[0], glob[1])
  no_local = jax.eval_shape(
      lambda k, im: aug.multi_crop_views(k, im, *cfgs, num_local=0), KEY, x)
  assert no_local[1].shape == (0, 3, 8, 8, 3)
  # Local crops cover 5-40 % of the image (up to rounding of the box sides).
  area = np.asarray(params["box"][:, 2] * params["box"][:, 3]) / 256
  assert 0.03 <= area.min() and area.max() <= 0.45


def test_multi_crop_bad_input(rng):
  x = _rgb(rng, n=2, h=16, w=16)
  g_a, _, local = aug.multi_crop_configs("none", image_size=16, local_size=8)
  with pytest.raises(ValueError, match="same size"):
    aug.multi_crop_views(KEY, x, g_a, local, local, num_local=1)
  with pytest.raises(ValueError, match="num_local"):
    aug.multi_crop_views(KEY, x, g_a, g_a, local, num_local=-1)
  with pytest.raises(ValueError, match=r"\[n, H, W, C\]"):
    aug.multi_crop_views(KEY, x[0], g_a, g_a, local, num_local=1)
