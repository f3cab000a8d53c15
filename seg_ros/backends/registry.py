"""The backend registry: backends register a factory by name; the pipeline creates one by name.

A backend takes the normalised (1, 3, h, w) input tensor on the pipeline's device and returns
the logits (1, C, h', w') as a torch tensor on the same device, so the pipeline's pre- and
post-processing are shared by every backend. One that cannot run here (missing library, no GPU)
raises a ConfigError saying why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


class Backend(Protocol):
    """What the pipeline needs of a backend: a call on a batch, ``describe`` and two limits.

    ``max_shapes``: how many input shapes the backend keeps a per-shape artefact for (a graph,
    session or engine that takes long to build); None when any shape runs without one.
    ``max_batch``: the most frames one call takes (the pipeline splits larger batches); None:
    any number.
    """

    name: str
    max_shapes: int | None
    max_batch: int | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend may know of the pipeline it serves.

    Instead of the pipeline itself: ``metadata`` goes into the files it exports (ONNX
    metadata_props); ``network_input(frame, color_order)`` preprocesses a uint8 frame exactly as
    the pipeline does (INT8 calibration).
    """

    model_name: str
    num_classes: int
    size_divisor: int = 8
    trained: bool = True
    num_threads: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    network_input: Callable[[np.ndarray, str], torch.Tensor] | None = None


BackendFactory = Callable[..., Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Class or function decorator: ``create_backend(name, ...)`` calls the decorated factory."""
    def wrap(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory
    return wrap


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def create_backend(name: str, model: nn.Module, device: torch.device, half: bool,
                   context: BackendContext | None = None, **options: Any) -> Backend:
    """Build backend ``name`` around a model already prepared for inference on ``device``.

    ``options`` are the backend's own (``max_shapes`` is understood by all).
    """
    if name not in _BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known backends: "
                          f"{', '.join(list_backends())}")
    return _BACKENDS[name](model=model, device=device, half=half, context=context, **options)


# ``auto`` per device kind: the backend and why (the measurements are in docs/backends.md).
AUTO_BACKENDS: dict[str, tuple[str, str]] = {
    "cpu": ("torch", "measured 2026-11-23, DDRNet-23-slim on 2 cores: torch's whole pipeline "
                     "1.10-1.67x faster than onnxruntime's (docs/backends.md, Benchmarks)"),
    "cuda": ("torch", "not measured: torch (CUDA graphs, fp16) is the one CUDA backend always "
                      "installed; tensorrt needs TensorRT and a prebuilt engine to be faster"),
}
AUTO_FALLBACK = "torch"  # any other device kind: the one backend that runs everywhere


def auto_backend_name(device: torch.device) -> str:
    """Return the backend ``auto`` picks for ``device``.

    The :data:`AUTO_BACKENDS` entry of its kind.
    """
    return AUTO_BACKENDS.get(device.type, (AUTO_FALLBACK, ""))[0]


@register_backend("auto")
def _auto_backend(model: nn.Module, device: torch.device, half: bool,
                  context: BackendContext | None = None, **options: Any) -> Backend:
    return create_backend(auto_backend_name(device), model, device, half, context, **options)
