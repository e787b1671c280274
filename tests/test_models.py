"""Tests of sslit.models: shapes, BatchNorm modes, precision, pre-activations, counts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslit import models

KEY = jax.random.key(0)


def _images(n=4, h=28, w=28, c=1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((n, h, w, c)), jnp.float32)


# ----------------------------------------------------- parameter counts


def _resnet_param_count(stage_sizes, bottleneck, cifar_stem, in_ch=3):
  """torchvision's layer list: conv weights + BN (weight, bias); no classifier."""
  total = (3 * 3 if cifar_stem else 7 * 7) * in_ch * 64 + 2 * 64
  cin = 64
  for i, n in enumerate(stage_sizes):
    width = 64 * 2 ** i
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      if bottleneck:
        cout = 4 * width
        total += cin * width + 2 * width            # 1x1 + BN
        total += 9 * width * width + 2 * width      # 3x3 + BN
        total += width * cout + 2 * cout            # 1x1 + BN
      else:
        cout = width
        total += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
      if stride != 1 or cin != cout:
        total += cin * cout + 2 * cout              # downsample 1x1 + BN
      cin = cout
  return total


def _random_variables(model, x_shape, seed=0, scale=0.3):
  """Variables of the model's shapes filled by NumPy (no init graph to compile)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
      lambda k: models.init_variables(model, k, jnp.zeros(x_shape)), KEY)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name or "'scale'" in name:
      return jnp.asarray(1.0 + 0.1 * rng.random(leaf.shape), jnp.float32)
    return jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train, mutable):
  kwargs = {"mutable": list(mutable)} if mutable else {}
  return jax.jit(lambda v, x: model.apply(v, x, train=train, **kwargs))


def _apply(model, variables, x, *, train, mutable=()):
  """``model.apply`` under jit, compiled once per (model, mode, collections)."""
  return _jitted_apply(model, train, tuple(mutable))(variables, x)


def _shape_params(model, x_shape):
  shapes = jax.eval_shape(
      lambda k: models.init_variables(model, k, jnp.zeros(x_shape)), KEY)
  return shapes


def test_resnet18_cifar_param_count_matches_torchvision_layer_list():
  model = models.build_model("resnet18", backbone_kwargs={"cifar_stem": True},
                             projector=None)
  shapes = _shape_params(model, (2, 32, 32, 3))
  expected = _resnet_param_count((2, 2, 2, 2), False, True)
  # torchvision resnet18: 11,689,512 with its 1000-way fc (513,000) and 7x7 stem
  # (9,408); the CIFAR stem is 1,728.
  assert expected == 11_689_512 - 513_000 - 9_408 + 1_728
  assert models.param_count(shapes["params"]) == expected
  # running mean and variance per BN channel
  bn_channels = (64 + 4 * 64 + 4 * 128 + 4 * 256 + 4 * 512 + 128 + 256 + 512)
  assert models.param_count(shapes["batch_stats"]) == 2 * bn_channels


def test_resnet50_imagenet_param_count_and_output_shape():
  model = models.build_model("resnet50", backbone_kwargs={"cifar_stem": False},
                             projector=None)
  shapes = _shape_params(model, (2, 64, 64, 3))
  expected = _resnet_param_count((3, 4, 6, 3), True, False)
  assert expected == 25_557_032 - 2_049_000  # torchvision resnet50 without fc
  assert models.param_count(shapes["params"]) == expected
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes,
                       jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out["rep"].shape == (2, 2048) and out["rep"].dtype == jnp.float32


def test_heads_param_counts():
  # VICReg projector on a 512-d rep: two Linear (no bias: a BN follows) + BN
  # (scale, bias), last Linear without bias.
  model = models.build_model("mlp", backbone_kwargs={"widths": (16, 512)},
                             projector="vicreg", predictor=False)
  shapes = _shape_params(model, (2, 10))
  p = shapes["params"]
  assert models.param_count(p["backbone"]) == 10 * 16 + 16 + 16 * 512 + 512
  assert models.param_count(p["projector"]) == (
      512 * 2048 + 2 * 2048 + 2048 * 2048 + 2 * 2048 + 2048 * 2048)
  model = models.build_model("mlp", backbone_kwargs={"widths": (8,)},
                             projector="byol", predictor=True)
  p = _shape_params(model, (2, 3))["params"]
  assert models.param_count(p["projector"]) == 8 * 4096 + 2 * 4096 + 4096 * 256 + 256
  assert models.param_count(p["predictor"]) == 256 * 4096 + 2 * 4096 + 4096 * 256 + 256
  model = models.build_model("mlp", backbone_kwargs={"widths": (8,)},
                             projector="simclr")
  p = _shape_params(model, (2, 3))["params"]
  assert models.param_count(p["projector"]) == 8 * 2048 + 2 * 2048 + 2048 * 128 + 128


def _biased_layers_before_batchnorm(params):
  """Paths ``.../denseI`` or ``.../convI`` with a bias whose ``bnI`` sibling exists."""
  found = []
  for name, sub in params.items():
    if not isinstance(sub, dict):
      continue
    for layer in ("dense", "conv"):
      if name.startswith(layer) and "bias" in sub and \
          f"bn{name[len(layer):]}" in params:
        found.append(name)
    found += [f"{name}/{p}" for p in _biased_layers_before_batchnorm(sub)]
  return found


@pytest.mark.parametrize("backbone,kwargs", [
    ("mlp", {"widths": (6, 5, 4), "batch_norm": True}),
    ("mlp", {"widths": (6, 4), "batch_norm": True, "activate_output": True}),
    ("convnet", {"channels": (2, 3)}),
])
def test_no_bias_directly_before_a_batchnorm(backbone, kwargs):
  # Such a bias cannot learn: the BatchNorm subtracts the batch mean.
  model = models.build_model(backbone, backbone_kwargs=kwargs, projector=(7, 5),
                             predictor=(3, 5))
  params = _shape_params(model, (2, 8, 8, 1))["params"]
  assert "bn0" in params["backbone"] and "bn0" in params["predictor"]
  assert _biased_layers_before_batchnorm(params) == []
  mlp = params["backbone"]
  if backbone == "mlp":  # the linear output layer (no BN after it) keeps its bias
    last = f"dense{len(kwargs['widths']) - 1}"
    assert ("bias" in mlp[last]) is not kwargs.get("activate_output", False)
  assert "bias" in params["projector"]["dense1"] and "bias" in params["predictor"]["dense1"]
  if backbone != "convnet":
    return
  resnet = _shape_params(models.build_model("resnet18", projector=None),
                         (1, 8, 8, 3))["params"]
  flat = jax.tree_util.tree_flatten_with_path(resnet)[0]
  conv_biases = [jax.tree_util.keystr(k) for k, _ in flat
                 if "conv" in jax.tree_util.keystr(k) and "'bias'" in jax.tree_util.keystr(k)]
  assert conv_biases == []


# ------------------------------------------------- shapes, BN, determinism


@pytest.mark.parametrize("backbone,kwargs,rep_dim", [
    ("mlp", {"widths": (32, 16)}, 16),
    ("mlp", {"widths": (32, 16), "batch_norm": True, "activation": "gelu"}, 16),
    ("convnet", {"channels": (4, 8, 16)}, 64),
    ("convnet", {"channels": (4, 8), "final_pool": "gap", "pool": "max"}, 8),
    ("convnet", {"channels": (4, 8), "final_pool": "none"}, 14 * 14 * 8),
])
def test_shapes_and_dtypes_train_and_eval(backbone, kwargs, rep_dim):
  model = models.build_model(backbone, backbone_kwargs=kwargs, projector=(32, 8),
                             predictor=(16, 8))
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = jax.eval_shape(lambda k, x: models.init_variables(model, k, x), KEY,
                             x)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert set(out) == {"rep", "proj", "pred"}
  assert out["rep"].shape == (3, rep_dim)
  assert out["proj"].shape == (3, 8) and out["pred"].shape == (3, 8)
  out_t, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
      variables, x)
  for k in out:
    assert out_t[k].shape == out[k].shape and out_t[k].dtype == jnp.float32
    assert out[k].dtype == jnp.float32
  assert jax.tree_util.tree_structure(state["batch_stats"]) == (
      jax.tree_util.tree_structure(variables["batch_stats"]))


def test_small_models_give_finite_outputs_in_both_modes():
  model = models.build_model("convnet", backbone_kwargs={"channels": (4, 8, 16)},
                             projector=(32, 8), predictor=(16, 8))
  x = _images(3)
  variables = _random_variables(model, x.shape)
  for train in (False, True):
    out = _apply(model, variables, x, train=train,
                 mutable=("batch_stats",) if train else ())
    out = out[0] if train else out
    for v in out.values():
      assert np.all(np.isfinite(v))


# One small conv model shared by several tests (its compiled initialiser is cached).
SMALL = dict(backbone_kwargs={"channels": (4, 8)}, projector=(16, 8))


def test_batchnorm_updates_statistics_in_train_mode_only():
  model = models.build_model("convnet", **SMALL)
  x = _images(4)
  variables = models.init_variables(model, KEY, x)
  _, state = _apply(model, variables, x, train=True,
                    mutable=["batch_stats", "preactivations"])
  _, state_eval = _apply(model, variables, x, train=False, mutable=["batch_stats"])
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  for a, b in zip(before, jax.tree_util.tree_leaves(state["batch_stats"])):
    assert not np.allclose(a, b)
  for a, b in zip(before, jax.tree_util.tree_leaves(state_eval["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  # train-mode BN normalises with batch statistics: the first stage's BN output
  # has zero mean per channel, which the running statistics (0, 1) do not give.
  h = np.asarray(state["preactivations"]["backbone"]["relu0"][0])
  np.testing.assert_allclose(h.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(h.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)


def test_init_is_deterministic_per_key():
  model = models.build_model("convnet", **SMALL)
  x = _images(4)
  a = models.init_variables(model, KEY, x)
  b = models.init_variables(model, KEY, x)
  c = models.init_variables(model, jax.random.key(1), x)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(u, v)
  assert not np.allclose(a["params"]["backbone"]["conv0"]["kernel"],
                         c["params"]["backbone"]["conv0"]["kernel"])


def test_bf16_compute_keeps_float32_params_and_outputs():
  m32 = models.build_model("convnet", **SMALL)
  m16 = models.build_model("convnet", dtype=jnp.bfloat16, **SMALL)
  x = _images(4)
  v32 = models.init_variables(m32, KEY, x)
  shapes16 = jax.eval_shape(lambda k, x: models.init_variables(m16, k, x), KEY, x)
  assert (jax.tree_util.tree_structure(shapes16)
          == jax.tree_util.tree_structure(v32))
  for leaf in jax.tree_util.tree_leaves(shapes16):
    assert leaf.dtype == jnp.float32
  v16 = v32  # same float32 parameters, bf16 compute
  o32, s32 = _apply(m32, v32, x, train=True,
                    mutable=["batch_stats", "preactivations"])
  o16, s16 = _apply(m16, v16, x, train=True,
                    mutable=["batch_stats", "preactivations"])
  for leaf in jax.tree_util.tree_leaves(s16["batch_stats"]):
    assert leaf.dtype == jnp.float32
  assert o16["proj"].dtype == jnp.float32
  # bf16 has 8 mantissa bits: agreement to a few per cent, not more.
  np.testing.assert_allclose(o16["proj"], o32["proj"], atol=0.1, rtol=0.05)
  assert not np.array_equal(o16["proj"], o32["proj"])  # bf16 really was used
  assert s16["preactivations"]["backbone"]["relu0"][0].dtype == jnp.bfloat16


def test_resnet18_forward_once_train_mode():
  model = models.build_model("resnet18", projector=(32, 16))
  x = _images(2, 8, 8, 3)
  variables = _random_variables(model, x.shape, scale=0.05)
  out, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "preactivations"]))(variables, x)
  assert out["rep"].shape == (2, 512) and out["proj"].shape == (2, 16)
  assert np.all(np.isfinite(out["proj"]))
  pre = models._flatten_sown(state["preactivations"])
  # stem + 8 basic blocks x 2 ReLUs (backbone) + 1 projector ReLU
  assert len(pre) == 1 + 16 + 1
  assert pre["backbone/stem_relu"].shape == (2, 8, 8, 64)  # CIFAR stem: stride 1
  assert pre["backbone/layer4_1/relu_out"].shape == (2, 1, 1, 512)
  # the representation is the global average of the last block's ReLU output
  np.testing.assert_allclose(
      out["rep"], np.maximum(pre["backbone/layer4_1/relu_out"], 0).mean((1, 2)),
      rtol=1e-5, atol=1e-6)
  assert not np.allclose(state["batch_stats"]["backbone"]["stem_bn"]["mean"],
                         variables["batch_stats"]["backbone"]["stem_bn"]["mean"])


def _shape_preactivations(model, x_shape):
  """Flat ``{path: ShapeDtypeStruct}`` of the recorded pre-activations (no compute)."""
  shapes = _shape_params(model, x_shape)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["preactivations"]),
      shapes, jax.ShapeDtypeStruct(x_shape, jnp.float32))
  return models._flatten_sown(state["preactivations"])


def test_resnet_imagenet_stem_shapes_and_maxpool_record():
  model = models.build_model("resnet18", backbone_kwargs={"cifar_stem": False},
                             projector=None)
  pre = _shape_preactivations(model, (1, 32, 32, 3))
  assert pre["backbone/stem_relu"].shape == (1, 16, 16, 64)
  assert pre["backbone/stem_maxpool"].shape == (1, 8, 8, 64)
  assert pre["backbone/stem_maxpool"].dtype == jnp.int32


def test_resnet_width_and_stem_padding_options():
  # solo-learn's CIFAR stem pads its 3x3 conv by 2: 32x32 -> 34x34 maps.
  model = models.build_model("resnet50", backbone_kwargs={
      "cifar_stem": True, "width": 4, "stem_padding": 2}, projector=None)
  pre = _shape_preactivations(model, (1, 32, 32, 3))
  assert pre["backbone/stem_relu"].shape == (1, 34, 34, 4)
  assert pre["backbone/layer4_2/relu_out"].shape == (1, 5, 5, 4 * 8 * 4)
  with pytest.raises(ValueError, match="stem_padding must be None or an int >= 0"):
    models.build_model("resnet18", backbone_kwargs={"stem_padding": -1})
  with pytest.raises(ValueError, match="width must be a positive int"):
    models.build_model("resnet18", backbone_kwargs={"width": 0})


# ------------------------------------------- pure functions and regions


def _mlp_reference(params, pre, x, activation, slope=0.01):
  """Recompute the MLP output from its weights and the recorded activation masks."""
  h = np.asarray(x, np.float64).reshape(-1)
  i = 0
  while f"dense{i}" in params:
    layer = params[f"dense{i}"]
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"])
    if f"relu{i}" in pre:
      pos = np.asarray(pre[f"relu{i}"]) >= 0
      if activation == "relu":
        h = h * pos
      elif activation == "leaky_relu":
        h = h * np.where(pos, 1.0, slope)
      else:  # abs
        h = h * np.where(pos, 1.0, -1.0)
    i += 1
  return h


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs"])
def test_preactivation_masks_reproduce_mlp_output(activation):
  model = models.build_model(
      "mlp", backbone_kwargs={"widths": (16, 12, 5), "activation": activation},
      projector=None)
  x = _images(3, 4, 2, 1)
  variables = _random_variables(model, x.shape, scale=0.5)
  fn = jax.jit(models.preactivation_fn(model, variables))
  single = models.single_input_fn(model, variables)
  batched = models.make_apply_fn(model)(variables, x)
  for i in range(3):
    z, pre = fn(x[i])
    assert sorted(pre) == ["backbone/relu0", "backbone/relu1"]
    pre = {k.split("/")[-1]: v for k, v in pre.items()}
    expect = _mlp_reference(variables["params"]["backbone"], pre, x[i], activation)
    np.testing.assert_allclose(z, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single(x[i]), batched[i], rtol=1e-6, atol=1e-6)
    # the slope of a CPA net is the product of masked weight matrices
    jac = jax.jacfwd(single)(x[i]).reshape(5, -1)
    w = [np.asarray(variables["params"]["backbone"][f"dense{j}"]["kernel"])
         for j in range(3)]
    mask = lambda a: {"relu": (a >= 0) * 1.0, "abs": np.where(a >= 0, 1.0, -1.0),
                      "leaky_relu": np.where(a >= 0, 1.0, 0.01)}[activation]
    slope = (w[0] * mask(np.asarray(pre["relu0"]))) @ (
        w[1] * mask(np.asarray(pre["relu1"]))) @ w[2]
    np.testing.assert_allclose(jac, slope.T, rtol=1e-4, atol=1e-5)


def test_preactivation_output_selection_includes_heads():
  model = models.build_model("mlp", backbone_kwargs={"widths": (8, 6)},
                             projector=(10, 4), predictor=(7, 4))
  x = _images(2, 3, 3, 1)
  variables = _random_variables(model, x.shape)
  z, pre = models.preactivation_fn(model, variables, output="rep")(x[0])
  assert z.shape == (6,) and sorted(pre) == ["backbone/relu0"]
  z, pre = models.preactivation_fn(model, variables, output="pred")(x[0])
  assert z.shape == (4,)
  assert sorted(pre) == ["backbone/relu0", "predictor/relu0", "projector/relu0"]
  full = _apply(model, variables, x, train=False)
  np.testing.assert_allclose(z, full["pred"][0], rtol=1e-5, atol=1e-6)


def _adaptive_pool_reference(a, out):
  """PyTorch adaptive_avg_pool2d bins, written out with slices."""
  h, w = a.shape[:2]
  res = np.zeros((out, out, a.shape[2]))
  for i in range(out):
    for j in range(out):
      hs, he = (i * h) // out, -(-((i + 1) * h) // out)
      ws, we = (j * w) // out, -(-((j + 1) * w) // out)
      res[i, j] = a[hs:he, ws:we].mean(axis=(0, 1))
  return res


def test_convnet_preactivations_and_maxpool_argmax():
  model = models.build_model(
      "convnet", backbone_kwargs={"channels": (3, 4, 5), "pool": "max"},
      projector=None)
  x = _images(2, 13, 14, 1)  # odd sizes: pooling drops the last row
  variables = _random_variables(model, x.shape)
  z, pre = jax.jit(models.preactivation_fn(model, variables))(x[1])
  assert pre["backbone/maxpool0"].dtype == jnp.int32
  assert pre["backbone/maxpool0"].shape == (6, 7, 3)
  assert pre["backbone/relu2"].shape == (3, 3, 5)
  # rep = 2x2 adaptive average of the last ReLU output, flattened
  last = np.maximum(np.asarray(pre["backbone/relu2"], np.float64), 0)
  np.testing.assert_allclose(z, _adaptive_pool_reference(last, 2).reshape(-1),
                             rtol=1e-5, atol=1e-6)
  # argmax of each 2x2 window (row-major, first maximum) of the pooled ReLU output
  a = np.maximum(np.asarray(pre["backbone/relu0"]), 0)[:12, :14]
  win = a.reshape(6, 2, 7, 2, 3).transpose(0, 2, 4, 1, 3).reshape(6, 7, 3, 4)
  np.testing.assert_array_equal(pre["backbone/maxpool0"], win.argmax(-1))


def test_recording_is_free_when_not_mutable():
  model = models.build_model("convnet", backbone_kwargs={"channels": (2, 3),
                                                         "pool": "max"},
                             projector=None)
  x = _images(2, 8, 8, 1)
  variables = _random_variables(model, x.shape)
  apply_fn = models.make_apply_fn(model)
  assert "argmax" not in str(jax.make_jaxpr(apply_fn)(variables, x))
  fn = models.preactivation_fn(model, variables)
  assert "argmax" in str(jax.make_jaxpr(fn)(x[0]))


def test_apply_fn_jit_equals_eager_and_matches_call():
  model = models.build_model("convnet", **SMALL)
  x = _images(4)
  variables = models.init_variables(model, KEY, x)
  for output in ("rep", "proj"):
    fn = models.make_apply_fn(model, output)
    eager = fn(variables, x)
    np.testing.assert_allclose(jax.jit(fn)(variables, x), eager, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(model.apply(variables, x, train=False)[output],
                               eager, rtol=1e-6, atol=1e-6)


def test_dino_head_is_a_weight_normalised_layer_on_the_unit_bottleneck():
  model = models.build_model("mlp", backbone_kwargs={"widths": (16,)},
                             projector=(16, 8), dino_head=12)
  x = jax.random.normal(KEY, (5, 10))
  variables = models.init_variables(model, KEY, x)
  out = model.apply(variables, x, train=False)
  assert model.outputs() == ("rep", "proj", "dino") and out["dino"].shape == (5, 12)
  # NumPy oracle: unit(proj) @ unit_rows(V).T, V the [K, p] parameter.
  v = np.asarray(variables["params"]["dino_head"], np.float64)
  assert v.shape == (12, 8)
  z = np.asarray(out["proj"], np.float64)
  want = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
      v / np.linalg.norm(v, axis=1, keepdims=True)).T
  np.testing.assert_allclose(out["dino"], want, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out["dino"])).max() <= 1 + 1e-6  # cosines
  # Weight normalisation with the gain fixed at 1: scaling a row of V changes
  # nothing, so the gradient of any loss is orthogonal to each row of V.
  def loss(p):
    o = model.apply({**variables, "params": p}, x, train=False, upto="dino")
    assert "pred" not in o
    return jnp.sum(jnp.sin(3.0 * o["dino"]))
  g = np.asarray(jax.grad(loss)(variables["params"])["dino_head"], np.float64)
  assert np.abs(g).max() > 1e-4
  np.testing.assert_allclose(np.sum(g * v, axis=1), 0.0, atol=1e-5)
  scaled = {**variables["params"], "dino_head": variables["params"]["dino_head"] * 3.0}
  np.testing.assert_allclose(loss(scaled), loss(variables["params"]), rtol=1e-5)
  # One output alone, and the predictor and head together (siblings: whole network).
  np.testing.assert_allclose(models.make_apply_fn(model, "dino")(variables, x),
                             out["dino"], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="dino_head needs a projector"):
    models.build_model("mlp", projector=None, dino_head=4)
  with pytest.raises(ValueError, match="dino_head must be an int >= 0"):
    models.build_model("mlp", dino_head=-1)


def test_dino_head_gain_scales_each_output_and_is_trained():
  kw = dict(backbone_kwargs={"widths": (16,)}, projector=(16, 8), dino_head=6)
  fixed = models.build_model("mlp", **kw)
  model = models.build_model("mlp", dino_head_gain=True, **kw)
  x = jax.random.normal(KEY, (5, 10))
  variables = models.init_variables(model, KEY, x)
  assert np.array_equal(variables["params"]["dino_head_gain"], np.ones(6))
  # With gains 1 it is the fixed-gain head; with gains g, NumPy: cosines * g.
  base = {k: v for k, v in variables["params"].items() if k != "dino_head_gain"}
  cos = np.asarray(fixed.apply({**variables, "params": base}, x, train=False)["dino"],
                   np.float64)
  np.testing.assert_allclose(model.apply(variables, x, train=False)["dino"], cos,
                             rtol=1e-6, atol=1e-7)
  g = np.array([0.5, 2.0, -1.0, 3.0, 1.0, 0.25], np.float32)
  params = {**variables["params"], "dino_head_gain": jnp.asarray(g)}
  np.testing.assert_allclose(model.apply({**variables, "params": params}, x,
                                         train=False)["dino"], cos * g,
                             rtol=1e-5, atol=1e-6)
  # d/dg_k of sum(c * out) = sum_n c[n, k] * cos[n, k] (NumPy), so the gain is trained.
  c = np.asarray(jax.random.normal(jax.random.key(7), (5, 6)), np.float64)
  grad = jax.grad(lambda p: jnp.sum(jnp.asarray(c, jnp.float32) * model.apply(
      {**variables, "params": p}, x, train=False)["dino"]))(params)
  np.testing.assert_allclose(grad["dino_head_gain"], np.sum(c * cos, axis=0),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="dino_head_gain needs a DINO head"):
    models.build_model("mlp", dino_head_gain=True)


def test_apply_fn_of_several_outputs_runs_the_network_once():
  model = models.build_model("convnet", **SMALL)
  x = _images(4)
  variables = models.init_variables(model, KEY, x)
  both = models.make_apply_fn(model, ("proj", "rep"))(variables, x)
  assert sorted(both) == ["proj", "rep"]
  for output in ("rep", "proj"):
    np.testing.assert_allclose(both[output],
                               model.apply(variables, x, train=False)[output],
                               rtol=1e-6, atol=1e-6)
  # One forward pass: as many convolutions as the projector output alone needs.
  convs = lambda fn: str(jax.make_jaxpr(fn)(variables, x)).count("conv_general_dilated")
  assert convs(models.make_apply_fn(model, ("rep", "proj"))) == convs(
      models.make_apply_fn(model, "proj")) > 0
  with pytest.raises(ValueError, match="empty"):
    models.make_apply_fn(model, ())
  with pytest.raises(ValueError, match="unknown output 'pred'"):
    models.make_apply_fn(model, ("rep", "pred"))


# --------------------------------------------------------------- errors


def test_bad_names_and_options_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
    models.build_model("vgg")
  with pytest.raises(ValueError, match="unknown option.*'depth'.*resnet18"):
    models.build_model("resnet18", backbone_kwargs={"depth": 3})
  with pytest.raises(ValueError, match="unknown activation 'tanh'"):
    models.build_model("mlp", backbone_kwargs={"activation": "tanh"})
  with pytest.raises(ValueError, match="unknown pool 'min'"):
    models.build_model("convnet", backbone_kwargs={"pool": "min"})
  with pytest.raises(ValueError, match="unknown final_pool"):
    models.build_model("convnet", backbone_kwargs={"final_pool": "4x4"})
  with pytest.raises(ValueError, match="unknown projector 'moco'"):
    models.build_model("mlp", projector="moco")
  with pytest.raises(ValueError, match="predictor needs a projector"):
    models.build_model("mlp", projector=None, predictor=True)
  with pytest.raises(ValueError, match="predictor's output width 5"):
    models.build_model("mlp", projector=(8, 4), predictor=(6, 5))
  with pytest.raises(ValueError, match="widths"):
    models.build_model("mlp", backbone_kwargs={"widths": ()})
  model = models.build_model("mlp", backbone_kwargs={"widths": (4,)}, projector=None)
  with pytest.raises(ValueError, match="unknown output 'proj'"):
    models.make_apply_fn(model, "proj")


def test_bad_inputs_raise_clear_errors():
  model = models.build_model("convnet", backbone_kwargs={"channels": (2,)},
                             projector=None)
  with pytest.raises(ValueError, match=r"x must be \[n, H, W, C\].*\(28, 28\)"):
    models.init_variables(model, KEY, jnp.zeros((28, 28)))
  with pytest.raises(TypeError, match="x must have a floating dtype.*uint8"):
    models.init_variables(model, KEY, jnp.zeros((2, 8, 8, 1), jnp.uint8))
  variables = models.init_variables(model, KEY, jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match=r"\[n, H, W, C\].*\(2, 64\)"):
    models.make_apply_fn(model)(variables, jnp.zeros((2, 64)))


def test_param_count_of_arrays_and_shapes():
  tree = {"a": jnp.zeros((3, 4)), "b": [np.zeros(5), jax.ShapeDtypeStruct((2, 2),
                                                                           jnp.float32)]}
  assert models.param_count(tree) == 12 + 5 + 4
  assert models.param_count({}) == 0


def test_models_from_config_lists_are_hashable():
  a = models.build_model("mlp", backbone_kwargs={"widths": [4, 2]}, projector=[4, 2])
  b = models.build_model("mlp", backbone_kwargs={"widths": (4, 2)}, projector=(4, 2))
  assert a.backbone.widths == (4, 2) and hash(a) == hash(b) and a == b


def test_dino_projector_is_linear_gelu_without_batchnorm():
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  model = models.build_model("mlp", backbone_kwargs={"widths": (12,)},
                             projector="dino", dino_head=10)
  head = model.projector
  assert head.widths == (2048, 2048, 256) and not head.batch_norm
  x = jax.random.normal(KEY, (4, 9))
  variables = models.init_variables(model, KEY, x)
  p = variables["params"]["projector"]
  assert sorted(p) == ["dense0", "dense1", "dense2"]  # no BatchNorm parameters
  assert all("bias" in p[f"dense{i}"] for i in range(3))
  out = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  # NumPy oracle: Linear-GELU (exact, x Phi(x)) twice, then Linear, on the rep.
  gelu = lambda h: 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
  h = np.asarray(out["rep"], np.float64)
  for i in range(3):
    h = h @ np.asarray(p[f"dense{i}"]["kernel"], np.float64) + np.asarray(
        p[f"dense{i}"]["bias"], np.float64)
    h = gelu(h) if i < 2 else h
  np.testing.assert_allclose(out["proj"], h, rtol=2e-4, atol=2e-5)
  assert out["dino"].shape == (4, 10)


def test_swav_prototypes_are_a_unit_norm_parameter_of_the_projector_width():
  model = models.build_model("mlp", backbone_kwargs={"widths": (8,)}, projector=(5,),
                             prototypes=7)
  x = jnp.ones((3, 4))
  v = models.init_variables(model, jax.random.key(0), x)
  assert v["params"]["prototypes"].shape == (7, 5)
  out = model.apply(v, x, train=False)
  assert sorted(out) == ["proj", "prototypes", "rep"]
  np.testing.assert_allclose(np.linalg.norm(out["prototypes"], axis=-1), 1.0, rtol=1e-6)
  assert sorted(model.apply(v, x, train=False, upto="proj")) == ["proj", "rep"]
  scaled = {**v["params"], "prototypes": 3.0 * v["params"]["prototypes"]}
  np.testing.assert_allclose(models.normalize_prototypes(scaled)["prototypes"],
                             v["params"]["prototypes"], rtol=1e-6)
  plain = {"backbone": {"w": jnp.ones(2)}}
  assert models.normalize_prototypes(plain) is plain
  with pytest.raises(ValueError, match="prototypes need a projector"):
    models.build_model("mlp", projector=None, prototypes=4)
  with pytest.raises(ValueError, match="prototypes must be an int >= 0"):
    models.build_model("mlp", prototypes=-1)
