"""The optional packages some backends need.

Each ``require_*`` returns the module, or raises a ConfigError naming what to install. One place,
so the backends and the exporter need not import each other for them.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

TENSORRT_REFUSAL = "backend tensorrt needs the TensorRT Python package and a CUDA GPU: "


def require_onnx():
    """Return the ``onnx`` module, or a ConfigError naming the missing package."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the 'onnx' package ({exc}); install it with "
                          f"`pip install onnx` or `pip install seg_ros[onnx]`") from None
    return onnx


def require_onnxruntime():
    """Return the ``onnxruntime`` module, or a ConfigError naming the missing package."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"backend onnxruntime needs the 'onnxruntime' package ({exc}); install "
                          f"it with `pip install onnxruntime onnx` (onnxruntime-gpu for CUDA) or "
                          f"`pip install seg_ros[onnx]`") from None
    return onnxruntime


def require_tensorrt(device: torch.device | None = None):
    """Return the ``tensorrt`` module, or a ConfigError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ConfigError(TENSORRT_REFUSAL + f"the 'tensorrt' package is not importable ({exc}); "
                          "on a Jetson it comes with JetPack (python3-libnvinfer), on x86 "
                          "`pip install tensorrt`") from None
    if not torch.cuda.is_available():
        raise ConfigError(TENSORRT_REFUSAL + f"TensorRT {trt.__version__} is installed but torch "
                          f"sees no CUDA device (torch {torch.__version__}, CUDA build: "
                          f"{torch.version.cuda or 'none'})")
    if device is not None and device.type != "cuda":
        raise ConfigError(TENSORRT_REFUSAL + f"the pipeline runs on {device}; use device cuda "
                          "(or auto)")
    return trt
