"""``@offload`` and the one call pipeline every way of offloading goes through.

:func:`call` validates the call, waits for a :class:`~unstall.Limiter` token, applies the
timeout and hands the call to a target (a thread pool, a process pool, an executor or a
dask client: see :mod:`unstall._target`). ``to_thread``, ``offload`` and ``to_process``
all use it, so limits, timeouts and errors behave the same everywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar, cast, overload

from unstall._checks import validate_callable, validate_cancel, validate_timeout
from unstall._limiter import Limiter
from unstall._target import CancelMode, OffloadTarget
from unstall._thread_pool import ThreadPool, default_thread_pool

__all__ = ["call", "offload", "resolve_target", "validate_callable", "validate_timeout"]

T = TypeVar("T")
P = ParamSpec("P")

_ACCEPTED = (
    'None or "thread" (the default thread pool), "process", a unstall.ThreadPool or '
    "ProcessPool, a concurrent.futures.Executor, a dask.distributed Client, or an object "
    "with an async submit(func, args, kwargs, *, cancel) method"
)


def _sibling(name: str) -> Any:
    # Imported only when used: these pull in multiprocessing, cloudpickle or distributed.
    return importlib.import_module(f"unstall.{name}")


def resolve_target(on: object) -> OffloadTarget:
    """Turn the ``on=`` argument of ``offload`` into the target that runs the calls.

    Raises:
        TypeError: for anything not listed in the message (also an unknown string).
    """
    if on is None or on == "thread":
        return default_thread_pool()
    if isinstance(on, ThreadPool):
        return on
    if on == "process":
        target: OffloadTarget = _sibling("_process_pool").default_process_pool()
        return target
    if isinstance(on, concurrent.futures.Executor):
        executor_target: OffloadTarget = _sibling("_executors").ExecutorTarget(on)
        return executor_target
    kind = type(on)
    if kind.__module__.startswith("distributed") and kind.__name__ == "Client":
        dask_target: OffloadTarget = _sibling("_dask").DaskTarget(on)
        return dask_target
    if not isinstance(on, str | type) and inspect.iscoroutinefunction(getattr(on, "submit", None)):
        return cast(OffloadTarget, on)
    raise TypeError(f"on= got {on!r}; expected {_ACCEPTED}")


def _resolve_limit(limit: object) -> Limiter | None:
    if limit is None or isinstance(limit, Limiter):
        return limit
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, a unstall.Limiter or None, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    return Limiter(limit)


async def call(
    target: OffloadTarget,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    limiter: Limiter | None,
    timeout: float | None,
    cancel: CancelMode,
) -> T:
    """Run ``func(*args, **kwargs)`` on ``target`` with a limit and a timeout.

    The timeout covers the whole call, including time spent waiting for a limiter token;
    when it expires the call is cancelled (per ``cancel``) and ``TimeoutError`` is raised.

    Raises:
        TypeError: ``func`` is not a sync callable (see :func:`validate_callable`).
        ValueError: ``timeout`` is zero, negative or NaN; ``cancel`` is unknown.
        TimeoutError: the timeout expired.
        asyncio.CancelledError: the caller was cancelled; a call still waiting for a token
            or queued never runs.
    """
    validate_callable(func)
    timeout = validate_timeout(timeout)
    validate_cancel(cancel)
    return await _call(target, func, args, kwargs, limiter, timeout, cancel)


async def _call(
    target: OffloadTarget,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    limiter: Limiter | None,
    timeout: float | None,
    cancel: CancelMode,
) -> T:
    """:func:`call` with arguments already validated."""
    if timeout is None:
        return await _limited(target, func, args, kwargs, limiter, cancel)
    async with asyncio.timeout(timeout):
        return await _limited(target, func, args, kwargs, limiter, cancel)


async def _limited(
    target: OffloadTarget,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    limiter: Limiter | None,
    cancel: CancelMode,
) -> T:
    if limiter is None:
        return await target.submit(func, args, kwargs, cancel=cancel)
    async with limiter:
        return await target.submit(func, args, kwargs, cancel=cancel)


_NO_FUNC: Any = object()  # "called with arguments only": offload(None) must still fail


@overload
def offload(func: Callable[P, T], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def offload(
    *,
    limit: int | Limiter | None = None,
    timeout: float | None = None,
    on: object = None,
    cancel: CancelMode = "abandon",
) -> Callable[[Callable[P, T]], Callable[P, Coroutine[Any, Any, T]]]: ...


def offload(
    func: Callable[P, T] = _NO_FUNC,
    /,
    *,
    limit: int | Limiter | None = None,
    timeout: float | None = None,
    on: object = None,
    cancel: CancelMode = "abandon",
) -> (
    Callable[P, Coroutine[Any, Any, T]]
    | Callable[[Callable[P, T]], Callable[P, Coroutine[Any, Any, T]]]
):
    """Turn a sync function into an async one that runs off the loop.

    Use as ``@offload`` or ``@offload(limit=..., timeout=..., on=..., cancel=...)``. The
    result keeps the function's name, docstring and signature (``__wrapped__`` is set);
    type checkers see ``(same parameters) -> Coroutine[..., result]``. Works on methods.

    Args:
        limit: at most this many calls at a time (an int: private to this function), or a
            shared :class:`~unstall.Limiter`.
        timeout: seconds before the call is cancelled and ``TimeoutError`` raised (counted
            from the call, waiting for a token included).
        on: where calls run: ``None``/``"thread"`` (the default thread pool), a
            :class:`~unstall.ThreadPool`, ``"process"``, a ``concurrent.futures.Executor``
            or a ``dask.distributed.Client``.
        cancel: ``"abandon"`` (return at once when cancelled) or ``"wait"`` (wait for the
            running call to finish first).

    Raises (at decoration time):
        TypeError: the function is ``async def`` (await it directly), not callable, or
            ``limit``/``timeout``/``on`` has the wrong type.
        ValueError: ``limit`` < 1, ``timeout`` <= 0 or NaN, unknown ``cancel``.
    """
    limiter = _resolve_limit(limit)
    checked_timeout = validate_timeout(timeout)
    validate_cancel(cancel)
    target = resolve_target(on)

    def decorate(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
        validate_callable(fn)

        @functools.wraps(fn)
        async def offloaded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _call(target, fn, args, kwargs, limiter, checked_timeout, cancel)

        return offloaded

    if func is _NO_FUNC:
        return decorate
    return decorate(func)
