"""Process memory: how much is resident, and giving freed memory back to the system.

A managed node releases its model on ``cleanup`` so that another one can be loaded in the same
process. Dropping the last reference frees the tensors inside the process, but without help the
memory stays with the process: PyTorch's CUDA caching allocator keeps its blocks, and glibc keeps
freed heap pages for reuse. :func:`give_back_memory` returns both. ROS-free, and light: torch
is imported only to empty its CUDA cache, so the tools' DDS clients can read a node's RSS.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resident_bytes(pid: int | str = "self") -> int | None:
    """Resident set size (VmRSS) of process ``pid`` in bytes; None where /proc is not available."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def resident_mib(pid: int | str = "self") -> float:
    """Resident set size of process ``pid`` in MiB; NaN where unknown (no /proc, process gone)."""
    size = resident_bytes(pid)
    return float("nan") if size is None else size / 2**20


def release_freed_memory() -> None:
    """Hand the heap pages freed so far back to the system (a no-op where glibc is absent)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def give_back_memory(device: torch.device | None = None, *, forget_graphs: bool = False) -> None:
    """Give freed memory back to the system, so that the process's RSS falls.

    Collect unreachable objects (the pipeline and its backend refer to each other), empty
    PyTorch's CUDA cache when ``device`` is a CUDA device, and ask glibc to return its free heap
    pages to the system (``malloc_trim``), so that the process's RSS falls. ``forget_graphs``:
    also free the fused CPU graphs that torch itself keeps (see
    :func:`~seg_ros.backends.cpu_fusion.forget_released_graphs`; only in a process with no
    other TorchScript user).
    """
    gc.collect()
    if forget_graphs:
        from .backends.cpu_fusion import forget_released_graphs

        forget_released_graphs()
    if device is not None and device.type == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    release_freed_memory()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """Glibc's ``malloc_trim``, loaded once (each CDLL load creates classes that stay).

    None where there is none (not Linux, or not glibc).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
