"""The CRF unary: class probabilities of the network at the refiner's working resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops


def class_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Softmax of the bilinearly upsampled logits, (1, C, H, W) float32 at ``size``."""
    return torch.softmax(ops.upsample_logits(logits, size), dim=1)


def image_at(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) float32 at ``size``.

    Area averaging when shrinking, so the colour features of the bilateral kernel see each cell's
    mean colour rather than one sample.
    """
    x = ops.image_to_tensor(image).float()
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    return F.interpolate(x, size=size, mode="area" if shrink else "bilinear",
                         **({} if shrink else {"align_corners": False}))
