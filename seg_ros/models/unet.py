"""U-Net (Ronneberger, Fischer & Brox, 2015): encoder-decoder with concatenated skips.

The common padded variant with batch norm (as in milesial/Pytorch-UNet with transposed-conv
upsampling): blocks of two 3x3 conv (padding 1, no bias) + BN + ReLU, 2x2 max-pooling down,
2x2 stride-2 transposed conv up (halving the channels), concatenation with the encoder block of
the same resolution, a 1x1 classifier. ``base_width`` (64) is the first block's width, doubled
at each of the ``depth`` (4) downsamplings. The original's unpadded convolutions shrink the
output and need tiled inputs; padding keeps every size, so the logits come out at the input
size (``output_stride = 1``). Inputs are zero-padded to a multiple of 2**depth and the logits
cropped back, so the skips always match.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from ..errors import ConfigError
from .init import init_weights
from .vgg import crop_to, pad_to_multiple


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """(3x3 conv + BN + ReLU) x 2."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UNet(SegmentationModel):
    """``down.0`` runs at full resolution.

    ``down.i`` after the i-th pooling (``down.depth`` is the bottleneck); ``up.i`` / ``decode.i``
    go back from ``down.depth - i``.
    """

    output_stride = 1

    def __init__(self, num_classes: int, base_width: int = 64, depth: int = 4) -> None:
        super().__init__()
        for name, value in (("base_width", base_width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"U-Net {name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.size_divisor = 2 ** depth
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            double_conv(widths[i - 1] if i else 3, widths[i]) for i in range(depth + 1)
        )
        levels = range(depth, 0, -1)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in levels
        )
        self.decode = nn.ModuleList(double_conv(2 * widths[i - 1], widths[i - 1]) for i in levels)
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[-2:]
        x = self.down[0](pad_to_multiple(x, self.size_divisor))
        skips = [x]
        for block in self.down[1:]:
            x = block(self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, decode in zip(self.up, self.decode):
            x = decode(torch.cat([skips.pop(), up(x)], dim=1))
        return crop_to(self.classifier(x), hw)


def unet(num_classes: int, base_width: int = 64, depth: int = 4) -> UNet:
    return UNet(num_classes, base_width, depth)
