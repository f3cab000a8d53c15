"""Refinement off the caller's thread.

A :class:`~seg_ros.worker.BackgroundWorker` (latest wins) at lowered priority, so publishing raw
labels never waits for the CRF.

When the CRF is slower than the frame rate, a waiting item is replaced by the newer one and
counted as dropped; the refined stream then runs at the CRF's own rate, on the newest frames.
The thread lowers its own scheduling priority (and that of the threads it starts, e.g. torch's
CPU pool), so on a busy CPU the raw stream keeps the cores it needs.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from ..worker import BackgroundWorker

T = TypeVar("T")
DEFAULT_NICE = 10


class BackgroundRefiner(BackgroundWorker[T]):
    """``submit(item)`` never blocks; ``handle(item)`` runs on the worker thread.

    An exception from it goes to ``on_error(item, exc)`` and the worker goes on.
    """

    def __init__(self, handle: Callable[[T], None], on_error: Callable[[T, Exception], None],
                 name: str = "crf_worker", nice: int = DEFAULT_NICE) -> None:
        super().__init__(handle, on_error, name=name, nice=nice)
