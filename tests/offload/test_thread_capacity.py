"""ThreadPool capacity: statistics under load, bounded shutdown, quiet exit."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time

import pytest

import unstall
from helpers import SLACK_S, child_env
from unstall import PoolStatistics, ThreadPool


async def poll(predicate: object, timeout: float = SLACK_S) -> bool:
    """Like helpers.wait_until, without blocking the loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())  # type: ignore[operator]


@pytest.mark.asyncio
async def test_statistics_are_right_under_a_burst_of_1000_calls_on_40_workers() -> None:
    gate = threading.Event()
    with ThreadPool(40, name="burst") as pool:
        calls = [asyncio.ensure_future(pool.run(gate.wait, SLACK_S)) for _ in range(1000)]
        assert await poll(lambda: pool.statistics().workers_busy == 40)
        assert await poll(lambda: pool.statistics().calls_queued == 960)
        await asyncio.sleep(0.05)
        during = pool.statistics()
        assert during.saturated
        assert during.workers_idle == 0
        assert during.longest_queue_wait_s >= 0.05
        assert during.calls_completed == 0
        gate.set()
        assert all(await asyncio.gather(*calls))
        after = pool.statistics()
    assert after.calls_completed == 1000
    assert after.calls_queued == 0
    assert after.longest_queue_wait_s == 0
    assert 960 <= after.max_queued <= 1000
    assert sum(after.queue_wait_buckets) == 1000
    assert after.max_queue_wait_s >= 0.05
    assert after.queue_wait_sum_s >= 960 * 0.05
    assert (after.calls_cancelled, after.calls_timed_out, after.worker_restarts) == (0, 0, 0)
    assert (after.name, after.kind, after.max_workers) == ("burst", "thread", 40)
    assert not after.saturated


@pytest.mark.asyncio
async def test_cancelled_and_timed_out_calls_are_counted() -> None:
    gate = threading.Event()
    with ThreadPool(2, name="counted") as pool:
        slow = unstall.offload(gate.wait, on=pool, timeout=0.05)
        with pytest.raises(TimeoutError):
            await slow(SLACK_S)
        task = asyncio.ensure_future(pool.run(gate.wait, SLACK_S))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.statistics()
        gate.set()
    assert stats.calls_timed_out == 1
    assert stats.calls_cancelled == 2  # a timeout is a cancellation too


@pytest.mark.asyncio
async def test_a_call_raising_timeouterror_itself_is_not_counted_as_timed_out() -> None:
    def raises() -> None:
        raise TimeoutError("from the call")

    with ThreadPool(1, name="own-timeout") as pool:
        with pytest.raises(TimeoutError, match="from the call"):
            await unstall.offload(raises, on=pool, timeout=SLACK_S)()
        assert pool.statistics().calls_timed_out == 0


@pytest.mark.asyncio
async def test_a_thread_started_after_one_retired_counts_as_a_restart() -> None:
    with ThreadPool(4, name="retiring", idle_timeout=0.05) as pool:
        await pool.run(time.sleep, 0)
        assert await poll(lambda: pool.thread_count == 0)
        await pool.run(time.sleep, 0)
        stats = pool.statistics()
    assert stats.worker_restarts == 1
    assert stats.calls_completed == 2


