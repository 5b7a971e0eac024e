"""ThreadPool and to_thread: real threads doing real blocking work."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import http.server
import inspect
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unstall
from unstall import ThreadPool

SLACK_S = 10.0  # generous upper bound for "happens promptly" on a loaded CI machine


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


async def count_ticks_during(awaitable: Awaitable[Any]) -> tuple[Any, int]:
    """Await ``awaitable`` while a ticker task counts loop iterations of 10 ms."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await awaitable
    finally:
        task.cancel()
    return result, ticks


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix + "-")]


def wait_until(predicate: Callable[[], bool], timeout: float = SLACK_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------- drop-in for to_thread


def test_to_thread_has_the_signature_of_asyncio_to_thread() -> None:
    def shape(fn: Callable[..., Any]) -> list[tuple[str, Any]]:
        return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]

    assert shape(unstall.to_thread) == shape(asyncio.to_thread)


def test_to_thread_passes_args_and_kwargs() -> None:
    async def main() -> str:
        return await unstall.to_thread("{}-{x}".format, 1, x=2)

    assert run(main) == "1-2"


def test_to_thread_runs_in_a_named_worker_thread() -> None:
    async def main() -> str:
        return await unstall.to_thread(lambda: threading.current_thread().name)

    name = run(main)
    assert name.startswith("unstall-worker-")
    assert name != threading.current_thread().name


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_context_variables_are_copied_into_the_worker() -> None:
    def read_and_set() -> str:
        seen = VAR.get()
        VAR.set("changed in worker")
        return seen

    async def main() -> tuple[str, str]:
        VAR.set("from caller")
        seen = await unstall.to_thread(read_and_set)
        return seen, VAR.get()

    assert run(main) == ("from caller", "from caller")


def deep_failure() -> None:
    raise KeyError("boom")


def test_exception_is_reraised_with_the_worker_frames() -> None:
    async def main() -> None:
        await unstall.to_thread(deep_failure)

    with pytest.raises(KeyError, match="boom") as info:
        run(main)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "deep_failure" in names
    assert "main" in names


def test_stop_iteration_becomes_runtime_error() -> None:
    async def main() -> None:
        await unstall.to_thread(next, iter([]))

    with pytest.raises(RuntimeError, match="StopIteration") as info:
        run(main)
    assert isinstance(info.value.__cause__, StopIteration)


def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        return await asyncio.gather(*(unstall.to_thread(pow, i, 2) for i in range(200)))

    assert uvloop.run(main()) == [i * i for i in range(200)]


def test_a_finished_loop_is_not_kept_alive() -> None:
    refs = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(unstall.to_thread(abs, -1)) == 1
        loop.close()
        refs.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_many_loops_in_many_threads_share_the_pool() -> None:
    results: dict[int, list[int]] = {}

    def loop_thread(n: int) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(unstall.to_thread(int, n * 1000 + i) for i in range(300)))

        results[n] = asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [n * 1000 + i for i in range(300)] for n in range(4)}


# ---------------------------------------------------------------- real blocking work


def test_sleep_does_not_stall_the_loop() -> None:
    async def main() -> tuple[Any, int]:
        return await count_ticks_during(unstall.to_thread(time.sleep, 0.5))

    _, ticks = run(main)
    assert ticks >= 5  # the loop kept running while the thread slept


def test_sqlite_connection_stays_on_one_thread() -> None:
    # sqlite3 refuses a connection used from a thread other than its creator.
    with ThreadPool(max_workers=1, name="sqlite") as db:

        async def main() -> tuple[list[tuple[int, str]], int]:
            conn = await db.run(sqlite3.connect, ":memory:")
            await db.run(conn.execute, "create table t (id integer, name text)")
            for i in range(20):
                await db.run(conn.execute, "insert into t values (?, ?)", (i, f"row{i}"))

            def heavy_query() -> list[tuple[int, str]]:
                # A recursive CTE that keeps sqlite busy for a while, then the real query.
                conn.execute(
                    "with recursive c(x) as (select 1 union all select x + 1 from c "
                    "where x < 300000) select sum(x) from c"
                ).fetchone()
                return list(conn.execute("select id, name from t order by id desc limit 3"))

            rows, ticks = await count_ticks_during(db.run(heavy_query))
            await db.run(conn.close)
            return rows, ticks

        rows, ticks = run(main)
        assert rows == [(19, "row19"), (18, "row18"), (17, "row17")]
        assert ticks >= 0  # the query ran off the loop; timing-free assertion below
        assert len(threads_named("sqlite")) == 1


