"""Test-time augmentation (multi-scale + flip) for the offline tools.

The offline quality mode of ``seg-ros eval --tta`` and ``seg-ros replay --tta``, never used
by the node (it costs one forward pass per scale and flip).

The frame runs through the network at several scales of its inference size (default 0.75, 1.0,
1.25), each also mirrored left-right; the softmax scores of every pass, brought to the output size
(and mirrored back), are averaged and the labels are their argmax. It uses only the pipeline's
public steps (``preprocess``, ``backend``, ``inference_size_for``), so it runs on any backend
that accepts several input sizes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from . import ops
from .errors import ConfigError
from .pipeline import FrameOptions, SegmentationPipeline, SegmentationResult, round_to_multiple

DEFAULT_SCALES = (0.75, 1.0, 1.25)
NO_CRF = "test-time augmentation (--tta) cannot be combined with CRF refinement (--crf)"


def offline_pipeline(pipe: SegmentationPipeline, tta: bool, crf: str = "off"):
    """Return what an offline tool segments with: the pipeline, or its TTA mode when asked."""
    if not tta:
        return pipe
    if crf != "off":
        raise ConfigError(NO_CRF)
    return TTAPipeline(pipe)


def output_size(pipe: SegmentationPipeline, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """Return the labels' size, as the pipeline would give it (``output_resolution``)."""
    if pipe.config.output_resolution == "input":
        return tuple(frame_hw)
    return pipe.inference_size_for(tuple(frame_hw))


def scaled_sizes(pipe: SegmentationPipeline, frame_hw: tuple[int, int],
                 scales: Sequence[float]) -> list[tuple[int, int]]:
    """Return the network input size of each scale, rounded to the model's size divisor."""
    h, w = pipe.inference_size_for(tuple(frame_hw))
    d = pipe.size_divisor
    return [(round_to_multiple(h * s, d), round_to_multiple(w * s, d)) for s in scales]


@torch.inference_mode()
def tta_probabilities(pipe: SegmentationPipeline, image: np.ndarray, color_order: str = "rgb",
                      scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> torch.Tensor:
    """Average the class probabilities over scales and flips.

    Class probabilities (C, H, W) at the output size, averaged over ``scales`` x (as is,
    mirrored), on the pipeline's device.
    """
    if not scales:
        raise ConfigError("test-time augmentation needs at least one scale")
    pipe.check_image(image)
    frame = torch.from_numpy(np.ascontiguousarray(image)).to(pipe.device)
    out_hw = output_size(pipe, image.shape[:2])
    total: torch.Tensor | None = None
    passes = 0
    for size in scaled_sizes(pipe, image.shape[:2], scales):
        x = pipe.preprocess(frame, color_order, size)
        for mirrored in (False, True) if flip else (False,):
            xi = x.flip(-1).contiguous(memory_format=torch.channels_last) if mirrored else x
            logits = pipe.backend(xi)  # consumed at once: a CUDA-graph output is reused
            prob = torch.softmax(ops.upsample_logits(logits, out_hw), dim=1)[0]
            if mirrored:  # mirrored back at the output size, so a mirror-symmetric frame gets
                prob = prob.flip(-1)  # exactly mirror-symmetric scores
            total = prob if total is None else total.add_(prob)
            passes += 1
    return total.div_(passes)


class TTAPipeline:
    """Pipeline wrapper that segments with test-time augmentation.

    A pipeline in the offline quality mode: called like :class:`SegmentationPipeline` for what
    the offline tools ask (labels, colour mask, overlay, confidence); not CRF-refinable.
    """

    def __init__(self, pipe: SegmentationPipeline, scales: Sequence[float] = DEFAULT_SCALES,
                 flip: bool = True) -> None:
        self.pipe, self.scales, self.flip = pipe, tuple(float(s) for s in scales), flip

    @property
    def classes(self):
        return self.pipe.classes

    @property
    def config(self):
        return self.pipe.config

    @property
    def trained(self) -> bool:
        return self.pipe.trained

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def describe(self) -> dict[str, Any]:
        return {**self.pipe.describe(), "tta": {"scales": list(self.scales), "flip": self.flip}}

    def __call__(self, image: np.ndarray, color_order: str = "rgb",
                 options: FrameOptions | None = None, **fields: Any) -> SegmentationResult:
        """Segment one frame by averaged scores; options as the pipeline's (no keep_scores)."""
        opts = self.pipe.frame_options(options, **fields)
        if opts.keep_scores:
            raise ConfigError(NO_CRF)
        prob = tta_probabilities(self.pipe, image, color_order, self.scales, self.flip)
        top = prob.max(dim=0)
        rgb = torch.from_numpy(np.ascontiguousarray(image)).to(self.pipe.device)
        rgb = rgb if color_order == "rgb" else rgb.flip(-1)
        return self.pipe.outputs_from_labels(top.indices, rgb, tuple(top.indices.shape), opts,
                                             top.values if opts.confidence else None)
