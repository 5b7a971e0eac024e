"""unstall.watch(): the API, and the accuracy of each stall it reports (issue 3).

Each scenario blocks a real loop with real blocking code (tests/fixtures/blocking.py) and
checks that the stall is reported once, with its duration within 10% of the time the
blocking call took (measured around it), on the culprit line, with the innermost call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from helpers import SLACK_S
from unstall import Frame, Stall, Watcher
from unstall._watch.probe import describe_loop

THRESHOLD = 0.1


def run_watched(
    body: Callable[[], Awaitable[Any]], threshold: float = THRESHOLD, **kwargs: Any
) -> tuple[Watcher, Any]:
    """Run ``body`` in a fresh loop under ``watch()``; return the watcher and its result."""

    async def main() -> tuple[Watcher, Any]:
        async with unstall.watch(threshold=threshold, log=False, **kwargs) as watcher:
            await asyncio.sleep(0.05)
            result = await body()
            await asyncio.sleep(0.05)
        return watcher, result

    return asyncio.run(main())


def blocked(fn: Callable[..., Any], *args: Any) -> Callable[[], Awaitable[Any]]:
    """A coroutine function that calls ``fn(*args)`` right on the loop."""

    async def body() -> Any:
        return fn(*args)

    return body


def check(stall: Stall, truth: float, marker: str, call: str | None = None) -> None:
    assert abs(stall.duration_s - truth) <= 0.1 * truth, (stall.duration_s, truth)
    assert stall.culprit is not None, stall
    assert (stall.culprit.file, stall.culprit.line) == (blocking.HERE, line_of(marker)), (
        stall.culprit
    )
    assert stall.culprit.code
    assert f"culprit: {marker}" in stall.culprit.code
    if call is not None:
        assert stall.call == call
    assert stall.stack[-1] == stall.culprit or stall.culprit in stall.stack
    assert stall.thread == threading.current_thread().name
    assert stall.thread_id == threading.get_ident()
    assert not stall.ongoing
    assert stall.sample_count >= 1


def only(watcher: Watcher) -> Stall:
    assert len(watcher.stalls) == 1, watcher.stalls
    return watcher.stalls[0]


# -- accuracy, one case each ---------------------------------------------------------------


def test_time_sleep_in_a_task() -> None:
    watcher, truth = run_watched(blocked(blocking.sleep_block, 0.4))
    stall = only(watcher)
    check(stall, truth, "sleep", "time.sleep")
    assert stall.kind == "wait"
    assert stall.task is not None
    assert stall.coro is not None
    assert stall.coro.endswith("main")
    assert stall.callback is None
    assert stall.method == "sampler"
    assert stall.samples[0].frame == stall.culprit


def test_blocking_inside_an_awaited_async_helper() -> None:
    async def body() -> float:
        return await blocking.async_helper_sleep_block(0.4)

    watcher, truth = run_watched(body)
    stall = only(watcher)
    check(stall, truth, "async-helper-sleep", "time.sleep")
    assert stall.culprit is not None
    assert stall.culprit.function == "async_helper_sleep_block"
    assert stall.culprit.coroutine
    # The helper is async: the hint offloads the blocking call, not the helper.
    assert "to_thread(time.sleep, seconds)" in stall.fix_hint
    assert stall.to_dict()["culprit"]["coroutine"] is True


def test_cpu_loop_in_python() -> None:
    watcher, truth = run_watched(blocked(blocking.cpu_block, 0.4))
    stall = only(watcher)
    check(stall, truth, "cpu")
    assert stall.kind == "cpu"


def test_blocking_socket() -> None:
    watcher, truth = run_watched(blocked(blocking.socket_block, 0.4))
    check(only(watcher), truth, "socket", "socket.socket.recv")


def test_subprocess_run() -> None:
    watcher, truth = run_watched(blocked(blocking.subprocess_block, 0.3))
    stall = only(watcher)
    check(stall, truth, "subprocess", "subprocess.run")
    assert stall.kind == "wait"
    # The stack goes on into the standard library, where the wait really is.
    assert any(f.function == "wait" for f in stall.stack)


def test_contended_lock() -> None:
    watcher, truth = run_watched(blocked(blocking.lock_block, 0.4))
    check(only(watcher), truth, "lock", "_thread.lock.acquire")


def test_contended_lock_in_a_with_statement() -> None:
    watcher, truth = run_watched(blocked(blocking.with_lock_block, 0.4))
    check(only(watcher), truth, "with-lock", "_thread.lock.acquire")


def test_sqlite3(tmp_path: Path) -> None:
    watcher, truth = run_watched(blocked(blocking.sqlite_block, 0.4, str(tmp_path / "db")))
    check(only(watcher), truth, "sqlite", "sqlite3.Connection.execute")


def test_blocking_pipe_read() -> None:
    watcher, truth = run_watched(blocked(blocking.pipe_block, 0.4))
    check(only(watcher), truth, "pipe", "os.read")


def test_function_called_back_from_c() -> None:
    watcher, truth = run_watched(blocked(blocking.json_callback_block, 0.4))
    stall = only(watcher)
    check(stall, truth, "json-default", "time.sleep")
    # json.dumps (the standard library) sits between the task and the culprit.
    assert any(f.function == "dumps" for f in stall.stack)


def test_callback_scheduled_with_call_later_outside_any_task() -> None:
    truth: list[float] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def blocking_callback() -> None:
            truth.append(blocking.sleep_block(0.4))
            done.set_result(None)

        loop.call_later(0.02, blocking_callback)
        await done

    watcher, _ = run_watched(body)
    stall = only(watcher)
    check(stall, truth[0], "sleep", "time.sleep")
    assert stall.task is None
    assert stall.coro is None
    assert stall.callback is not None
    assert "blocking_callback" in stall.callback


def test_task_inside_a_task_group() -> None:
    truth: list[float] = []

    async def blocker() -> None:
        truth.append(blocking.sleep_block(0.4))

    async def body() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(blocker(), name="the-blocker")
            group.create_task(asyncio.sleep(0.01))

    watcher, _ = run_watched(body)
    stall = only(watcher)
    check(stall, truth[0], "sleep")
    assert stall.task == "the-blocker"
    assert stall.coro is not None
    assert stall.coro.endswith("blocker")


def test_two_stalls_in_one_run_are_each_reported_once() -> None:
    async def body() -> list[float]:
        first = blocking.sleep_block(0.3)
        await asyncio.sleep(0.05)
        second = blocking.cpu_block(0.4)
        return [first, second]

    watcher, truths = run_watched(body)
    assert len(watcher.stalls) == 2, watcher.stalls
    check(watcher.stalls[0], truths[0], "sleep")
    check(watcher.stalls[1], truths[1], "cpu")
    assert watcher.stalls[0].start_s < watcher.stalls[1].start_s


def test_two_blocking_callbacks_in_one_loop_iteration_are_two_stalls() -> None:
    truths: dict[str, float] = {}

    async def one(name: str, seconds: float) -> None:
        truths[name] = blocking.sleep_block(seconds)

    async def body() -> None:
        # Both tasks become ready in the same iteration and run back to back.
        await asyncio.gather(one("a", 0.3), one("b", 0.4))

    watcher, _ = run_watched(body)
    assert len(watcher.stalls) == 2, watcher.stalls
    a, b = watcher.stalls
    check(a, truths["a"], "sleep")
    check(b, truths["b"], "sleep")
    assert a.task != b.task


def test_a_stack_150_frames_deep() -> None:
    watcher, truth = run_watched(blocked(blocking.deep_block, 150, 0.4))
    stall = only(watcher)
    check(stall, truth, "deep", "time.sleep")
    assert len(stall.stack) > 150


def test_loop_in_a_non_main_thread() -> None:
    out: dict[str, Any] = {}

    def thread_main() -> None:
        out["result"] = run_watched(blocked(blocking.sleep_block, 0.4))
        out["thread"] = threading.current_thread().name

    thread = threading.Thread(target=thread_main, name="worker-loop")
    thread.start()
    thread.join()
    watcher, truth = out["result"]
    stall = only(watcher)
    assert stall.thread == "worker-loop"
    assert abs(stall.duration_s - truth) <= 0.1 * truth
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("sleep")


def test_stall_still_going_on_when_the_watcher_stops_is_reported() -> None:
    async def main() -> tuple[Watcher, float]:
        async with unstall.watch(threshold=THRESHOLD, log=False) as watcher:
            truth = blocking.sleep_block(0.3)  # no await: stop() runs in the same callback
        return watcher, truth

    watcher, truth = asyncio.run(main())
    stall = only(watcher)
    assert stall.duration_s >= truth
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("sleep")


def test_a_stall_going_on_in_another_threads_loop_at_stop_is_reported_as_it_stands() -> None:
    """The watcher stops before that loop's iteration ends: the end would come too late for
    it. A watcher that goes on gets the whole stall when it ends."""
    blocking_now = threading.Event()

    def block() -> None:
        blocking_now.set()
        blocking.sleep_block(1.0)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="still-blocked")
    thread.start()
    stays = unstall.watch(threshold=THRESHOLD, log=False)
    stopping = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        time.sleep(0.05)
        loop.call_soon_threadsafe(block)
        assert blocking_now.wait(SLACK_S)
        time.sleep(0.3)
        stopping.stop()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(SLACK_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        stays.stop()
    stall = only(stopping)
    assert stall.ongoing
    assert 0.3 <= stall.duration_s < 1.0
    assert stall.culprit is not None
    assert stall.culprit.line == line_of("sleep")
    whole = only(stays)
    assert not whole.ongoing
    assert whole.duration_s >= 1.0


# -- nothing to report ---------------------------------------------------------------------


def test_work_offloaded_to_threads_is_not_a_stall() -> None:
    async def body() -> None:
        await asyncio.gather(
            asyncio.to_thread(time.sleep, 0.4), asyncio.to_thread(blocking.cpu_block, 0.4)
        )

    watcher, _ = run_watched(body)
    assert watcher.stalls == []


def test_cpu_work_in_another_thread_is_not_a_stall() -> None:
    async def body() -> None:
        thread = threading.Thread(target=blocking.cpu_block, args=(0.6,))
        thread.start()
        for _ in range(30):
            await asyncio.sleep(0.02)
        thread.join()

    watcher, _ = run_watched(body)
    assert watcher.stalls == []


def test_blocks_shorter_than_the_threshold_are_not_stalls() -> None:
    async def body() -> None:
        for _ in range(5):
            time.sleep(0.03)
            await asyncio.sleep(0)

    watcher, _ = run_watched(body, threshold=0.2)
    assert watcher.stalls == []


def test_a_busy_but_healthy_loop_is_not_a_stall() -> None:
    async def body() -> int:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=100)
        total = 0

        async def producer() -> None:
            for i in range(20_000):
                await queue.put(i)

        async def consumer() -> None:
            nonlocal total
            while True:
                total += await queue.get()
                queue.task_done()

        consumers = [asyncio.create_task(consumer()) for _ in range(200)]
        await asyncio.gather(*(producer() for _ in range(5)))
        await queue.join()
        for c in consumers:
            c.cancel()
        return total

    watcher, total = run_watched(body, threshold=0.2)
    assert total > 0
    assert watcher.stalls == []


# -- the API ---------------------------------------------------------------------------------


def test_on_stall_is_called_and_its_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Stall] = []

    def broken(stall: Stall) -> None:
        seen.append(stall)
        raise RuntimeError("listener bug")

    async def body() -> None:
        blocking.sleep_block(0.2)
        await asyncio.sleep(0.05)
        blocking.sleep_block(0.2)

    with caplog.at_level(logging.ERROR, logger="unstall"):
        watcher, _ = run_watched(body, on_stall=broken)
    assert len(seen) == 2  # watching went on after the first error
    assert seen == watcher.stalls
    assert "listener bug" in caplog.text


def test_log_lines_are_warnings_and_repeats_are_folded(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Watcher:
        async with unstall.watch(threshold=0.05) as watcher:
            for _ in range(3):
                blocking.sleep_block(0.1)
                await asyncio.sleep(0.02)
        return watcher

    with caplog.at_level(logging.WARNING, logger="unstall"):
        watcher = asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "unstall"]
    assert len(watcher.stalls) == 3
    assert len(lines) == 2, lines  # the first stall, then the repeats when the watcher stops
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "unstall")
    where = f"blocking.py:{line_of('sleep')}"
    assert "blocked for" in lines[0]
    assert where in lines[0]
    assert "stalled 2 more times at" in lines[1]
    assert where in lines[1]


def test_plain_call_and_stop_and_report() -> None:
    async def main() -> Watcher:
        watcher = unstall.watch(threshold=THRESHOLD, log=False)
        await asyncio.sleep(0.02)
        blocking.sleep_block(0.3)
        await asyncio.sleep(0.3)
        watcher.stop()
        watcher.stop()  # idempotent
        return watcher

    watcher = asyncio.run(main())
    assert not watcher.running
    report = watcher.report()
    assert report.threshold_s == THRESHOLD
    assert report.stalls == watcher.stalls
    assert len(report.stalls) == 1
    assert report.duration_s >= 0.6
    assert abs(report.started_at - time.time()) < 60
    (info,) = report.loops
    assert info.thread == threading.current_thread().name
    assert info.id == report.stalls[0].loop
    assert max(lag for _, lag in info.lag) >= 0.2  # the heartbeat saw the stall
    assert 0 < report.stalls[0].start_s < report.duration_s
    assert unstall.Report.from_json(report.to_json()).to_dict() == report.to_dict()


def test_sync_with_on_an_explicit_loop_in_another_thread() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="served")
    thread.start()
    try:
        with unstall.watch(loop, threshold=THRESHOLD, log=False) as watcher:
            time.sleep(0.1)
            future = asyncio.run_coroutine_threadsafe(blocked(blocking.sleep_block, 0.3)(), loop)
            truth = future.result()
            time.sleep(0.1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    stall = only(watcher)
    assert stall.thread == "served"
    assert abs(stall.duration_s - truth) <= 0.1 * truth


def test_on_hang_reports_a_stall_while_it_lasts() -> None:
    hangs: list[Stall] = []

    async def body() -> float:
        return blocking.sleep_block(2.3)

    watcher, truth = run_watched(body, on_hang=hangs.append)
    stall = only(watcher)
    assert abs(stall.duration_s - truth) <= 0.1 * truth
    assert len(hangs) >= 2, hangs
    assert all(h.ongoing for h in hangs)
    assert all(h.culprit is not None and h.culprit.line == line_of("sleep") for h in hangs)
    durations = [h.duration_s for h in hangs]
    assert durations == sorted(durations)
    assert durations[0] < 0.5
    assert durations[-1] > 1.0


async def _async_listener(stall: Stall) -> None:
    """Never called: ``watch()`` refuses it."""


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"threshold": 0}, ValueError, "threshold"),
        ({"threshold": -1.0}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": "0.1"}, TypeError, "threshold"),
        ({"threshold": True}, TypeError, "threshold"),
        ({"on_stall": 3}, TypeError, "on_stall"),
        ({"on_hang": "x"}, TypeError, "on_hang"),
        ({"on_stall": _async_listener}, TypeError, "on_stall must be a plain function"),
        ({"on_hang": _async_listener}, TypeError, "on_hang must be a plain function"),
    ],
)
def test_bad_arguments_are_clear_errors(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        unstall.watch(**kwargs)


def test_loop_that_is_not_a_loop_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="event loop"):
        unstall.watch(object())  # type: ignore[arg-type]


def test_explicit_loop_watched_before_it_runs() -> None:
    loop = asyncio.new_event_loop()
    try:
        watcher = unstall.watch(loop, threshold=THRESHOLD, log=False)
        truth = loop.run_until_complete(blocked(blocking.sleep_block, 0.3)())
        watcher.stop()
    finally:
        loop.close()
    stall = only(watcher)
    assert abs(stall.duration_s - truth) <= 0.1 * truth
    assert stall.loop == describe_loop(loop)
    assert stall.loop.startswith(f"{type(loop).__name__}@{id(loop):#x}")


def test_watchers_with_different_thresholds_each_get_theirs() -> None:
    async def main() -> tuple[Watcher, Watcher]:
        fine = unstall.watch(threshold=0.1, log=False)
        coarse = unstall.watch(threshold=0.35, log=False)
        await asyncio.sleep(0.02)
        blocking.sleep_block(0.2)
        await asyncio.sleep(0.02)
        blocking.sleep_block(0.5)
        await asyncio.sleep(0.02)
        coarse.stop()
        fine.stop()
        return fine, coarse

    fine, coarse = asyncio.run(main())
    assert [round(s.duration_s, 1) for s in fine.stalls] == [0.2, 0.5]
    assert [round(s.duration_s, 1) for s in coarse.stalls] == [0.5]


def test_stop_from_inside_on_stall_is_fine() -> None:
    holder: list[Watcher] = []

    def stop_now(stall: Stall) -> None:
        holder[0].stop()

    async def main() -> Watcher:
        holder.append(unstall.watch(threshold=THRESHOLD, on_stall=stop_now, log=False))
        await asyncio.sleep(0.02)
        blocking.sleep_block(0.2)
        for _ in range(20):
            await asyncio.sleep(0.02)
        blocking.sleep_block(0.2)  # after stop: not reported
        await asyncio.sleep(0.02)
        return holder[0]

    watcher = asyncio.run(main())
    assert not watcher.running
    assert len(watcher.stalls) == 1


def test_lag_and_stalls_reach_the_events_feed() -> None:
    from unstall._report import feed

    lags: list[tuple[str, str, float]] = []
    stalls: list[Stall] = []

    class Listener:
        def on_lag(self, loop_id: str, thread: str, lag_s: float) -> None:
            lags.append((loop_id, thread, lag_s))

        def on_stall(self, stall: Stall) -> None:
            stalls.append(stall)

    listener = Listener()
    feed.subscribe(listener)
    try:
        watcher, _truth = run_watched(blocked(blocking.sleep_block, 0.3))
    finally:
        feed.unsubscribe(listener)
    stall = only(watcher)
    assert stalls == [stall]
    mine = [(thread, lag) for loop_id, thread, lag in lags if loop_id == stall.loop]
    assert mine
    assert {thread for thread, _ in mine} == {stall.thread}
    assert max(lag for _, lag in mine) >= 0.2  # the beat that came after the stall was late


def test_lines_past_the_minutes_budget_are_counted_on_the_next_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unstall._watch.stall_log import StallLog

    log = StallLog(max_per_minute=3)
    stalls = [
        Stall(
            start_s=1.0,
            duration_s=0.5,
            thread="MainThread",
            thread_id=1,
            loop="L@1",
            culprit=Frame("app.py", n, "f"),
        )
        for n in range(1, 9)
    ]
    with caplog.at_level(logging.WARNING, logger="unstall"):
        for stall in stalls[:7]:
            log.stall(stall)
        assert len(caplog.records) == 3
        monkeypatch.setattr(log, "_minute_start", log._minute_start - 60.0)
        log.stall(stalls[7])
    assert len(caplog.records) == 4
    assert "4 more stall lines dropped" in caplog.records[-1].getMessage()
    assert "blocked for 0.50 s at app.py:8 in f" in caplog.records[-1].getMessage()
