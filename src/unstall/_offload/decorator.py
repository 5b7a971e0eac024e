"""``@offload``: turn a sync function into an async one that runs off the loop."""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast, overload

from unstall._offload.call import call_checked
from unstall._offload.limiter import Limiter
from unstall._offload.target import CancelMode, OffloadTarget
from unstall._offload.thread_pool import ThreadPool, default_thread_pool
from unstall._util import validate_callable, validate_cancel, validate_timeout

__all__ = ["offload", "resolve_target"]

T = TypeVar("T")
P = ParamSpec("P")

_ACCEPTED = (
    'None or "thread" (the default thread pool), "process", a unstall.ThreadPool or '
    "ProcessPool, a concurrent.futures.Executor, a dask.distributed Client, or an object "
    "with an async submit(func, args, kwargs, *, cancel) method"
)


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
        # Imported only when used: these pull in multiprocessing, cloudpickle or distributed.
        from unstall._offload.process_pool import default_process_pool

        return default_process_pool()
    if isinstance(on, concurrent.futures.Executor):
        from unstall._offload.executors import ExecutorTarget

        return ExecutorTarget(on)
    kind = type(on)
    if kind.__module__.startswith("distributed") and kind.__name__ == "Client":
        from unstall._offload.dask import DaskTarget

        return DaskTarget(on)
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
            return await call_checked(target, fn, args, kwargs, limiter, checked_timeout, cancel)

        return offloaded

    if func is _NO_FUNC:
        return decorate
    return decorate(func)
