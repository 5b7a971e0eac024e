"""A thread's busy time: what tells a computing stall from a waiting one."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from unstall._watch.threadclock import ThreadClock


def _measure(work: str) -> tuple[float, float]:
    """(busy seconds, wall seconds) of a thread sleeping or spinning for 0.3 s."""
    made = threading.Event()
    go = threading.Event()
    done = threading.Event()
    box: list[ThreadClock] = []

    def body() -> None:
        box.append(ThreadClock())
        made.set()
        go.wait()
        end = time.monotonic() + 0.3
        if work == "sleep":
            time.sleep(0.3)
        else:
            while time.monotonic() < end:
                pass
        done.wait()  # alive until read

    thread = threading.Thread(target=body)
    thread.start()
    made.wait()
    clock = box[0]
    before, t0 = clock.read(), time.monotonic()
    go.set()
    time.sleep(0.35)
    after, t1 = clock.read(), time.monotonic()
    done.set()
    thread.join()
    assert before is not None
    assert after is not None
    return after - before, t1 - t0


def test_a_sleeping_thread_is_not_busy() -> None:
    busy, wall = _measure("sleep")
    assert busy < 0.3 * wall


def test_a_spinning_thread_is_busy() -> None:
    busy, _ = _measure("spin")
    # On a CPU or waiting for one: close to the wall time even on a crowded machine
    # (the main thread here sleeps, so the GIL is the spinner's).
    assert busy > 0.6 * 0.3


def test_a_finished_thread_reads_as_unknown() -> None:
    box: list[ThreadClock] = []
    thread = threading.Thread(target=lambda: box.append(ThreadClock()))
    thread.start()
    thread.join()
    time.sleep(0.05)
    assert box[0].read() is None


def _parked(block: str) -> tuple[ThreadClock, threading.Thread, threading.Lock]:
    box: list[ThreadClock] = []
    lock = threading.Lock()
    lock.acquire()

    def body() -> None:
        box.append(ThreadClock())
        if block == "lock":
            lock.acquire()
        else:
            time.sleep(0.5)

    thread = threading.Thread(target=body)
    thread.start()
    while not box:
        time.sleep(0.01)
    time.sleep(0.1)
    return box[0], thread, lock


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_futex_and_run_queue_counters_of_a_thread() -> None:
    clock, thread, lock = _parked("lock")
    assert clock.in_futex() is True  # blocked on a lock
    stat = clock.stat()
    assert stat is not None
    assert min(stat) >= 0
    delay = clock.run_delay()
    assert delay is not None
    assert delay >= 0
    lock.release()
    thread.join()
    clock, thread, _ = _parked("sleep")
    assert clock.in_futex() is False  # in clock_nanosleep
    thread.join()
