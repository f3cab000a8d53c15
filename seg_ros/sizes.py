"""Which inference size each frame runs at when frame sizes vary.

A backend keeps one artefact per input shape (a fused CPU graph or a CUDA graph, an onnxruntime
session, a TensorRT engine) and builds it on the first frame of a shape: about 0.5-1 s on a
2-core CPU for DDRNet-23-slim, minutes for a TensorRT engine. It keeps at most ``capacity`` of
them. As long as frames come in at most ``capacity`` sizes, every frame runs at its own size and
each size costs one build. Beyond that, a plain LRU would rebuild on every frame when sizes cycle
(issue 18: 1.1 s instead of 66 ms per frame), and even a rate-limited one leaves a few MiB behind
per rebuild (oneDNN and TorchScript state that outlives the graph). So a new size replaces the
least recently used kept size only once that one has gone unused for ``min_frames_per_new_size``
frames; until then the frame runs at the kept size nearest in shape, which changes its scale a
little (and 2-7 % of its labels, measured in docs/pipeline.md). Sizes that keep cycling are thus
never rebuilt, and a camera that switches to a new size for good gets it within that many frames.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict

log = logging.getLogger("seg_ros")
Size = tuple[int, int]
DEFAULT_MIN_FRAMES_PER_NEW_SIZE = 100


def distortion(a: Size, b: Size) -> float:
    """How much resizing between ``a`` and ``b`` stretches an image.

    The larger per-axis log ratio.
    """
    return max(abs(math.log(a[0] / b[0])), abs(math.log(a[1] / b[1])))


class KeptSizes:
    """``choose(size, capacity)``: the size a frame whose own inference size is ``size`` runs at.

    Given the backend's current ``capacity`` (its ``max_shapes``; None when it runs any shape
    without a per-shape build, e.g. once the fused CPU path fell back to eager: then ``size``).
    """

    def __init__(self, min_frames_per_new_size: int = DEFAULT_MIN_FRAMES_PER_NEW_SIZE) -> None:
        if min_frames_per_new_size < 1:
            raise ValueError(f"min_frames_per_new_size must be >= 1, "
                             f"got {min_frames_per_new_size}")
        self.min_frames_per_new_size = min_frames_per_new_size
        self._last_used: OrderedDict[Size, int] = OrderedDict()  # kept size -> frame number
        self._frame = 0
        self.replaced = 0  # kept sizes given up for a new one (each costs a build)
        self.resized = 0  # frames run at another kept size than their own

    def choose(self, size: Size, capacity: int | None) -> Size:
        if capacity is None:
            return size
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 or None, got {capacity}")
        self._frame += 1
        if size in self._last_used or len(self._last_used) < capacity:
            return self._use(size)
        oldest, last_used = next(iter(self._last_used.items()))
        if self._frame - last_used >= self.min_frames_per_new_size:  # unused that long: stale
            del self._last_used[oldest]
            self.replaced += 1
            log.info("inference size %dx%d replaces %dx%d (unused for %d frames)",
                     *size, *oldest, self._frame - last_used)
            return self._use(size)
        nearest = min(self._last_used, key=lambda kept: distortion(kept, size))
        if self.resized == 0:
            log.warning("frames come in more than %d sizes: a frame whose own inference size "
                        "is not kept runs at the nearest kept one (here %dx%d for %dx%d) rather "
                        "than rebuilding the network's graph; a kept size unused for %d frames "
                        "makes room for a new one", capacity, *nearest, *size,
                        self.min_frames_per_new_size)
        self.resized += 1
        return self._use(nearest)

    def mark_unused(self) -> None:
        """Make every kept size replaceable at once until a frame uses it again.

        After a warm-up: its size was built in advance, but no camera may ever send it, so it
        must not hold a place against the sizes frames do come in.
        """
        for size in self._last_used:
            self._last_used[size] = self._frame - self.min_frames_per_new_size

    def _use(self, size: Size) -> Size:
        self._last_used[size] = self._frame
        self._last_used.move_to_end(size)
        return size

    def kept(self) -> list[Size]:
        """Return the sizes in use, least recently used first."""
        return list(self._last_used)
