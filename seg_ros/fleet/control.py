"""How a running bag task reports progress and learns that it must stop (Ctrl-C).

The per-frame loops of replay and eval call ``control.frame()`` once per image message: it
counts the frame for the progress bar and raises :class:`Interrupted` once a stop was asked for,
so a task ends within one frame, removes its partial output and is not recorded as done.
"""
from __future__ import annotations

import math
import time
from typing import Callable


class Interrupted(Exception):
    """The run was stopped (Ctrl-C) while this task was running; it is not done."""


class Control:
    """Progress and stop for one task.

    ``report(n)`` receives frame counts: the first frame at once (the task has started), then
    at most every ``interval`` seconds (a worker sends them over a pipe or to Ray); ``stop()``
    says whether to stop.
    """

    def __init__(self, report: Callable[[int], None] | None = None,
                 stop: Callable[[], bool] | None = None, interval: float = 0.0) -> None:
        self._report = report
        self._stop = stop
        self._interval = interval
        self._pending = 0
        self._last = -math.inf

    def frame(self) -> None:
        """One more frame read; raises Interrupted when the run is being stopped."""
        if self._stop is not None and self._stop():
            raise Interrupted("stopped")
        self._pending += 1
        if self._report is not None and time.monotonic() - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._pending and self._report is not None:
            self._report(self._pending)
        self._pending = 0
        self._last = time.monotonic()


NO_CONTROL = Control()
