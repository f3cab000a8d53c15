"""DDRNet (Hong et al., 2021): deep dual-resolution networks for real-time road-scene segmentation.

Module and parameter names follow the authors' published Cityscapes checkpoints (``conv1``,
``layer1``..``layer5``, ``layer3_``.., ``compression3``, ``down3``, ``spp.*``, ``final_layer``,
``seghead_extra``) so those files load with no renaming beyond dropping their ``model.`` prefix.

The network predicts at 1/8 of the input resolution (``output_stride = 8``). Unlike the reference
code, the fusion sizes are taken from the high-resolution branch itself rather than from
``input_size // 8``, which is identical for sizes divisible by 8 and also works for any other size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel
from .shipped import ShippedWeights

BN_MOMENTUM = 0.1


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """ResNet basic block.

    The last block of a stage skips its final ReLU (the fusion adds first).
    """

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, no_relu: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + residual
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    """Bottleneck with expansion 2, as used by DDRNet's ``layer5`` and ``layer5_``."""

    expansion = 2
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, no_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + residual
        return out if self.no_relu else self.relu(out)


def _pre_act(in_ch: int, out_ch: int, kernel_size: int = 1) -> list[nn.Module]:
    """BN -> ReLU -> conv, the pre-activation unit DAPPM and the heads are made of."""
    return [
        _bn(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, padding=kernel_size // 2, bias=False),
    ]


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module: multi-scale context fused hierarchically."""

    def __init__(self, inplanes: int, branch_planes: int, outplanes: int) -> None:
        super().__init__()
        self.scale1 = nn.Sequential(
            nn.AvgPool2d(5, stride=2, padding=2), *_pre_act(inplanes, branch_planes)
        )
        self.scale2 = nn.Sequential(
            nn.AvgPool2d(9, stride=4, padding=4), *_pre_act(inplanes, branch_planes)
        )
        self.scale3 = nn.Sequential(
            nn.AvgPool2d(17, stride=8, padding=8), *_pre_act(inplanes, branch_planes)
        )
        self.scale4 = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), *_pre_act(inplanes, branch_planes)
        )
        self.scale0 = nn.Sequential(*_pre_act(inplanes, branch_planes))
        self.process1 = nn.Sequential(*_pre_act(branch_planes, branch_planes, 3))
        self.process2 = nn.Sequential(*_pre_act(branch_planes, branch_planes, 3))
        self.process3 = nn.Sequential(*_pre_act(branch_planes, branch_planes, 3))
        self.process4 = nn.Sequential(*_pre_act(branch_planes, branch_planes, 3))
        self.compression = nn.Sequential(*_pre_act(branch_planes * 5, outplanes))
        self.shortcut = nn.Sequential(*_pre_act(inplanes, outplanes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = self.scale0(x)
        outs = [prev]
        for scale, process in ((self.scale1, self.process1), (self.scale2, self.process2),
                               (self.scale3, self.process3), (self.scale4, self.process4)):
            prev = process(_upsample_to(scale(x), x) + prev)
            outs.append(prev)
        return self.compression(torch.cat(outs, 1)) + self.shortcut(x)


class SegmentHead(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv1x1 classifier (``final_layer`` and ``seghead_extra``)."""

    def __init__(self, inplanes: int, interplanes: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = _bn(inplanes)
        self.conv1 = nn.Conv2d(inplanes, interplanes, kernel_size=3, padding=1, bias=False)
        self.bn2 = _bn(interplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(interplanes, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))


def _make_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int,
                stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(
                inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False
            ),
            _bn(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    for i in range(1, blocks):
        layers.append(block(inplanes, planes, stride=1, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


def _compression(in_ch: int, out_ch: int) -> nn.Sequential:
    """Low-to-high fusion: 1x1 conv + BN (then bilinear upsampling in forward)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False), _bn(out_ch))


def _down(in_ch: int, out_ch: int, steps: int) -> nn.Sequential:
    """High-to-low fusion: ``steps`` stride-2 3x3 convs with BN (ReLU between them)."""
    mods: list[nn.Module] = []
    ch = in_ch
    for i in range(steps):
        nxt = out_ch if i == steps - 1 else out_ch // 2 ** (steps - 1 - i)
        mods += [_conv3x3(ch, nxt, stride=2), _bn(nxt)]
        if i < steps - 1:
            mods.append(nn.ReLU(inplace=True))
        ch = nxt
    return nn.Sequential(*mods)


class DualResNet(SegmentationModel):
    """DDRNet-23 / DDRNet-23-slim: one fusion stage each after stages 3 and 4.

    ``forward`` returns logits at 1/8 input resolution; in training mode with ``aux_loss=True`` it
    returns ``(logits, aux_logits)``, the auxiliary head reading the high-resolution branch after
    stage 3 (loss weight 0.4 in training).
    """

    output_stride = 8
    size_divisor = 8
    aux_head_name = "seghead_extra"

    def __init__(self, layers: Sequence[int], num_classes: int, planes: int = 64,
                 spp_planes: int = 128, head_planes: int = 128, aux_loss: bool = False) -> None:
        super().__init__()
        highres = planes * 2
        self.aux_loss = aux_loss
        self.num_classes = num_classes
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, kernel_size=3, stride=2, padding=1),
            _bn(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, kernel_size=3, stride=2, padding=1),
            _bn(planes),
            nn.ReLU(inplace=True),
        )
        self.relu = nn.ReLU(inplace=False)
        self._build_stages(layers, planes, highres)
        self.layer5_ = _make_layer(Bottleneck, highres, highres, 1)
        self.layer5 = _make_layer(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        if aux_loss:
            self.seghead_extra = SegmentHead(highres, head_planes, num_classes)
        self.final_layer = SegmentHead(planes * 4, head_planes, num_classes)
        self._init_weights()

    def _build_stages(self, layers: Sequence[int], planes: int, highres: int) -> None:
        self.layer1 = _make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = _make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        self.layer3 = _make_layer(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
        self.layer4 = _make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression3 = _compression(planes * 4, highres)
        self.compression4 = _compression(planes * 8, highres)
        self.down3 = _down(highres, planes * 4, 1)
        self.down4 = _down(highres, planes * 8, 2)
        self.layer3_ = _make_layer(BasicBlock, planes * 2, highres, 2)
        self.layer4_ = _make_layer(BasicBlock, highres, highres, 2)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _fuse(self, low: torch.Tensor, high: torch.Tensor, down: nn.Module,
              compression: nn.Module, low_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilateral fusion: high->low by strided convs, low->high by 1x1 conv + upsampling."""
        new_low = low + down(self.relu(high))
        new_high = high + _upsample_to(compression(self.relu(low_in)), high)
        return new_low, new_high

    def _stages_3_4(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run stages 3 and 4 of both branches.

        Returns (low, high, high-after-stage-3 for the aux head).
        """
        low = self.layer3(self.relu(x))
        high = self.layer3_(self.relu(x))
        low, high = self._fuse(low, high, self.down3, self.compression3, low)
        aux_in = high
        low4 = self.layer4(self.relu(low))
        high = self.layer4_(self.relu(high))
        low, high = self._fuse(low4, high, self.down4, self.compression4, low4)
        return low, high, aux_in

    def forward(self, x: torch.Tensor):
        x = self.layer1(self.conv1(x))
        x = self.layer2(self.relu(x))
        low, high, aux_in = self._stages_3_4(x)
        high = self.layer5_(self.relu(high))
        low = _upsample_to(self.spp(self.layer5(self.relu(low))), high)
        out = self.final_layer(low + high)
        if self.aux_loss and self.training:
            return out, self.seghead_extra(aux_in)
        return out


class DualResNet39(DualResNet):
    """DDRNet-39: stage 3 split in two halves, each followed by a bilateral fusion."""

    def _build_stages(self, layers: Sequence[int], planes: int, highres: int) -> None:
        half = layers[2] // 2
        self.layer1 = _make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = _make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        self.layer3_1 = _make_layer(BasicBlock, planes * 2, planes * 4, half, stride=2)
        self.layer3_2 = _make_layer(BasicBlock, planes * 4, planes * 4, half)
        self.layer4 = _make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression3_1 = _compression(planes * 4, highres)
        self.compression3_2 = _compression(planes * 4, highres)
        self.compression4 = _compression(planes * 8, highres)
        self.down3_1 = _down(highres, planes * 4, 1)
        self.down3_2 = _down(highres, planes * 4, 1)
        self.down4 = _down(highres, planes * 8, 2)
        self.layer3_1_ = _make_layer(BasicBlock, planes * 2, highres, half)
        self.layer3_2_ = _make_layer(BasicBlock, highres, highres, half)
        self.layer4_ = _make_layer(BasicBlock, highres, highres, layers[3])

    def _stages_3_4(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low = self.layer3_1(self.relu(x))
        high = self.layer3_1_(self.relu(x))
        low, high = self._fuse(low, high, self.down3_1, self.compression3_1, low)
        low2 = self.layer3_2(self.relu(low))
        high = self.layer3_2_(self.relu(high))
        low, high = self._fuse(low2, high, self.down3_2, self.compression3_2, low2)
        aux_in = high
        low4 = self.layer4(self.relu(low))
        high = self.layer4_(self.relu(high))
        low, high = self._fuse(low4, high, self.down4, self.compression4, low4)
        return low, high, aux_in


def ddrnet23_slim(num_classes: int, aux_loss: bool = True) -> DualResNet:
    return DualResNet(
        [2, 2, 2, 2], num_classes, planes=32, spp_planes=128, head_planes=64, aux_loss=aux_loss
    )


def ddrnet23(num_classes: int, aux_loss: bool = True) -> DualResNet:
    return DualResNet(
        [2, 2, 2, 2], num_classes, planes=64, spp_planes=128, head_planes=128, aux_loss=aux_loss
    )


def ddrnet39(num_classes: int, aux_loss: bool = True) -> DualResNet39:
    return DualResNet39(
        [3, 4, 6, 3], num_classes, planes=64, spp_planes=128, head_planes=256, aux_loss=aux_loss
    )


# The shipped default of ddrnet23_slim (model card: docs/training.md).
DDRNET23_SLIM_CAMVID = ShippedWeights(
    file="weights/ddrnet23_slim_camvid.pt", model="ddrnet23_slim", classes="camvid",
    num_classes=11, ignore_id=11, input_size=(360, 480),
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),  # ImageNet's
    metrics={"val_miou": 0.602, "val_pixel_accuracy": 0.917},
    card="docs/training.md")
