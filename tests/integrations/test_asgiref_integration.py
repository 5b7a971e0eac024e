"""unstall.integrations.asgiref: sync_to_async(thread_sensitive=False) on unstall's threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, async_to_sync, sync_to_async

from helpers import SLACK_S, run_python
from unstall.integrations import asgiref as unstall_asgiref

cvar: contextvars.ContextVar[str] = contextvars.ContextVar("cvar", default="unset")


@pytest.fixture
def installed() -> Iterator[None]:
    unstall_asgiref.install()
    try:
        yield
    finally:
        unstall_asgiref.uninstall()


def thread_name() -> str:
    return threading.current_thread().name


def test_a_thread_insensitive_call_runs_on_an_unstall_thread(installed: None) -> None:
    name = asyncio.run(sync_to_async(thread_name, thread_sensitive=False)())
    assert name.startswith("unstall-worker-")


def test_a_wrapper_made_before_install_is_covered_too() -> None:
    wrapped = sync_to_async(thread_name, thread_sensitive=False)
    unstall_asgiref.install()
    try:
        assert asyncio.run(wrapped()).startswith("unstall-worker-")
    finally:
        unstall_asgiref.uninstall()
    assert not asyncio.run(wrapped()).startswith("unstall-")


def test_uninstall_leaves_no_trace_on_asgiref() -> None:
    before = dict(SyncToAsync.__dict__)
    unstall_asgiref.install()
    unstall_asgiref.install()  # twice: harmless
    wrapped = sync_to_async(thread_name, thread_sensitive=False)
    unstall_asgiref.uninstall()
    assert dict(SyncToAsync.__dict__) == before
    assert wrapped._executor is None
    assert asyncio.run(wrapped()).startswith("asyncio")  # the loop's default executor


def test_thread_sensitive_calls_keep_their_one_thread(installed: None) -> None:
    async def main() -> tuple[set[str], set[str]]:
        outside = {await sync_to_async(thread_name)() for _ in range(3)}
        async with ThreadSensitiveContext():
            inside = {await sync_to_async(thread_name)() for _ in range(3)}
        return outside, inside

    outside, inside = asyncio.run(main())
    assert len(outside) == 1
    assert len(inside) == 1
    assert not any(name.startswith("unstall-") for name in outside | inside)


def test_thread_sensitive_calls_under_async_to_sync_run_on_the_calling_thread(
    installed: None,
) -> None:
    async def inner() -> str:
        return await sync_to_async(thread_name)()

    assert async_to_sync(inner)() == threading.current_thread().name


def test_an_explicit_executor_is_still_used(installed: None) -> None:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mine") as executor:
        wrapped = sync_to_async(thread_name, thread_sensitive=False, executor=executor)
        assert asyncio.run(wrapped()).startswith("mine")


def test_context_exceptions_and_async_to_sync_work_in_the_call(installed: None) -> None:
    async def double(x: int) -> int:
        return 2 * x

    def inside() -> tuple[str, int]:
        cvar.set("set in the call")
        return thread_name(), async_to_sync(double)(21)

    def fail() -> None:
        raise KeyError("from the call")

    async def main() -> tuple[str, int, str]:
        cvar.set("from the caller")
        name, value = await sync_to_async(inside, thread_sensitive=False)()
        with pytest.raises(KeyError, match="from the call"):
            await sync_to_async(fail, thread_sensitive=False)()
        return name, value, cvar.get()

    name, value, after = asyncio.run(main())
    assert name.startswith("unstall-worker-")
    assert value == 42
    assert after == "set in the call"  # asgiref copies the context back, as without unstall


def test_a_call_cancelled_while_queued_never_runs(installed: None) -> None:
    ran: list[int] = []
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(SLACK_S)

    async def main() -> None:
        # Fill unstall's default pool (40 threads) so the next call stays queued.
        holders = [
            asyncio.ensure_future(sync_to_async(hold, thread_sensitive=False)()) for _ in range(40)
        ]
        await asyncio.get_running_loop().run_in_executor(None, started.wait, SLACK_S)
        queued = asyncio.ensure_future(sync_to_async(ran.append, thread_sensitive=False)(1))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await asyncio.gather(*holders)
        await sync_to_async(lambda: None, thread_sensitive=False)()

    asyncio.run(main())
    assert ran == []


def test_installing_without_asgiref_says_asgiref_is_missing(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['asgiref'] = None\n"
        "from unstall.integrations import asgiref as a\n"
        "try:\n    a.install()\n"
        "except ImportError as exc:\n    print('ImportError:', exc)\n"
    )
    result = run_python(["-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ImportError: unstall.integrations.asgiref needs asgiref" in result.stdout
