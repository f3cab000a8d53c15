"""Latest-frame-wins mailboxes for several cameras, gathered into batches.

Each camera has one slot: a newer frame replaces a waiting one (dropped and counted), so latency
stays bounded however fast a camera publishes. The worker takes the waiting frame of every camera
at once (:meth:`LatestFrames.gather`), so one forward pass serves several cameras. No camera can
starve another: a batch holds at most one frame per camera, and a camera 10x faster than the
others only replaces its own waiting frame. After the first frame of a batch arrives, the worker
waits at most ``wait_s`` for the other cameras that are live (sent a frame within
``live_within_s``); a camera that has gone quiet does not hold the others up.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

DEFAULT_LIVE_WITHIN_S = 1.0


class LatestFrames(Generic[K, T]):
    """One latest-wins slot per key. ``put`` never blocks; ``gather`` waits for a batch."""

    def __init__(self, keys: list[K], live_within_s: float = DEFAULT_LIVE_WITHIN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not keys:
            raise ValueError("LatestFrames needs at least one key")
        self._keys = list(keys)
        self._cond = threading.Condition()
        self._items: dict[K, T] = {}
        self._last_put: dict[K, float] = {}
        self._closed = False
        self.dropped = 0
        self.wait_s = 0.0  # how long ``take`` waits for the other live cameras (settable)
        self._live_within_s = live_within_s
        self._clock = clock

    def put(self, key: K, item: T) -> bool:
        """Store ``item`` as ``key``'s newest frame.

        True when it replaced (dropped) a waiting one.
        """
        with self._cond:
            replaced = key in self._items
            self.dropped += int(replaced)
            self._items[key] = item
            self._last_put[key] = self._clock()
            self._cond.notify_all()
            return replaced

    def gather(self, timeout: float | None, wait_s: float = 0.0) -> dict[K, T]:
        """Return the waiting frame of every camera that has one (removed).

        In key order; empty on ``timeout`` with nothing waiting, or once closed. Once a first frame
        waits, wait up to ``wait_s`` more for the other live cameras' frames.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._items:
                return {}
            deadline = self._clock() + wait_s
            while not self._closed and not self._all_live_waiting():
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return {}
            batch = {key: self._items.pop(key) for key in self._keys if key in self._items}
            return batch

    def take(self, timeout: float | None = None) -> dict[K, T] | None:
        """:meth:`gather` with the current ``wait_s``.

        None when nothing came (a worker's mailbox, :class:`seg_ros.worker.BackgroundWorker`).
        """
        return self.gather(timeout, self.wait_s) or None

    def _all_live_waiting(self) -> bool:
        now = self._clock()
        return all(key in self._items for key in self._keys
                   if now - self._last_put.get(key, -1e18) <= self._live_within_s)

    def close(self) -> None:
        """Wake the worker for shutdown; later ``gather`` calls return at once, empty."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
