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
- ``anyio.from_thread.run`` / ``run_sync`` work inside the call (a worker thread carries
  its loop's token from its first call on, as anyio's workers do);
- the caller's context variables are copied in, and ``sniffio`` sees no async library;
- a returned value is returned as is (a coroutine too), an exception is re-raised with
  the worker's frames, ``StopIteration`` becomes ``RuntimeError`` as in anyio.

- the threads, as anyio's: each event loop has its own, a call goes to the most recently
  idle one (so sequential calls run on one thread), a thread idle for 10 s exits, and the
  loop's threads exit when its root task ends (the task ``anyio.run`` or ``asyncio.run``
  runs; anyio stops its workers at the same point).

What differs: the hand-off to the threads and back is unstall's (see the thread pool's
notes); a call is a cancellation point on entry (``checkpoint_if_cancelled``) and a
scheduling point while it waits for its thread, without anyio's two extra turns of the
loop before the call is queued (``checkpoint()``, then the limiter's shielded checkpoint
when a token is free); an abandoned call (``abandon_on_cancel=True``) that raises later
is logged to the ``unstall`` logger rather than dropped; and two things keep a full pool
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
import weakref
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
# anyio's worker-thread helpers, looked up once by install().
_claim_worker_thread: Any = None
_set_current_async_library: Any = None
_threadlocals: Any = None
_find_root_task: Any = None
_WouldBlock: Any = None


class _LoopPool(ThreadPool):
    """The threads of one event loop. Sequential calls stay on one thread (as anyio's)."""

    _take_turns = False


class _LoopThreads:
    """An event loop's pool, shut down when the loop's root task ends, and its default
    limiter (anyio keeps one per loop; looked up once, it is the same object)."""

    __slots__ = ("default_limiter", "loop_ref", "pool")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        self.pool = _LoopPool(_NO_THREAD_CAP, name="unstall-anyio")
        self.default_limiter: Any = None

    def close(self, _task: object = None) -> None:
        """Let the threads go: idle ones exit now, busy ones when their call ends."""
        global _started_before, _last
        with _lock:
            loop = self.loop_ref()
            if loop is not None and _by_loop.get(loop) is self:
                del _by_loop[loop]
            if _last is self:
                _last = None
            if not self.pool._is_shutdown:
                _started_before += next(self.pool._counter) - 1
        self.pool.shutdown(wait=False)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopThreads] = (
    weakref.WeakKeyDictionary()
)
_last: _LoopThreads | None = None  # the pool of the loop that offloaded last
_started_before = 0  # threads started by pools that were closed since


def _loop_threads(loop: asyncio.AbstractEventLoop) -> _LoopThreads:
    """The threads of ``loop``, created on its first call (on the loop's thread)."""
    global _last
    last = _last
    if last is not None and last.loop_ref() is loop:
        return last
    with _lock:
        threads = _by_loop.get(loop)
        if threads is None:
            threads = _by_loop[loop] = _LoopThreads(loop)
            created = True
        else:
            created = False
        _last = threads
    if created:
        # As anyio: the threads are let go when the root task ends. Its own context, so
        # the callback keeps no caller's context alive.
        _find_root_task().add_done_callback(threads.close, context=contextvars.Context())
    return threads


def _close_all() -> None:
    """Let every loop's threads go, each on its loop's thread (closing a pool under a call
    being handed to it would fail that call), or at once if the loop is closed or ours."""
    with _lock:
        every = list(_by_loop.values())
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for threads in every:
        loop = threads.loop_ref()
        if loop is None or loop is current or loop.is_closed():
            threads.close()
            continue
        try:
            loop.call_soon_threadsafe(threads.close)
        except RuntimeError:  # closed since: no call can reach the pool any more
            threads.close()


def _threads_started() -> int:
    """Threads started by the pools of loops whose root task ended, plus threads alive in
    the pools of running loops (the third-party suites' plugin reports it)."""
    with _lock:
        live = [threads.pool for threads in _by_loop.values()]
        total = _started_before
    return total + sum(pool.thread_count for pool in live)


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
    global _claim_worker_thread, _set_current_async_library, _threadlocals, _find_root_task
    global _WouldBlock
    try:
        from anyio import WouldBlock
        from anyio._backends._asyncio import AsyncIOBackend, find_root_task
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
    _find_root_task = find_root_task
    _WouldBlock = WouldBlock
    return AsyncIOBackend


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
        _original = backend.__dict__[_METHOD]
        setattr(backend, _METHOD, _REPLACEMENT)


def uninstall() -> None:
    """Give anyio back its own worker threads (calls in flight finish where they run; the
    integration's idle threads exit).

    Does nothing if :func:`install` was not called.
    """
    global _original
    with _lock:
        if _original is None:
            return
        setattr(_backend(), _METHOD, _original)
        _original = None
    _close_all()


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
    # Cancellation point on entry; the wait for the thread is the scheduling point.
    await cls.checkpoint_if_cancelled()
    loop = asyncio.get_running_loop()
    threads = _loop_threads(loop)
    if limiter is None:
        limiter = threads.default_limiter
        if limiter is None:
            limiter = threads.default_limiter = cls.current_default_thread_limiter()
    lender = _lender.get(None)
    if lender is not None and not lender.lend(limiter):
        lender = None  # not borrowing: take a token of our own
    if lender is None:
        try:
            limiter.acquire_nowait()
        except _WouldBlock:  # no token free, or others queued first: wait as anyio does
            await limiter.acquire()
    try:
        with cls.create_cancel_scope(shield=not abandon_on_cancel) as scope:
            # What check_cancelled() inspects, as anyio's worker: the caller's scope unless
            # the call may be abandoned.
            parent = scope._parent_scope
            worker_scope = scope if abandon_on_cancel or parent is None else parent
            job = _InWorker(cls, loop, worker_scope, limiter, func, args)
            # cancel="abandon": a shielded scope is never cancelled by anyio, and a native
            # task.cancel() abandons the thread in anyio too.
            value = await threads.pool.submit(job, (), _NO_KWARGS)
    finally:
        if lender is None:
            limiter.release()
        else:
            lender.lent = False
    if type(value) is _Coroutine:
        return value.value
    return value


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
        if _claimed.__dict__.get("loop") is not self.loop:
            _claim(self.cls, self.loop)
        try:
            value = self.func(*self.args)
        except StopIteration as exc:
            raise RuntimeError("coroutine raised StopIteration") from exc
        finally:
            lender.running = False
            del threadlocals.current_cancel_scope
        if type(value) is types.CoroutineType:
            return _Coroutine(value)
        return value


# The loop this thread is claimed for (a loop's pool serves that loop only).
_claimed = threading.local()


def _claim(cls: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Make this thread a worker of ``loop`` for the rest of its life, as anyio's worker
    threads are (``anyio.from_thread`` finds the loop through the token). Claiming per call
    instead costs the worker more than the rest of the hand-off."""
    with _claim_worker_thread(cls, loop):
        token = getattr(_threadlocals, "current_token", None)
    if token is None:
        raise RuntimeError(
            "this anyio version keeps no current_token for its worker threads: "
            "unstall.integrations.anyio cannot hook into it"
        )
    _threadlocals.current_token = token
    _claimed.loop = loop


_REPLACEMENT = classmethod(_run_sync_in_worker_thread)
