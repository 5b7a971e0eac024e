"""Run ``anyio.to_thread.run_sync`` on unstall's threads (asyncio backend only).

FastAPI and Starlette send every ``def`` endpoint, sync dependency, background task and
file read through ``anyio.to_thread.run_sync``. :func:`install` replaces the one method of
anyio's asyncio backend that hands such a call to a thread (``run_sync_in_worker_thread``)
with one that hands it to an unstall thread pool; everything around the hand-off is
anyio's contract, kept as anyio's own implementation keeps it:

- the limiter: the call takes a token of ``limiter`` or of
  ``anyio.to_thread.current_default_thread_limiter()`` (40 tokens) before it is queued;
- cancellation: the call runs in a cancel scope shielded unless ``abandon_on_cancel``;
  ``anyio.from_thread.check_cancelled()`` sees the same scope anyio's worker would;
- ``anyio.from_thread.run`` / ``run_sync`` work inside the call (the worker carries the
  loop's token while it runs the call);
- the caller's context variables are copied in, and ``sniffio`` sees no async library;
- a returned value is returned as is (a coroutine too), an exception is re-raised with
  the worker's frames, ``StopIteration`` becomes ``RuntimeError`` as in anyio.

What differs: the threads are unstall's, shared by every loop and retired after 10 s idle
(anyio's are per loop); an abandoned call (``abandon_on_cancel=True``) that raises later is
logged to the ``unstall`` logger rather than dropped; and two things keep a full pool
from deadlocking:

- The pool has no thread cap of its own, like anyio's: limiters are the only bound, so a
  call holding its own limiter (FastAPI runs a ``yield`` dependency's cleanup that way)
  never waits behind calls that hold the default one.
- A call that calls back into the loop (``anyio.from_thread.run``) and offloads again
  there, when its limiter has no token left, borrows its parent's token instead of waiting
  for one: the parent holds a token while it waits for that nested call, so with every
  token taken by such parents anyio would wait forever. One nested call at a time borrows
  a given parent's token; others wait for a token as usual.

The trio backend is left alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import types
from collections.abc import Callable
from typing import Any

from unstall._offload.thread_pool import ThreadPool

__all__ = ["install", "installed", "uninstall"]

_METHOD = "run_sync_in_worker_thread"
# anyio starts a thread per concurrent call with no cap; the limiters bound concurrency.
_NO_THREAD_CAP = 1_000_000
_NO_KWARGS: dict[str, Any] = {}

_lock = threading.Lock()
_original: Any = None  # anyio's own classmethod while installed
_pool: ThreadPool | None = None
# anyio's worker-thread helpers, looked up once by install().
_claim_worker_thread: Any = None
_set_current_async_library: Any = None
_threadlocals: Any = None


class _Lender:
    """The token a running call holds, lendable to one nested call at a time."""

    __slots__ = ("lent", "limiter", "running")

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter
        self.running = True
        self.lent = False

    def lend(self, limiter: Any) -> bool:
        # Only on the loop's thread, so no lock: the flag cannot be raced.
        if self.limiter is not limiter or not self.running or self.lent:
            return False
        if limiter.available_tokens >= 1:
            return False  # nothing to deadlock on: take a token as usual
        self.lent = True
        return True


# Set in the worker's copy of the caller's context, so a coroutine the call sends back to
# the loop (from_thread.run copies the worker's context) knows whose token it may borrow.
_lender: contextvars.ContextVar[_Lender] = contextvars.ContextVar("unstall_anyio_lender")


class _Coroutine:
    """A coroutine returned by the call, boxed so the pool hands it back untouched."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def _backend() -> Any:
    global _claim_worker_thread, _set_current_async_library, _threadlocals
    try:
        from anyio._backends._asyncio import AsyncIOBackend
        from anyio._core import _eventloop
    except ImportError as exc:
        raise ImportError(
            "unstall.integrations.anyio needs anyio >= 4.1, which is not installed "
            "(pip install 'unstall[anyio]')"
        ) from exc
    if not isinstance(AsyncIOBackend.__dict__.get(_METHOD), classmethod):
        raise RuntimeError(
            f"this anyio version has no AsyncIOBackend.{_METHOD} classmethod: "
            "unstall.integrations.anyio cannot hook into it"
        )
    _claim_worker_thread = _eventloop.claim_worker_thread
    _set_current_async_library = _eventloop.set_current_async_library
    _threadlocals = _eventloop.threadlocals
    return AsyncIOBackend


