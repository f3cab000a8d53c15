"""Inference backends: what runs the network between the pipeline's pre- and post-processing.

The registry (:mod:`.registry`) holds the contract and the names; importing this package
registers the shipped backends: ``torch``, ``onnxruntime``, ``tensorrt`` and ``auto``.
"""
from __future__ import annotations

from . import onnxruntime_backend as _onnxruntime_backend  # noqa: F401  (registers 'onnxruntime')
from . import tensorrt_backend as _tensorrt_backend  # noqa: F401  (registers 'tensorrt')
from . import torch_backend as _torch_backend  # noqa: F401  (registers 'torch')
from .registry import (AUTO_BACKENDS, Backend, BackendContext, auto_backend_name, create_backend,
                       list_backends, register_backend)

__all__ = [
    "AUTO_BACKENDS",
    "Backend",
    "BackendContext",
    "auto_backend_name",
    "create_backend",
    "list_backends",
    "register_backend",
]
