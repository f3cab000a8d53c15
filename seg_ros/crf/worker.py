"""Refinement off the caller's thread: a one-slot, latest-wins hand-over (the node's FrameSlot)
to one background thread, so publishing raw labels never waits for the CRF.

When the CRF is slower than the frame rate, a waiting item is replaced by the newer one and
counted as dropped; the refined stream then runs at the CRF's own rate, on the newest frames.
The thread lowers its own scheduling priority (and that of the threads it starts, e.g. torch's
CPU pool), so on a busy CPU the raw stream keeps the cores it needs.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Generic, TypeVar

from ..node.frame_slot import FrameSlot

T = TypeVar("T")
DEFAULT_NICE = 10


class BackgroundRefiner(Generic[T]):
    """``submit(item)`` never blocks; ``handle(item)`` runs on the worker thread; an exception
    from it goes to ``on_error(item, exc)`` and the worker goes on."""

    def __init__(self, handle: Callable[[T], None], on_error: Callable[[T, Exception], None],
                 name: str = "crf_worker", nice: int = DEFAULT_NICE) -> None:
        self._handle, self._on_error, self._nice = handle, on_error, nice
        self.slot: FrameSlot[T] = FrameSlot()
        self.done = 0
        self.failed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def submit(self, item: T) -> bool:
        """Queue ``item`` for refinement; True when it replaced a waiting (now dropped) one."""
        return self.slot.put(item)

    def _run(self) -> None:
        if self._nice:
            try:  # per-thread on Linux; threads started from here inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (AttributeError, OSError):
                pass
        while not self._stopping.is_set():
            item = self.slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self._handle(item)
                self.done += 1
            except Exception as exc:  # the raw stream goes on; the caller decides what to log
                if self._stopping.is_set():
                    return
                self.failed += 1
                self._on_error(item, exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the item in hand (the waiting one is discarded)."""
        self._stopping.set()
        self.slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
