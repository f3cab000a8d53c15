"""VGG-16 pieces shared by the classic models (FCN-8s, SegNet, DeconvNet, DilatedNet).

``vgg16_features`` builds the 13-convolution trunk as one ``nn.Sequential`` whose indices are
torchvision's ``vgg16().features`` (or ``vgg16_bn().features`` with batch norm), so ImageNet
weights load into ``features.*`` as they are. A pooling a model does not want (DilatedNet's
pool4/pool5) is an ``nn.Identity`` at the same index, keeping the numbering.

The classic models pool with indices or fuse skips, which only invert exactly on sizes that are
multiples of 32: ``pad_to_multiple`` pads the (normalised) input with zeros at the bottom and right
and ``crop_to`` cuts the prediction back, so any input size works and a size that is already a
multiple (what the pipeline feeds, rounding to ``size_divisor``) costs nothing.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights

# output channels of the convolutions of VGG-16's five stages
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


def conv_bn_relu(in_ch: int, out_ch: int, batch_norm: bool, dilation: int = 1,
                 transposed: bool = False) -> list[nn.Module]:
    """3x3 (transposed) convolution keeping the size, [BN], ReLU. Biases as in the Caffe models."""
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_type(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
    return (
        [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        if batch_norm
        else [conv, nn.ReLU(inplace=True)]
    )


class Stage(NamedTuple):
    """One encoder stage's output after its pooling, and the pooling's argmax indices (or None)."""

    out: torch.Tensor
    indices: torch.Tensor | None


class VGGFeatures(nn.Sequential):
    """The VGG-16 trunk; ``stages(x)`` also returns each stage's pooled output (and indices)."""

    def stages(self, x: torch.Tensor) -> list[Stage]:
        found = []
        for layer in self:
            if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
                x, indices = layer(x)
                found.append(Stage(x, indices))
            else:
                x = layer(x)
                if isinstance(layer, nn.MaxPool2d):
                    found.append(Stage(x, None))
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
            if isinstance(x, tuple):  # a pooling that returns indices
                x = x[0]
        return x


def vgg16_features(
    batch_norm: bool = False,
    pool_indices: bool = False,
    ceil_mode: bool = False,
    pools: Sequence[bool] = (True,) * 5,
    dilations: Sequence[int] = (1,) * 5,
) -> VGGFeatures:
    """VGG-16's 13 convs (+BN) + ReLU and 5 max-poolings, in torchvision's index order.

    ``pools[i]`` False puts an ``nn.Identity`` where stage i's pooling would be; ``dilations[i]``
    dilates stage i's convolutions (padding = dilation, so the size is kept).
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for widths, pool, dilation in zip(VGG16_STAGES, pools, dilations):
        for width in widths:
            layers += conv_bn_relu(in_ch, width, batch_norm, dilation)
            in_ch = width
        layers.append(
            nn.MaxPool2d(2, 2, ceil_mode=ceil_mode, return_indices=pool_indices)
            if pool
            else nn.Identity()
        )
    features = VGGFeatures(*layers)
    init_weights(features)
    return features


def fc_as_conv(in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """Return a fully connected layer as a convolution over the whole map (VGG's fc6/fc7).

    Padded to keep the size, so it slides over inputs of any size instead of needing pool5 to be
    7x7.
    """
    return nn.Conv2d(
        in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation
    )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) at the bottom and right up to multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def crop_to(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """Return the top-left ``hw`` of (N, C, H, W): undoes ``pad_to_multiple``."""
    return x if tuple(x.shape[-2:]) == tuple(hw) else x[..., :hw[0], :hw[1]]
