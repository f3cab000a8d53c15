"""The contract every registry model keeps.

The pipeline, the trainer, the weights loader and the tools read these attributes instead of
guessing them.

- ``forward(x)`` takes (N, 3, H, W) normalised images with H and W multiples of
  ``size_divisor`` and returns class logits (N, C, H / output_stride, W / output_stride); in
  training mode with ``aux_loss`` it returns ``(logits, aux_logits)`` for deep supervision.
- ``output_stride``: input size / logits size (1 for full-resolution models such as SegNet).
- ``size_divisor``: what the input's height and width must be multiples of (pooling indices,
  stride).
- ``aux_head_name``: the attribute holding the auxiliary (training-only) head, named as in the
  reference checkpoints so they load unchanged (torchvision's ``aux_classifier``, PSPNet's
  ``aux``, DDRNet's ``seghead_extra``); None for models without one.
- ``aux_loss``: whether ``forward`` returns the auxiliary logits in training mode.
"""
from __future__ import annotations

from torch import nn


class SegmentationModel(nn.Module):
    """Base of every registry model; the defaults suit a stride-8 model without auxiliary head."""

    output_stride: int = 8
    size_divisor: int = 8
    aux_head_name: str | None = None
    aux_loss: bool = False

    @property
    def aux_head_prefix(self) -> str | None:
        """State-dict key prefix of the auxiliary head ('seghead_extra.'), None without one."""
        return f"{self.aux_head_name}." if self.aux_head_name else None

    def drop_aux_head(self) -> None:
        """For inference from a checkpoint without the auxiliary head: remove it."""
        if self.aux_head_name:
            setattr(self, self.aux_head_name, None)
        self.aux_loss = False
