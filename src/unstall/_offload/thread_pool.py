"""Worker threads that run sync calls for asyncio code, with less overhead than executors.

Why not ``loop.run_in_executor``: every call there pays for a ``concurrent.futures.Future``
(with its own lock and condition), an asyncio future chained to it, and one
``call_soon_threadsafe`` per result. Here a call is one small job object, one asyncio
future from ``loop.create_future()`` and an append to a deque: a busy thread takes the
next job without any lock, an idle one is woken (which one: see ``ThreadPool._put``).
Results go back through the loop's :class:`~unstall._offload.inbox.Inbox`, one loop
wake-up per burst.

Threads are started lazily (a burst wakes or starts one thread, which wakes the next
while jobs remain), capped at ``max_workers``, named ``<name>-N`` and retired after
``idle_timeout`` seconds without work. A forked child
starts with fresh, empty pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import os
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from unstall._offload import inbox
from unstall._offload.inbox import Inbox, inbox_for
from unstall._offload.statistics import PoolStatistics, WaitClock
from unstall._offload.target import CancelMode
from unstall._offload.worker_context import _local, cancelled
from unstall._util import (
    _describe,
    validate_callable,
    validate_positive_int,
)

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_WORKERS", "ThreadPool", "cancelled", "to_thread"]

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_MAX_WORKERS = 40
"""Thread cap of the default pool (as anyio): threads mostly wait on I/O, so more than
``os.cpu_count()`` is useful, but an unbounded number is not."""

DEFAULT_IDLE_TIMEOUT = 10.0
"""Seconds a worker waits for work before it exits (pools of more than one thread)."""

_logger = logging.getLogger("unstall")
_CoroutineType = types.CoroutineType
_monotonic = time.monotonic


def _late_failure(func: object, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return
    _logger.error(
        "offloaded call %s raised after its caller stopped waiting for it",
        _describe(func),
        exc_info=exc,
    )


class _Job:
    """One call: queued by the loop, run by a worker, settled back on the loop."""

    __slots__ = (
        "args",
        "cancel_requested",
        "claim",
        "ctx",
        "delivered",
        "func",
        "fut",
        "inbox",
        "kwargs",
        "queued_at",
        "waiter",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        fut: asyncio.Future[Any],
        inbox: Inbox,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.ctx = contextvars.copy_context()
        self.fut = fut
        self.inbox = inbox
        # Whoever pops first owns the job: the worker (it runs) or the canceller (it never
        # runs). list.pop is atomic, so no lock is needed for the race.
        self.claim = [None]
        self.cancel_requested = False
        self.delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.queued_at = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.fut.get_loop()

    def run(self, clock: WaitClock, worker: _Worker | None = None) -> None:
        """Worker thread: run the call unless it was cancelled while queued. ``worker``:
        list it as idle before the result can reach the caller (see ``_Worker.announce``)."""
        try:
            self.claim.pop()
        except IndexError:
            return
        clock.started(_monotonic() - self.queued_at)
        _local.call = self
        try:
            if self.kwargs:
                value = self.ctx.run(self.func, *self.args, **self.kwargs)
            else:  # the usual case, and a little cheaper
                value = self.ctx.run(self.func, *self.args)
            ok = True
            if type(value) is _CoroutineType:
                value.close()
                raise TypeError(
                    f"{_describe(self.func)} returned a coroutine: await it directly "
                    "instead of offloading it"
                )
        except BaseException as exc:
            ok = False
            value = _storable(exc)
        finally:
            _local.call = None
        clock.completed += 1  # before the result can reach the caller
        if worker is not None:
            worker.announce()
        self.inbox.deliver(self, ok, value)
        # The traceback keeps this frame alive: break the exception -> frame -> job cycle.
        value = None
        self = None  # type: ignore[assignment]

    def forget(self) -> None:
        """Loop thread: the call was cancelled while queued and will never run; let go of
        its function and arguments now rather than when a worker reaches it in the queue
        (behind a long call that may be much later). The future goes too: its cached
        CancelledError holds the caller's frames, and with them the arguments."""
        del self.func, self.args, self.kwargs, self.ctx, self.fut

    def drop(self, ok: bool, value: Any) -> None:
        """Worker thread: the loop is closed; keep a failure visible at DEBUG level only
        (closing a loop with calls in flight must print nothing)."""
        if not ok and not isinstance(value, asyncio.CancelledError):
            _logger.debug(
                "offloaded call %s raised after its event loop closed",
                _describe(self.func),
                exc_info=value,
            )

    def settle(self, ok: bool, value: Any) -> None:
        """Loop thread: resolve the caller's future, or account for an abandoned call."""
        self.delivered = True
        fut = self.fut
        if not fut.cancelled():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
            return
        if not ok:
            _late_failure(self.func, value)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _storable(exc: BaseException) -> BaseException:
    # Futures refuse StopIteration (it would end the awaiting coroutine silently).
    if isinstance(exc, StopIteration):
        wrapped = RuntimeError("the offloaded call raised StopIteration")
        wrapped.__cause__ = exc
        return wrapped
    return exc


