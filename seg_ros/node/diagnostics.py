"""Run-time health of the node: counters, rates and latency, summarised for /diagnostics.

ROS-free (plain numbers and strings); the node turns :meth:`NodeStats.report` into a
diagnostic_msgs/DiagnosticStatus. Thread-safe: the subscription callback, the worker thread and
the diagnostics timer all touch it.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR = 0, 1, 2
RATE_WINDOW_S = 5.0
LATENCY_WINDOW = 200


@dataclass
class Report:
    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)


class NodeStats:
    """Count frames in, out, dropped and failed (by kind).

    Keeps recent latencies for percentiles.
    """

    def __init__(self, error_kinds: tuple[str, ...] = (), clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.skipped_idle = 0
        self.errors: Counter[str] = Counter({k: 0 for k in error_kinds})
        self.consecutive_failures = 0
        self.last_error = ""
        self.last_input: float | None = None
        self._in_times: deque[float] = deque()
        self._out_times: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    # -- events -------------------------------------------------------------------------
    def frame_received(self, dropped_older: bool) -> None:
        now = self._clock()
        with self._lock:
            self.received += 1
            self.dropped += int(dropped_older)
            self.last_input = now
            self._in_times.append(now)

    def frame_done(self, latency_s: float) -> None:
        with self._lock:
            self.processed += 1
            self.consecutive_failures = 0
            self._out_times.append(self._clock())
            self._latencies.append(latency_s)

    def frame_idle(self) -> None:
        """Count a frame not processed because no output has a subscriber."""
        with self._lock:
            self.skipped_idle += 1

    def frame_failed(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.consecutive_failures += 1
            self.last_error = f"{kind}: {message}"

    # -- summaries ----------------------------------------------------------------------
    def _rate(self, times: deque[float], now: float) -> float:
        while times and times[0] < now - RATE_WINDOW_S:
            times.popleft()
        span = min(RATE_WINDOW_S, now - self.started)
        return len(times) / span if span > 0 else 0.0

    def report(
        self, stale_after_s: float, error_threshold: int, input_topic: str = "input"
    ) -> Report:
        now = self._clock()
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64) * 1e3
            since_input = (
                (now - self.last_input) if self.last_input is not None else (now - self.started)
            )
            values = [
                ("input_rate_hz", f"{self._rate(self._in_times, now):.2f}"),
                ("output_rate_hz", f"{self._rate(self._out_times, now):.2f}"),
                ("latency_median_ms", f"{np.median(lat):.1f}" if lat.size else "nan"),
                ("latency_p95_ms", f"{np.percentile(lat, 95):.1f}" if lat.size else "nan"),
                ("frames_received", str(self.received)),
                ("frames_processed", str(self.processed)),
                ("frames_dropped", str(self.dropped)),
                ("frames_skipped_no_subscribers", str(self.skipped_idle)),
                ("frames_failed", str(sum(self.errors.values()))),
                ("consecutive_failures", str(self.consecutive_failures)),
                ("seconds_since_input", f"{since_input:.1f}"),
                ("last_error", self.last_error),
            ]
            values += [(f"errors.{kind}", str(n)) for kind, n in sorted(self.errors.items())]
            failures = self.consecutive_failures
            last_error = self.last_error
        if failures >= error_threshold:
            return Report(
                ERROR, f"{failures} consecutive frames failed; last: {last_error}", values
            )
        if since_input > stale_after_s:
            return Report(WARN, f"no frame on {input_topic} for {since_input:.1f} s", values)
        return Report(OK, "running", values)
