"""The PyTorch backend: the prepared (BN-folded, channels_last, fp16 when asked) module.

On the CPU it runs a oneDNN-fused graph traced per input shape (option ``cpu_fusion``, on by
default; see :mod:`.cpu_fusion`). On CUDA it also turns on cudnn.benchmark, runs on a dedicated
stream and replays a CUDA graph per input shape (options ``cuda_graphs``, ``dedicated_stream``,
``cudnn_benchmark``; all on by default). ``max_shapes`` (formerly
``max_graphs``, still accepted): graphs kept, one per input shape, see :mod:`.cuda_fast`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register_backend
from .cpu_fusion import FusedCpuForward
from .cuda_fast import GraphedForward, describe_cuda, on_stream


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


@register_backend("torch")
class TorchBackend:
    name = "torch"
    max_batch = None  # eager, fused CPU graphs and CUDA graphs all take any batch size

    def __init__(self, model: nn.Module, device: torch.device, half: bool, cuda_graphs: Any = True,
                 dedicated_stream: Any = True, cudnn_benchmark: Any = True, max_shapes: int = 4,
                 cpu_fusion: Any = True, max_graphs: int | None = None, **_: Any) -> None:
        max_graphs = int(max_graphs if max_graphs is not None else max_shapes)
        self.model, self.device, self.half = model, device, half
        cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if cuda and _flag(dedicated_stream) else None
        if cuda and _flag(cudnn_benchmark):
            torch.backends.cudnn.benchmark = True
        self.graphed = (
            GraphedForward(model, max_graphs=int(max_graphs))
            if cuda and _flag(cuda_graphs)
            else None
        )
        self.fused = (FusedCpuForward(model, max_graphs=int(max_graphs))
                      if device.type == "cpu" and not half and _flag(cpu_fusion) else None)
        self._run = next((f for f in (self.graphed, self.fused) if f is not None), model)

    @property
    def max_shapes(self) -> int | None:
        """Graphs kept, one per shape (None once the fused CPU path gave up: eager runs any)."""
        if self.graphed is not None:
            return self.graphed.graphs.max_entries
        if self.fused is not None and self.fused.disabled is None:
            return self.fused.graphs.max_entries
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream is not None:
            return on_stream(self.stream, self._run, x)
        return self._run(x)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "cuda_graphs": self.graphed is not None,
            "dedicated_stream": self.stream is not None,
            "cpu_fusion": self.fused is not None,
        }
        if self.device.type == "cuda":
            info.update(describe_cuda(self.device), cudnn_benchmark=torch.backends.cudnn.benchmark)
        if self.graphed is not None:
            info.update(
                graphs=len(self.graphed.graphs), eager_fallbacks=len(self.graphed.graphs.failed)
            )
        if self.fused is not None:
            info.update(graphs=len(self.fused.graphs), cpu_fusion_disabled=self.fused.disabled)
        return info
