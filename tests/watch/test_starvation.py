"""A loop kept from running (by the OS, by another thread's GIL) is not a stall of its code."""

from __future__ import annotations

import asyncio
import dis
import functools
import io
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator

import pytest

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from unstall import Stall, Watcher
from unstall._report.records import Frame
from unstall._watch.callname import call_at
from unstall._watch.probe import Reading
from unstall._watch.sampler import _MAYBE_THE_GIL, _SURELY_THE_GIL, Sample, _gil_wait
from unstall._watch.starvation import GIL, OS, busy_share, reading_before, starved_by

THRESHOLD = 0.1
LINUX = sys.platform.startswith("linux") and os.path.exists("/proc/self/schedstat")


def _samples(n: int, gil: bool, start: float = 0.06, sure: bool = False) -> list[Sample]:
    frame = Frame(__file__, 10, "tick")
    return [Sample(start + i * 0.005, (frame,), 0, gil=gil, gil_sure=sure) for i in range(n)]


def test_run_queue_wait_is_starvation() -> None:
    before = Reading(0.0, cpu=1.0, delay=2.0, process_cpu=3.0)
    after = Reading(0.3, cpu=1.004, delay=2.29, process_cpu=3.01)
    assert starved_by([], 0.0, 0.3, before, after, THRESHOLD) == OS


def test_sleeping_or_computing_in_the_loop_is_not_starvation() -> None:
    before = Reading(0.0, 1.0, 2.0, 3.0)
    slept = Reading(0.3, 1.001, 2.0, 3.3)  # another thread computed meanwhile
    assert starved_by(_samples(20, gil=False), 0.0, 0.3, before, slept, THRESHOLD) is None
    computed = Reading(0.3, 1.2, 2.1, 3.2)  # on a CPU 0.2 s, waited for one 0.1 s
    assert starved_by(_samples(20, gil=True), 0.0, 0.3, before, computed, THRESHOLD) is None


def test_waiting_for_the_gil_is_starvation_only_if_another_thread_computed() -> None:
    before = Reading(0.0, 1.0, 2.0, 3.0)
    others_busy = Reading(0.3, 1.002, 2.01, 3.3)
    assert starved_by(_samples(20, gil=True), 0.0, 0.3, before, others_busy, THRESHOLD) == GIL
    # Another thread computing for part of that time only (the machine is crowded).
    crowded = Reading(0.3, 1.002, 2.01, 3.1)
    assert starved_by(_samples(20, gil=True), 0.0, 0.3, before, crowded, THRESHOLD) == GIL
    # Blocked in futex with no other thread computing: a C library waiting, not the GIL.
    nobody = Reading(0.3, 1.002, 2.01, 3.003)
    assert starved_by(_samples(20, gil=True), 0.0, 0.3, before, nobody, THRESHOLD) is None
    # Stopped in Python code, not in a C call: only the GIL can hold it there, even when
    # its holder barely ran (a thread descheduled holding it, on a crowded machine).
    sure = _samples(20, gil=True, sure=True)
    assert starved_by(sure, 0.0, 0.3, before, nobody, THRESHOLD) == GIL
    # What the watchdog itself held counts, whoever else computed.
    assert starved_by(_samples(2, gil=False), 0.0, 0.3, before, nobody, THRESHOLD, 0.28) == GIL


def test_no_verdict_without_a_reading_before_the_start() -> None:
    after = Reading(0.3, 1.0, 2.29, 3.0)
    assert starved_by([], 0.0, 0.3, None, after, THRESHOLD) is None
    late = Reading(0.1, 1.0, 2.0, 3.0)
    assert starved_by([], 0.0, 0.3, late, after, THRESHOLD) is None
    assert reading_before([late, Reading(-0.5, 0, 0, 0)], 0.0) == Reading(-0.5, 0, 0, 0)


def test_the_time_before_the_start_counts_as_the_loops_own() -> None:
    # A reading 60 ms early: the run-queue wait may have been before the start, so the
    # 60 ms count as the loop's own time and the 0.3 s iteration is reported.
    before = Reading(-0.06, 1.0, 2.0, 3.0)
    after = Reading(0.3, 1.0, 2.3, 3.0)
    assert starved_by([], 0.0, 0.3, before, after, THRESHOLD) is None


def test_busy_share_from_the_counters() -> None:
    # What decides a stall's kind when too few samples were taken (C code holding the GIL).
    before = Reading(0.0, 1.0, 2.0, 3.0)
    assert busy_share(before, Reading(0.5, 1.3, 2.15, 3.3)) == pytest.approx(0.9)
    assert busy_share(before, Reading(0.5, 1.01, 2.0, 3.0)) == pytest.approx(0.02)
    assert busy_share(None, before) is None


# ------------------------------------------------------------------------ real threads


def _blamed_on_our_lines(stalls: list[Stall]) -> list[Stall]:
    return [s for s in stalls if s.culprit is not None and s.culprit.file == __file__]


def _no_user_line_blamed(stalls: list[Stall]) -> None:
    blamed = _blamed_on_our_lines(stalls)
    assert blamed == [], blamed


