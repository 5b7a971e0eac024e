"""Reliability under load (issue 8): many calls, many sleepers, mass cancellation.

Nothing is lost (every call answers), nothing leaks (memory, threads, queued jobs), and
the loop keeps running. Sizes hold the issue's numbers but stay fast on 2 busy cores;
bounds are generous: they catch leaks and runaway growth, not slowness.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

import unstall
from helpers import SLACK_S
from unstall import ThreadPool
from unstall._offload.thread_pool import DEFAULT_MAX_WORKERS, _Job


def live_jobs() -> int:
    """Job objects alive now (other tests' abandoned calls may still hold a few)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is _Job)


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix + "-")]


@contextmanager
def peak_threads(prefix: str) -> Iterator[list[int]]:
    """Sample how many ``prefix-N`` threads are alive, from a thread of its own."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], len(threads_named(prefix)))

    sampler = threading.Thread(target=sample, name="peak-sampler")
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


class Ticker:
    """Counts 5 ms ticks of the loop and the longest gap between two of them."""

    def __init__(self) -> None:
        self.ticks = 0
        self.worst_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.ticks += 1
            self.worst_gap = max(self.worst_gap, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def nothing() -> None:
    return None


def test_200_000_calls_in_a_row_keep_memory_flat() -> None:
    """200,000 calls (waves of 100 in flight, one wave after the other): RSS stays flat,
    no job object survives, every call answered."""
    proc = psutil.Process()
    jobs_before = live_jobs()

    async def waves(n: int) -> int:
        answered = 0
        for _ in range(n):
            done = await asyncio.gather(*(unstall.to_thread(nothing) for _ in range(100)))
            answered += len(done)
        return answered

    async def main() -> tuple[int, int, int]:
        await waves(200)  # warm-up: threads started, inbox and caches allocated
        gc.collect()
        before = proc.memory_info().rss
        answered = await waves(2000)
        gc.collect()
        return answered, before, proc.memory_info().rss

    answered, before, after = asyncio.run(main())
    assert answered == 200_000
    assert live_jobs() <= jobs_before
    # A leak of 100 bytes per call would be 20 MB; allocator noise is far below that.
    assert after - before < 16 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MiB"


def test_5000_concurrent_sleeping_calls_never_exceed_the_thread_cap() -> None:
    pool = ThreadPool(name="load-cap")  # the default cap, as the default pool has
    jobs_before = live_jobs()
    assert pool.max_workers == DEFAULT_MAX_WORKERS == 40

    def nap(i: int) -> int:
        time.sleep(0.01)
        return i

    async def main() -> tuple[list[int], Ticker]:
        with Ticker() as ticker:
            results = await asyncio.gather(*(pool.run(nap, i) for i in range(5000)))
        return results, ticker

    try:
        with peak_threads("load-cap") as peak:
            results, ticker = asyncio.run(main())
        assert results == list(range(5000))  # every call answered, in place
        assert peak[0] == DEFAULT_MAX_WORKERS  # the cap was reached and never passed
        assert pool.thread_count <= DEFAULT_MAX_WORKERS
        assert ticker.ticks > 0  # the loop ran its other tasks meanwhile
    finally:
        pool.shutdown(wait=True)
    assert threads_named("load-cap") == []
    assert live_jobs() <= jobs_before


class Payload:
    """An argument that knows when it is freed (1 KiB, so a leak is also visible in RSS)."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, i: int) -> None:
        self.data = bytes(1024) + str(i).encode()


def test_20_000_queued_calls_cancelled_at_once_never_run_and_free_their_arguments() -> None:
    pool = ThreadPool(max_workers=2, name="load-cancel")
    jobs_before = live_jobs()
    gate = threading.Event()
    ran: list[int] = []

    def record(p: Payload) -> None:
        ran.append(len(p.data))

    async def main() -> tuple[list[object], int, Ticker]:
        blockers = [asyncio.create_task(pool.run(gate.wait, SLACK_S)) for _ in range(2)]
        await asyncio.sleep(0.05)  # both threads are busy: what follows stays queued
        payloads = [Payload(i) for i in range(20_000)]
        refs = [weakref.ref(p) for p in payloads]
        tasks = [asyncio.create_task(pool.run(record, p)) for p in payloads]
        del payloads
        await asyncio.sleep(0.01)
        with Ticker() as ticker:
            for task in tasks:
                task.cancel()
            del task  # a cancelled task's error holds its frames, and so its arguments
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            del tasks
            await asyncio.sleep(0.05)  # the cancelled tasks' last callbacks run
            gc.collect()
            # The threads are still blocked, the jobs still queued: yet no argument is kept.
            alive = sum(r() is not None for r in refs)
            ticks_before_release = ticker.ticks
            gate.set()
            await asyncio.gather(*blockers)
        assert ticks_before_release > 0
        return outcomes, alive, ticker

    try:
        outcomes, alive, ticker = asyncio.run(main())
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert len(outcomes) == 20_000
        assert alive == 0
        # Cancelling 20,000 tasks costs the loop one long iteration at most: it stays live.
        assert ticker.worst_gap < SLACK_S / 2, ticker.worst_gap
    finally:
        pool.shutdown(wait=True)  # the freed threads go through the queue, then exit
    assert ran == []  # none of the cancelled calls ran
    assert len(pool._jobs) == 0
    assert live_jobs() <= jobs_before


def test_a_result_arriving_as_its_loop_closes_does_not_keep_the_loop_alive() -> None:
    """An abandoned call that finishes after its loop ran its last iteration but before
    ``close()``: the wake-up it scheduled never runs. That result must not pin the closed
    loop (and itself) in memory for good, as a run of many ``asyncio.run`` would pile up."""
    gate = threading.Event()
    finished = threading.Event()

    def late() -> bytes:
        gate.wait(SLACK_S)
        finished.set()
        return bytes(2**20)

    def closed_loop_with_a_late_result() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        task = loop.create_task(unstall.to_thread(late))
        loop.run_until_complete(asyncio.sleep(0.02))
        task.cancel()  # abandoned: the call keeps running
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        gate.set()  # the result arrives while the loop is stopped, not yet closed
        assert finished.wait(SLACK_S)
        time.sleep(0.05)
        loop.close()
        return weakref.ref(loop)

    ref = closed_loop_with_a_late_result()
    asyncio.run(unstall.to_thread(nothing))  # life goes on with another loop
    gc.collect()
    assert ref() is None, "the closed loop is still alive"