def test_statistics_is_a_frozen_snapshot() -> None:
    with ThreadPool(3, name="snap") as pool:
        stats = pool.statistics()
    assert isinstance(stats, PoolStatistics)
    assert (stats.workers_alive, stats.calls_queued, stats.max_workers) == (0, 0, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls_queued = 1  # type: ignore[misc]


@pytest.mark.asyncio
async def test_shutdown_with_a_timeout_returns_while_a_call_sleeps_60_s() -> None:
    release = threading.Event()
    pool = ThreadPool(2, name="bounded")
    call = asyncio.ensure_future(pool.run(release.wait, 60))
    assert await poll(lambda: pool.statistics().workers_busy == 1)
    start = time.monotonic()
    pool.shutdown(timeout=0.5)
    took = time.monotonic() - start
    assert 0.4 <= took < 2.0
    assert pool.thread_count == 1  # still running its call: threads cannot be killed
    release.set()
    assert await call is True  # the running call's result still reaches its caller
    assert await poll(lambda: pool.thread_count == 0)


@pytest.mark.asyncio
async def test_shutdown_cancel_queued_fails_queued_calls_which_never_run() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def record(i: int) -> int:
        ran.append(i)
        return i

    pool = ThreadPool(1, name="cancel-queued")
    first = asyncio.ensure_future(pool.run(gate.wait, SLACK_S))
    assert await poll(lambda: pool.statistics().workers_busy == 1)
    queued = [asyncio.ensure_future(pool.run(record, i)) for i in range(3)]
    await asyncio.sleep(0)
    pool.shutdown(wait=False, cancel_queued=True)
    for task in queued:
        with pytest.raises(RuntimeError, match="shut down with cancel_queued=True"):
            await task
    gate.set()
    assert await first is True
    pool.shutdown(timeout=SLACK_S)
    assert ran == []
    stats = pool.statistics()
    assert (stats.calls_cancelled, stats.calls_completed, stats.calls_queued) == (3, 1, 0)
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.run(record, 9)


@pytest.mark.asyncio
async def test_shutdown_cancel_queued_releases_a_caller_waiting_with_cancel_wait() -> None:
    gate = threading.Event()
    pool = ThreadPool(1, name="cancel-wait")
    first = asyncio.ensure_future(pool.run(gate.wait, SLACK_S))
    assert await poll(lambda: pool.statistics().workers_busy == 1)
    queued = asyncio.ensure_future(pool.submit(time.sleep, (0,), {}, cancel="wait"))
    await asyncio.sleep(0)
    pool.shutdown(wait=False, cancel_queued=True)
    queued.cancel()
    with pytest.raises((asyncio.CancelledError, RuntimeError)):
        await asyncio.wait_for(queued, SLACK_S)
    gate.set()
    await first
    pool.shutdown()


def test_shutdown_rejects_bad_timeouts() -> None:
    pool = ThreadPool(1, name="bad-timeout")
    with pytest.raises(ValueError, match=">= 0"):
        pool.shutdown(timeout=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        pool.shutdown(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs wait=True"):
        pool.shutdown(wait=False, timeout=1)
    pool.shutdown(timeout=0)


def test_interpreter_exit_with_thread_calls_in_flight_is_prompt_and_silent() -> None:
    code = (
        "import asyncio, time, unstall\n"
        "pool = unstall.ThreadPool(2, name='exiting')\n"
        "async def main():\n"
        "    asyncio.ensure_future(unstall.to_thread(time.sleep, 60))\n"
        "    asyncio.ensure_future(pool.run(time.sleep, 60))\n"
        "    await asyncio.sleep(0.2)\n"
        "asyncio.run(main())\n"
        "print('done', flush=True)\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == ""
    assert time.monotonic() - start < 30


@pytest.mark.asyncio
async def test_a_watcher_notes_a_full_pool_behind_a_stall_free_loop() -> None:
    from unstall._report.summary import render_summary

    with ThreadPool(1, name="tiny") as pool:
        async with unstall.watch(threshold=0.5) as watcher:
            await asyncio.gather(*(pool.run(time.sleep, 0.6) for _ in range(3)))
        report = watcher.report()
    (note,) = report.notes
    assert note.startswith("the thread pool 'tiny' was full for 1.")
    assert "raise its max_workers, or bound the callers with a Limiter" in note
    assert "1 call waited over 1 s" in note
    text = render_summary(report, color=False)
    assert text.splitlines()[-1] == f"  note: {note}"
    assert unstall.Report.from_json(report.to_json()).notes == [note]


@pytest.mark.asyncio
async def test_a_pool_that_kept_up_gets_no_note() -> None:
    with ThreadPool(4, name="roomy") as pool:
        async with unstall.watch(threshold=0.5) as watcher:
            await asyncio.gather(*(pool.run(time.sleep, 0.05) for _ in range(4)))
    assert watcher.report().notes == []
    assert "notes" not in watcher.report().to_dict()
