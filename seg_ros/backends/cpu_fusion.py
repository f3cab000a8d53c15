"""The fast CPU path of the torch backend: oneDNN graph fusion of a traced, frozen forward.

Eager PyTorch runs every convolution, ReLU and residual add as its own kernel over the whole
feature map. Tracing the (already BN-folded, channels_last) network once per input shape, freezing
its weights into the graph and letting oneDNN fuse conv + ReLU + add chains removes most of those
passes over memory: about 15 % less forward time for DDRNet-23-slim at 512x1024 on a 2-core x86 CPU
(docs/pipeline.md). Outputs match the eager module to float rounding. A traced graph is only valid
for the shape it was traced with, so graphs live in a :class:`ShapeCache`; a model whose graph
cannot be built or run, or differs from the eager module, runs eagerly from then on.
"""
from __future__ import annotations

import logging
import warnings
import weakref
from typing import Hashable

import torch
from torch import nn

from .cuda_fast import graph_key
from .shape_cache import ShapeCache

log = logging.getLogger("seg_ros")
PROFILING_RUNS = 3  # the JIT profiles a few runs before it hands the graph to oneDNN
_traced: "weakref.WeakSet[torch.jit.ScriptModule]" = weakref.WeakSet()  # graphs still in use


def trace_fused(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``model`` traced on ``example``, frozen, warmed up until the fused graph is in place, and
    checked against the eager module on ``example`` (RuntimeError when they differ)."""
    torch.jit.enable_onednn_fusion(True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about Python control flow on shapes
        traced = torch.jit.freeze(torch.jit.trace(model, example.clone(), check_trace=False))
        for _ in range(PROFILING_RUNS):
            fused = traced(example.clone())
        reference = model(example.clone())
    error = (fused.float() - reference.float()).abs().max().item()
    bound = 1e-3 + 1e-2 * reference.abs().max().item()
    if not error <= bound:
        raise RuntimeError(f"fused graph differs from the eager model by {error:.3g} (bound {bound:.3g})")
    _traced.add(traced)
    return traced


def forget_released_graphs() -> bool:
    """Free the memory of traced graphs nobody uses any more. torch keeps every traced module's
    methods, with the weights frozen into them, in its global TorchScript compilation unit for
    the life of the process (pytorch/pytorch#96726): dropping a pipeline does not free them, so
    a process that loads one model after another grows by a model each time. This drops all of
    that unit's functions, so only when no graph traced here is alive (call after gc.collect());
    True when it did. For processes with no other TorchScript user, such as the seg_ros nodes."""
    if len(_traced):
        return False
    torch.jit._state._python_cu.drop_all_functions()
    return True


def _reason(exc: Exception) -> str:
    """The last line of an exception (TorchScript errors carry a whole trace before it)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


class FusedCpuForward:
    """``forward(x)`` through the fused graph traced for ``x``'s shape. If a graph cannot be built
    or run for this model (oneDNN does not take every op pattern, e.g. DeepLab's ASPP
    concatenation), one warning says why and the model runs eagerly from then on."""

    def __init__(self, model: nn.Module, max_graphs: int = 4) -> None:
        self.model = model
        self.graphs: ShapeCache[torch.jit.ScriptModule] = ShapeCache(
            self._build, max_entries=max_graphs, what="fused CPU graph")
        self.disabled: str | None = None  # why the model runs eagerly, once it does

    def _build(self, key: Hashable, example: torch.Tensor) -> torch.jit.ScriptModule:
        log.info("tracing a fused CPU graph for input %s (first frame of this size is slower)", key[0])
        return trace_fused(self.model, example)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled is None:
            try:
                graph = self.graphs.get(graph_key(x), x)
                with torch.inference_mode(False), torch.no_grad():
                    return graph(x.clone() if x.is_inference() else x)
            except Exception as exc:  # noqa: BLE001 - any failure means: run this model eagerly
                self.disabled = _reason(exc)
                self.graphs.clear()
                log.warning("no oneDNN-fused CPU graph for %s (%s); running it eagerly",
                            type(self.model).__name__, self.disabled)
        return self.model(x)
