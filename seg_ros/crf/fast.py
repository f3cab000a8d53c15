"""``fast`` CRF: mean-field inference in PyTorch with DeepLab's unary and pairwise terms.

The pairwise kernels truncated to a k x k window (in the spirit of ConvCRF, Teichmann & Cipolla
2018).

Gaussian (spatial) + bilateral (spatial and colour) kernels, Potts compatibility, each kernel
normalised symmetrically (D^-1/2 K D^-1/2, as densecrf's default) over its window. It runs where
the logits are (GPU or CPU) at ``fast_scale`` of the output size; widths are given in output
pixels and scaled to that grid. The kernel weights depend only on the image, so they are
computed once per frame; each iteration is k*k - 1 fused multiply-adds over shifted views of Q.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .. import ops
from . import CRFConfig
from .unary import class_probabilities, image_at


def _shift(x: torch.Tensor, r: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """View of a tensor padded by ``r`` at offset (dy, dx): element p holds x[p + d]."""
    return x[..., r + dy: r + dy + h, r + dx: r + dx + w]


def window_kernels(image: torch.Tensor, config: CRFConfig, scale: float
                   ) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Neighbour offsets and their weights (n, h, w).

    w1 * bilateral + w2 * Gaussian, each normalised symmetrically; neighbours outside the image
    weigh 0. A handful of whole-window operations (unfold), so the GPU path launches few kernels.
    """
    _, _, h, w = image.shape
    k = config.fast_window
    r = k // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    keep = torch.tensor([i for i, d in enumerate(offsets) if d != (0, 0)], device=image.device)
    offsets = [d for d in offsets if d != (0, 0)]

    def window(
        x: torch.Tensor,
    ) -> torch.Tensor:  # (c, h, w) -> (c, n, h, w): x[p + d] per offset d
        c = x.shape[0]
        return F.unfold(x[None], k, padding=r).view(c, k * k, h, w).index_select(1, keep)

    d2 = torch.tensor([float(dy * dy + dx * dx) for dy, dx in offsets], device=image.device).view(
        -1, 1, 1
    )
    valid = window(torch.ones(1, h, w, device=image.device))[0]
    colour = (window(image[0]) - image[0].unsqueeze(1)).square_().sum(dim=0)
    alpha, gamma = config.theta_alpha * scale, config.theta_gamma * scale
    bilateral = torch.exp(-d2 / (2 * alpha ** 2) - colour / (2.0 * config.theta_beta ** 2)) * valid
    gaussian = torch.exp(-d2 / (2 * gamma ** 2)) * valid
    kernels = torch.zeros_like(bilateral)
    for kern, weight in ((bilateral, config.bilateral_weight), (gaussian, config.gaussian_weight)):
        if weight == 0:
            continue
        norm = (1.0 + kern.sum(dim=0, keepdim=True)).rsqrt_()  # the degree counts the pixel itself
        kernels += weight * norm * kern * window(norm)[0]
    return offsets, kernels


def mean_field(log_unary: torch.Tensor, offsets: list[tuple[int, int]], kernels: torch.Tensor,
               iterations: int, r: int) -> torch.Tensor:
    """Return Q, (1, C, h, w), after ``iterations`` mean-field updates (Potts).

    Each update is Q <- softmax(log P + sum_d K_d * Q(p + d)).
    """
    _, _, h, w = log_unary.shape
    q = torch.softmax(log_unary, dim=1)
    for _ in range(iterations):
        padded = F.pad(q, (r, r, r, r))
        message = log_unary.clone()
        for i, (dy, dx) in enumerate(offsets):
            message.addcmul_(kernels[i], _shift(padded, r, dy, dx, h, w))
        q = torch.softmax(message, dim=1)
    return q


class FastCRF:
    """Refiner (see :mod:`seg_ros.crf`) running on ``device`` (where the logits live)."""

    mode = "fast"

    def __init__(self, config: CRFConfig, device: object = "cpu") -> None:
        self.config = config.validate()
        self.device = torch.device(device) if not isinstance(device, torch.device) else device

    def work_size(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.config.fast_scale
        return max(1, round(out_hw[0] * s)), max(1, round(out_hw[1] * s))

    @torch.inference_mode()
    def __call__(
        self, image: torch.Tensor, logits: torch.Tensor, out_hw: tuple[int, int]
    ) -> torch.Tensor:
        work = self.work_size(out_hw)
        scale = work[0] / out_hw[0]
        probs = class_probabilities(logits, work)
        offsets, kernels = window_kernels(
            image_at(image.to(logits.device), work), self.config, scale
        )
        q = mean_field(
            torch.log(probs.clamp_min(1e-8)),
            offsets,
            kernels,
            self.config.fast_iterations,
            self.config.fast_window // 2,
        )
        return ops.upsampled_argmax(q, out_hw, torch.int64)

    def close(self) -> None:
        pass
