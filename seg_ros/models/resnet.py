"""Dilated ResNet-50/101 backbones for the DeepLab and PSPNet families.

Two parameter layouts, so public checkpoints load without renaming:

* ``DilatedResNet``: torchvision's names (``conv1``, ``bn1``, ``layer1``..``layer4`` of
  ``Bottleneck`` blocks with ``conv1..3``/``bn1..3``/``downsample.{0,1}``), used by torchvision's
  and DeepLabV3Plus-Pytorch's DeepLab models; with ``deep_stem=True`` the stem is semseg's
  ``layer0`` (three 3x3 convs, ``layer0.{0,1,3,4,6,7}``), as in semseg's PSPNet.
* ``msra_stem`` / ``msra_layer``: the Caffe (MSRA) ResNet of the DeepLab v2 port, with
  ``reduce``/``conv3x3``/``increase``/``shortcut`` units of ``conv``+``bn``; the stride sits in the
  first 1x1 convolution and the stem's max pooling rounds up, as in the original Caffe model.

Output stride 8 or 16 is reached by replacing the strides of the last stages with dilation.
Where the dilation starts differs between the references and changes the numbers a checkpoint
was trained with: torchvision keeps the previous dilation in the first block of a dilated stage
(``dilation_scheme="torchvision"``), semseg and the v2 port dilate every block (``"uniform"``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from .init import init_weights

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
OUTPUT_STRIDES = (8, 16)
DILATION_SCHEMES = ("torchvision", "uniform")


def check_output_stride(output_stride: int, allowed: tuple[int, ...] = OUTPUT_STRIDES,
                        model: str = "this model") -> int:
    """Validate an ``output_stride`` option; ConfigError naming the allowed values."""
    if isinstance(output_stride, bool) or output_stride not in allowed:
        raise ConfigError(
            f"output_stride for {model} must be one of {list(allowed)}, got {output_stride!r}"
        )
    return int(output_stride)


def _depth_blocks(depth: int) -> tuple[int, ...]:
    try:
        return RESNET_DEPTHS[depth]
    except KeyError:
        raise ConfigError(
            f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth!r}"
        ) from None


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of stages 1..4 for an output stride (the stem accounts for 4)."""
    if output_stride == 8:
        return (1, 1), (2, 1), (1, 2), (1, 4)
    return (1, 1), (2, 1), (2, 1), (1, 2)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride in the 3x3 conv), torchvision's parameter names."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Features(NamedTuple):
    """Backbone outputs: stride-4 features (stage 1), stage 3 (aux heads) and stage 4."""

    low: torch.Tensor
    mid: torch.Tensor
    out: torch.Tensor


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class DilatedResNet(nn.Module):
    """ResNet-50/101 trunk (no pooling/fc) at output stride 8 or 16.

    ``features`` returns all the stages the heads need. ``deep_stem`` selects semseg's three-conv
    ``layer0``.
    """

    def __init__(self, depth: int = 50, output_stride: int = 8, deep_stem: bool = False,
                 dilation_scheme: str = "torchvision") -> None:
        super().__init__()
        blocks = _depth_blocks(depth)
        output_stride = check_output_stride(output_stride)
        if dilation_scheme not in DILATION_SCHEMES:
            raise ConfigError(
                f"dilation_scheme must be one of {DILATION_SCHEMES}, got {dilation_scheme!r}"
            )
        self.output_stride = output_stride
        self.deep_stem = deep_stem
        if deep_stem:
            self.layer0 = nn.Sequential(
                *_conv_bn_relu(3, 64, 2),
                *_conv_bn_relu(64, 64),
                *_conv_bn_relu(64, 128),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            inplanes = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.conv_bn_pairs = (("conv1", "bn1"),)
            inplanes = 64
        previous = 1
        for i, ((stride, dilation), n) in enumerate(zip(stage_dilations(output_stride), blocks)):
            planes = 64 * 2 ** i
            first = previous if dilation_scheme == "torchvision" else dilation
            self.add_module(
                f"layer{i + 1}", self._make_layer(inplanes, planes, n, stride, first, dilation)
            )
            inplanes, previous = planes * Bottleneck.expansion, dilation
        init_weights(self)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, first_dilation: int,
                    dilation: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
        layers += [Bottleneck(out, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.deep_stem:
            return self.layer0(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> Features:
        low = self.layer1(self.stem(x))
        mid = self.layer3(self.layer2(low))
        return Features(low, mid, self.layer4(mid))

    def forward(self, x: torch.Tensor) -> Features:
        return self.features(x)


# -- MSRA (Caffe) ResNet of the DeepLab v2 port ----------------------------------------------

class ConvBn(nn.Sequential):
    """``conv`` (no bias) + ``bn`` (+ ``relu``): the v2 port's unit.

    BN folds by Sequential order.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__()
        self.add_module(
            "conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        if relu:
            self.add_module("relu", nn.ReLU(inplace=True))


class MsraBottleneck(nn.Module):
    """Caffe ResNet bottleneck.

    Stride in ``reduce`` (1x1); ``shortcut`` projects in block 1 only.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, project: bool) -> None:
        super().__init__()
        mid = out_ch // 4
        self.reduce = ConvBn(in_ch, mid, 1, stride)
        self.conv3x3 = ConvBn(mid, mid, 3, 1, dilation)
        self.increase = ConvBn(mid, out_ch, 1, relu=False)
        self.shortcut = ConvBn(in_ch, out_ch, 1, stride, relu=False) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.increase(self.conv3x3(self.reduce(x)))
        return torch.relu(out + self.shortcut(x))


def msra_stem() -> nn.Sequential:
    """7x7/2 ``conv1`` and a 3x3/2 max pooling that rounds up (``ceil_mode``), as in Caffe."""
    stem = nn.Sequential()
    stem.add_module("conv1", ConvBn(3, 64, 7, 2))
    stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    return stem


def msra_layer(blocks: int, in_ch: int, out_ch: int, stride: int, dilation: int) -> nn.Sequential:
    """Return a stage of ``block1``..``blockN``.

    Every block of a dilated stage uses ``dilation``.
    """
    layer = nn.Sequential()
    for i in range(blocks):
        layer.add_module(
            f"block{i + 1}",
            MsraBottleneck(
                in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation, i == 0
            ),
        )
    return layer
