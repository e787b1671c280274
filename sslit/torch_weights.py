"""ResNets trained with PyTorch (torchvision's state-dict layout) as sslit models.

:func:`load_torch_resnet` reads a ResNet-18 or ResNet-50 state_dict (a ``.pth`` /
``.pt`` / ``.ckpt`` file, an ``.npz`` of the same keys, or a mapping of arrays or
tensors) and returns an :class:`sslit.models.SSLModel` without heads and its
``{"params", "batch_stats"}``, so that every analysis in sslit (features, probes,
slopes, regions, estimators) runs on a network trained elsewhere.

Layout (torchvision): ``conv1``/``bn1`` the stem, ``layer{s}.{b}.conv{k}`` and
``.bn{k}`` the blocks, ``layer{s}.{b}.downsample.0``/``.1`` the projection shortcut,
``fc`` the classifier (ignored by default). Conversions: convolution weights
``[O, I, H, W]`` -> ``[H, W, I, O]``; BatchNorm ``weight`` -> ``scale``, ``bias`` ->
``bias`` (parameters), ``running_mean`` -> ``mean``, ``running_var`` -> ``var``
(``batch_stats``); ``num_batches_tracked`` is dropped. sslit's BatchNorm uses
PyTorch's epsilon (1e-5) and momentum (0.1, Flax's 0.9), so eval-mode outputs are
the same function.

torch is optional: it is imported only to read a PyTorch file. This module does not
import Flax (it uses :mod:`sslit.models` for the architecture and its names).
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sslit import _validate, models

__all__ = ["ARCHS", "STEMS", "load_torch_resnet", "read_state_dict"]

ARCHS = ("resnet18", "resnet50", "auto")
STEMS = ("imagenet", "cifar", "auto")
# (block, blocks per stage) -> torchvision's name.
_TORCHVISION = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_STEM_KERNEL = {"imagenet": 7, "cifar": 3}
_WRAPPERS = ("state_dict", "model")  # a Lightning .ckpt, a {"model": ...} dict
_MODULES = {"stem_conv": "conv1", "stem_bn": "bn1", "downsample_conv": "downsample.0",
            "downsample_bn": "downsample.1"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
           "mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv3\.)?")


# -------------------------------------------------------------- reading


def _torch_load(path: str) -> Any:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path!r} (a PyTorch checkpoint) needs torch, which is not "
        f"installed: pip install torch (the CPU build is enough). Or, where torch "
        f"is installed, save the state_dict as .npz and pass that file: "
        f"numpy.savez('weights.npz', **{{k: v.numpy() for k, v in "
        f"state_dict.items()}}).") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"torch.load({path!r}, weights_only=True) could not read the file: {first}. "
        f"If it is a checkpoint that also stores Python objects (e.g. training "
        f"hyper-parameters) and you trust its source, load it yourself with "
        f"torch.load(path, map_location='cpu', weights_only=False) and pass its "
        f"state_dict.") from e


def read_state_dict(source: Any) -> dict[str, Any]:
  """A flat ``{name: array or tensor}`` from a file or a mapping.

  Args:
    source: a path to a ``.npz`` (read with NumPy) or to any other file (read with
      ``torch.load(..., map_location="cpu", weights_only=True)``), or a mapping
      (a ``state_dict``, a dict of NumPy arrays). A mapping whose ``"state_dict"``
      or ``"model"`` entry is itself a mapping (a Lightning ``.ckpt``, a training
      checkpoint) is unwrapped.

  Returns:
    The state dict; values are left as they are (tensors stay tensors).

  Raises:
    FileNotFoundError: no such file.
    ImportError: a PyTorch file without torch installed (says ``pip install torch``).
    ValueError: torch could not read the file; not a mapping of names.
  """
  if isinstance(source, Mapping):
    obj = source
  else:
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no checkpoint file at {path!r}.")
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as f:
        obj = {k: f[k] for k in f.files}
    else:
      obj = _torch_load(path)
  for wrapper in _WRAPPERS:
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
    raise ValueError(f"expected a state_dict (a mapping of parameter names to "
                     f"arrays), got {type(obj).__name__}.")
  return dict(obj)


def _shape(value: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))


def _to_float32(value: Any, key: str) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (torch itself is not imported here)
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # bfloat16 has no NumPy dtype
    value = value.numpy()
  arr = np.asarray(value)
  if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(f"{key!r} has dtype {arr.dtype}; expected a numeric array.")
  return arr.astype(np.float32)


# ---------------------------------------------------------- architecture


def _clean_keys(state: Mapping[str, Any], strip_prefixes: Sequence[str],
                ignore: Sequence[str]) -> dict[str, Any]:
  """Strip prefixes (repeatedly), drop ignored keys and ``num_batches_tracked``."""
  out, origin = {}, {}
  for raw, value in state.items():
    key = raw
    stripped = True
    while stripped:
      stripped = False
      for prefix in strip_prefixes:
        if prefix and key.startswith(prefix):
          key, stripped = key[len(prefix):], True
    if key.endswith("num_batches_tracked") or any(
        key.startswith(p) for p in ignore if p):
      continue
    if key in out:
      raise ValueError(f"the checkpoint keys {origin[key]!r} and {raw!r} both become "
                       f"{key!r} once the prefixes {tuple(strip_prefixes)} are "
                       f"removed; pass strip_prefixes and ignore so that one "
                       f"network remains.")
    out[key], origin[key] = value, raw
  return out


def _detect(keys: Sequence[str]) -> tuple[str, tuple[int, ...]] | None:
  """(block kind, blocks per stage) from the ``layer{s}.{b}.`` keys, or None."""
  blocks: dict[int, set[int]] = {}
  bottleneck = False
  for key in keys:
    m = _BLOCK.match(key)
    if m:
      blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
      bottleneck |= m.group(3) is not None
  if not blocks:
    return None
  sizes = tuple(len(blocks.get(s, ())) for s in range(1, max(blocks) + 1))
  return ("bottleneck" if bottleneck else "basic"), sizes


def _describe(block: str, sizes: tuple[int, ...]) -> str:
  name = _TORCHVISION.get((block, tuple(sizes)))
  text = f"{block} blocks {'-'.join(map(str, sizes))}"
  return f"{text} ({name})" if name else text


def _check_arch(arch: str, detected: tuple[str, tuple[int, ...]] | None) -> str:
  supported = [a for a in ARCHS if a != "auto"]
  if detected is None:
    if arch == "auto":
      raise ValueError("arch='auto' but the checkpoint has no 'layer{s}.{b}.' keys to "
                       "detect the architecture from; pass arch='resnet18' or "
                       "'resnet50'.")
    return arch
  name = _TORCHVISION.get(detected)
  if arch == "auto":
    if name not in supported:
      raise ValueError(f"the checkpoint has {_describe(*detected)}; sslit reads "
                       f"{supported} only.")
    return name
  cls = models.BACKBONES[arch]
  expected = (cls.block, tuple(cls.stage_sizes))
  if detected != expected:
    fix = (f"pass arch={name!r}" if name in supported
           else f"sslit reads {supported} only")
    raise ValueError(f"arch={arch!r} expects {_describe(*expected)}, but the "
                     f"checkpoint has {_describe(*detected)}"
                     f"{' (it has conv3 keys)' if detected[0] == 'bottleneck' else ''}"
                     f": {fix}.")
  return arch


def _torch_name(path: tuple[str, ...]) -> str:
  """sslit backbone path, e.g. ("layer1_0", "downsample_bn", "scale") -> torch key."""
  *mods, leaf = path
  names = []
  for mod in mods:
    m = re.fullmatch(r"layer(\d+)_(\d+)", mod)
    names.append(f"layer{m.group(1)}.{m.group(2)}" if m else _MODULES.get(mod, mod))
  return ".".join(names + [_LEAVES[leaf]])


def _torch_shape(sslit_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(sslit_shape) == 4:  # HWIO -> OIHW
    h, w, i, o = sslit_shape
    return (o, i, h, w)
  return tuple(sslit_shape)


def _expected(model: models.SSLModel, in_channels: int
              ) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """torch key -> (collection, path under "backbone", sslit shape)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, in_channels), jnp.float32)
  shapes = jax.eval_shape(lambda k, x: models.init_variables(model, k, x),
                          jax.random.key(0), x)
  table = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        shapes[collection]["backbone"])[0]:
      names = tuple(str(getattr(p, "key", p)) for p in path)
      table[_torch_name(names)] = (collection, names, tuple(leaf.shape))
  return table


