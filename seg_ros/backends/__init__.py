"""Inference backends: what runs the network between the pipeline's pre- and post-processing.

A backend takes the normalised (1, 3, h, w) input tensor on the pipeline's device and returns
the logits (1, C, h', w') as a torch tensor on the same device, so the pipeline's pre- and
post-processing are shared by every backend. Backends register by name; one that cannot run
here (missing library, no GPU) raises a ConfigError saying why.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..errors import ConfigError


class Backend(Protocol):
    """``max_shapes``: how many input shapes the backend keeps a per-shape artefact for (a graph,
    session or engine that takes long to build); None when any shape runs without one."""

    name: str
    max_shapes: int | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


BackendFactory = Callable[..., Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def wrap(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory
    return wrap


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(name: str, model: nn.Module, device: torch.device, half: bool,
                   **options: Any) -> Backend:
    """Build backend ``name`` around a model already prepared for inference on ``device``."""
    if name not in _BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(list_backends())}")
    return _BACKENDS[name](model=model, device=device, half=half, **options)


from . import torch_backend as _torch_backend  # noqa: E402,F401  (registers 'torch')
from . import onnxruntime_backend as _onnxruntime_backend  # noqa: E402,F401  (registers 'onnxruntime')
from . import tensorrt_backend as _tensorrt_backend  # noqa: E402,F401  (registers 'tensorrt')


def auto_backend_name(device: torch.device) -> str:
    """``auto``: the backend measured fastest for the whole pipeline on ``device``: torch, both on
    CUDA (CUDA graphs, fp16) and on the CPU (oneDNN-fused graphs; onnxruntime's faster network
    alone is outweighed by handing its output back, docs/backends.md)."""
    return "torch"


@register_backend("auto")
def _auto_backend(model: nn.Module, device: torch.device, half: bool, **options: Any) -> Backend:
    return create_backend(auto_backend_name(device), model, device, half, **options)
