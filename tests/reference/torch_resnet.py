"""A ResNet in plain PyTorch with torchvision's state-dict layout (the oracle of
``sslit.torch_weights``), written from the architecture's description.

Keys: ``conv1``, ``bn1`` (the stem), ``layer{s}.{b}.conv{k}`` / ``.bn{k}`` (k = 1, 2
for basic blocks, 1, 2, 3 for bottlenecks), ``layer{s}.{b}.downsample.0`` (1x1 conv)
and ``.downsample.1`` (its BatchNorm) where the shape changes, ``fc`` (the classifier).
Bottlenecks put the stride on their 3x3 convolution (v1.5). ``width`` scales every
layer (64 is the published network), so tests can use a narrow one.

Stems: ``"imagenet"`` (7x7 stride-2 conv, padding 3, then 3x3 stride-2 max-pool,
padding 1) or ``"cifar"`` (3x3 stride-1 conv with ``stem_padding``, no max-pool;
solo-learn's CIFAR networks pad by 2).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


class BasicBlock(nn.Module):
  """3x3 conv - BN - ReLU - 3x3 conv - BN, plus the shortcut, then ReLU."""
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = _conv(cin, planes, 3, stride, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(_conv(cin, planes, 1, stride),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 - BN - ReLU - 3x3 (stride) - BN - ReLU - 1x1 (4x) - BN, shortcut, ReLU."""
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    out = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv(planes, out, 1)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or cin != out:
      self.downsample = nn.Sequential(_conv(cin, out, 1, stride), nn.BatchNorm2d(out))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(y + shortcut)


class ResNet(nn.Module):
  """Stem, four stages (planes ``width * 2**s``, stride 2 from stage 2), pool, fc."""

  def __init__(self, block, stage_sizes, *, width: int = 64, stem: str = "imagenet",
               stem_padding: int | None = None, in_channels: int = 3,
               num_classes: int = 10):
    super().__init__()
    if stem == "imagenet":
      self.conv1 = _conv(in_channels, width, 7, 2, 3 if stem_padding is None
                         else stem_padding)
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    elif stem == "cifar":
      self.conv1 = _conv(in_channels, width, 3, 1, 1 if stem_padding is None
                         else stem_padding)
      self.maxpool = nn.Identity()
    else:
      raise ValueError(f"unknown stem {stem!r}")
    self.bn1 = nn.BatchNorm2d(width)
    cin = width
    for s, n in enumerate(stage_sizes):
      blocks = []
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        blocks.append(block(cin, width * 2 ** s, stride))
        cin = width * 2 ** s * block.expansion
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def features(self, x):
    """``[n, C, H, W]`` -> the pooled representation ``[n, 8 or 32 x width]``."""
    h = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for s in range(1, 5):
      h = getattr(self, f"layer{s}")(h)
    return torch.flatten(self.avgpool(h), 1)

  def forward(self, x):
    return self.fc(self.features(x))


def resnet18(**kwargs) -> ResNet:
  return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ResNet:
  return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and random BatchNorm running statistics; returns ``model.eval()``.

  Convolutions ~ N(0, 2 / fan_in) (activations keep their scale through depth); BN
  scale ~ U(0.5, 1.5), bias ~ N(0, 0.1), running mean ~ N(0, 0.2), running variance
  ~ U(0.5, 2); so eval mode is far from the identity normalisation.
  """
  g = torch.Generator().manual_seed(seed)
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      fan_in = module.weight[0].numel()
      module.weight.copy_(torch.randn(module.weight.shape, generator=g)
                          * (2.0 / fan_in) ** 0.5)
    elif isinstance(module, nn.BatchNorm2d):
      c = module.num_features
      module.weight.copy_(0.5 + torch.rand(c, generator=g))
      module.bias.copy_(0.1 * torch.randn(c, generator=g))
      module.running_mean.copy_(0.2 * torch.randn(c, generator=g))
      module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
      module.num_batches_tracked.fill_(123)
    elif isinstance(module, nn.Linear):
      module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=g))
      module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
  return model.eval()
