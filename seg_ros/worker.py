"""Latest-wins hand-over to one background thread.

Shared by the node's frame worker and the CRF refiner (:mod:`seg_ros.crf.worker`).

The producer only ``submit``s (never blocks, never runs the work); a newer item replaces a
waiting one, which is dropped and counted. So at most one item waits while one is processed,
and latency stays bounded however fast items arrive.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Generic, Protocol, TypeVar

T = TypeVar("T")
TAKE_PERIOD_S = 0.5  # how often an idle worker looks at the stop request


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
        """Return the waiting item (removing it), or None on timeout or once closed."""
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


class Mailbox(Protocol[T]):
    """Where a worker takes its items from.

    A :class:`FrameSlot`, or one latest-wins slot per camera gathered into batches
    (:class:`seg_ros.batching.LatestFrames`).
    """

    dropped: int

    def take(self, timeout: float | None = None) -> T | None: ...

    def close(self) -> None: ...


class BackgroundWorker(Generic[T]):
    r"""One daemon thread running ``handle(item)`` on the newest item ``submit``\ ted.

    An exception from ``handle`` goes to ``on_error(item, exc)`` and the worker goes on (unless it
    is stopping: then the exception is the stop's doing and the thread ends). ``first(stopping)``,
    if given, runs on the thread before the first item, with the event set by :meth:`stop`; the
    thread ends at once when it returns False. ``nice`` > 0 lowers the thread's scheduling priority
    (and that of the threads it starts, e.g. torch's CPU pool), so on a busy CPU other work keeps
    the cores it needs. ``mailbox``: where items wait (default: a one-item :class:`FrameSlot` fed
    by ``submit``); a producer may also ``put`` into it directly.
    """

    def __init__(self, handle: Callable[[T], None], on_error: Callable[[T, Exception], None],
                 name: str, nice: int = 0,
                 first: Callable[[threading.Event], bool] | None = None,
                 mailbox: Mailbox[T] | None = None) -> None:
        self._handle, self._on_error, self._nice, self._first = handle, on_error, nice, first
        self.slot: Mailbox[T] = mailbox if mailbox is not None else FrameSlot()
        self.done = 0
        self.failed = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def is_alive(self) -> bool:
        """Whether the thread still runs (False after ``first`` refused or after a stop)."""
        return self._thread.is_alive()

    def submit(self, item: T) -> bool:
        """Queue ``item``; True when it replaced a waiting (now dropped) one."""
        return self.slot.put(item)

    def _lower_priority(self) -> None:
        try:  # per-thread on Linux; threads started from here inherit it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        except (AttributeError, OSError):
            pass

    def _run(self) -> None:
        if self._nice:
            self._lower_priority()
        if self._first is not None and not self._first(self.stopping):
            return
        while not self.stopping.is_set():
            item = self.slot.take(timeout=TAKE_PERIOD_S)
            if item is None:
                continue
            try:
                self._handle(item)
                self.done += 1
            except Exception as exc:  # the caller decides what to count and log
                if self.stopping.is_set():
                    return
                self.failed += 1
                self._on_error(item, exc)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop after the item in hand (a waiting one is discarded).

        Wait at most ``timeout`` seconds (None: as long as that item takes). False when the thread
        is still busy.
        """
        self.stopping.set()
        self.slot.close()
        if self.is_alive():
            self._thread.join(timeout)
        return not self.is_alive()