def _prefix_hint(key: str, expected: Sequence[str]) -> str:
  for name in sorted(expected, key=len, reverse=True):
    if key.endswith("." + name):
      prefix = key[:-len(name)]
      return (f" It looks like {name!r} under the prefix {prefix!r}: add {prefix!r} "
              f"to strip_prefixes if it is this network, or to ignore if it is "
              f"another one (e.g. a momentum encoder).")
  return ""


def _unknown_error(unknown: Sequence[str], expected: Sequence[str],
                   strip_prefixes: Sequence[str], ignore: Sequence[str]) -> ValueError:
  key = unknown[0]
  module = key.rsplit(".", 1)[0]
  close = [e for e in expected if e.rsplit(".", 1)[0] == module]
  close += [e for e in difflib.get_close_matches(key, expected, n=3, cutoff=0.5)
            if e not in close]
  close = close[:3]
  more = (f" ({len(unknown) - 1} more unknown: {list(unknown[1:6])}"
          f"{' ...' if len(unknown) > 6 else ''})" if len(unknown) > 1 else "")
  return ValueError(
      f"unknown key {key!r} in the checkpoint (after removing the prefixes "
      f"{tuple(strip_prefixes)} and ignoring {tuple(ignore)} and "
      f"num_batches_tracked); closest expected names: {close or 'none'}."
      f"{_prefix_hint(key, expected)} If it belongs to another part of the "
      f"network (a projector, a classifier), add its prefix to ignore, e.g. "
      f"ignore=('fc.', 'projector.').{more}")


