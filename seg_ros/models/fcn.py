"""FCN-8s (Long, Shelhamer & Darrell, 2015): VGG-16 made fully convolutional, with skips.

The layout of the Caffe ``voc-fcn8s`` model and its PyTorch ports: ``features.*`` is
torchvision's ``vgg16().features`` (ImageNet weights load as they are), ``fc6`` / ``fc7`` are
VGG's fully connected layers as 7x7 and 1x1 convolutions (4096 channels, ReLU, dropout 0.5; a
torchvision ``classifier.0.weight`` (4096, 25088) reshapes to ``fc6.weight`` (4096, 512, 7, 7)),
``score_fr`` / ``score_pool4`` / ``score_pool3`` score fc7, pool4 and pool3, and the learned,
bias-free transposed convolutions ``upscore2`` (2x), ``upscore_pool4`` (2x) and ``upscore8``
(8x), initialised bilinear, bring the fused scores back to the input resolution.

Instead of the original's ``padding=100`` on conv1_1 plus crops at offsets, every layer keeps
the size (fc6 padded by 3, upsamplings 4/2/1, 4/2/1 and 16/8/4 kernel/stride/padding): the input
is zero-padded to a multiple of 32 and the logits cropped back, so the scores of each skip
align exactly and come out at the input size (``output_stride = 1``).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from .init import init_weights
from .vgg import crop_to, fc_as_conv, pad_to_multiple, vgg16_features


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Return a transposed convolution initialised to bilinear upsampling by ``factor``.

    A bias-free ``factor``x transposed convolution initialised to bilinear interpolation per
    channel (kernel 2*factor, padding factor/2: the output is exactly ``factor`` times larger).
    """
    size = 2 * factor
    up = nn.ConvTranspose2d(
        channels, channels, size, stride=factor, padding=factor // 2, bias=False
    )
    center = factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    with torch.no_grad():
        up.weight.copy_(torch.eye(channels)[:, :, None, None] * (taps[:, None] * taps[None, :]))
    return up


class FCN8s(SegmentationModel):
    """FCN-8s: scores of fc7 (stride 32), pool4 (16) and pool3 (8) fused by summation."""

    output_stride = 1
    size_divisor = 32

    def __init__(self, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = vgg16_features()
        self.fc6 = fc_as_conv(512, 4096, 7)
        self.fc7 = fc_as_conv(4096, 4096, 1)
        self.drop = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        init_weights(
            nn.ModuleList([self.fc6, self.fc7, self.score_fr, self.score_pool4, self.score_pool3])
        )
        self.upscore2 = bilinear_upsampling(num_classes, 2)
        self.upscore_pool4 = bilinear_upsampling(num_classes, 2)
        self.upscore8 = bilinear_upsampling(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[-2:]
        pool3, pool4, pool5 = (s.out for s in self.features.stages(pad_to_multiple(x, 32))[2:])
        fc7 = self.drop(self.relu(self.fc7(self.drop(self.relu(self.fc6(pool5))))))
        score = self.upscore2(self.score_fr(fc7)) + self.score_pool4(pool4)
        score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return crop_to(self.upscore8(score), hw)


def fcn8s_vgg16(num_classes: int) -> FCN8s:
    return FCN8s(num_classes)
