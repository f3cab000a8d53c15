"""Timing helpers shared by the benchmark commands: warm-up, repeated runs, median and p95."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": round(float(np.median(arr)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "runs": int(arr.size),
    }


def time_call(
    fn: Callable[[], object], runs: int, warmup: int = 2, device: torch.device | None = None
) -> list[float]:
    """Wall time of ``fn`` in ms per run, after ``warmup`` untimed calls (CUDA synchronised)."""
    sync = (
        torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    )
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples
