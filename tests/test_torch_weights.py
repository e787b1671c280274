"""sslit.torch_weights: torchvision-layout ResNets from PyTorch give the same features.

The oracle is tests/reference/torch_resnet.py (plain PyTorch, torchvision's keys) with
random weights and random BatchNorm running statistics, in eval mode, at a reduced
width so that the suite stays fast.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sslit import models, torch_weights  # noqa: E402
from tests.reference import torch_resnet  # noqa: E402

WIDTH = 8


class _Opaque:
  """A Python object in a checkpoint, which ``weights_only=True`` refuses."""


def _net(arch, stem, stem_padding=None, seed=0):
  net = getattr(torch_resnet, arch)(width=WIDTH, stem=stem, stem_padding=stem_padding)
  return torch_resnet.randomize(net, seed=seed)


@pytest.fixture(scope="module")
def r18_state():
  return {k: v.numpy() for k, v in _net("resnet18", "imagenet").state_dict().items()}


@pytest.fixture(scope="module")
def r50_state():
  return {k: v.numpy() for k, v in _net("resnet50", "imagenet").state_dict().items()}


def _features_match(net, model, variables, size):
  x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = net.features(x).numpy()
  # Fewer XLA optimisation passes (as jax_disable_most_optimizations): compiling
  # the ResNet dominates these tests.
  apply_fn = jax.jit(models.make_apply_fn(model), compiler_options={
      "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
  got = apply_fn(variables, x.numpy().transpose(0, 2, 3, 1))
  assert got.shape == want.shape
  # float32 rounding of two implementations, relative to the feature scale
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5,
                             atol=2e-6 * np.abs(want).max())


def test_solo_learn_cifar_checkpoint_with_prefix_and_head_equals_pytorch():
  # solo-learn: 3x3 stem padded by 2, no max-pool; a Lightning checkpoint whose
  # state_dict holds "backbone." keys (fc included) and tensors, not arrays.
  net = _net("resnet18", "cifar", stem_padding=2, seed=3)
  ckpt = {"epoch": 3, "state_dict": {f"backbone.{k}": v
                                     for k, v in net.state_dict().items()}}
  model, variables = torch_weights.load_torch_resnet(ckpt, stem_padding=2)
  assert model.backbone.cifar_stem and model.backbone.width == WIDTH
  assert model.backbone.stem_padding == 2 and set(variables) == {"params", "batch_stats"}
  bn = variables["batch_stats"]["backbone"]["layer2_0"]["downsample_bn"]
  np.testing.assert_array_equal(bn["var"], net.layer2[0].downsample[1].running_var)
  _features_match(net, model, variables, 8)
  with pytest.warns(UserWarning, match="stem_padding=2"):
    model, _ = torch_weights.load_torch_resnet(ckpt)  # the default padding is a guess
  assert model.backbone.stem_padding is None  # models.ResNet's: 1 for this stem


def test_resnet50_imagenet_stem_npz_file_with_module_prefix_equals_pytorch(tmp_path):
  net = _net("resnet50", "imagenet", seed=4)
  path = tmp_path / "r50.npz"
  np.savez(path, **{f"module.{k}": v.numpy() for k, v in net.state_dict().items()})
  model, variables = torch_weights.load_torch_resnet(path, arch="auto")
  assert not model.backbone.cifar_stem and model.backbone.block == "bottleneck"
  _features_match(net, model, variables, 32)


def test_pth_file_equals_the_state_dict_it_holds(tmp_path, r18_state):
  path = tmp_path / "r18.pth"
  torch.save({k: torch.from_numpy(v) for k, v in r18_state.items()}, path)
  from_file = torch_weights.load_torch_resnet(path)
  from_dict = torch_weights.load_torch_resnet(r18_state)
  assert from_file[0] == from_dict[0]
  jax.tree.map(np.testing.assert_array_equal, from_file[1], from_dict[1])


def test_full_width_resnet50_param_count():
  with torch.device("meta"):  # shapes only, no 25M random numbers
    net = torch_resnet.resnet50(num_classes=1000)
  state = {k: np.zeros(v.shape, np.float32) for k, v in net.state_dict().items()}
  model, variables = torch_weights.load_torch_resnet(state, arch="resnet50")
  # torchvision's resnet50 without fc (the count test_models checks too)
  assert models.param_count(variables["params"]) == 25_557_032 - 2_049_000
  assert model.backbone.width == 64


# --------------------------------------------------------------- errors


def test_unknown_key_is_named_with_closest_names(r18_state):
  bad = dict(r18_state, **{"layer1.0.conv1.bias": np.zeros(WIDTH, np.float32)})
  with pytest.raises(ValueError, match=r"unknown key 'layer1\.0\.conv1\.bias'.*"
                     r"closest expected names: \[.*'layer1\.0\.conv1\.weight'"):
    torch_weights.load_torch_resnet(bad)
  extra = dict(r18_state, **{f"momentum_backbone.{k}": v for k, v in r18_state.items()},
               **{"projector.0.weight": np.zeros((4, 64), np.float32)})
  with pytest.raises(ValueError, match=r"unknown key 'momentum_backbone\.bn1\.bias'.*"
                     r"prefix 'momentum_backbone\.'.*more unknown"):
    torch_weights.load_torch_resnet(extra)
  model, _ = torch_weights.load_torch_resnet(
      extra, ignore=("fc.", "projector.", "momentum_backbone."))
  assert model.backbone.width == WIDTH


def test_missing_key_and_shape_mismatch_are_named(r18_state):
  missing = {k: v for k, v in r18_state.items() if k != "layer2.0.bn1.running_var"}
  with pytest.raises(ValueError, match=r"missing key 'layer2\.0\.bn1\.running_var'"):
    torch_weights.load_torch_resnet(missing)
  wrong = dict(r18_state)
  wrong["layer3.1.conv2.weight"] = np.zeros((32, 32, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"'layer3\.1\.conv2\.weight' has shape "
                     r"\(32, 32, 1, 1\).*expects \(32, 32, 3, 3\)"):
    torch_weights.load_torch_resnet(wrong)
  with pytest.raises(ValueError, match=r"missing key 'conv1\.weight'.*prefix 'model\.'"):
    torch_weights.load_torch_resnet({f"model.{k}": v for k, v in r18_state.items()})


def test_wrong_arch_and_stem_name_what_was_detected(r18_state, r50_state):
  with pytest.raises(ValueError, match=r"arch='resnet18' expects basic blocks 2-2-2-2.*"
                     r"bottleneck blocks 3-4-6-3 \(resnet50\).*conv3.*arch='resnet50'"):
    torch_weights.load_torch_resnet(r50_state, arch="resnet18")
  with pytest.raises(ValueError, match=r"arch='resnet50'.*basic blocks 2-2-2-2 "
                     r"\(resnet18\).*arch='resnet18'"):
    torch_weights.load_torch_resnet(r18_state, arch="resnet50")
  r34 = torch_resnet.ResNet(torch_resnet.BasicBlock, (3, 4, 6, 3), width=4)
  with pytest.raises(ValueError, match=r"\(resnet34\).*reads \['resnet18', 'resnet50'\]"):
    torch_weights.load_torch_resnet(r34.state_dict(), arch="auto")
  with pytest.raises(ValueError, match=r"stem='cifar' expects a 3x3.*\(8, 3, 7, 7\).*"
                     r"stem='imagenet'"):
    torch_weights.load_torch_resnet(r18_state, stem="cifar")
  with pytest.raises(ValueError, match="unknown arch 'vit'"):
    torch_weights.load_torch_resnet(r18_state, arch="vit")


def test_pth_without_torch_says_pip_install(tmp_path, monkeypatch):
  path = tmp_path / "r18.pth"
  torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, path)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  with pytest.raises(ImportError, match="pip install torch"):
    torch_weights.load_torch_resnet(path)
  with pytest.raises(FileNotFoundError, match="no checkpoint file"):
    torch_weights.load_torch_resnet(tmp_path / "absent.pth")


def test_checkpoint_with_python_objects_is_refused_with_the_fix(tmp_path, r18_state):
  path = tmp_path / "lightning.ckpt"
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in r18_state.items()},
              "hyper_parameters": _Opaque()}, path)
  with pytest.raises(ValueError, match="weights_only=False"):
    torch_weights.load_torch_resnet(path)


def test_sslit_analyze_and_eval_take_a_torch_checkpoint(tmp_path, capsys):
  """A .pth of a (reduced-width, 1-channel) ResNet-18 analysed end to end by the CLI."""
  import json  # pylint: disable=g-import-not-at-top
  from sslit import cli  # pylint: disable=g-import-not-at-top
  net = torch_resnet.randomize(torch_resnet.resnet18(width=4, stem="cifar",
                                                     in_channels=1), seed=3)
  path = tmp_path / "resnet18.pth"
  torch.save(net.state_dict(), path)
  common = ["--torch_checkpoint", str(path), "--arch", "resnet18", "--config", "smoke",
            "--workdir", str(tmp_path / "out"), "--config.eval.baselines=()"]
  # The CIFAR stem's padding is not in a state_dict: assumed 1, with a warning.
  with pytest.warns(UserWarning, match="stem's padding is not stored"):
    assert cli.main(["analyze", *common, "--num_examples", "32"]) == 0, \
        capsys.readouterr()
    assert cli.main(["eval", *common]) == 0
  analysis = json.loads((tmp_path / "out" / "analysis.json").read_text())
  assert analysis["step"] == 0 and np.isfinite(analysis["monitor/cpa/h_cond"])
  assert np.isfinite(analysis["monitor/rep/entropy_logdet"])
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert results["trained"]["feature_dim"] == 32  # 8 x width: the pooled representation
  assert 10.0 < results["trained"]["linear_top1"] <= 100.0
  # A key the layout does not know: exit 1, the message names it.
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  state["layer1.0.conv9.weight"] = state["conv1.weight"]
  np.savez(tmp_path / "bad.npz", **state)
  bad = [a if a != str(path) else str(tmp_path / "bad.npz") for a in common]
  with pytest.warns(UserWarning, match="stem's padding is not stored"):
    assert cli.main(["analyze", *bad]) == 1
  assert "layer1.0.conv9.weight" in capsys.readouterr().err
