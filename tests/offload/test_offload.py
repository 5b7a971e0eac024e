"""@offload and the shared call pipeline: limits, timeouts, targets, validation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import unstall
from helpers import SLACK_S
from unstall import Limiter, ThreadPool, offload
from unstall._offload.call import call
from unstall._offload.decorator import resolve_target
from unstall._offload.target import CancelMode, OffloadTarget
from unstall._offload.thread_pool import default_thread_pool
from unstall._util import validate_callable, validate_timeout


def test_bare_decorator_keeps_name_doc_signature_and_wrapped() -> None:
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    wrapped = offload(add)
    assert wrapped.__name__ == "add"
    assert wrapped.__doc__ == "Add two numbers."
    assert wrapped.__wrapped__ is add  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(add)
    assert inspect.iscoroutinefunction(wrapped)
    assert asyncio.run(wrapped(1, b=5)) == 6


def test_decorator_with_arguments_runs_in_a_worker() -> None:
    @offload(limit=2, timeout=SLACK_S)
    def where() -> str:
        return threading.current_thread().name

    assert asyncio.run(where()).startswith("unstall-worker-")


def test_works_on_methods() -> None:
    class Store:
        def __init__(self) -> None:
            self.items = {"a": 1}

        @offload
        def get(self, key: str) -> int:
            return self.items[key]

    assert asyncio.run(Store().get("a")) == 1


def test_exceptions_propagate() -> None:
    @offload
    def fail() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        asyncio.run(fail())


def test_int_limit_is_private_to_the_function() -> None:
    lock = threading.Lock()
    running = {"now": 0, "peak": 0}

    @offload(limit=2)
    def slow() -> None:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
        time.sleep(0.03)
        with lock:
            running["now"] -= 1

    async def main() -> None:
        await asyncio.gather(*(slow() for _ in range(8)))

    asyncio.run(main())
    assert running["peak"] == 2


def test_timeout_raises_timeout_error_and_tells_the_worker() -> None:
    saw_cancel = threading.Event()

    @offload(timeout=0.1)
    def stubborn() -> None:
        deadline = time.monotonic() + SLACK_S
        while time.monotonic() < deadline:
            if unstall.cancelled():
                saw_cancel.set()
                return
            time.sleep(0.005)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(stubborn())
    assert time.monotonic() - started < SLACK_S
    assert saw_cancel.wait(SLACK_S)


def test_timeout_counts_the_wait_for_a_token_and_the_queued_call_never_runs() -> None:
    limiter = Limiter(1)
    ran: list[str] = []
    gate = threading.Event()

    @offload(limit=limiter)
    def hog() -> None:
        gate.wait(SLACK_S)

    @offload(limit=limiter, timeout=0.05)
    def quick() -> None:
        ran.append("quick")

    async def main() -> None:
        holder = asyncio.ensure_future(hog())
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await quick()
        gate.set()
        await holder

    asyncio.run(main())
    assert ran == []
    assert limiter.borrowed_tokens == 0


def test_timeout_with_wait_mode_waits_for_the_call() -> None:
    finished = threading.Event()

    @offload(timeout=0.05, cancel="wait")
    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    with pytest.raises(TimeoutError):
        asyncio.run(slow())
    assert finished.is_set()


def test_on_a_dedicated_pool() -> None:
    with ThreadPool(max_workers=1, name="dedicated") as pool:

        @offload(on=pool)
        def where() -> str:
            return threading.current_thread().name

        assert asyncio.run(where()) == "dedicated-1"


class RecordingTarget:
    """A minimal custom target: runs calls inline on the loop (allowed by the protocol)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, CancelMode]] = []

    async def submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> Any:
        self.calls.append((func.__name__, cancel))
        return func(*args, **kwargs)


def test_on_any_object_with_an_async_submit() -> None:
    target = RecordingTarget()
    assert isinstance(target, OffloadTarget)

    @offload(on=target, cancel="wait")
    def double(x: int) -> int:
        return 2 * x

    assert asyncio.run(double(21)) == 42
    assert target.calls == [("double", "wait")]


def test_resolve_target_table() -> None:
    assert resolve_target(None) is default_thread_pool()
    assert resolve_target("thread") is default_thread_pool()
    pool = ThreadPool(max_workers=1)
    assert resolve_target(pool) is pool
    assert type(resolve_target("process")).__name__ == "ProcessPool"
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        assert type(resolve_target(executor)).__name__ == "ExecutorTarget"
    pool.shutdown()


def test_offloading_imports_no_integration() -> None:
    code = (
        "import sys, asyncio, unstall\n"
        "f = unstall.offload(limit=2, timeout=5)(abs)\n"
        "assert asyncio.run(f(-3)) == 3\n"
        "heavy = {'distributed', 'dask', 'concurrent.futures.process'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("bad", ["threads", 3, object(), ThreadPool])
def test_resolve_target_rejects_anything_else(bad: object) -> None:
    with pytest.raises(TypeError, match=r"on= got .* expected"):
        resolve_target(bad)


async def _coro_fn() -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"limit": 0}, ValueError, "limit must be at least 1"),
        ({"limit": -2}, ValueError, "limit must be at least 1"),
        ({"limit": "2"}, TypeError, "limit must be an int"),
        ({"limit": 2.5}, TypeError, "limit must be an int"),
        ({"limit": True}, TypeError, "limit must be an int"),
        ({"timeout": -1}, ValueError, "timeout must be a positive"),
        ({"timeout": 0}, ValueError, "timeout must be a positive"),
        ({"timeout": math.nan}, ValueError, "timeout must be a positive"),
        ({"timeout": "1"}, TypeError, "timeout must be a number"),
        ({"cancel": "kill"}, ValueError, "cancel must be 'abandon' or 'wait'"),
        ({"on": "gpu"}, TypeError, "on= got 'gpu'"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        offload(**kwargs)


def test_decorating_an_async_function_says_to_await_it() -> None:
    with pytest.raises(TypeError, match="await it directly"):
        offload(_coro_fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="await it directly"):
        offload(limit=1)(_coro_fn)  # type: ignore[arg-type]


def test_decorating_a_non_callable() -> None:
    with pytest.raises(TypeError, match="expected a callable"):
        offload(None)  # type: ignore[call-overload]


def test_call_validates_everything() -> None:
    pool = default_thread_pool()

    async def attempt(func: Any, timeout: Any = None, cancel: Any = "abandon") -> Any:
        return await call(pool, func, (), {}, limiter=None, timeout=timeout, cancel=cancel)

    with pytest.raises(TypeError, match="got None"):
        asyncio.run(attempt(None))
    with pytest.raises(TypeError, match="await it directly"):
        asyncio.run(attempt(functools.partial(_coro_fn)))
    with pytest.raises(ValueError, match="timeout"):
        asyncio.run(attempt(int, timeout=-0.5))
    with pytest.raises(ValueError, match="cancel"):
        asyncio.run(attempt(int, cancel="never"))
    assert asyncio.run(attempt(int, timeout=math.inf)) == 0


def test_validators_are_usable_alone() -> None:
    validate_callable(len)
    assert validate_timeout(None) is None
    assert validate_timeout(2) == 2.0
    with pytest.raises(ValueError):
        validate_timeout(-0.0001)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("offload_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_examples_run_cleanly(script: Path) -> None:
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip()


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
