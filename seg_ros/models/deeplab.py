"""DeepLab v2, v3 and v3+ on dilated ResNets.

Parameter names follow the public implementations whose checkpoints users bring (see
docs/models.md):

* ``DeepLabV3``: torchvision's ``segmentation.deeplabv3_resnet*`` (``backbone.*``,
  ``classifier.{0..4}``, ``aux_classifier.{0,1,4}``);
* ``DeepLabV3Plus``: DeepLabV3Plus-Pytorch (``backbone.*``, ``classifier.project``,
  ``classifier.aspp``, ``classifier.classifier``);
* ``DeepLabV2``: the DeepLab v2 PyTorch port (``layer1``..``layer5`` Caffe ResNet,
  ``aspp.c0..c3``).

Every model returns class scores at its output stride (1/4 of the input for v3+, whose
decoder works at stride 4); the pipeline upsamples them. In training mode a model built with
an auxiliary head returns ``(logits, aux_logits)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel
from .resnet import DilatedResNet, check_output_stride, init_weights, msra_layer, msra_stem

ASPP_CHANNELS = 256


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """Return the atrous rates of DeepLab v3's three 3x3 branches.

    Doubled when the features are twice as dense.
    """
    return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel_size // 2)
    return [nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 conv + BN + ReLU, broadcast back to the map size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_ch, out_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


class ASPP(nn.Module):
    """DeepLab v3 ASPP.

    1x1, three atrous 3x3 and an image-pooling branch, concatenated and projected.
    """

    def __init__(self, in_ch: int, rates: Sequence[int], out_ch: int = ASPP_CHANNELS,
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 3, rate)) for rate in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(out_ch * len(branches), out_ch, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def fcn_head(in_ch: int, num_classes: int, mid_ch: int, dropout: float = 0.1) -> nn.Sequential:
    """3x3 conv + BN + ReLU, dropout, 1x1 classifier: the auxiliary heads (indices 0, 1, 4)."""
    return nn.Sequential(
        *_conv_bn_relu(in_ch, mid_ch, 3), nn.Dropout(dropout), nn.Conv2d(mid_ch, num_classes, 1)
    )


class DeepLabV3(SegmentationModel):
    """DeepLab v3 (torchvision layout).

    Optional FCN auxiliary head on stage 3 (loss weight 0.5 in torchvision's training recipe).
    """

    aux_head_name = "aux_classifier"
    aux_loss_weight = 0.5

    def __init__(
        self, depth: int, num_classes: int, output_stride: int = 8, aux_loss: bool = True
    ) -> None:
        super().__init__()
        self.output_stride = self.size_divisor = check_output_stride(
            output_stride, model="DeepLab v3"
        )
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.backbone = DilatedResNet(depth, output_stride)
        self.classifier = nn.Sequential(ASPP(2048, aspp_rates(output_stride)),
                                        *_conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS, 3),
                                        nn.Conv2d(ASPP_CHANNELS, num_classes, 1))
        self.aux_classifier = fcn_head(1024, num_classes, 256) if aux_loss else None
        init_weights(self.classifier)
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor):
        feats = self.backbone.features(x)
        out = self.classifier(feats.out)
        if self.training and self.aux_loss and self.aux_classifier is not None:
            return out, self.aux_classifier(feats.mid)
        return out


class DeepLabV3PlusHead(nn.Module):
    """v3+ decoder: 48-channel projection of the stride-4 features.

    Concatenated with the upsampled ASPP output, 3x3 refinement and classifier
    (DeepLabV3Plus-Pytorch names).
    """

    def __init__(self, in_ch: int, low_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.project = nn.Sequential(*_conv_bn_relu(low_ch, 48, 1))
        self.aspp = ASPP(in_ch, rates, dropout=0.1)
        self.classifier = nn.Sequential(*_conv_bn_relu(48 + ASPP_CHANNELS, ASPP_CHANNELS, 3),
                                        nn.Conv2d(ASPP_CHANNELS, num_classes, 1))

    def forward(self, low: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        out = F.interpolate(
            self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(torch.cat([low, out], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+ (DeepLabV3Plus-Pytorch layout); logits at stride 4. No auxiliary head."""

    def __init__(self, depth: int, num_classes: int, output_stride: int = 16) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride, model="DeepLab v3+")
        self.size_divisor = self.output_stride
        self.num_classes = num_classes
        self.backbone = DilatedResNet(depth, output_stride)
        self.classifier = DeepLabV3PlusHead(2048, 256, num_classes, aspp_rates(output_stride))
        init_weights(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.features(x)
        return self.classifier(feats.low, feats.out)


class AtrousSum(nn.Module):
    """DeepLab v2 ASPP: parallel 3x3 atrous classifiers ``c0``..``cN`` whose scores are summed."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, num_classes, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = iter(self.children())
        out = next(branches)(x)
        for branch in branches:
            out = out + branch(x)
        return out


class DeepLabV2(SegmentationModel):
    """DeepLab v2 (v2 port layout).

    Caffe ResNet-101 dilated to output stride 8, ASPP rates 6/12/18/24.
    """

    output_stride = 8
    size_divisor = 8

    def __init__(self, num_classes: int, blocks: Sequence[int] = (3, 4, 23, 3),
                 rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.layer1 = msra_stem()
        self.layer2 = msra_layer(blocks[0], 64, 256, 1, 1)
        self.layer3 = msra_layer(blocks[1], 256, 512, 2, 1)
        self.layer4 = msra_layer(blocks[2], 512, 1024, 1, 2)
        self.layer5 = msra_layer(blocks[3], 1024, 2048, 1, 4)
        init_weights(
            nn.ModuleList([self.layer1, self.layer2, self.layer3, self.layer4, self.layer5])
        )
        self.aspp = AtrousSum(2048, num_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.aspp(x)


def deeplabv2_resnet101(num_classes: int, output_stride: int | None = None) -> DeepLabV2:
    check_output_stride(8 if output_stride is None else output_stride, (8,), "deeplabv2_resnet101")
    return DeepLabV2(num_classes)


def deeplabv3_resnet50(
    num_classes: int, output_stride: int | None = None, aux_loss: bool = True
) -> DeepLabV3:
    return DeepLabV3(50, num_classes, output_stride or 8, aux_loss)


def deeplabv3_resnet101(
    num_classes: int, output_stride: int | None = None, aux_loss: bool = True
) -> DeepLabV3:
    return DeepLabV3(101, num_classes, output_stride or 8, aux_loss)


def deeplabv3plus_resnet50(num_classes: int, output_stride: int | None = None) -> DeepLabV3Plus:
    return DeepLabV3Plus(50, num_classes, output_stride or 16)


def deeplabv3plus_resnet101(num_classes: int, output_stride: int | None = None) -> DeepLabV3Plus:
    return DeepLabV3Plus(101, num_classes, output_stride or 16)