class _Detached:
    """A fire-and-forget call (no caller waits): failures are logged."""

    __slots__ = ("func", "queued_at")
    claim = (None,)  # never cancelled

    def __init__(self, func: Callable[[], object]) -> None:
        self.func = func
        self.queued_at = 0.0

    def run(self, clock: WaitClock, worker: _Worker | None = None) -> None:
        clock.started(_monotonic() - self.queued_at)
        try:
            self.func()
        except BaseException as exc:
            _late_failure(self.func, exc)
        clock.completed += 1


_WOKEN, _RECHECK, _EXIT = object(), object(), object()


class _Worker:
    """What a parked worker thread waits on, and what it has done."""

    __slots__ = ("clock", "idle", "listed", "wakeup")

    def __init__(self, idle: list[_Worker]) -> None:
        self.wakeup = threading.Lock()  # held while parked; released to wake the thread
        self.wakeup.acquire()
        self.clock = WaitClock()
        self.idle = idle
        self.listed = False  # on the idle list already, before parking (see announce)

    def announce(self) -> None:
        """Worker thread, call done: go on the idle list before delivering the result, so
        the caller's next call finds this thread idle and wakes it rather than starting
        another (delivery lets the loop run at once, before the worker could park). The
        worker then parks as usual, without looking for jobs on its own."""
        self.listed = True
        self.idle.append(self)


_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


