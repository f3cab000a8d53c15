"""The fast CPU path of the torch backend: oneDNN graph fusion of a traced, frozen forward.

Eager PyTorch runs every convolution, ReLU and residual add as its own kernel over the whole
feature map. Tracing the (already BN-folded, channels_last) network, freezing its weights into the
graph and letting oneDNN fuse conv + ReLU + add chains removes most of those passes over memory:
about 15 % less forward time for DDRNet-23-slim at 512x1024 on a 2-core x86 CPU
(docs/pipeline.md). Outputs match the eager module to float rounding. The JIT specialises a frozen
graph to the shapes it profiled, so graphs live in a :class:`ShapeCache`, one per input shape; a
model whose graph cannot be built or run, or differs from the eager module, runs eagerly from then
on.

Memory: every TorchScript type a trace or a freeze creates is registered in the process-wide
compilation unit and never freed, frozen weights included (24 MB per graph for DDRNet-23-slim, so
RSS grew without bound when sizes cycled past the cache: issue 18). So the model is traced once;
the first graph is frozen from that trace (its types stay for good, once), and every later one is
loaded from the serialised trace into a compilation unit of its own, which goes with the graph
when the cache evicts it. Serialising costs 0.3 s, so the first graph, built at start-up, skips it.
"""
from __future__ import annotations

import io
import logging
import warnings
import weakref
from typing import Hashable

import torch
from torch import nn

from .cuda_fast import graph_key
from .shape_cache import ShapeCache

log = logging.getLogger("seg_ros")
PROFILING_RUNS = 2  # run 1 profiles shapes, run 2 compiles and runs the oneDNN-fused graph
# traces still in use: their types (and the first graph frozen from each) live in the global
# compilation unit until forget_released_graphs()
_traced: "weakref.WeakSet[torch.jit.ScriptModule]" = weakref.WeakSet()


def trace_model(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``model`` traced on ``example``.

    The trace keeps sizes symbolic (our models read them with ``x.shape``), so the one trace serves
    every input shape; each graph built from it is checked against the eager module anyway.
    """
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shapes; TorchScript's deprecation
        traced = torch.jit.trace(model, example.clone(), check_trace=False)
    _traced.add(traced)
    return traced


def serialise(traced: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's deprecation notices
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def load_private(script: bytes) -> torch.jit.ScriptModule:
    """Load ``script`` into a compilation unit of its own (freed with it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(io.BytesIO(script), map_location="cpu")


def fuse_for_shape(traced: torch.jit.ScriptModule, model: nn.Module,
                   example: torch.Tensor) -> torch.jit.ScriptModule:
    """``traced`` frozen, warmed up on ``example`` until the fused graph is in place.

    And checked against the eager ``model`` on it (RuntimeError when they differ).
    """
    torch.jit.enable_onednn_fusion(True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = torch.jit.freeze(traced.eval())
        for _ in range(PROFILING_RUNS):
            fused = graph(example.clone())
        reference = model(example.clone())
    if fused.shape != reference.shape:
        raise RuntimeError(f"fused graph gives shape {tuple(fused.shape)}, the eager model "
                           f"{tuple(reference.shape)} (the trace fixed a size)")
    error = (fused.float() - reference.float()).abs().max().item()
    bound = 1e-3 + 1e-2 * reference.abs().max().item()
    if not error <= bound:
        raise RuntimeError(
            f"fused graph differs from the eager model by {error:.3g} (bound {bound:.3g})"
        )
    return graph


def forget_released_graphs() -> bool:
    """Free the memory of traced graphs nobody uses any more.

    Free the memory of traced graphs nobody uses any more. torch keeps every traced module's
    methods, with the weights frozen into them, in its global TorchScript compilation unit for
    the life of the process (pytorch/pytorch#96726): graphs loaded into units of their own go
    with them, but the trace and the first graph frozen from it do not, so
    a process that loads one model after another grows by a model each time. This drops all of
    that unit's functions, so only when no graph traced here is alive (call after gc.collect());
    True when it did. For processes with no other TorchScript user, such as the seg_ros nodes.
    """
    if len(_traced):
        return False
    torch.jit._state._python_cu.drop_all_functions()
    return True


def _reason(exc: Exception) -> str:
    """Return the last line of an exception (TorchScript errors carry a whole trace before it)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


class FusedCpuForward:
    """``forward(x)`` through the fused graph for ``x``'s shape.

    If a graph cannot be built or run for this model (oneDNN does not take every op pattern, e.g.
    DeepLab's ASPP concatenation), one warning says why and the model runs eagerly from then on.
    """

    def __init__(self, model: nn.Module, max_graphs: int = 4) -> None:
        self.model = model
        self.graphs: ShapeCache[torch.jit.ScriptModule] = ShapeCache(
            self._build, max_entries=max_graphs, what="fused CPU graph")
        self.disabled: str | None = None  # why the model runs eagerly, once it does
        self._trace: torch.jit.ScriptModule | None = None  # the one trace of the model
        self._script: bytes | None = None  # ... serialised, from the second graph on

    def _build(self, key: Hashable, example: torch.Tensor) -> torch.jit.ScriptModule:
        log.info("building a fused CPU graph for input %s (first frame of this size is slower)",
                 key[0])
        if self._trace is None:
            self._trace = trace_model(self.model, example)
            return fuse_for_shape(self._trace, self.model, example)
        if self._script is None:
            self._script = serialise(self._trace)
        return fuse_for_shape(load_private(self._script), self.model, example)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled is None:
            try:
                graph = self.graphs.get(graph_key(x), x)
                with torch.inference_mode(False), torch.no_grad():
                    return graph(x.clone() if x.is_inference() else x)
            except Exception as exc:  # noqa: BLE001 - any failure means: run this model eagerly
                self.disabled = _reason(exc)
                self.graphs.clear()
                self._trace = self._script = None
                log.warning("no oneDNN-fused CPU graph for %s (%s); running it eagerly",
                            type(self.model).__name__, self.disabled)
        return self.model(x)
