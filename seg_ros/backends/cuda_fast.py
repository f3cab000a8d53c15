"""The fast CUDA path of the torch backend.

CUDA graphs per input shape, a dedicated stream, and a reusable pinned staging buffer for frame
uploads.

A CUDA graph replays a captured forward pass with one launch instead of hundreds of kernel
launches, which is what bounds a small network like DDRNet-23-slim on a big GPU. A graph is only
valid for the shape, dtype and memory layout it was captured with, so graphs are kept per key in a
:class:`ShapeCache`: a new frame size captures a new graph (up to ``max_graphs``, least recently
used dropped), and a shape whose capture fails runs eagerly from then on. The capture function is
injectable: :func:`capture_cuda_graph` on the GPU, :func:`capture_static_eager` (the same static
buffer contract, run eagerly) where there is no GPU, e.g. in the CPU test suite.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

import numpy as np
import torch

from .shape_cache import ShapeCache

log = logging.getLogger("seg_ros")
Forward = Callable[[torch.Tensor], torch.Tensor]
Capture = Callable[[Forward, torch.Tensor], Forward]


def graph_key(x: torch.Tensor) -> Hashable:
    """Everything a captured graph depends on: shape, dtype, device and strides (memory format).

    The stride of a size-1 dimension is meaningless (it never moves), so it is left out.
    """
    strides = tuple(st if n > 1 else 0 for n, st in zip(x.shape, x.stride()))
    return (tuple(x.shape), x.dtype, str(x.device), strides)


def capture_static_eager(fn: Forward, example: torch.Tensor) -> Forward:
    """Return a replay function with a graph's contract.

    Run eagerly: the input is copied into a static buffer, the forward writes into a static output,
    and the caller gets a copy of it.
    """
    static_in = example.clone()
    static_out = fn(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        static_out.copy_(fn(static_in))
        return static_out.clone()

    return replay


def capture_cuda_graph(fn: Forward, example: torch.Tensor, warmup: int = 3) -> Forward:
    """Capture ``fn`` on a static copy of ``example`` as a CUDA graph.

    Capture follows warm-up iterations on a side stream, as CUDA graphs require, which also lets
    cudnn.benchmark pick its kernels.
    """
    static_in = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    return replay


class GraphedForward:
    """``fn`` replayed from a captured graph per input key; eager for keys whose capture failed."""

    def __init__(
        self, fn: Forward, capture: Capture = capture_cuda_graph, max_graphs: int = 4
    ) -> None:
        self.fn = fn
        self._capture = capture
        self.graphs: ShapeCache[Forward] = ShapeCache(self._build, max_entries=max_graphs,
                                                      fallback_on_error=True, what="CUDA graph")
        self.eager_calls = 0

    def _build(self, key: Hashable, example: torch.Tensor) -> Forward:
        log.info("capturing a CUDA graph for input %s", key[0] if isinstance(key, tuple) else key)
        return self._capture(self.fn, example)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        replay = self.graphs.get(graph_key(x), x)
        if replay is None:
            self.eager_calls += 1
            return self.fn(x)
        return replay(x)


class PinnedUploader:
    """Host-to-device frame upload through one reusable pinned buffer with a non-blocking copy.

    The buffer is refilled only after the previous copy out of it has finished (an event), so a
    frame is never overwritten while the GPU still reads it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buf: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        done = self._done
        if done is None:
            done = self._done = torch.cuda.Event()
        else:
            done.synchronize()  # the previous copy out of the buffer has finished
        if self._buf is None or tuple(self._buf.shape) != image.shape:
            self._buf = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        np.copyto(self._buf.numpy(), image)
        frame = self._buf.to(self.device, non_blocking=True)
        done.record(torch.cuda.current_stream(self.device))
        return frame


def on_stream(stream: torch.cuda.Stream, fn: Forward, x: torch.Tensor) -> torch.Tensor:
    """Run ``fn(x)`` on ``stream``.

    Ordered after the caller's current stream's work and before its later work, with the allocator
    told which streams use which tensors.
    """
    current = torch.cuda.current_stream(x.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        out = fn(x)
    x.record_stream(stream)
    current.wait_stream(stream)
    out.record_stream(current)
    return out


def describe_cuda(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