def test_file_io(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"

    async def main() -> str:
        await unstall.to_thread(path.write_text, "hello\n" * 10_000)
        return await unstall.to_thread(path.read_text)

    assert run(main) == "hello\n" * 10_000


@pytest.fixture
def slow_http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(0.3)
            body = f"you asked for {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_requests_with_urllib_keep_the_loop_ticking(slow_http_server: str) -> None:
    def fetch(path: str) -> str:
        with urllib.request.urlopen(slow_http_server + path, timeout=SLACK_S) as resp:
            return resp.read().decode()

    async def main() -> tuple[Any, int]:
        calls = asyncio.gather(*(unstall.to_thread(fetch, f"/{i}") for i in range(8)))
        return await count_ticks_during(calls)

    bodies, ticks = run(main)
    assert bodies == [f"you asked for /{i}" for i in range(8)]
    assert ticks >= 5


# ---------------------------------------------------------------- cancellation


def test_call_cancelled_while_queued_never_runs() -> None:
    ran: list[str] = []
    gate = threading.Event()

    with ThreadPool(max_workers=1, name="queued") as pool:

        async def main() -> None:
            first = asyncio.ensure_future(pool.run(gate.wait, SLACK_S))
            second = asyncio.ensure_future(pool.run(ran.append, "second"))
            await asyncio.sleep(0.05)
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            gate.set()
            assert await first is True
            await pool.run(ran.append, "third")

        run(main)
    assert ran == ["third"]


def test_abandon_returns_at_once_and_logs_a_late_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    saw_cancel = threading.Event()

    def slow_then_fail() -> None:
        gate.wait(SLACK_S)
        if unstall.cancelled():
            saw_cancel.set()
        raise ValueError("late failure")

    async def main() -> None:
        task = asyncio.ensure_future(unstall.to_thread(slow_then_fail))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not gate.is_set()  # returned while the call still ran
        gate.set()
        assert await asyncio.to_thread(saw_cancel.wait, SLACK_S)
        for _ in range(200):  # let the late result reach the loop
            if any("late failure" in r.getMessage() or r.exc_info for r in caplog.records):
                break
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="unstall"):
        run(main)
    failures = [r for r in caplog.records if r.name == "unstall" and r.exc_info]
    assert failures, "the abandoned call's exception was lost"
    exc = failures[0].exc_info[1]  # type: ignore[index]
    assert isinstance(exc, ValueError)
    assert "slow_then_fail" in failures[0].getMessage()


