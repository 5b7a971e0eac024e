"""The faulthandler route: stalls in C code that holds the GIL (issue 4)."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from unstall import Stall, Watcher
from unstall._watch import faultdump
from unstall._watch.watchdog import monitor

THRESHOLD = 0.1


PYTHON_AFTER_S = 0.08


@pytest.fixture
def sum_n() -> int:
    """``sum(range(n))`` takes about half a second on this machine, now."""
    return blocking.calibrate_sum(0.5)


def run_gil_block(n: int, depth: int = 0) -> tuple[Watcher, tuple[float, float]]:
    async def main() -> tuple[Watcher, tuple[float, float]]:
        async with unstall.watch(threshold=THRESHOLD, log=False) as watcher:
            await asyncio.sleep(0.1)
            result = blocking.deep_gil_block(depth, n, PYTHON_AFTER_S)
            await asyncio.sleep(0.05)
        return watcher, result

    return asyncio.run(main())


def only(watcher: Watcher) -> Stall:
    assert len(watcher.stalls) == 1, watcher.stalls
    return watcher.stalls[0]


def seen(stall: Stall) -> str:
    """What the samples said, and the watchdog's longest recent poll, for a failure."""
    lines = [(c.frame.line, c.count) for c in stall.samples]
    longest = max((hi - lo for lo, hi in list(monitor._polls)[-50:]), default=0.0)
    return (
        f"method={stall.method} duration={stall.duration_s:.3f} samples={lines} "
        f"longest poll={longest:.3f} s"
    )


def test_parse_reads_every_thread_outermost_first() -> None:
    ready, done = threading.Event(), threading.Event()

    def parked() -> None:
        ready.set()
        done.wait()

    thread = threading.Thread(target=parked)
    thread.start()
    ready.wait()
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        text = f.read()
    done.set()
    thread.join()
    dump = faultdump.parse(text, 12.5)
    assert dump.t == 12.5
    frames, truncated = dump.threads[thread.ident]  # type: ignore[index]
    assert not truncated
    assert frames[0].function == "_bootstrap"  # outermost first
    assert "parked" in [f.function for f in frames]
    assert frames[-1].function == "wait"
    mine, _ = dump.threads[threading.get_ident()]
    assert mine[-1].function == "test_parse_reads_every_thread_outermost_first"
    assert mine[-1].file == __file__


def test_parse_marks_stacks_faulthandler_truncated() -> None:
    def deep(n: int) -> str:
        if n:
            return deep(n - 1)
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=False)
            f.seek(0)
            return f.read()

    text = deep(150)
    dump = faultdump.parse(text.replace("Stack", f"Thread {threading.get_ident():#x}"), 0.0)
    frames, truncated = dump.threads[threading.get_ident()]
    assert truncated
    assert len(frames) == 100
    assert frames[-1].function == "deep"


def test_c_call_holding_the_gil_is_blamed_on_its_line(sum_n: int) -> None:
    """The default route: the first sample after the C call, located from the check point
    where the loop thread stopped (or the timer signal's handler there), stands for the gap."""
    watcher, (total, c_call) = run_gil_block(sum_n)
    stall = only(watcher)
    # The C call held the GIL long enough to starve the sampler, and longer than the
    # Python code after it ran.
    assert c_call > 2 * PYTHON_AFTER_S
    assert abs(stall.duration_s - total) <= 0.1 * total, (stall.duration_s, total)
    assert stall.culprit is not None
    # Not the Python loop that ran after it, where most samples usually land (how many
    # do depends on the machine's load, so that is not asserted).
    assert (stall.culprit.file, stall.culprit.line) == (blocking.HERE, line_of("gil"))
    assert stall.method in ("checkpoint", "signal")
    assert stall.kind == "cpu"
    assert stall.call == "sum"


def test_c_call_150_frames_deep_keeps_its_culprit(sum_n: int) -> None:
    watcher, _ = run_gil_block(sum_n, depth=150)
    stall = only(watcher)
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("gil")
    assert sum(f.function == "deep_gil_block" for f in stall.stack) == 151


@pytest.fixture
def faulthandler_on() -> Iterator[None]:
    saved = faultdump._enabled
    faultdump.enable()
    try:
        yield
    finally:
        faultdump.enable(saved)


@pytest.mark.usefixtures("faulthandler_on")
def test_faulthandler_dump_names_the_c_call(sum_n: int) -> None:
    watcher, (total, _) = run_gil_block(sum_n)
    stall = only(watcher)
    assert abs(stall.duration_s - total) <= 0.1 * total
    assert stall.culprit is not None
    assert (stall.culprit.file, stall.culprit.line) == (blocking.HERE, line_of("gil")), seen(stall)
    assert stall.method == "faulthandler"
    assert stall.kind == "cpu"
    assert stall.call == "sum"


@pytest.mark.usefixtures("faulthandler_on")
def test_faulthandler_dump_150_frames_deep_is_completed_by_the_sampler(sum_n: int) -> None:
    watcher, _ = run_gil_block(sum_n, depth=150)
    stall = only(watcher)
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("gil"), seen(stall)
    assert stall.method == "faulthandler"
    # faulthandler keeps 100 frames; the sampler's stack completes the outer part.
    assert sum(f.function == "deep_gil_block" for f in stall.stack) == 151


@pytest.mark.usefixtures("faulthandler_on")
def test_someone_elses_timer_is_left_alone(
    sum_n: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultdump, "_said_foreign", False)
    fd, path = tempfile.mkstemp()
    try:
        faulthandler.dump_traceback_later(0.3, file=fd)  # e.g. pytest's faulthandler_timeout
        with caplog.at_level(logging.WARNING, logger="unstall"):
            watcher, (_total, _) = run_gil_block(sum_n)
        time.sleep(0.2)
        assert os.path.getsize(path) > 0  # the other timer fired: we did not cancel it
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.close(fd)
        os.unlink(path)
    assert faultdump.available()  # cancelled by its owner: ours again
    stall = only(watcher)
    assert stall.method in ("checkpoint", "signal")
    assert "faulthandler's timer is in use" in caplog.text
    assert sys.modules["faulthandler"].dump_traceback_later is faultdump._arm_wrapper


def test_off_by_default() -> None:
    assert os.environ.get("UNSTALL_FAULTHANDLER") != "1"
    assert not faultdump.available()


@pytest.mark.usefixtures("faulthandler_on")
def test_a_lock_wait_beside_c_code_holding_the_gil_is_a_wait(sum_n: int) -> None:
    """A loop waiting on a contended lock while another thread holds the GIL in C code.

    The faulthandler dump is the witness there, but the loop was waiting, not computing:
    the call it makes decides, and the hint is a thread, not a process.
    """
    waiting = threading.Event()

    async def side() -> None:
        await asyncio.sleep(0.05)
        waiting.set()
        blocking.lock_block(0.8)
        await asyncio.sleep(0.05)

    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        thread = threading.Thread(target=asyncio.run, args=(side(),), name="side-loop")
        thread.start()
        waiting.wait(10)
        time.sleep(0.1)
        sum(range(sum_n))  # holds the GIL for about half a second in this thread
        thread.join(30)
    finally:
        watcher.stop()
    stall = only(watcher)
    assert stall.thread == "side-loop"
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("lock")
    assert stall.call == "_thread.lock.acquire"
    assert stall.kind == "wait", stall
    assert "to_thread" in stall.fix_hint