async def _healthy(rounds: int, work: int) -> None:
    """Twenty tasks that wake every 10 ms, compute a little and write a little."""
    fd = os.open(os.devnull, os.O_WRONLY)

    async def tick() -> None:
        for _ in range(rounds):
            await asyncio.sleep(0.01)
            sum(range(work))
            for _ in range(3):
                os.write(fd, b"x")  # releases the GIL: another thread may keep it

    try:
        await asyncio.gather(*(tick() for _ in range(20)))
    finally:
        os.close(fd)


@pytest.fixture
def burners() -> Iterator[int]:
    """Two processes computing on the first CPU this process may use; yields that CPU."""
    cpu = min(os.sched_getaffinity(0))
    code = "while True: pass"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
        )
        for _ in range(2)
    ]
    try:
        yield cpu
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="run-queue waits come from Linux's schedstat")
def test_a_loop_starved_by_the_os_is_not_reported(burners: int) -> None:
    """The loop thread shares one CPU, at a low priority, with two computing processes.

    Its iterations are short, but the OS leaves it waiting for the CPU for a long time:
    the iterations that last over the threshold are not the loop's doing.
    """

    def starved_loop() -> None:
        os.sched_setaffinity(0, {burners})
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
        asyncio.run(_healthy(rounds=20, work=20_000))

    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        thread = threading.Thread(target=starved_loop, name="starved-loop")
        thread.start()
        thread.join(120)
    finally:
        watcher.stop()
    # An iteration is told apart by the loop thread's counters from its last reading
    # before the iteration began. When that reading is not close before it, the time in
    # between counts as the loop's own and the verdict errs on the side of a real stall:
    # about one run in a hundred here reports one such iteration, on the line it was in.
    blamed = _blamed_on_our_lines(watcher.stalls)
    assert len(blamed) <= 1, blamed
    assert len(watcher.starved) >= 10, "the loop was seldom late: the test did not starve it"
    assert {s.call for s in watcher.starved} <= {OS, GIL}


def _burn(seconds: float) -> int:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def _run_beside_cpu_threads() -> Watcher:
    async def main() -> Watcher:
        async with unstall.watch(threshold=THRESHOLD, log=False) as watcher:
            burning = [asyncio.ensure_future(unstall.to_thread(_burn, 2.0)) for _ in range(3)]
            await asyncio.sleep(0.1)
            await _healthy(rounds=60, work=200)
            blocking.sleep_block(0.3)  # one real stall, while the threads still compute
            await asyncio.gather(*burning)
        return watcher

    return asyncio.run(main())


@pytest.mark.skipif(not LINUX, reason="GIL waits are told by /proc/self/task/N/syscall")
def test_cpu_threads_beside_a_healthy_loop_are_not_blamed_on_its_lines() -> None:
    watcher = _run_beside_cpu_threads()
    _no_user_line_blamed(watcher.stalls)
    # The real stall is still reported, on its line, as a wait.
    sleeps = [s for s in watcher.stalls if s.culprit and s.culprit.line == line_of("sleep")]
    assert len(sleeps) == 1, watcher.stalls
    assert sleeps[0].call == "time.sleep"
    assert sleeps[0].kind == "wait"
    assert all(s.call in (OS, GIL) for s in watcher.starved)


def _stopped_in(call: Callable[[Iterator[int]], object]) -> tuple[types.FrameType, int]:
    """The caller's frame and position while ``call`` runs (read from inside it)."""
    seen: list[tuple[types.FrameType, int]] = []

    def numbers() -> Iterator[int]:
        outer = sys._getframe(1)
        seen.append((outer, outer.f_lasti))
        yield 1

    call(numbers())
    return seen[0]


def test_a_thread_stopped_after_a_builtin_surely_waits_for_the_gil() -> None:
    frame, lasti = _stopped_in(sum)
    assert _gil_wait(frame, lasti, None, False) == _SURELY_THE_GIL
    # A C call of a library may be waiting on its own lock: maybe.
    frame, lasti = _stopped_in(lambda it: functools.reduce(max, it))
    assert _gil_wait(frame, lasti, None, False) == _MAYBE_THE_GIL
    # print writes under its stream's lock.
    frame, lasti = _stopped_in(lambda it: print(*it, file=io.StringIO()))
    assert _gil_wait(frame, lasti, None, False) == _MAYBE_THE_GIL


def _at_call(func: Callable[[], types.FrameType], name: str) -> tuple[types.FrameType, int]:
    """``func``'s frame, positioned at its call of ``name``."""
    frame = func()
    for instruction in dis.get_instructions(func.__code__):
        if instruction.opname == "CALL" and call_at(frame, instruction.offset) == name:
            return frame, instruction.offset
    raise AssertionError(f"no call of {name}")


def _writes(fd: int | None = None) -> types.FrameType:
    here = sys._getframe()
    if fd is not None:  # never run: only its bytecode is read
        os.write(fd, b"")
    return here


def test_a_thread_stopped_in_a_call_that_only_makes_a_system_call_surely_waits_for_the_gil() -> (
    None
):
    # os.write lets the GIL go around write(2) and takes no lock: in futex, it takes the
    # GIL back (beside threads that compute, that wait is theirs, not the write's).
    frame, lasti = _at_call(_writes, "os.write")
    assert _gil_wait(frame, lasti, None, False) == _SURELY_THE_GIL