# ---------------------------------------------------------------- loading


def load_torch_resnet(path_or_state_dict: Any, *, arch: str = "resnet18",
                      stem: str = "auto", stem_padding: int | None = None,
                      strip_prefixes: Sequence[str] = ("module.", "backbone.",
                                                       "encoder."),
                      ignore: Sequence[str] = ("fc.",)
                      ) -> tuple[models.SSLModel, dict[str, Any]]:
  """A torchvision-layout ResNet-18/50 state_dict as an sslit model and variables.

  The model is ``models.build_model(arch, backbone_kwargs={"cifar_stem", "width",
  "stem_padding"}, projector=None)``: its ``"rep"`` output is the global average
  pool of the last stage, i.e. torchvision's ``avgpool`` + ``flatten`` (the input of
  ``fc``), ``[n, 512]`` (ResNet-18) or ``[n, 2048]`` (ResNet-50) at width 64. It
  takes NHWC images ``[n, H, W, C]`` (PyTorch takes NCHW:
  ``x_nhwc = x_nchw.transpose(0, 2, 3, 1)``), normalised as the network was trained.
  Eval mode (``models.make_apply_fn(model)``) equals PyTorch's ``model.eval()``
  within float32 rounding.

  Args:
    path_or_state_dict: a ``.pth``/``.pt``/``.ckpt`` file (needs torch), an
      ``.npz`` file, or a mapping of names to NumPy arrays or torch tensors; a
      ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.
    arch: "resnet18" (basic blocks 2-2-2-2), "resnet50" (bottlenecks 3-4-6-3) or
      "auto" (read from the keys).
    stem: "imagenet" (7x7 stride-2 conv + 3x3 max-pool), "cifar" (3x3 stride-1
      conv, no max-pool) or "auto" (from ``conv1.weight``'s kernel size).
    stem_padding: padding of the stem convolution; None: 3 (ImageNet stem) or 1
      (CIFAR stem). A state_dict does not record it: solo-learn's CIFAR ResNets pad
      their 3x3 stem by 2, so pass ``stem_padding=2`` for those (a warning says so
      when the CIFAR stem is loaded with the default).
    strip_prefixes: prefixes removed from the start of every key, repeatedly (so
      ``module.backbone.conv1.weight`` becomes ``conv1.weight``).
    ignore: keys starting with one of these (after stripping) are dropped, e.g.
      ``("fc.", "projector.", "classifier.")``.

  Returns:
    ``(model, variables)`` with ``variables = {"params": {"backbone": ...},
    "batch_stats": {"backbone": ...}}`` (float32).

  Raises:
    ValueError: an unknown key (named, with the closest expected names), a missing
      key, a shape mismatch (the key and both shapes, PyTorch layout), a checkpoint
      of another architecture than ``arch`` (naming the one detected), an unknown
      option.
    ImportError: a PyTorch file without torch installed.
    FileNotFoundError: no such file.
  """
  _validate.check_choice(arch, ARCHS, "arch")
  _validate.check_choice(stem, STEMS, "stem")
  if isinstance(strip_prefixes, str) or isinstance(ignore, str):
    raise ValueError("strip_prefixes and ignore must be sequences of strings, e.g. "
                     "ignore=('fc.',), not a single string.")
  state = _clean_keys(read_state_dict(path_or_state_dict), strip_prefixes, ignore)
  arch = _check_arch(arch, _detect(list(state)))

  if "conv1.weight" not in state:
    found = sorted(state)[:5]
    hints = [h for h in (_prefix_hint(k, ["conv1.weight"]) for k in state) if h]
    raise ValueError(f"missing key 'conv1.weight' (the stem convolution of a "
                     f"torchvision ResNet); the checkpoint's keys start with "
                     f"{found}.{hints[0] if hints else ''}")
  stem_shape = _shape(state["conv1.weight"])
  if len(stem_shape) != 4 or stem_shape[2] != stem_shape[3] or (
      stem_shape[2] not in _STEM_KERNEL.values()):
    raise ValueError(f"'conv1.weight' has shape {stem_shape}; expected a 7x7 "
                     f"(ImageNet stem) or 3x3 (CIFAR stem) convolution "
                     f"[out, in, k, k].")
  found_stem = "imagenet" if stem_shape[2] == 7 else "cifar"
  if stem != "auto" and stem != found_stem:
    raise ValueError(f"stem={stem!r} expects a {_STEM_KERNEL[stem]}x"
                     f"{_STEM_KERNEL[stem]} convolution, but the checkpoint's "
                     f"'conv1.weight' has shape {stem_shape} (the {found_stem} stem); "
                     f"pass stem={found_stem!r} or 'auto'.")
  if found_stem == "cifar" and stem_padding is None:
    warnings.warn("the CIFAR stem's padding is not stored in a state_dict: 1 is "
                  "assumed (a 3x3 'same' convolution). solo-learn's CIFAR ResNets "
                  "pad by 2: pass stem_padding=2 for those (stem_padding=1 silences "
                  "this warning).", UserWarning, stacklevel=2)
  width, in_channels = stem_shape[0], stem_shape[1]
  model = models.build_model(arch, backbone_kwargs={
      "cifar_stem": found_stem == "cifar", "width": width,
      "stem_padding": stem_padding}, projector=None)
  expected = _expected(model, in_channels)

  unknown = sorted(set(state) - set(expected))
  if unknown:
    raise _unknown_error(unknown, list(expected), strip_prefixes, ignore)
  missing = [k for k in expected if k not in state]
  if missing:
    raise ValueError(f"missing key {missing[0]!r} in the checkpoint"
                     f"{f' ({len(missing) - 1} more missing: {missing[1:6]})' if len(missing) > 1 else ''}"
                     f"; a complete torchvision {arch} backbone (width {width}) "
                     f"has {len(expected)} entries besides num_batches_tracked.")

  variables: dict[str, Any] = {"params": {"backbone": {}},
                               "batch_stats": {"backbone": {}}}
  for key, (collection, names, shape) in expected.items():
    want = _torch_shape(shape)
    got = _shape(state[key])
    if got != want:
      raise ValueError(f"{key!r} has shape {got} in the checkpoint but the {arch} "
                       f"model (width {width}, {found_stem} stem) expects {want} "
                       f"(PyTorch layout).")
    value = _to_float32(state[key], key)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    node = variables[collection]["backbone"]
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = jnp.asarray(value)
  return model, variables