class ThreadPool:
    """A bounded set of worker threads that run sync calls for asyncio code.

    Args:
        max_workers: the thread cap (default :data:`DEFAULT_MAX_WORKERS`, 40). With
            ``max_workers=1`` every call runs on the same thread, in submission order:
            the way to use a thread-bound resource such as a ``sqlite3`` connection.
        name: thread name prefix; threads are named ``f"{name}-{n}"``.
        idle_timeout: seconds an idle thread waits for work before it exits. Default:
            :data:`DEFAULT_IDLE_TIMEOUT` (10 s), except for a single-thread pool, whose
            thread is kept until :meth:`shutdown` (so a thread-bound resource keeps its
            thread). ``math.inf`` keeps threads forever.

    Raises:
        TypeError, ValueError: for a non-int or < 1 ``max_workers``, an empty ``name``, a
            non-positive ``idle_timeout``.

    Cancellation, every path (a timeout of ``offload``/``call`` is a cancellation too):

    - cancelled while queued: the call never runs; its arguments are released at once;
    - cancelled while running, ``cancel="abandon"`` (the default): the caller gets
      ``CancelledError`` at once; the call runs on, :func:`unstall.cancelled` turns
      ``True`` inside it, its result is discarded and a later exception is logged to the
      ``unstall`` logger;
    - cancelled while running, ``cancel="wait"``: the caller waits for the call to end
      (cancelling it again does not stop the wait), then gets ``CancelledError``;
    - :meth:`shutdown`: queued calls still run, unless ``cancel_queued=True`` fails them
      with ``RuntimeError``; running calls run to their end; ``timeout`` bounds the wait;
    - interpreter exit: threads are daemon threads, so calls still running are not
      awaited and nothing is printed.

    Shut a dedicated pool down (or use it in a ``with`` block) when done: the thread of a
    one-thread pool otherwise lives as long as the process. :meth:`statistics` tells how
    busy the pool is.
    """

    # Whether sequential calls take turns on two threads (see _put). A subclass that must
    # keep sequential calls on one thread, as anyio does, turns it off.
    _take_turns = True

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        name: str = "unstall-worker",
        idle_timeout: float | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = DEFAULT_MAX_WORKERS
        self._max = validate_positive_int(max_workers, "max_workers")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self._name = name
        self._idle_timeout = _check_idle_timeout(idle_timeout, self._max)
        self._is_shutdown = False
        self._init_state()
        _pools.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._jobs: deque[_Job | _Detached] = deque()
        # Idle workers, most recently idle last (see _put for which one a job wakes).
        self._idle: list[_Worker] = []
        self._waking = False
        self._last_quiet = False  # the last wake-up was for a job queued while all was idle
        self._threads: set[threading.Thread] = set()
        self._counter = itertools.count(1)
        self._workers: dict[threading.Thread, _Worker] = {}
        self._retired = WaitClock()  # what exited threads did
        self._retirements = 0  # threads retired and not replaced yet
        self._restarts = 0
        self._cancelled = 0
        self._timed_out = 0
        self._max_queued = 0

    @property
    def max_workers(self) -> int:
        """The thread cap."""
        return self._max

    @property
    def name(self) -> str:
        """The thread name prefix."""
        return self._name

    @property
    def idle_timeout(self) -> float | None:
        """Seconds before an idle thread exits; ``None``: never."""
        return self._idle_timeout

    @property
    def thread_count(self) -> int:
        """How many worker threads are alive now."""
        with self._lock:
            return len(self._threads)

    def __repr__(self) -> str:
        return (
            f"<ThreadPool name={self._name!r} max_workers={self._max} "
            f"threads={len(self._threads)}{' shut down' if self._is_shutdown else ''}>"
        )

    async def submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> T:
        """Run ``func(*args, **kwargs)`` in a worker thread (the ``OffloadTarget`` protocol).

        The caller's context variables are copied into the worker. ``func`` is not
        validated here (see :meth:`run`).

        Raises:
            RuntimeError: if the pool was shut down.
            BaseException: whatever the call raised, with the worker's frames.
            asyncio.CancelledError: when cancelled, as described on the class.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        job = _Job(func, args, kwargs, fut, inbox_for(loop))
        self._put(job)
        try:
            return await fut
        except asyncio.CancelledError:
            await _on_cancel(self, job, fut, cancel)
            raise

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func(*args, **kwargs)`` in this pool and return its result.

        Same as :func:`to_thread` but on this pool.

        Raises:
            TypeError: ``func`` is not callable or is an ``async def`` function.
            RuntimeError: the pool was shut down.
        """
        validate_callable(func)
        return await self.submit(func, args, kwargs)

    def spawn_detached(self, func: Callable[[], object]) -> None:
        """Run ``func()`` in this pool without waiting for it; failures are logged."""
        self._put(_Detached(func))

    # Lock-free hand-off: deque.append/popleft, list.append/pop/remove and attribute
    # stores are atomic, and both sides publish before they check (a job is appended before
    # the idle list is read; a worker parks itself before it looks for jobs again), so no
    # job is left behind with every thread parked. The lock guards starting/retiring threads.
    #
    # At most one wake-up is in flight (_waking): a burst of submissions wakes one thread,
    # which wakes the next if jobs remain. Waking a thread per job instead makes every
    # thread fight for the GIL and costs a futex call per job (as queue.SimpleQueue does
    # for executors, one waiter is released at a time).
    #
    # Which thread: in a burst, the most recently idle one (warm caches; it may not even be
    # asleep yet). Sequential calls (one await after another: each job is queued while
    # every thread is idle, twice in a row) go to the second most recently idle thread
    # instead, so that two threads take turns; the pool starts its second thread for that.
    # A single thread ping-ponging with the loop settles on another CPU than the loop's,
    # and every call then pays two cross-CPU wake-ups (slow in a VM); with two threads
    # taking turns, the scheduler keeps one of them on the loop's CPU. Measured on a 2-vCPU
    # VM, threads and a socket alone (no asyncio): 60 us a round trip with one thread,
    # 31 us with two taking turns. With FIFO rotation over every idle thread instead, as
    # executors do, extra threads never sit idle long enough to retire.
    #
    # A pool with _take_turns off (unstall.integrations.anyio's, which keeps anyio's one
    # thread for sequential calls) always wakes the most recently idle thread, and its
    # threads list themselves idle before delivering a result (_Worker.announce): the
    # caller's next call then finds that thread idle rather than starting another.

    def _put(self, job: _Job | _Detached) -> None:
        if self._is_shutdown:
            raise RuntimeError(f"{self!r} is shut down: it cannot run new calls")
        jobs = self._jobs
        job.queued_at = _monotonic()
        jobs.append(job)
        if len(jobs) > self._max_queued:
            self._max_queued = len(jobs)
        if not self._waking:
            try:
                self._wake_one(len(jobs) == 1 and len(self._idle) >= len(self._threads))
            except RuntimeError:  # no thread could be started (interpreter shutting down)
                with contextlib.suppress(ValueError):
                    self._jobs.remove(job)
                raise

    def _wake_one(self, quiet: bool = False) -> None:
        """Wake an idle thread (see above which), or start one below the cap.

        ``quiet``: the job is the only one queued and every thread is idle.
        """
        self._waking = True
        take_turns = quiet and self._last_quiet and self._take_turns  # sequential calls
        self._last_quiet = quiet
        if take_turns and len(self._threads) == 1 < self._max:
            pass  # start the second thread to take turns with
        elif self._wake_idle(take_turns):
            return
        with self._lock:
            at_cap = len(self._threads) >= self._max
            if not at_cap:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._counter)}", daemon=True
                )
                self._threads.add(thread)
                if self._retirements:
                    self._retirements -= 1
                    self._restarts += 1
        if at_cap:
            # Every thread is busy and takes the job when done, unless one went idle since
            # the cap was checked (parked before the job was queued): wake it.
            if not self._wake_idle(False):
                self._waking = False
            return
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._threads.discard(thread)
            self._waking = False
            raise

    def _wake_idle(self, second: bool) -> bool:
        """Take the most (or ``second`` most) recently idle thread off the idle list and wake
        it; ``False`` if none is idle."""
        idle = self._idle
        try:
            worker = idle.pop(-2) if second and len(idle) > 1 else idle.pop()
        except IndexError:  # the list shrank meanwhile (a worker left it)
            try:
                worker = idle.pop()
            except IndexError:
                return False
        worker.wakeup.release()
        return True

    def _woken(self) -> None:
        self._waking = False
        if len(self._jobs) > 1:  # more than this thread will take: wake the next one
            with contextlib.suppress(RuntimeError):  # no new thread: this one carries on
                self._wake_one()

    def _work(self) -> None:
        me = _Worker(self._idle)
        clock = me.clock
        self._workers[threading.current_thread()] = me
        jobs = self._jobs
        timeout = -1 if self._idle_timeout is None else self._idle_timeout
        announce = None if self._take_turns else me
        self._woken()
        while True:
            if me.listed:  # listed as idle: a submitter may be waking it, so park first
                job = None
            else:
                try:
                    # Checked first: raising IndexError is what costs when the deque is empty.
                    job = jobs.popleft() if jobs else None
                except IndexError:  # emptied by another thread since the check
                    job = None
            if job is None:
                state = self._park(me, timeout)
                if state is _EXIT:
                    return
                if state is _WOKEN:
                    self._woken()
                continue
            try:
                job.run(clock, announce)
            except BaseException:  # a bug here must not cost the pool a thread
                _logger.exception("unstall worker: internal error")
            del job

    def _park(self, me: _Worker, timeout: float) -> object:
        """Wait for work: ``_WOKEN``, ``_RECHECK`` (look for jobs again) or ``_EXIT``."""
        if me.listed:
            me.listed = False
        else:
            self._idle.append(me)
        if self._jobs or self._is_shutdown:
            state = _RECHECK if self._unpark(me) else _WOKEN
        elif me.wakeup.acquire(timeout=timeout):
            state = _WOKEN
        elif self._unpark(me):  # nobody woke it before the idle timeout
            return _RECHECK if self._keep_thread() else _EXIT
        else:
            state = _WOKEN
        if self._is_shutdown and not self._keep_thread():
            return _EXIT
        return state

    def _unpark(self, me: _Worker) -> bool:
        """Leave the idle list; ``False`` if a submitter took it first (and woke it)."""
        try:
            self._idle.remove(me)
            return True
        except ValueError:
            me.wakeup.acquire()  # take the wake-up that was (or is about to be) given
            return False

    def _keep_thread(self) -> bool:
        """Retire this thread unless jobs are waiting (then it keeps working)."""
        with self._lock:
            if self._jobs:
                return True
            me = threading.current_thread()
            self._threads.discard(me)
            worker = self._workers.pop(me, None)
            if worker is not None:
                self._retired.add(worker.clock)
            if not self._is_shutdown:
                self._retirements += 1
            return False

    def statistics(self) -> PoolStatistics:
        """A snapshot of what the pool is doing now and has done (see
        :class:`~unstall.PoolStatistics`). Cheap enough to call every second."""
        now = _monotonic()
        queued = [job for job in list(self._jobs) if job.claim]
        with self._lock:
            threads = len(self._threads)
            clocks = [w.clock for w in self._workers.values()]
            total = WaitClock()
            total.add(self._retired)
            cancelled, timed_out, restarts = self._cancelled, self._timed_out, self._restarts
        for clock in clocks:
            total.add(clock)
        idle = min(len(self._idle), threads)
        oldest = min((job.queued_at for job in queued), default=now)
        return PoolStatistics(
            name=self._name,
            kind="thread",
            max_workers=self._max,
            workers_busy=threads - idle,
            workers_idle=idle,
            calls_queued=len(queued),
            longest_queue_wait_s=max(0.0, now - oldest),
            calls_completed=total.completed,
            calls_cancelled=cancelled,
            calls_timed_out=timed_out,
            worker_restarts=restarts,
            max_queued=self._max_queued,
            max_queue_wait_s=total.max,
            queue_wait_sum_s=total.sum,
            queue_wait_buckets=tuple(total.buckets),
        )

    def _count_cancel(self) -> None:
        with self._lock:
            self._cancelled += 1

    def _count_timeout(self) -> None:
        """The pipeline's timeout expired on a call to this pool (see ``call``)."""
        with self._lock:
            self._timed_out += 1

    def shutdown(
        self, wait: bool = True, *, timeout: float | None = None, cancel_queued: bool = False
    ) -> None:
        """Stop accepting calls; threads exit once the queue is empty.

        Args:
            wait: block until every thread has exited (never waiting for the calling
                thread itself, when it is one of the pool's).
            timeout: with ``wait``, return after at most this many seconds even if calls
                still run (``None``: no limit). Threads cannot be killed: a call still
                running goes on in its (daemon) thread, which exits when it is done, and
                never delays interpreter exit.
            cancel_queued: fail every call still queued with ``RuntimeError`` instead of
                running it (those calls never start). Without it, queued calls run first.

        Raises:
            TypeError, ValueError: ``timeout`` is not ``None`` or a number >= 0, or given
                without ``wait``.

        Cancellation paths of the calls in the pool at shutdown: a queued call runs (or,
        with ``cancel_queued``, fails at once with ``RuntimeError``); a running call runs
        to its end and its result still reaches its caller; :func:`unstall.cancelled`
        does not turn ``True`` (nothing cancelled the call). Calls submitted afterwards
        raise ``RuntimeError``.
        """
        deadline = _deadline(wait, timeout)
        with self._lock:
            self._is_shutdown = True
            threads = list(self._threads)
        if cancel_queued:
            self._cancel_queued()
        while True:
            try:
                self._idle.pop().wakeup.release()
            except IndexError:
                break
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me:
                    left = None if deadline is None else max(0.0, deadline - _monotonic())
                    thread.join(left)

    def _cancel_queued(self) -> None:
        jobs = self._jobs
        while jobs:
            try:
                job = jobs.popleft()
            except IndexError:
                return
            if isinstance(job, _Detached):  # fire-and-forget: no caller to tell
                continue
            try:
                job.claim.pop()
            except IndexError:  # cancelled by its caller meanwhile, or being run
                continue
            job.delivered = True  # nothing will ever run or deliver it
            self._count_cancel()
            with contextlib.suppress(RuntimeError):  # its loop is closed
                job.loop.call_soon_threadsafe(_fail_unstarted, job.fut, repr(self))

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)


