"""Tensor operations of the pipeline's pre- and post-processing, run where the model runs.

They work on torch tensors on any device so the CUDA path never leaves the GPU until the final
uint8 results; the same functions serve the CPU path, the tools and the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# overlay blending in 7-bit fixed point: exact to +-1, and 255 * 128 + 64 fits int16, so the
# arithmetic runs on int16 (half the memory traffic of int32, no float image)
_FIXED_POINT = 128


def image_to_tensor(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) view; already channels_last in memory, so no copy."""
    return image.permute(2, 0, 1).unsqueeze(0)


def resize_and_normalize(x: torch.Tensor, size: tuple[int, int], scale: torch.Tensor,
                         shift: torch.Tensor, channel_order: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    """uint8 (1, 3, H, W) -> normalised float at ``size``: ``x * scale + shift`` per channel.

    ``scale``/``shift`` fold ``(x / 255 - mean) / std``; ``channel_order`` reorders BGR to RGB.
    """
    source = x
    x = x.float()  # keeps the frame's channels_last layout
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    if channel_order is not None:
        x = x.index_select(1, channel_order)
    # a float input passed straight through is the caller's: copy it rather than write to it
    owned = x.data_ptr() != source.data_ptr()
    x = (
        x.contiguous(memory_format=torch.channels_last)
        if owned
        else x.clone(memory_format=torch.channels_last)
    )
    x.mul_(scale).add_(shift)  # in place on our own float copy: no further full-size buffers
    return x.to(dtype=dtype)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (H, W, 3) uint8 image tensor, rounded back to uint8."""
    x = F.interpolate(
        image_to_tensor(image).float(), size=size, mode="bilinear", align_corners=False
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of class scores to the output size (float32 for a stable argmax)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def labels_from_logits(logits: torch.Tensor, label_dtype: torch.dtype) -> torch.Tensor:
    """(1, C, H, W) -> (H, W) class ids (ties go to the lowest id, as torch.argmax does)."""
    return logits[0].argmax(dim=0).to(label_dtype)


def confidence_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability per pixel, (H, W) float32 in (0, 1]: 1 / sum(exp(l - max))."""
    scores = logits[0]
    top = scores.max(dim=0, keepdim=True).values
    return torch.exp(scores - top).sum(dim=0).reciprocal()


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """(H, W) ids -> (H, W, 3) uint8 colours from a (K, 3) palette."""
    # index_select on flat int32 ids: one gather, no int64 copy of the label image (3x faster on a
    # CPU)
    return palette.index_select(0, labels.reshape(-1).to(torch.int32)).view(*labels.shape, 3)


def blend(image: torch.Tensor, color: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * image + alpha * color`` for uint8 (H, W, 3) tensors, rounded."""
    a = int(round(alpha * _FIXED_POINT))
    if a <= 0:
        return image.clone()
    if a >= _FIXED_POINT:
        return color.clone()
    mixed = image.to(torch.int16) * (_FIXED_POINT - a)
    mixed.add_(color.to(torch.int16) * a).add_(_FIXED_POINT // 2)
    return (mixed >> 7).to(torch.uint8)


def _source_index(in_size: int, out_size: int, device: torch.device):
    """Bilinear (align_corners=False) source rows/cols and weights, computed as PyTorch does."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.to(torch.long).clamp_max(in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), (src - i0).to(device)


def upsampled_argmax(
    logits: torch.Tensor, size: tuple[int, int], label_dtype: torch.dtype
) -> torch.Tensor:
    """Argmax of bilinearly upsampled logits without upsampling all of them.

    A bilinear output is a convex combination of its four source pixels, so where those four share
    one argmax class the output has that class too (if c beats k at every corner it beats k in any
    convex combination). Only pixels whose source 2x2 cell disagrees, i.e. near class boundaries,
    are interpolated in full. Equal to ``labels_from_logits(upsample_logits(...))`` up to float
    rounding, at a fraction of the cost on the CPU, where upsampling every class score dominates.
    """
    scores = logits[0].float()
    _, h, w = scores.shape
    out_h, out_w = size
    low = scores.argmax(dim=0)
    down = torch.cat([low[1:], low[-1:]], 0)
    right = torch.cat([low[:, 1:], low[:, -1:]], 1)
    diag = torch.cat([down[:, 1:], down[:, -1:]], 1)
    uniform_cell = (low == down) & (low == right) & (low == diag)
    r0, r1, wy = _source_index(h, out_h, scores.device)
    c0, c1, wx = _source_index(w, out_w, scores.device)
    # columns first, then rows: the second gather copies whole rows (several times faster)
    labels = low.to(label_dtype).index_select(1, c0).index_select(0, r0)
    ys, xs = torch.nonzero((~uniform_cell).index_select(1, c0).index_select(0, r0), as_tuple=True)
    if ys.numel():
        cells = scores.permute(1, 2, 0).reshape(
            h * w, -1
        )  # one row of class scores per source cell
        a0, a1, b0, b1 = r0[ys] * w, r1[ys] * w, c0[xs], c1[xs]
        ly, lx = wy[ys].unsqueeze(1), wx[xs].unsqueeze(1)
        corner = lambda rows, cols: cells.index_select(0, rows + cols)  # noqa: E731 - flat row gather
        top = torch.lerp(corner(a0, b0), corner(a0, b1), lx)
        bottom = torch.lerp(corner(a1, b0), corner(a1, b1), lx)
        labels.view(-1)[ys * out_w + xs] = (
            torch.lerp(top, bottom, ly).argmax(dim=1).to(label_dtype)
        )
    return labels
