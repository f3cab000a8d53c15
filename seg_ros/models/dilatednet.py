"""DilatedNet (Yu & Koltun, 2016): the VGG-16 front end and the basic context module.

Front end: VGG-16 (torchvision ``vgg16().features`` indices, pool4 and pool5 left as
``nn.Identity`` so ImageNet weights load as they are), conv5 dilated 2, ``fc6`` a 7x7
convolution dilated 4 (4096), ``fc7`` 1x1 (4096), both with ReLU and dropout 0.5, and a 1x1
classifier (``final``). Padding keeps every size ("same" instead of the paper's unpadded
convolutions on a reflection-padded input), and the three remaining poolings round up as in
Caffe, so the logits come out at output stride 8: ``ceil(H / 8)`` x ``ceil(W / 8)``.

``context_module=True`` appends the basic context module (``context``) on the C class scores:
seven 3x3 convolutions of C channels dilated 1, 1, 2, 4, 8, 16, 1, each with ReLU, then a 1x1
C -> C convolution. They are initialised to the identity (``nn.init.dirac_``, zero bias), as in
the paper, so the module starts out passing the front end's (rectified) scores through.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from ..errors import ConfigError
from .init import init_weights
from .vgg import fc_as_conv, vgg16_features

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


def basic_context_module(channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for dilation in CONTEXT_DILATIONS:
        layers += [
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.Conv2d(channels, channels, 1))
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.dirac_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class DilatedNet(SegmentationModel):
    """Front end (+ optional context module); logits at output stride 8."""

    output_stride = 8
    size_divisor = 8

    def __init__(
        self, num_classes: int, context_module: bool = False, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = vgg16_features(ceil_mode=True, pools=(True, True, True, False, False),
                                       dilations=(1, 1, 1, 1, 2))
        self.fc6 = fc_as_conv(512, 4096, 7, dilation=4)
        self.fc7 = fc_as_conv(4096, 4096, 1)
        self.drop = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.final = nn.Conv2d(4096, num_classes, 1)
        init_weights(nn.ModuleList([self.fc6, self.fc7, self.final]))
        self.context = basic_context_module(num_classes) if context_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.drop(self.relu(self.fc7(self.drop(self.relu(self.fc6(x))))))
        x = self.final(x)
        return x if self.context is None else self.context(x)


def dilatednet_vgg16(num_classes: int, context_module: bool = False) -> DilatedNet:
    if not isinstance(context_module, bool):
        raise ConfigError(
            f"context_module for dilatednet_vgg16 must be true or false, got {context_module!r}"
        )
    return DilatedNet(num_classes, context_module)
