"""PSPNet (Zhao et al., 2017) on a deep-stem dilated ResNet, in semseg's parameter layout.

Keys match the semseg reference implementation (``layer0``..``layer4``, ``ppm.features.*``,
``cls.*``, ``aux.*``) so its ``{'state_dict': {'module.…'}}`` checkpoints load as they are.
Like semseg, every block of a dilated stage is dilated and the pyramid features are upsampled
with ``align_corners=True``. Logits come out at the output stride (1/8 of the input by default).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel
from .resnet import DilatedResNet, check_output_stride, init_weights

PSP_BINS = (1, 2, 3, 6)


def _head(in_ch: int, mid_ch: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv + BN + ReLU, spatial dropout, 1x1 classifier (indices 0, 1, 4 hold parameters)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_ch),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid_ch, num_classes, 1),
    )


class PyramidPooling(nn.Module):
    """Average-pool to each bin size.

    Reduce by 1x1 conv + BN + ReLU, upsample, concatenate with the input: context at four scales
    beside the local features.
    """

    def __init__(self, in_ch: int, reduction_ch: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_ch, reduction_ch, 1, bias=False),
                          nn.BatchNorm2d(reduction_ch), nn.ReLU(inplace=True))
            for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(f(x), size=size, mode="bilinear", align_corners=True)
            for f in self.features
        ]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(DilatedResNet, SegmentationModel):
    """Deep-stem dilated ResNet + pyramid pooling + 3x3 head.

    Auxiliary FCN head on stage 3 (loss weight 0.4). The trunk's stages are this module's own
    children, as in semseg.
    """

    aux_head_name = "aux"
    aux_loss_weight = 0.4

    def __init__(self, depth: int, num_classes: int, output_stride: int = 8, aux_loss: bool = True,
                 bins: Sequence[int] = PSP_BINS, dropout: float = 0.1) -> None:
        output_stride = check_output_stride(output_stride, model="PSPNet")
        super().__init__(depth, output_stride, deep_stem=True, dilation_scheme="uniform")
        self.size_divisor = output_stride
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.ppm = PyramidPooling(2048, 2048 // len(bins), bins)
        self.cls = _head(4096, 512, num_classes, dropout)
        self.aux = _head(1024, 256, num_classes, dropout) if aux_loss else None
        init_weights(self)

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        out = self.cls(self.ppm(feats.out))
        if self.training and self.aux_loss and self.aux is not None:
            return out, self.aux(feats.mid)
        return out


def pspnet_resnet50(
    num_classes: int, output_stride: int | None = None, aux_loss: bool = True
) -> PSPNet:
    return PSPNet(50, num_classes, output_stride or 8, aux_loss)


def pspnet_resnet101(
    num_classes: int, output_stride: int | None = None, aux_loss: bool = True
) -> PSPNet:
    return PSPNet(101, num_classes, output_stride or 8, aux_loss)
