"""unstall.integrations.anyio: anyio.to_thread.run_sync on unstall's threads, anyio's contract kept."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import traceback
from collections.abc import Callable, Iterator

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
import sniffio
from anyio._backends._asyncio import AsyncIOBackend

from helpers import SLACK_S, run_python
from unstall._offload.thread_pool import DEFAULT_IDLE_TIMEOUT
from unstall.integrations import anyio as unstall_anyio

ANYIO_THREAD = "AnyIO worker thread"
# Threads let go must exit well before the idle timeout would retire them anyway.
EXIT_S = min(SLACK_S, DEFAULT_IDLE_TIMEOUT) / 2
cvar: contextvars.ContextVar[str] = contextvars.ContextVar("cvar", default="unset")


@pytest.fixture
def installed() -> Iterator[None]:
    unstall_anyio.install()
    try:
        yield
    finally:
        unstall_anyio.uninstall()


@pytest.fixture(params=["anyio's threads", "unstall's threads"])
def either(request: pytest.FixtureRequest) -> Iterator[str]:
    """The contract tests run on anyio's own threads and on unstall's: same outcome."""
    if request.param == "unstall's threads":
        unstall_anyio.install()
    try:
        yield "unstall-anyio-" if unstall_anyio.installed() else ANYIO_THREAD
    finally:
        unstall_anyio.uninstall()


def thread_name() -> str:
    return threading.current_thread().name


def test_run_sync_runs_on_an_unstall_thread_once_installed(installed: None) -> None:
    assert anyio.run(anyio.to_thread.run_sync, thread_name).startswith("unstall-anyio-")


def test_uninstall_gives_anyio_its_own_method_back() -> None:
    original = AsyncIOBackend.__dict__["run_sync_in_worker_thread"]
    unstall_anyio.install()
    assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is not original
    unstall_anyio.uninstall()
    assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is original
    assert not unstall_anyio.installed()
    assert anyio.run(anyio.to_thread.run_sync, thread_name) == ANYIO_THREAD


def test_installing_twice_is_harmless_and_one_uninstall_restores() -> None:
    original = AsyncIOBackend.__dict__["run_sync_in_worker_thread"]
    unstall_anyio.install()
    unstall_anyio.install()
    assert anyio.run(anyio.to_thread.run_sync, thread_name).startswith("unstall-anyio-")
    unstall_anyio.uninstall()
    assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is original
    unstall_anyio.uninstall()  # not installed: nothing to do
    assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is original


def test_installing_without_anyio_says_anyio_is_missing(tmp_path: object) -> None:
    code = (
        "import sys; sys.modules['anyio'] = None\n"
        "from unstall.integrations import anyio as a\n"
        "try:\n    a.install()\n"
        "except ImportError as exc:\n    print('ImportError:', exc)\n"
    )
    result = run_python(["-c", code], cwd=tmp_path)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    assert "ImportError: unstall.integrations.anyio needs anyio" in result.stdout
    assert "pip install 'unstall[anyio]'" in result.stdout


def test_the_default_limiter_still_bounds_the_calls(either: str) -> None:
    release = threading.Event()
    running: list[str] = []

    def work() -> None:
        running.append(thread_name())
        release.wait(SLACK_S)

    async def main() -> tuple[int, int, int]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 2
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(anyio.to_thread.run_sync, work)
            while len(running) < 2 or limiter.statistics().tasks_waiting < 3:
                await anyio.sleep(0.01)
            stats = limiter.statistics()
            seen = (len(running), stats.borrowed_tokens, stats.tasks_waiting)
            release.set()
        return seen

    assert anyio.run(main) == (2, 2, 3)
    assert len(running) == 5


def test_a_custom_limiter_governs_its_calls(either: str) -> None:
    async def main() -> tuple[str, float]:
        limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(
            lambda: (thread_name(), limiter.borrowed_tokens), limiter=limiter
        )

    name, borrowed = anyio.run(main)
    assert name.startswith(either)
    assert borrowed == 1


def test_a_call_in_a_cancelled_scope_never_runs_and_takes_no_token(either: str) -> None:
    ran: list[str] = []

    async def main() -> tuple[bool, float]:
        limiter = anyio.CapacityLimiter(1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.to_thread.run_sync(ran.append, "ran", limiter=limiter)
        return scope.cancelled_caught, limiter.borrowed_tokens

    assert anyio.run(main) == (True, 0)
    assert ran == []


def test_calls_waiting_for_a_token_run_in_arrival_order_and_none_jumps_the_queue(
    either: str,
) -> None:
    release = threading.Event()
    order: list[str] = []

    def work(name: str) -> None:
        order.append(name)
        if name == "first":
            release.wait(SLACK_S)

    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        async with anyio.create_task_group() as tg:
            for name in ("first", "second", "third"):
                tg.start_soon(lambda n=name: anyio.to_thread.run_sync(work, n, limiter=limiter))
                await anyio.sleep(0.01)
            while limiter.statistics().tasks_waiting < 2:
                await anyio.sleep(0.01)
            release.set()
            # Arrives while two calls wait for the token: it must run after both.
            await anyio.to_thread.run_sync(work, "latecomer", limiter=limiter)

    anyio.run(main)
    assert order == ["first", "second", "third", "latecomer"]


def test_a_cancelled_wait_for_a_token_and_a_failed_call_leave_no_token_taken(
    either: str,
) -> None:
    release = threading.Event()

    def fail() -> None:
        raise ValueError("failed in the worker")

    async def main() -> tuple[bool, float]:
        limiter = anyio.CapacityLimiter(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: anyio.to_thread.run_sync(release.wait, SLACK_S, limiter=limiter))
            while limiter.borrowed_tokens < 1:
                await anyio.sleep(0.01)
            with anyio.move_on_after(0.05) as scope:
                await anyio.to_thread.run_sync(release.wait, SLACK_S, limiter=limiter)
            release.set()
        with pytest.raises(ValueError, match="failed in the worker"):
            await anyio.to_thread.run_sync(fail, limiter=limiter)
        return scope.cancelled_caught, limiter.borrowed_tokens

    assert anyio.run(main) == (True, 0)


def test_context_variables_reach_the_worker_and_sniffio_sees_no_library(either: str) -> None:
    def inside() -> tuple[str, str]:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "none"
        cvar.set("changed in the worker")
        return cvar.get(), library

    async def main() -> tuple[tuple[str, str], str]:
        cvar.set("from the caller")
        seen = await anyio.to_thread.run_sync(inside)
        return seen, cvar.get()

    (in_worker, library), after = anyio.run(main)
    assert in_worker == "changed in the worker"
    assert library == "none"
    assert after == "from the caller"


def test_from_thread_run_and_run_sync_work_inside_the_call(either: str) -> None:
    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    def inside() -> tuple[int, bool, str]:
        loop_thread = anyio.from_thread.run_sync(threading.current_thread)
        return anyio.from_thread.run(double, 21), loop_thread is main_thread, thread_name()

    main_thread = threading.current_thread()
    value, on_loop, name = anyio.run(anyio.to_thread.run_sync, inside)
    assert (value, on_loop) == (42, True)
    assert name.startswith(either)


def test_a_shielded_call_is_awaited_through_a_cancel(either: str) -> None:
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def work() -> None:
        started.set()
        release.wait(SLACK_S)
        try:
            anyio.from_thread.check_cancelled()  # shielded, but the caller's scope is not
        except BaseException as exc:
            events.append(type(exc).__name__)
        events.append("call finished")

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, work)
                await anyio.to_thread.run_sync(started.wait, SLACK_S)
                scope.cancel()
                threading.Timer(0.05, release.set).start()
        events.append("scope exited")

    anyio.run(main)
    assert events == ["CancelledError", "call finished", "scope exited"]


def test_an_abandoned_call_returns_at_once_and_sees_its_cancellation(either: str) -> None:
    started, release, checked = threading.Event(), threading.Event(), threading.Event()
    outcome: list[str] = []

    def work() -> None:
        started.set()
        release.wait(SLACK_S)
        try:
            anyio.from_thread.check_cancelled()
        except BaseException as exc:
            outcome.append(type(exc).__name__)
        checked.set()

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: anyio.to_thread.run_sync(work, abandon_on_cancel=True))
                await anyio.to_thread.run_sync(started.wait, SLACK_S)
                scope.cancel()
        assert not release.is_set()  # the scope left while the call still ran
        outcome.append("scope exited")
        release.set()

    anyio.run(main)
    assert checked.wait(SLACK_S)
    assert outcome == ["scope exited", "CancelledError"]


def test_an_exception_is_raised_with_the_workers_frames(either: str) -> None:
    def fail() -> None:
        raise ValueError("from the worker")

    async def main() -> None:
        await anyio.to_thread.run_sync(fail)

    with pytest.raises(ValueError, match="from the worker") as info:
        anyio.run(main)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-1] == "fail"
    assert "main" in names


def test_stopiteration_becomes_runtimeerror_as_in_anyio(either: str) -> None:
    def stop() -> None:
        raise StopIteration

    with pytest.raises(RuntimeError, match="coroutine raised StopIteration"):
        anyio.run(anyio.to_thread.run_sync, stop)


def test_a_returned_coroutine_is_returned_untouched(either: str) -> None:
    async def coro() -> str:
        return "awaited by the caller"

    async def main() -> str:
        returned = await anyio.to_thread.run_sync(coro)
        return await returned  # type: ignore[no-any-return]

    assert anyio.run(main) == "awaited by the caller"


def test_nested_offloads_do_not_deadlock_with_every_token_taken(installed: None) -> None:
    # Each outer call holds a token and waits for a nested call that needs one too: with
    # anyio's own threads, this waits forever once every token is taken.
    def inner() -> str:
        return thread_name()

    async def offload_again() -> str:
        return await anyio.to_thread.run_sync(inner)

    def outer() -> str:
        return anyio.from_thread.run(offload_again)

    async def main() -> list[str]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 3
        results: list[str] = []

        async def one() -> None:
            results.append(await anyio.to_thread.run_sync(outer))

        with anyio.fail_after(SLACK_S):
            async with anyio.create_task_group() as tg:
                for _ in range(9):
                    tg.start_soon(one)
        assert limiter.borrowed_tokens == 0
        return results

    results = anyio.run(main)
    assert len(results) == 9
    assert all(name.startswith("unstall-anyio-") for name in results)


def test_a_cleanup_with_its_own_limiter_never_waits_for_the_pool(either: str) -> None:
    # FastAPI's pattern for a sync `yield` dependency: __enter__ blocks on a resource that
    # only __exit__ gives back, and __exit__ runs with a limiter of its own.
    resource = threading.Semaphore(1)
    limiter_tokens = 4

    async def request() -> None:
        await anyio.to_thread.run_sync(resource.acquire)
        await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(resource.release, limiter=anyio.CapacityLimiter(1))

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = limiter_tokens
        with anyio.fail_after(SLACK_S):
            async with anyio.create_task_group() as tg:
                for _ in range(limiter_tokens * 3):
                    tg.start_soon(request)

    anyio.run(main)
    assert resource.acquire(blocking=False)


def test_the_asyncio_loop_in_another_thread_uses_unstall_too(installed: None) -> None:
    seen: list[str] = []
    thread = threading.Thread(
        target=lambda: seen.append(anyio.run(anyio.to_thread.run_sync, thread_name))
    )
    thread.start()
    thread.join(SLACK_S)
    assert len(seen) == 1
    assert seen[0].startswith("unstall-anyio-")


def test_a_plain_asyncio_loop_works_without_anyio_run(installed: None) -> None:
    async def main() -> str:
        return await anyio.to_thread.run_sync(thread_name)

    assert asyncio.run(main()).startswith("unstall-anyio-")


def test_the_trio_backend_is_left_alone(installed: None) -> None:
    pytest.importorskip("trio", reason="trio (in the test extra) is not installed")
    name = anyio.run(anyio.to_thread.run_sync, thread_name, backend="trio")
    assert not name.startswith("unstall-")


def test_an_abandoned_call_that_fails_later_is_logged_under_its_name(
    installed: None, caplog: pytest.LogCaptureFixture
) -> None:
    started, release, failed = threading.Event(), threading.Event(), threading.Event()

    def fails_after_abandon() -> None:
        started.set()
        release.wait(SLACK_S)
        failed.set()
        raise ValueError("too late")

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: anyio.to_thread.run_sync(fails_after_abandon, abandon_on_cancel=True)
                )
                await anyio.to_thread.run_sync(started.wait, SLACK_S)
                scope.cancel()
        release.set()
        await anyio.to_thread.run_sync(failed.wait, SLACK_S)
        for _ in range(int(SLACK_S / 0.01)):  # the failure reaches the loop just after
            if caplog.records:
                break
            await anyio.sleep(0.01)

    with caplog.at_level("ERROR", logger="unstall"):
        anyio.run(main)
    (record,) = caplog.records
    assert "fails_after_abandon" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def wait_for(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition()`` holds (a failure after ``SLACK_S``)."""
    with anyio.fail_after(SLACK_S):
        while not condition():
            await anyio.sleep(0.001)


