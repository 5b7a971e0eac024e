"""Call back into the event loop from inside an offloaded call, and wait for the result.

Inside a function running through ``unstall.to_thread``, ``@unstall.offload`` (on a
thread pool), ``ThreadPool.run`` or ``unstall.iterate``::

    def sync_handler(url):
        data = fetch_blocking(url)
        unstall.from_thread.run(queue.put, data)      # an async function, on the loop
        unstall.from_thread.run_sync(event.set)       # a sync function, on the loop

Both target the loop that offloaded the current call and block the worker until done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

from unstall._offload.worker_context import current_call
from unstall._util import _is_async_callable, validate_callable

__all__ = ["run", "run_sync"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_POLL_S = 0.25  # how often a waiting worker checks that the loop is still alive


def _loop_of_current_call(what: str) -> asyncio.AbstractEventLoop:
    call = current_call(what)
    if call.cancel_requested:
        raise asyncio.CancelledError(f"{what}: the call's caller was cancelled")
    loop = call.loop
    if loop.is_closed():
        raise RuntimeError(f"{what}: the event loop that offloaded this call is closed")
    return loop


def _wait(fut: concurrent.futures.Future[T], loop: asyncio.AbstractEventLoop, what: str) -> T:
    while True:
        try:
            return fut.result(timeout=_POLL_S)
        except concurrent.futures.TimeoutError:
            if loop.is_closed():
                raise RuntimeError(
                    f"{what}: the event loop closed before running the call"
                ) from None


def run(async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run ``await async_fn(*args)`` on the loop that offloaded the current call.

    Blocks the worker thread until it finishes and returns its result (or raises its
    exception). The coroutine runs as a new task in a copy of the worker's context.

    Raises:
        RuntimeError: called outside a call offloaded by unstall to a thread, or the loop
            is closed.
        TypeError: ``async_fn`` is not an async function.
        asyncio.CancelledError: the offloaded call's caller was already cancelled or timed
            out (as trio does: the result would be discarded), or the task was cancelled
            (e.g. the loop is shutting down).
    """
    loop = _loop_of_current_call("unstall.from_thread.run()")
    if not callable(async_fn):
        raise TypeError(f"expected an async function, got {type(async_fn).__name__!r}")
    ctx = contextvars.copy_context()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        try:
            awaitable = async_fn(*args)
            if not inspect.isawaitable(awaitable):
                raise TypeError(
                    f"unstall.from_thread.run() expects an async function; "
                    f"{async_fn!r} returned {type(awaitable).__name__!r} (use run_sync)"
                )
        except BaseException as exc:
            result.set_exception(exc)
            return
        task = loop.create_task(_as_coroutine(awaitable))
        task.add_done_callback(lambda t: _copy_outcome(t, result))

    loop.call_soon_threadsafe(start, context=ctx)
    return _wait(result, loop, "unstall.from_thread.run()")


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _copy_outcome(task: asyncio.Task[T], result: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        result.set_exception(asyncio.CancelledError("the task running it was cancelled"))
    elif (exc := task.exception()) is not None:
        result.set_exception(exc)
    else:
        result.set_result(task.result())


def run_sync(func: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run ``func(*args)`` on the loop that offloaded the current call and return its result.

    Use it for loop-bound, non-thread-safe objects (``asyncio.Event.set``, ``Queue.put_nowait``,
    futures). Blocks the worker until the loop ran it.

    Raises:
        RuntimeError: outside a call offloaded by unstall to a thread, or the loop is closed.
        TypeError: ``func`` is not callable or is an async function (use :func:`run`).
        asyncio.CancelledError: the offloaded call's caller was already cancelled.
    """
    loop = _loop_of_current_call("unstall.from_thread.run_sync()")
    if _is_async_callable(func):
        raise TypeError(f"{func!r} is an async function: use unstall.from_thread.run()")
    validate_callable(func)
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            result.set_result(func(*args))
        except BaseException as exc:
            result.set_exception(exc)

    loop.call_soon_threadsafe(call, context=contextvars.copy_context())
    return _wait(result, loop, "unstall.from_thread.run_sync()")
