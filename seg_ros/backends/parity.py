"""Checking an ONNX export against the torch model it came from (``seg-ros export``, tests)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .onnx_export import INPUT_NAME, OUTPUT_NAME
from .optional import require_onnxruntime


def onnxruntime_logits(path: str | os.PathLike, x: torch.Tensor, threads: int = 0) -> np.ndarray:
    """Run an ONNX file once with onnxruntime's CPU provider (for verification)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()})[0]


def verify_against_torch(pipe: Any, path: str | os.PathLike, image: np.ndarray,
                         size: tuple[int, int] | None = None) -> float:
    """Return the max abs logit difference between the ONNX file and the torch model.

    Max abs logit difference between the ONNX file (onnxruntime, CPU) and the pipeline's own
    torch model on ``image``, preprocessed by the pipeline (resized to ``size`` when given).
    """
    import cv2
    if size is not None and tuple(image.shape[:2]) != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        x = pipe.network_input(image)
        ref = pipe.model(x).float().cpu().numpy()
    got = onnxruntime_logits(path, x)
    if got.shape != ref.shape:
        raise ConfigError(f"ONNX file {path} returns logits of shape {got.shape}, torch "
                          f"{ref.shape} for a {tuple(x.shape)} input")
    return float(np.abs(got - ref).max())