def test_sequential_calls_from_one_loop_run_on_one_thread(installed: None) -> None:
    # As anyio's workers: the thread that just finished takes the next call.
    async def main() -> set[int]:
        return {await anyio.to_thread.run_sync(threading.get_ident) for _ in range(50)}

    (ident,) = anyio.run(main)
    assert ident != threading.get_ident()


def test_every_call_a_reused_thread_runs_can_reach_its_loop(installed: None) -> None:
    # The thread is claimed for its loop once, at its first call: later calls find it too.
    def call_back() -> tuple[int, str]:
        return threading.get_ident(), anyio.from_thread.run_sync(sniffio.current_async_library)

    async def main() -> set[tuple[int, str]]:
        return {await anyio.to_thread.run_sync(call_back) for _ in range(5)}

    for _ in range(2):  # a second loop: new threads, claimed for that loop
        ((ident, library),) = anyio.run(main)
        assert ident != threading.get_ident()
        assert library == "asyncio"


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_loops_threads_exit_when_its_root_task_ends(installed: None, use_uvloop: bool) -> None:
    if use_uvloop:
        pytest.importorskip("uvloop", reason="uvloop (in the test extra) is not installed")
    started, release = threading.Event(), threading.Event()
    busy = threading.Barrier(3, timeout=SLACK_S)
    threads: list[threading.Thread] = []

    def work() -> None:
        threads.append(threading.current_thread())
        busy.wait()

    def outlives_the_loop() -> None:
        threads.append(threading.current_thread())
        started.set()
        release.wait(SLACK_S)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(anyio.to_thread.run_sync, work)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: anyio.to_thread.run_sync(outlives_the_loop, abandon_on_cancel=True)
            )
            await wait_for(started.is_set)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main, backend_options={"use_uvloop": use_uvloop})
    finally:
        release.set()
    assert len(set(threads)) == 3  # the abandoned call ran on an idle thread of the three
    for thread in threads:
        thread.join(EXIT_S)
        assert not thread.is_alive(), thread.name


