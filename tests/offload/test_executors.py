"""ExecutorTarget: any concurrent.futures.Executor as a place to offload to."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import unstall
from unstall._offload.executors import ExecutorTarget


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as ex:
        yield ex


def test_rejects_non_executors() -> None:
    with pytest.raises(TypeError, match=r"concurrent\.futures\.Executor"):
        ExecutorTarget(object())  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_thread_executor_round_trip(threads: ThreadPoolExecutor) -> None:
    target = ExecutorTarget(threads)
    assert await target.submit(add, (1,), {"b": 2}) == 3
    worker = await target.submit(threading.get_ident, (), {})
    assert worker != threading.get_ident()
    with pytest.raises(ValueError, match="boom"):
        await target.submit(fail, ("boom",), {})


@pytest.mark.asyncio
async def test_offload_on_executor(threads: ThreadPoolExecutor) -> None:
    @unstall.offload(on=threads, timeout=5)
    def where() -> int:
        return threading.get_ident()

    assert await where() != threading.get_ident()
    assert where.__name__ == "where"


@pytest.mark.asyncio
async def test_queued_call_cancelled_never_runs(threads: ThreadPoolExecutor) -> None:
    target = ExecutorTarget(threads)
    gate = threading.Event()
    ran: list[str] = []
    first = asyncio.create_task(target.submit(gate.wait, (5,), {}))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(target.submit(ran.append, ("ran",), {}))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.set()
    assert await first is True
    await target.submit(time.sleep, (0,), {})  # drain the executor
    assert ran == []


@pytest.mark.asyncio
async def test_running_call_abandoned_and_its_late_error_logged(
    threads: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    target = ExecutorTarget(threads)
    gate = threading.Event()

    def wait_then_fail() -> None:
        gate.wait(30)
        raise ValueError("late failure")

    call = asyncio.create_task(target.submit(wait_then_fail, (), {}))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 5.0  # returned without waiting for the call
    with caplog.at_level(logging.WARNING, logger="unstall"):
        gate.set()
        await target.submit(time.sleep, (0,), {})  # the executor has 1 thread: it finished
    assert "late failure" in caplog.text


@pytest.mark.asyncio
async def test_cancel_wait_waits_for_the_running_call(threads: ThreadPoolExecutor) -> None:
    target = ExecutorTarget(threads)
    done = threading.Event()

    def work() -> None:
        time.sleep(0.3)
        done.set()

    call = asyncio.create_task(target.submit(work, (), {}, cancel="wait"))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert done.is_set()


@pytest.mark.asyncio
async def test_process_executor(processes: ProcessPoolExecutor) -> None:
    target = ExecutorTarget(processes)
    assert await target.submit(os.getpid, (), {}) != os.getpid()
    with pytest.raises(ValueError, match="remote") as info:
        await target.submit(fail, ("remote",), {})
    assert "in fail" in str(info.value.__cause__)  # concurrent.futures' remote traceback
    assert await unstall.offload(on=processes, limit=1)(add)(2, 3) == 5
