"""The one call pipeline every way of offloading goes through.

:func:`call` validates the call, waits for a :class:`~unstall.Limiter` token, applies the
timeout and hands the call to a target (a thread pool, a process pool, an executor or a
dask client: see :mod:`unstall._offload.target`). ``to_thread``, ``offload`` and
``to_process`` all use it, so limits, timeouts and errors behave the same everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from unstall._offload.limiter import Limiter
from unstall._offload.target import CancelMode, OffloadTarget
from unstall._util import validate_callable, validate_cancel, validate_timeout

__all__ = ["call", "call_checked"]

T = TypeVar("T")


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
    return await call_checked(target, func, args, kwargs, limiter, timeout, cancel)


async def call_checked(
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
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await _limited(target, func, args, kwargs, limiter, cancel)
    except TimeoutError:
        count = getattr(target, "_count_timeout", None)  # pools keep statistics
        if deadline.expired() and count is not None:
            count()
        raise


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