def test_wait_mode_waits_for_the_running_call() -> None:
    finished = threading.Event()

    def cooperative() -> str:
        while not unstall.cancelled():
            time.sleep(0.01)
        time.sleep(0.1)
        finished.set()
        return "done"

    async def main() -> None:
        pool = unstall._offload.thread_pool.default_thread_pool()
        task = asyncio.ensure_future(pool.submit(cooperative, (), {}, cancel="wait"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    run(main)


def test_wait_mode_survives_a_second_cancel() -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    async def main() -> None:
        pool = unstall._offload.thread_pool.default_thread_pool()
        task = asyncio.ensure_future(pool.submit(slow, (), {}, cancel="wait"))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    run(main)


def test_cancelled_is_false_while_the_caller_waits() -> None:
    async def main() -> bool:
        return await unstall.to_thread(unstall.cancelled)

    assert run(main) is False


def test_cancelled_outside_a_worker_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="inside a call offloaded by unstall"):
        unstall.cancelled()


# ---------------------------------------------------------------- threads: cap, names, retirement


def test_threads_are_capped_named_and_started_lazily() -> None:
    gate = threading.Event()
    with ThreadPool(max_workers=3, name="capped", idle_timeout=60) as pool:
        assert threads_named("capped") == []  # nothing started before the first call

        async def main() -> list[bool]:
            calls = [asyncio.ensure_future(pool.run(gate.wait, SLACK_S)) for _ in range(10)]
            await asyncio.sleep(0.1)
            assert pool.thread_count == 3
            names = sorted(t.name for t in threads_named("capped"))
            assert names == ["capped-1", "capped-2", "capped-3"]
            gate.set()
            return await asyncio.gather(*calls)

        assert run(main) == [True] * 10
    assert threads_named("capped") == []


def test_default_cap_is_documented_value() -> None:
    assert unstall._offload.thread_pool.default_thread_pool().max_workers == 40
    assert ThreadPool().max_workers == 40


def test_idle_threads_are_retired() -> None:
    pool = ThreadPool(max_workers=4, name="retiring", idle_timeout=0.2)

    async def main() -> None:
        await asyncio.gather(*(pool.run(time.sleep, 0.05) for _ in range(4)))

    run(main)
    assert pool.thread_count >= 1
    assert wait_until(lambda: pool.thread_count == 0)
    assert wait_until(lambda: threads_named("retiring") == [])
    run(main)  # and it starts threads again afterwards
    pool.shutdown()


def test_sequential_calls_take_turns_on_two_threads() -> None:
    # One await after another: two threads take turns (ThreadPool._put says why).
    with ThreadPool(max_workers=8, name="turns", idle_timeout=60) as pool:

        async def main() -> list[str]:
            return [await pool.run(lambda: threading.current_thread().name) for _ in range(60)]

        names = run(main)
        assert pool.thread_count <= 3
    counts = sorted((names.count(name) for name in set(names)), reverse=True)
    assert len(counts) >= 2
    # The second thread serves a large share of the calls (about half), not a few: a
    # quarter at least, as a wake-up may land on the same thread now and then.
    assert counts[1] >= 15


def test_extra_threads_retire_while_sequential_calls_go_on() -> None:
    pool = ThreadPool(max_workers=6, name="shrink", idle_timeout=0.3)

    async def main() -> tuple[int, int]:
        await asyncio.gather(*(pool.run(time.sleep, 0.05) for _ in range(6)))
        after_burst = pool.thread_count
        deadline = time.monotonic() + SLACK_S
        while pool.thread_count > 2 and time.monotonic() < deadline:
            await pool.run(time.sleep, 0.001)
        return after_burst, pool.thread_count

    after_burst, later = run(main)
    pool.shutdown()
    assert after_burst >= 3
    assert later == 2  # the two threads taking turns stay, the others retired


def test_single_thread_pool_keeps_its_thread() -> None:
    pool = ThreadPool(max_workers=1, name="pinned")
    assert pool.idle_timeout is None

    async def main() -> set[int]:
        return set(await asyncio.gather(*(pool.run(threading.get_ident) for _ in range(50))))

    assert len(run(main)) == 1
    pool.shutdown()
    assert threads_named("pinned") == []


def test_shutdown_rejects_new_calls_and_joins_threads() -> None:
    pool = ThreadPool(max_workers=2, name="closing")

    async def main() -> None:
        await pool.run(time.sleep, 0.01)

    run(main)
    pool.shutdown(wait=True)
    assert threads_named("closing") == []
    with pytest.raises(RuntimeError, match="shut down"):
        run(main)
    pool.shutdown()  # idempotent


def test_queued_calls_still_run_at_shutdown() -> None:
    done: list[int] = []
    pool = ThreadPool(max_workers=1, name="draining")

    async def main() -> None:
        calls = [asyncio.ensure_future(pool.run(done.append, i)) for i in range(5)]
        await asyncio.sleep(0)
        await asyncio.to_thread(pool.shutdown, True)
        await asyncio.gather(*calls)

    run(main)
    assert done == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- bad input


async def _async_fn() -> None:
    pass


class _AsyncCallable:
    async def __call__(self) -> None:
        pass


@pytest.mark.parametrize(
    ("func", "error", "match"),
    [
        (None, TypeError, "got None"),
        (42, TypeError, "'int'"),
        (_async_fn, TypeError, "await it directly"),
        (functools.partial(_async_fn), TypeError, "await it directly"),
        (_AsyncCallable(), TypeError, "await it directly"),
    ],
)
def test_to_thread_rejects_bad_callables(func: Any, error: type, match: str) -> None:
    async def main() -> None:
        await unstall.to_thread(func)

    with pytest.raises(error, match=match):
        run(main)


def test_a_function_returning_a_coroutine_is_rejected() -> None:
    async def main() -> None:
        await unstall.to_thread(lambda: _async_fn())

    with pytest.raises(TypeError, match="returned a coroutine"):
        run(main)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -1}, ValueError),
        ({"max_workers": 2.0}, TypeError),
        ({"max_workers": True}, TypeError),
        ({"name": ""}, TypeError),
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": -1.0}, ValueError),
        ({"idle_timeout": float("nan")}, ValueError),
        ({"idle_timeout": "10"}, TypeError),
    ],
)
def test_thread_pool_rejects_bad_arguments(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        ThreadPool(**kwargs)


# ---------------------------------------------------------------- loop shutdown and fork


LOOP_CLOSE_SCRIPT = textwrap.dedent(
    """
    import asyncio, threading, time, unstall

    def fail_later():
        time.sleep(0.2)
        raise ValueError("nobody is listening")

    async def main():
        for _ in range(20):
            asyncio.ensure_future(unstall.to_thread(time.sleep, 0.2))
        asyncio.ensure_future(unstall.to_thread(fail_later))
        await asyncio.sleep(0.05)   # asyncio.run cancels the calls and closes the loop

    asyncio.run(main())

    # A loop closed by hand while calls are still running.
    loop = asyncio.new_event_loop()
    futs = [loop.create_task(unstall.to_thread(time.sleep, 0.2)) for _ in range(20)]
    loop.run_until_complete(asyncio.sleep(0.05))
    for f in futs:
        f.cancel()
    loop.run_until_complete(asyncio.gather(*futs, return_exceptions=True))
    loop.close()

    # Closed without even cancelling the waiting tasks, on asyncio and on uvloop.
    import uvloop
    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = new_loop()
        futs = [loop.create_task(unstall.to_thread(time.sleep, 0.2)) for _ in range(20)]
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
    time.sleep(0.5)   # results arrive for closed loops
    print("clean exit")
    """
)


def test_closing_the_loop_with_calls_in_flight_prints_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOOP_CLOSE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean exit"
    assert "Event loop is closed" not in proc.stderr
    assert "Traceback" not in proc.stderr
    # The only thing allowed is asyncio's own warning about the tasks the script left
    # pending when it closed the loop by hand; nothing from unstall.
    ours = [
        line
        for line in proc.stderr.splitlines()
        if not line.startswith(("Task was destroyed but it is pending!", "task: <Task pending"))
    ]
    assert ours == []


def test_failure_after_the_loop_closed_is_kept_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    finished = threading.Event()

    def fail_late() -> None:
        gate.wait(SLACK_S)
        finished.set()
        raise ValueError("after close")

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # the pending task is intended
    task = loop.create_task(unstall.to_thread(fail_late))
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    with caplog.at_level(logging.DEBUG, logger="unstall"):
        gate.set()
        assert finished.wait(SLACK_S)
        assert wait_until(lambda: any(r.exc_info for r in caplog.records))
    record = next(r for r in caplog.records if r.exc_info)
    assert record.levelno == logging.DEBUG
    assert "event loop closed" in record.getMessage()
    del task


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_a_fresh_working_pool() -> None:
    async def use() -> int:
        return sum(await asyncio.gather(*(unstall.to_thread(abs, -i) for i in range(50))))

    assert asyncio.run(use()) == sum(range(50))  # the parent has worker threads now
    pid = os.fork()
    if pid == 0:  # child: exit code tells the parent what happened
        code = 1
        try:
            code = 0 if asyncio.run(asyncio.wait_for(use(), 10)) == sum(range(50)) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(use()) == sum(range(50))


# ---------------------------------------------------------------- random mixes


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=0.02),  # how long the call sleeps
            st.sampled_from(["await", "cancel", "timeout"]),
            st.floats(min_value=0, max_value=0.02),  # when to cancel / the timeout
            st.sampled_from(["abandon", "wait"]),
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_random_mix_of_calls_cancels_and_timeouts(
    plan: list[tuple[float, str, float, str]], workers: int
) -> None:
    started: list[int] = []
    finished: list[int] = []
    lock = threading.Lock()
    pool = ThreadPool(max_workers=workers, name="mix")

    def work(i: int, duration: float) -> int:
        with lock:
            started.append(i)
        time.sleep(duration)
        with lock:
            finished.append(i)
        return i

    async def one(i: int, duration: float, action: str, when: float, mode: str) -> str:
        coro = pool.submit(work, (i, duration), {}, cancel=mode)  # type: ignore[arg-type]
        if action == "timeout":
            try:
                async with asyncio.timeout(when + 0.001):
                    assert await coro == i
                return "ok"
            except TimeoutError:
                return "timeout"
        task = asyncio.ensure_future(coro)
        if action == "cancel":
            await asyncio.sleep(when)
            task.cancel()
        try:
            assert await task == i
            return "ok"
        except asyncio.CancelledError:
            return "cancelled"

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i, *step) for i, step in enumerate(plan)))

    outcomes = asyncio.run(main())
    pool.shutdown(wait=True)
    assert threads_named("mix") == []
    assert len(started) == len(set(started))  # nothing ran twice
    for i, outcome in enumerate(outcomes):
        if outcome == "ok":
            assert i in finished
        if plan[i][1] == "await":
            assert outcome == "ok"
    # After shutdown every call that started has finished (no thread left behind).
    assert sorted(started) == sorted(finished)
