"""unstall.from_thread: calling back into the loop from an offloaded call."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

import unstall
from helpers import SLACK_S
from unstall import ThreadPool, from_thread

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_run_sync_runs_on_the_loop_thread() -> None:
    async def main() -> None:
        event = asyncio.Event()  # loop-bound: must be set from the loop thread
        loop_thread = threading.get_ident()

        def worker() -> int:
            assert threading.get_ident() != loop_thread
            from_thread.run_sync(event.set)
            return from_thread.run_sync(threading.get_ident)

        assert await unstall.to_thread(worker) == loop_thread
        assert event.is_set()

    asyncio.run(main())


def test_run_awaits_a_coroutine_on_the_loop() -> None:
    async def main() -> list[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)

        async def put(item: str) -> str:
            await queue.put(item)
            return f"put {item}"

        def producer() -> list[str]:
            return [from_thread.run(put, f"item{i}") for i in range(3)]

        async def consumer() -> list[str]:
            return [await queue.get() for _ in range(3)]

        produced, consumed = await asyncio.gather(unstall.to_thread(producer), consumer())
        assert produced == ["put item0", "put item1", "put item2"]
        return consumed

    assert asyncio.run(main()) == ["item0", "item1", "item2"]


def test_exceptions_travel_back_to_the_worker() -> None:
    async def explode() -> None:
        raise ZeroDivisionError("on the loop")

    def worker() -> str:
        try:
            from_thread.run(explode)
        except ZeroDivisionError as exc:
            return f"caught {exc}"
        return "not raised"

    async def main() -> str:
        return await unstall.to_thread(worker)

    assert asyncio.run(main()) == "caught on the loop"


def test_context_of_the_worker_is_visible() -> None:
    def worker() -> str:
        VAR.set("set in worker")
        return from_thread.run_sync(VAR.get)

    async def main() -> str:
        VAR.set("caller")
        return await unstall.to_thread(worker)

    assert asyncio.run(main()) == "set in worker"


def test_from_a_dedicated_pool_and_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with ThreadPool(max_workers=1) as pool:

        async def double(x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

        @unstall.offload(on=pool)
        def worker() -> int:
            return from_thread.run(double, 21)

        assert uvloop.run(worker()) == 42


def test_after_the_caller_was_cancelled_it_raises_cancelled_error() -> None:
    outcome: list[str] = []
    gate = threading.Event()

    def worker() -> None:
        gate.wait(SLACK_S)
        try:
            from_thread.run_sync(print, "must not run")
        except asyncio.CancelledError:
            outcome.append("cancelled")

    async def main() -> None:
        task = asyncio.ensure_future(unstall.to_thread(worker))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        for _ in range(500):
            if outcome:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert outcome == ["cancelled"]


def test_loop_closing_while_a_worker_waits_is_an_error_not_a_hang() -> None:
    outcome: list[str] = []
    done = threading.Event()

    def worker() -> None:
        time.sleep(0.1)  # the loop closes meanwhile
        try:
            from_thread.run_sync(print, "too late")
        except (RuntimeError, asyncio.CancelledError) as exc:
            outcome.append(type(exc).__name__)
        finally:
            done.set()

    # Closed by hand, without cancelling the task: the worker is not told it was cancelled.
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": intended
    task = loop.create_task(unstall.to_thread(worker))
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    assert done.wait(SLACK_S)
    assert outcome == ["RuntimeError"]
    del task


def test_outside_a_worker_is_a_clear_error() -> None:
    async def coro() -> None:
        pass

    with pytest.raises(RuntimeError, match="inside a call offloaded by unstall"):
        from_thread.run(coro)
    with pytest.raises(RuntimeError, match="inside a call offloaded by unstall"):
        from_thread.run_sync(len, "x")

    async def on_the_loop() -> None:
        from_thread.run_sync(len, "x")

    with pytest.raises(RuntimeError, match="inside a call offloaded by unstall"):
        asyncio.run(on_the_loop())


def test_wrong_kind_of_function() -> None:
    async def coro() -> None:
        pass

    def worker() -> list[str]:
        errors = []
        for attempt in (lambda: from_thread.run(len, "x"), lambda: from_thread.run_sync(coro)):
            try:
                attempt()  # type: ignore[no-untyped-call]
            except TypeError as exc:
                errors.append(str(exc))
        return errors

    async def main() -> list[str]:
        return await unstall.to_thread(worker)

    errors: list[Any] = asyncio.run(main())
    assert len(errors) == 2
    assert "expects an async function" in errors[0]
    assert "use unstall.from_thread.run()" in errors[1]