def test_a_thread_whose_call_was_abandoned_takes_the_next_call(installed: None) -> None:
    started, release = threading.Event(), threading.Event()

    def abandoned() -> threading.Thread:
        started.set()
        release.wait(SLACK_S)
        return threading.current_thread()

    async def main() -> tuple[threading.Thread, threading.Thread]:
        pool = unstall_anyio._loop_threads(asyncio.get_running_loop()).pool
        first = await anyio.to_thread.run_sync(threading.current_thread)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: anyio.to_thread.run_sync(abandoned, abandon_on_cancel=True))
                await wait_for(started.is_set)
                scope.cancel()
        release.set()
        await wait_for(lambda: not pool.statistics().workers_busy)  # its thread idles
        assert pool.thread_count == 1
        return first, await anyio.to_thread.run_sync(threading.current_thread)

    first, after = anyio.run(main)
    assert after is first


def test_uninstall_lets_the_integrations_idle_threads_go(installed: None) -> None:
    async def main() -> threading.Thread:
        thread = await anyio.to_thread.run_sync(threading.current_thread)
        unstall_anyio.uninstall()
        thread.join(EXIT_S)
        return thread

    assert not anyio.run(main).is_alive()


def test_uninstall_from_a_worker_lets_the_threads_go_once_the_call_ends(installed: None) -> None:
    def uninstall_here() -> threading.Thread:
        unstall_anyio.uninstall()
        return threading.current_thread()

    async def main() -> threading.Thread:
        thread = await anyio.to_thread.run_sync(uninstall_here)
        await anyio.to_thread.run_sync(thread.join, EXIT_S)  # on anyio's own thread now
        return thread

    assert not anyio.run(main).is_alive()