def _deadline(wait: bool, timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    if not wait:
        raise ValueError("shutdown(timeout=...) needs wait=True: without wait nothing waits")
    return _monotonic() + timeout


def _fail_unstarted(fut: asyncio.Future[Any], pool: str) -> None:
    if not fut.done():
        fut.set_exception(
            RuntimeError(f"{pool} was shut down with cancel_queued=True before this call started")
        )


def _check_idle_timeout(value: float | None, max_workers: int) -> float | None:
    if value is None:
        return None if max_workers == 1 else DEFAULT_IDLE_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"idle_timeout must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds, got {value!r}")
    return None if math.isinf(value) else float(value)


async def _on_cancel(
    pool: ThreadPool, job: _Job, fut: asyncio.Future[Any], cancel: CancelMode
) -> None:
    """The caller was cancelled while awaiting ``job``; apply the cancel mode."""
    job.cancel_requested = True
    pool._count_cancel()
    try:
        job.claim.pop()
    except IndexError:
        pass
    else:
        job.forget()  # still queued: it will never run
        return
    if fut.done() and not fut.cancelled():
        # Finished, but the cancellation arrived first: do not lose a failure.
        exc = fut.exception()
        if exc is not None:
            _late_failure(job.func, exc)
        return
    if cancel != "wait" or job.delivered:
        return
    waiter = job.loop.create_future()
    job.waiter = waiter
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            continue


