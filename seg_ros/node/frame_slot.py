"""Latest-frame-wins hand-over between the subscription callback and the worker thread.

The callback only ``put``s (never blocks, never runs inference); a newer frame replaces a waiting
one, which is dropped and counted. So at most one frame waits while one is processed, and latency
stays bounded however fast frames arrive.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameSlot(Generic[T]):
    """A one-item mailbox: ``put`` replaces, ``take`` waits for an item or ``close``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced (dropped) an older waiting one."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The waiting item (removing it), or None on timeout or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake the worker for shutdown; later ``take`` calls return None at once."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
