"""Random initialisation shared by every architecture built from scratch."""
from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module) -> None:
    """He initialisation (fan-out, ReLU) for (transposed) convolutions.

    Zero biases, identity batch norms: what ResNet and VGG-style networks train well from.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