_default: ThreadPool | None = None
_default_lock = threading.Lock()


def default_thread_pool() -> ThreadPool:
    """The process-wide pool behind :func:`to_thread` and ``offload(on=None)``."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = ThreadPool()
    return _default


async def to_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``func(*args, **kwargs)`` in a worker thread; a faster ``asyncio.to_thread``.

    A drop-in for :func:`asyncio.to_thread`: same arguments, the caller's context variables
    are copied into the worker, the call's exception is re-raised with the worker's frames
    in its traceback. Runs on the default pool (up to :data:`DEFAULT_MAX_WORKERS` threads).

    Raises:
        TypeError: ``func`` is ``None``, not callable, or an ``async def`` function (await
            it directly), or it returned a coroutine.
        asyncio.CancelledError: if the awaiting task is cancelled. A queued call then never
            runs; a running call is abandoned (its result discarded, a later exception
            logged to the ``unstall`` logger) and :func:`unstall.cancelled` turns ``True``
            inside it.
    """
    validate_callable(func)
    # ThreadPool.submit inlined: this is the hot path.
    pool = _default or default_thread_pool()
    loop = asyncio.get_running_loop()
    target = inbox._last
    if target is None or target.loop_ref() is not loop:
        target = inbox_for(loop)
    fut: asyncio.Future[T] = loop.create_future()
    job = _Job(func, args, kwargs, fut, target)
    pool._put(job)
    try:
        return await fut
    except asyncio.CancelledError:
        await _on_cancel(pool, job, fut, "abandon")
        raise


def _reset_after_fork() -> None:
    # Worker threads do not survive fork and locks may be held: start every pool afresh.
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_pools):
        pool._init_state()


os.register_at_fork(after_in_child=_reset_after_fork)
