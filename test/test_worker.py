"""The latest-wins slot and the background worker shared by the node and the CRF refiner."""
from __future__ import annotations

import threading
import time

from seg_ros.worker import BackgroundWorker, FrameSlot


def test_slot_keeps_only_the_newest_and_counts_drops():
    slot: FrameSlot[int] = FrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(0) == 3
    assert slot.take(0.01) is None


def test_slot_close_wakes_a_waiting_worker():
    slot: FrameSlot[int] = FrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(10)))
    worker.start()
    time.sleep(0.05)
    slot.close()
    worker.join(2)
    assert not worker.is_alive() and got == [None]
    slot.put(5)
    assert slot.take(0) is None


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_worker_runs_first_then_items_and_reports_errors_without_stopping():
    seen: list[object] = []
    errors: list[tuple[object, str]] = []

    def handle(item: int) -> None:
        if item < 0:
            raise ValueError(f"bad {item}")
        seen.append(item)

    worker = BackgroundWorker(handle, lambda item, exc: errors.append((item, str(exc))),
                              name="test_worker",
                              first=lambda stopping: seen.append("first") or True)
    try:
        worker.submit(-1)
        assert wait_for(lambda: errors == [(-1, "bad -1")])
        worker.submit(7)
        assert wait_for(lambda: worker.done == 1)
        assert seen == ["first", 7] and worker.failed == 1 and worker.dropped == 0
    finally:
        assert worker.stop(timeout=5)


def test_worker_ends_at_once_when_first_says_no_and_first_sees_the_stop():
    refused = BackgroundWorker(lambda item: None, lambda item, exc: None, name="refused",
                               first=lambda stopping: False)
    assert wait_for(lambda: not refused.is_alive())
    refused.submit(1)
    assert refused.done == 0

    gate = threading.Event()
    saw_stop: list[bool] = []

    def slow_first(stopping: threading.Event) -> bool:
        gate.wait(5)
        saw_stop.append(stopping.is_set())
        return not stopping.is_set()

    worker = BackgroundWorker(lambda item: None, lambda item, exc: None, name="warming",
                              first=slow_first)
    assert worker.stop(timeout=0.05) is False  # still in `first`: stop does not wait for it
    gate.set()
    assert wait_for(lambda: saw_stop == [True]) and worker.stop(timeout=5)