def _worker_pool() -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(_NO_THREAD_CAP, name="unstall-anyio")
    return _pool


def install() -> None:
    """Run ``anyio.to_thread.run_sync`` calls on unstall's threads from now on.

    Applies to every asyncio event loop of the process (uvloop included), from the next
    call on; the trio backend is left alone. Installing again is harmless.

    Raises:
        ImportError: anyio is not installed.
        RuntimeError: the installed anyio has no hook point this integration knows.
    """
    global _original
    backend = _backend()
    with _lock:
        if _original is not None:
            return
        _worker_pool()
        _original = backend.__dict__[_METHOD]
        setattr(backend, _METHOD, _REPLACEMENT)


def uninstall() -> None:
    """Give anyio back its own worker threads (calls in flight finish where they run).

    Does nothing if :func:`install` was not called.
    """
    global _original
    with _lock:
        if _original is None:
            return
        setattr(_backend(), _METHOD, _original)
        _original = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _original is not None


async def _run_sync_in_worker_thread(
    cls: Any,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    abandon_on_cancel: bool = False,
    limiter: Any = None,
) -> Any:
    await cls.checkpoint()
    limiter = limiter or cls.current_default_thread_limiter()
    lender = _lender.get(None)
    if lender is not None and lender.lend(limiter):
        try:
            value = await _run_in_scope(cls, func, args, abandon_on_cancel, limiter)
        finally:
            lender.lent = False
    else:
        async with limiter:
            value = await _run_in_scope(cls, func, args, abandon_on_cancel, limiter)
    if type(value) is _Coroutine:
        return value.value
    return value


async def _run_in_scope(
    cls: Any, func: Callable[..., Any], args: tuple[Any, ...], abandon_on_cancel: bool, limiter: Any
) -> Any:
    with cls.create_cancel_scope(shield=not abandon_on_cancel) as scope:
        # What check_cancelled() inspects, as anyio's worker: the caller's scope unless the
        # call may be abandoned.
        parent = scope._parent_scope
        worker_scope = scope if abandon_on_cancel or parent is None else parent
        loop = asyncio.get_running_loop()
        # cancel="abandon": a shielded scope is never cancelled by anyio, and a native
        # task.cancel() abandons the thread in anyio too.
        pool = _pool or _worker_pool()
        job = _InWorker(cls, loop, worker_scope, limiter, func, args)
        return await pool.submit(job, (), _NO_KWARGS)


class _InWorker:
    """The job the pool runs: the call, run as anyio's worker thread would run it, inside
    the pool's copy of the caller's context. Named after the call in unstall's logs."""

    __slots__ = ("args", "cls", "func", "limiter", "loop", "scope")

    def __init__(
        self,
        cls: Any,
        loop: asyncio.AbstractEventLoop,
        scope: object,
        limiter: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.cls, self.loop, self.scope, self.limiter = cls, loop, scope, limiter
        self.func, self.args = func, args

    @property
    def __name__(self) -> str:
        func = self.func
        return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", func))

    def __call__(self) -> Any:
        _set_current_async_library(None)
        threadlocals = _threadlocals
        threadlocals.current_cancel_scope = self.scope
        lender = _Lender(self.limiter)
        _lender.set(lender)
        try:
            with _claim_worker_thread(self.cls, self.loop):
                value = self.func(*self.args)
        except StopIteration as exc:
            raise RuntimeError("coroutine raised StopIteration") from exc
        finally:
            lender.running = False
            del threadlocals.current_cancel_scope
        if type(value) is types.CoroutineType:
            return _Coroutine(value)
        return value


_REPLACEMENT = classmethod(_run_sync_in_worker_thread)
