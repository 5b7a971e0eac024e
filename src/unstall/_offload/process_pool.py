"""Processes for CPU work: a pool whose calls can really be cancelled and whose workers may crash.

Each worker is one process with one socket to the parent. The loop watches the sockets
itself (``loop.add_reader``): a result wakes the loop directly, with no thread per call and
no thread hop, and results that finish together are handled in one loop iteration. The
design, and why it is not built on ``ProcessPoolExecutor`` or loky, is in docs/how-it-works.md
(section "Processes and clusters").
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.util  # its atexit hook must be registered before ours
import os
import pickle
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

from unstall._exceptions import WorkerDiedError
from unstall._offload import process_worker as wire
from unstall._offload.call import call
from unstall._offload.cpus import available_cpus
from unstall._offload.statistics import PoolStatistics, WaitClock
from unstall._offload.target import CancelMode
from unstall._util import validate_callable, validate_positive_int

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("unstall")

_READ_CHUNK: Final = 1 << 16
_READ_MAX: Final = 1 << 22
_REAP_TIMEOUT: Final = 5.0


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from a worker: its traceback text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _name(func: object) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}" if module else str(qualname)


@functools.cache
def _cloudpickle() -> Any:
    """cloudpickle if installed (the ``[process]`` extra), imported on the first call sent."""
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def _dumps(obj: object) -> bytes:
    cloudpickle = _cloudpickle()
    if cloudpickle is not None:
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _pickling_error(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], exc: Exception
) -> TypeError:
    """Name the part of a call that cannot be sent to a worker."""
    name = _name(func)
    parts: list[tuple[str, object]] = [(f"the function {name}", func)]
    parts += [(f"argument {i} of {name}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r} of {name}", v) for k, v in kwargs.items()]
    what, reason = f"the call to {name}", exc
    for label, value in parts:
        try:
            _dumps(value)
        except Exception as part_exc:
            what, reason = f"{label} ({type(value).__qualname__})", part_exc
            break
    hint = ""
    if _cloudpickle() is None and ("<lambda>" in name or "<locals>" in name):
        hint = "; lambdas and closures need cloudpickle: pip install 'unstall[process]'"
    return TypeError(f"cannot send {what} to a worker process: {reason}{hint}")


class _Worker:
    """The parent's handle on one worker process."""

    __slots__ = (
        "buf",
        "conn",
        "fd",
        "fut",
        "loop",
        "poller",
        "proc",
        "reader_loop",
        "retire",
        "running",
        "served",
        "stopping",
    )

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.fd: int = conn.fileno()
        self.buf = bytearray()
        self.fut: asyncio.Future[bytes | None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reader_loop: asyncio.AbstractEventLoop | None = None
        self.running = ""
        self.served = 0
        self.stopping = ""  # "shutdown" or "exit" once the pool stops it
        self.retire = False  # kill it (and what its call started) once its call ends
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    @property
    def pid(self) -> int:
        pid: int = self.proc.pid
        return pid

    def idle_and_alive(self) -> bool:
        # An idle worker never writes: a readable socket means it closed (the worker died).
        return not self.poller.poll(0)

    def kill(self) -> None:
        """SIGKILL the worker's process group (the call's children too) and any stragglers."""
        victims: list[Any] = []
        with contextlib.suppress(Exception):
            import psutil

            victims = psutil.Process(self.pid).children(recursive=True)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            # No such group yet: a worker killed before its os.setsid() is not a group
            # leader (or it already died; then this is a no-op too).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for child in victims:  # children that left the group (setsid, daemons)
            with contextlib.suppress(Exception):
                child.kill()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


class _Waiter:
    """A call waiting for a free worker; whoever frees one on its loop starts the call."""

    __slots__ = ("fut", "loop", "name", "payload", "queued_at", "reply")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, payload: bytes, name: str, queued_at: float
    ) -> None:
        self.loop = loop
        self.queued_at = queued_at
        self.fut: asyncio.Future[_Worker | None] = loop.create_future()
        self.payload = payload
        self.name = name
        self.reply: asyncio.Future[bytes | None] | None = None
        """Set when the call was started for this waiter (it is running)."""


_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def _default_start_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if sys.platform == "linux" and "forkserver" in methods else "spawn"


_forkserver_inherited = False
"""Set in a forked child whose parent had started multiprocessing's forkserver: that
forkserver belongs to the parent and multiprocessing cannot start another one here."""


def _usable(method: str) -> str:
    return "spawn" if method == "forkserver" and _forkserver_inherited else method


class ProcessPool:
    """A bounded pool of worker processes, for CPU-bound calls from asyncio.

    Args:
        max_workers: most processes alive at once (default: the CPUs this process may use,
            see :func:`available_cpus`: its affinity mask capped by its cgroup CPU quota).
        start_method: ``"forkserver"`` (default on Linux), ``"spawn"`` (default elsewhere)
            or ``"fork"`` (unsafe once the process has threads, which a loop usually has).
        name: prefix of the worker processes' names.
        max_tasks_per_worker: replace a worker after it ran this many calls (``None``:
            never), so whatever a call leaks goes with its process.
        max_memory_per_worker: replace a worker whose resident memory (RSS) exceeds this
            many bytes after a call (``None``: never). Read from ``/proc`` (or psutil).
        initializer: run ``initializer(*initargs)`` once in each new worker, before its
            first call (load a model, open a connection). If it raises, the call that
            needed the worker fails with ``RuntimeError`` (its cause: the remote error)
            and the worker exits; it never hangs.
        initargs: the initializer's arguments, a tuple.
        prestart: start all ``max_workers`` workers now (in a background thread), so the
            first calls do not wait for a process to start.

    Workers start on first use (or at once with ``prestart``) and stay up until
    :meth:`shutdown`, interpreter exit or one of the limits above. Replacing a worker
    happens between calls: no call is lost or retried. A worker that dies fails only its
    own call with :class:`WorkerDiedError`. Every method is safe to use from any event
    loop; :meth:`statistics` tells how busy the pool is.

    Cancellation, every path (a timeout of ``offload``/``call`` is a cancellation too):
    a queued call that is cancelled never runs; a running call cancelled with
    ``cancel="abandon"`` (the default) kills its worker's whole process group, so the
    children the call started (``subprocess``, ``multiprocessing``) die with it, and
    psutil, if installed, also finds those that left the group; with ``cancel="wait"`` the
    caller waits for the call to end, then that worker is killed the same way (cancelling
    again while waiting kills it at once); :meth:`shutdown` and interpreter exit kill
    running calls the same way and fail queued ones with ``RuntimeError``.

    Raises:
        ValueError: ``max_workers``, ``max_tasks_per_worker`` or ``max_memory_per_worker``
            below 1, an unknown ``start_method``.
        TypeError: a non-int limit, ``name`` not a str, ``initializer`` not a sync
            callable, ``initargs`` not a tuple.
        RuntimeError: ``max_memory_per_worker`` where neither ``/proc`` nor psutil can
            tell a process's memory.
        NotImplementedError: on Windows (the pool relies on POSIX process groups and on
            the loop watching pipes).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        name: str = "unstall-process",
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        prestart: bool = False,
    ) -> None:
        if sys.platform == "win32":
            raise NotImplementedError(
                "unstall.ProcessPool needs a POSIX system (Linux, macOS); on Windows use "
                "offload(on=concurrent.futures.ProcessPoolExecutor())"
            )
        if max_workers is None:
            max_workers = available_cpus()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        method = start_method or _default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            choices = ", ".join(multiprocessing.get_all_start_methods())
            raise ValueError(f"unknown start_method {method!r}; choose from {choices}")
        self.max_workers = max_workers
        self.start_method = method
        self.name = name
        self.max_tasks_per_worker = _optional_limit(max_tasks_per_worker, "max_tasks_per_worker")
        self.max_memory_per_worker = _optional_limit(max_memory_per_worker, "max_memory_per_worker")
        if self.max_memory_per_worker is not None:
            _check_rss_readable()
        self._init = _init_payload(initializer, initargs)
        self._ctx: Any = multiprocessing.get_context(_usable(method))
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots = 0  # workers alive or being started
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._counter = itertools.count(1)
        self._clock = WaitClock()
        self._n_cancelled = self._timed_out = self._restarts = self._max_queued = 0
        self._to_replace = 0  # workers gone (died, killed, recycled) and not replaced yet
        _pools.add(self)
        _register_exit_hooks()
        if prestart:
            self._prestart()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._busy)} busy, {len(self._idle)} idle"
        return f"<ProcessPool max_workers={self.max_workers} {self.start_method} {state}>"

    # -- public API ---------------------------------------------------------------------

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func(*args, **kwargs)`` in a worker process and return its result.

        Raises what the call raised (with the remote traceback as ``__cause__``),
        :class:`WorkerDiedError` if the worker died, ``TypeError`` if the call cannot be
        pickled. Cancelling the awaiting task kills the worker running the call.
        """
        return await call(self, func, args, kwargs, limiter=None, timeout=None, cancel="abandon")

    async def submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> T:
        """:class:`~unstall._offload.target.OffloadTarget`: run one call in a worker.

        ``cancel="abandon"`` kills the worker running a cancelled call at once;
        ``cancel="wait"`` lets the call finish, discards its result and then raises
        ``CancelledError`` (cancelling again while waiting kills the worker).
        """
        try:
            payload = _dumps((func, args, kwargs))
        except Exception as exc:
            raise _pickling_error(func, args, kwargs, exc) from exc
        name = _name(func)
        queued_at = time.monotonic()
        try:
            while True:
                running = await self._acquire(payload, name, cancel, queued_at)
                if running is not None:  # None: the worker had died idle, it never ran
                    reply = await self._reply(*running, name, cancel)
                    result: T = _decode(reply, name)
                    return result
        except asyncio.CancelledError:
            with self._lock:
                self._n_cancelled += 1
            raise

    def statistics(self) -> PoolStatistics:
        """A snapshot of what the pool is doing now and has done (see
        :class:`~unstall.PoolStatistics`)."""
        now = time.monotonic()
        with self._lock:
            queued = [w.queued_at for w in self._waiters if not w.fut.done()]
            return PoolStatistics(
                name=self.name,
                kind="process",
                max_workers=self.max_workers,
                workers_busy=len(self._busy),
                workers_idle=len(self._idle),
                calls_queued=len(queued),
                longest_queue_wait_s=max(0.0, now - min(queued, default=now)),
                calls_completed=self._clock.completed,
                calls_cancelled=self._n_cancelled,
                calls_timed_out=self._timed_out,
                worker_restarts=self._restarts,
                max_queued=self._max_queued,
                max_queue_wait_s=self._clock.max,
                queue_wait_sum_s=self._clock.sum,
                queue_wait_buckets=tuple(self._clock.buckets),
            )

    def _count_timeout(self) -> None:
        """The pipeline's timeout expired on a call to this pool (see ``call``)."""
        with self._lock:
            self._timed_out += 1

    def shutdown(
        self, wait: bool = True, *, timeout: float | None = None, cancel_queued: bool = True
    ) -> None:
        """Stop the workers; the pool accepts no more calls.

        Idle workers exit; busy ones are killed with their process group (the children
        their calls started too) and their calls fail with :class:`WorkerDiedError`;
        queued calls fail with ``RuntimeError``. Calls submitted afterwards raise
        ``RuntimeError``.

        Args:
            wait: return once every worker has exited (killing any that do not exit
                within a second).
            timeout: with ``wait``, return after at most this many seconds (``None``: up
                to a few seconds per stuck worker); workers still exiting are reaped later.
            cancel_queued: must be ``True`` (the default, accepted for symmetry with
                :meth:`ThreadPool.shutdown`): with its running calls killed, a process
                pool has nowhere to run queued calls.

        Raises:
            TypeError, ValueError: a bad ``timeout``; ``cancel_queued=False``.
        """
        deadline = _deadline(wait, timeout)
        if cancel_queued is not True:
            raise ValueError(
                "ProcessPool.shutdown(cancel_queued=False) is not supported: shutting down "
                "kills running calls, so queued calls have no worker left to run on"
            )
        procs = self._stop_all()
        if wait:
            _join(procs, deadline)

    def _stop_all(self, why: str = "shutdown") -> list[Any]:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            _resolve(waiter.loop, waiter.fut, None)
        for worker in idle:
            with contextlib.suppress(OSError):
                os.write(worker.fd, wire.HEADER.pack(0))
            worker.close()
        for worker in busy:
            worker.stopping = why
            worker.kill()
        return [w.proc for w in idle + busy]

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    async def __aenter__(self) -> ProcessPool:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Shut down without blocking the loop: workers are joined in a thread."""
        procs = self._stop_all()
        await asyncio.get_running_loop().run_in_executor(None, _join, procs, None)

    # -- workers --------------------------------------------------------------------------

    async def _acquire(
        self, payload: bytes, name: str, cancel: CancelMode, queued_at: float
    ) -> tuple[_Worker, asyncio.Future[bytes | None]] | None:
        """Start the call on a worker: an idle one, a new one, or the next one to finish."""
        loop = asyncio.get_running_loop()
        while True:
            waiter = None
            with self._lock:
                if self._closed:
                    raise RuntimeError("the ProcessPool is shut down")
                worker = self._take_idle()
                if worker is None and self._slots < self.max_workers:
                    self._slots += 1
                    if self._to_replace:
                        self._to_replace -= 1
                        self._restarts += 1
                elif worker is None:
                    self._reclaim_orphans()
                    waiter = _Waiter(loop, payload, name, queued_at)
                    self._waiters.append(waiter)
                    self._max_queued = max(self._max_queued, len(self._waiters))
            if waiter is None:
                if worker is None:
                    worker = await self._spawn()
                reply = self._start(worker, loop, payload, name, queued_at)
                return None if reply is None else (worker, reply)
            try:
                got = await waiter.fut
            except asyncio.CancelledError:
                got = (
                    waiter.fut.result()
                    if waiter.fut.done() and not waiter.fut.cancelled()
                    else None
                )
                if got is not None and waiter.reply is not None:  # it was already running
                    await self._cancelled(got, waiter.reply, cancel)
                elif got is not None:
                    self._give_back(got)
                raise
            if got is not None and waiter.reply is not None:
                return got, waiter.reply  # started for us by the worker's previous caller
            if got is not None:
                reply = self._start(got, loop, payload, name, queued_at)
                return None if reply is None else (got, reply)
            # None: a slot freed up (a worker died) or the pool closed; try again.

    def _take_idle(self) -> _Worker | None:
        while self._idle:
            worker = self._idle.pop()  # LIFO: the hottest worker first
            if worker.idle_and_alive():
                return worker
            self._slots -= 1
            worker.close()
            _reap_soon(worker)
        return None

    def _reclaim_orphans(self) -> None:
        # A call whose loop was closed without cancelling it would hold its worker forever.
        for worker in list(self._busy):
            if worker.loop is not None and worker.loop.is_closed():
                worker.reader_loop = None
                worker.kill()
                self._busy.discard(worker)
                self._slots -= 1
                worker.close()

    async def _spawn(self) -> _Worker:
        loop = asyncio.get_running_loop()
        started = loop.run_in_executor(None, self._start_worker)
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(self._spawned_late)
            raise
        except BaseException:
            self._lost_slot(replace=False)
            raise

    def _spawned_late(self, started: asyncio.Future[_Worker]) -> None:
        if started.cancelled() or started.exception() is not None:
            self._lost_slot(replace=False)
        else:
            self._give_back(started.result())

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=wire.entry, args=(child, self._init), name=f"{self.name}-{next(self._counter)}"
        )
        try:
            proc.start()
        finally:
            child.close()
        # The pool reaps its own workers. Left in multiprocessing's registry of children,
        # a dead worker would also be polled by any later Process.start() in any thread,
        # and two threads polling one forkserver child race for its exit status: the
        # loser records 255 instead of, say, -SIGKILL.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        worker = _Worker(proc, parent)
        if self._init is not None:
            self._await_initializer(worker)
        return worker

    def _await_initializer(self, worker: _Worker) -> None:
        """In the starting thread: wait for the worker's initializer to return."""
        reply = _read_frame(worker.fd)
        try:
            if reply is None:
                code = _int_or_none(worker.proc.exitcode)
                raise WorkerDiedError(
                    f"worker process {worker.pid} {_describe_exit(code)} while running "
                    "the ProcessPool's initializer",
                    pid=worker.pid,
                    exitcode=code,
                )
            _decode(reply, "the initializer")
        except BaseException as exc:
            worker.kill()
            worker.close()
            _dying.add(worker.proc)
            raise RuntimeError(
                f"the initializer of ProcessPool {self.name!r} failed in worker process "
                f"{worker.pid}: {exc!r}"
            ) from exc

    def _prestart(self) -> None:
        """Start every worker now, in a thread: the constructor need not block."""
        count = self.max_workers
        with self._lock:
            self._slots += count

        def start_all() -> None:
            for _ in range(count):
                try:
                    worker = self._start_worker()
                except BaseException as exc:
                    log.warning("ProcessPool %r could not prestart a worker: %s", self.name, exc)
                    self._lost_slot(replace=False)
                else:
                    self._give_back(worker)

        threading.Thread(target=start_all, name=f"{self.name}-prestart", daemon=True).start()

    def _give_back(self, worker: _Worker) -> None:
        """Start the next waiting call on a worker that became free, or park it."""
        with self._lock:
            self._busy.discard(worker)
            waiter = None if self._closed else self._next_waiter()
            if waiter is None and not self._closed:
                self._drop_reader(worker)  # before another thread can take it from _idle
                self._idle.append(worker)
                return
        if waiter is None:  # closed
            self._drop_reader(worker)
            worker.close()
            _reap_soon(worker)
        elif not self._dispatch_here(worker, waiter):
            self._drop_reader(worker)
            _resolve(waiter.loop, waiter.fut, worker, on_refused=self._give_back)

    def _next_waiter(self) -> _Waiter | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.fut.done():
                return waiter
        return None

    def _dispatch_here(self, worker: _Worker, waiter: _Waiter) -> bool:
        """On the waiter's own loop, start its call at once: the worker never sits idle."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if running is not waiter.loop:
            return False
        reply = self._start(worker, running, waiter.payload, waiter.name, waiter.queued_at)
        if reply is None:
            waiter.fut.set_result(None)  # that worker had died: the waiter tries again
        else:
            waiter.reply = reply
            waiter.fut.set_result(worker)
        return True

    def _drop_reader(self, worker: _Worker) -> None:
        loop, worker.reader_loop = worker.reader_loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(worker.fd)

    def _lost_slot(self, replace: bool = True) -> None:
        """A worker is gone (or never started): free its slot and wake one waiter to start
        a new one; ``replace``: a worker that ran went away (the next start restarts it)."""
        with self._lock:
            self._slots -= 1
            if replace and not self._closed:
                self._to_replace += 1
            waiter = self._next_waiter()
        if waiter is not None:
            _resolve(waiter.loop, waiter.fut, None)

    # -- one call -------------------------------------------------------------------------

    def _start(
        self,
        worker: _Worker,
        loop: asyncio.AbstractEventLoop,
        payload: bytes,
        name: str,
        queued_at: float,
    ) -> asyncio.Future[bytes | None] | None:
        """Send the call; its reply will complete the returned future (None: worker died)."""
        fut: asyncio.Future[bytes | None] = loop.create_future()
        worker.fut, worker.loop, worker.running = fut, loop, name
        waited = time.monotonic() - queued_at
        with self._lock:
            self._busy.add(worker)
            self._clock.started(waited)
        try:
            wire.write_all(worker.fd, wire.frame(payload))
        except OSError:  # it died while idle: the call never started
            self._drop_reader(worker)
            self._forget(worker)
            return None
        if worker.reader_loop is not loop:
            loop.add_reader(worker.fd, self._on_readable, worker)
            worker.reader_loop = loop
        return fut

    async def _reply(
        self, worker: _Worker, fut: asyncio.Future[bytes | None], name: str, cancel: CancelMode
    ) -> bytes:
        try:
            reply = await fut
        except asyncio.CancelledError:
            await self._cancelled(worker, fut, cancel)
            raise
        if reply is None and worker.stopping == "exit":
            self._forget(worker)
            raise asyncio.CancelledError(f"{name} was stopped at interpreter exit")
        if reply is None:
            raise await self._died(worker, name)
        return reply

    async def _cancelled(
        self, worker: _Worker, fut: asyncio.Future[bytes | None], cancel: CancelMode
    ) -> None:
        if worker.fut is not fut:
            # The reply came back in the same loop iteration as the cancel (which had
            # already cancelled ``fut``): the call is over and the worker may be running
            # the next one. Killing it or waiting on it would hit that call instead.
            return
        if fut.done() and not fut.cancelled():
            if fut.result() is None:  # it died just before: nothing runs any more
                self._forget(worker)
            return
        if cancel == "wait":
            loop = asyncio.get_running_loop()
            worker.retire = True  # the call was cancelled: what it started goes too
            worker.fut = waited = loop.create_future()
            try:
                reply = await waited
            except asyncio.CancelledError:
                pass
            else:
                if reply is None:
                    self._forget(worker)
                return
        self._stop(worker)

    def _stop(self, worker: _Worker) -> None:
        self._drop_reader(worker)
        worker.kill()
        self._forget(worker)

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            if worker not in self._busy:
                return
            self._busy.discard(worker)
        worker.close()
        _reap_soon(worker)
        self._lost_slot()

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.fd, min(max(_READ_CHUNK, _missing(worker.buf)), _READ_MAX))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        fut = worker.fut
        if not data:
            self._drop_reader(worker)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        worker.buf += data
        if _missing(worker.buf):
            return
        reply = bytes(memoryview(worker.buf)[wire.HEADER.size :])
        worker.buf.clear()
        worker.fut = None
        worker.served += 1
        with self._lock:
            self._clock.completed += 1
        if self._worn_out(worker):
            self._retire(worker)
        else:
            self._give_back(worker)  # may already send it the next call
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def _worn_out(self, worker: _Worker) -> bool:
        """Whether ``worker``, between two calls, must be replaced."""
        if worker.retire:
            return True
        limit = self.max_tasks_per_worker
        if limit is not None and worker.served >= limit:
            return True
        limit = self.max_memory_per_worker
        return limit is not None and _rss(worker.pid) > limit

    def _retire(self, worker: _Worker) -> None:
        """Replace a worker between calls: it exits (killed, with whatever its cancelled
        call started, when ``worker.retire``) and a waiting call starts a new one."""
        self._drop_reader(worker)
        if worker.retire:
            worker.kill()
        else:
            with contextlib.suppress(OSError):
                os.write(worker.fd, wire.HEADER.pack(0))
        self._forget(worker)

    async def _died(self, worker: _Worker, name: str) -> WorkerDiedError:
        try:
            code = await _exit_code(worker.proc)
        finally:
            self._forget(worker)
        why = (
            "was stopped because the ProcessPool was shut down"
            if worker.stopping
            else _describe_exit(code)
        )
        # multiprocessing exits with status 1 when a worker's bootstrap fails, typically
        # because re-importing an unguarded main script started the program again; a
        # call's own os._exit(N) on a fresh worker must not get this hint.
        if not worker.stopping and not worker.served and code == 1:
            why += (
                " (before serving any call: see its traceback on stderr; a script must "
                "guard its entry point with `if __name__ == '__main__':`)"
            )
        return WorkerDiedError(
            f"worker process {worker.pid} {why} while running {name}",
            pid=worker.pid,
            exitcode=code,
        )

    # -- process lifecycle ------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The workers belong to the parent: close our copies of their sockets, kill nothing.
        for worker in [*self._idle, *self._busy]:
            worker.close()
        self._idle, self._busy, self._waiters = [], set(), deque()
        self._slots = 0
        self._lock = threading.Lock()
        self._ctx = multiprocessing.get_context(_usable(self.start_method))


def _optional_limit(value: int | None, what: str) -> int | None:
    return None if value is None else validate_positive_int(value, what)


def _check_rss_readable() -> None:
    if os.path.exists(f"/proc/{os.getpid()}/statm"):
        return
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "max_memory_per_worker needs /proc (Linux) or psutil to read a worker's "
            "memory: pip install psutil"
        ) from None


def _rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return 0


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _init_payload(initializer: Callable[..., object] | None, initargs: object) -> bytes | None:
    if not isinstance(initargs, tuple):
        raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
    if initializer is None:
        if initargs:
            raise ValueError("initargs were given without an initializer")
        return None
    validate_callable(initializer)
    try:
        return _dumps((initializer, initargs))
    except Exception as exc:
        raise _pickling_error(initializer, initargs, {}, exc) from exc


def _deadline(wait: bool, timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    if not wait:
        raise ValueError("shutdown(timeout=...) needs wait=True: without wait nothing waits")
    return time.monotonic() + timeout


def _read_frame(fd: int) -> bytes | None:
    """Block until one whole frame arrives on ``fd``; ``None`` if it closes first."""
    buf = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while _missing(buf):
        poller.poll()
        try:
            data = os.read(fd, max(_missing(buf), 1))
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return None
        if not data:
            return None
        buf += data
    return bytes(memoryview(buf)[wire.HEADER.size :])


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its pipe (exit status unknown)"
    if code >= 0:
        return f"died with exit code {code}"
    try:
        return f"died with signal {signal.Signals(-code).name}"
    except ValueError:
        return f"died with signal {-code}"


def _missing(buf: bytearray) -> int:
    """Bytes still needed to complete the frame in ``buf`` (0: complete)."""
    if len(buf) < wire.HEADER.size:
        return wire.HEADER.size - len(buf)
    size: int = wire.HEADER.unpack_from(buf)[0]
    return max(0, wire.HEADER.size + size - len(buf))


def _resolve(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[_Worker | None],
    value: _Worker | None,
    on_refused: Callable[[_Worker], None] | None = None,
) -> None:
    """Set a waiter's result from any thread; a worker refused by a cancelled waiter returns."""

    def deliver() -> None:
        if not fut.done():
            fut.set_result(value)
        elif value is not None and on_refused is not None:
            on_refused(value)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        deliver()
        return
    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # that loop is closed
        if value is not None and on_refused is not None:
            on_refused(value)


def _decode(reply: bytes, name: str) -> Any:
    try:
        status, payload = pickle.loads(reply)
    except Exception as exc:
        raise TypeError(f"the result of {name} could not be unpickled here: {exc}") from exc
    if status == wire.OK:
        return payload
    if status == wire.UNPICKLABLE_RESULT:
        kind, why = payload
        raise TypeError(
            f"the result of {name} (a {kind}) cannot be sent back from the worker process: {why}"
        )
    pickled, text_repr, text = payload
    error: object = None
    if pickled is not None:
        with contextlib.suppress(Exception):
            error = pickle.loads(pickled)
    if not isinstance(error, Exception):
        error = RuntimeError(f"{name} raised {text_repr} in the worker process")
    raise error from RemoteTraceback(text)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


async def _exit_code(proc: Any) -> int | None:
    """Wait (without blocking the loop) for a process that closed its pipe to be reaped."""
    code = _int_or_none(proc.exitcode)
    if code is not None:
        return code
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    sentinel = proc.sentinel

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(sentinel, on_exit)
    try:
        async with asyncio.timeout(_REAP_TIMEOUT):
            await exited
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(sentinel)
    return _int_or_none(proc.exitcode)


def _reap_soon(worker: _Worker) -> None:
    """Collect an exiting worker's status without blocking (no zombie left behind)."""
    proc = worker.proc
    if proc.exitcode is not None:
        proc.join(0)
        return
    _dying.add(proc)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    with contextlib.suppress(ValueError, OSError):
        sentinel = proc.sentinel

        def reaped() -> None:
            loop.remove_reader(sentinel)
            if proc.exitcode is not None:
                _dying.discard(proc)
                proc.join(0)

        loop.add_reader(sentinel, reaped)


_dying: set[Any] = set()


def _join(procs: list[Any], deadline: float | None = None) -> None:
    """Wait for ``procs`` to exit, killing any still up after a second; by ``deadline`` at
    the latest (those left are reaped later, or at interpreter exit)."""

    def left(most: float) -> float:
        return most if deadline is None else max(0.0, min(most, deadline - time.monotonic()))

    for proc in procs:
        proc.join(left(1.0))
        if proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.join(left(_REAP_TIMEOUT))
        if proc.exitcode is None:
            _dying.add(proc)
        else:
            _dying.discard(proc)


def _reap_all(timeout: float) -> None:
    for proc in list(_dying):
        proc.join(timeout)
        if proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout)
        _dying.discard(proc)


_default: ProcessPool | None = None
_default_lock = threading.Lock()
_hooks_registered = False


def default_process_pool() -> ProcessPool:
    """The process-wide pool used by :func:`to_process` and ``offload(on="process")``."""
    global _default
    pool = _default
    if pool is None or pool._closed:
        with _default_lock:
            if _default is None or _default._closed:
                _default = ProcessPool()
            pool = _default
    return pool


def _shutdown_all() -> None:
    # At exit, calls still running are cancelled rather than failed: their tasks may never
    # be awaited again (a loop in a daemon thread), and a failed one would print "Task
    # exception was never retrieved" while the program exits.
    procs = []
    for pool in list(_pools):
        with contextlib.suppress(Exception):
            procs += pool._stop_all(why="exit")
    _join(procs)
    _reap_all(1.0)


def _after_fork_in_child() -> None:
    global _default, _forkserver_inherited
    _default = None
    if sys.platform != "win32":
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        if getattr(server, "_forkserver_pid", None) is not None:
            _forkserver_inherited = True
    _dying.clear()
    for pool in list(_pools):
        pool._after_fork_in_child()


def _register_exit_hooks() -> None:
    global _hooks_registered
    if _hooks_registered:
        return
    _hooks_registered = True
    # Registered after multiprocessing's own atexit hook, so ours runs first: workers are
    # stopped before multiprocessing would join them.
    atexit.register(_shutdown_all)
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def to_process(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``func(*args, **kwargs)`` in a worker process of the default pool.

    For CPU-bound work: the loop and its other tasks keep running. Functions and
    arguments are sent with cloudpickle when installed (lambdas and closures work), else
    pickle. The default pool has one worker per CPU this process may use (its affinity
    mask, capped by its cgroup CPU quota), started on first use.

    Raises:
        TypeError: ``func`` is not callable or is a coroutine function, or the call cannot
            be pickled (raised at the call; the pool stays healthy).
        WorkerDiedError: the worker died (exit, signal, segfault) while running the call.
        Exception: whatever the call raised, with the remote traceback as ``__cause__``.

    Cancellation (a timeout too) kills the worker running the call and its children;
    a fresh worker replaces it on demand. A call still queued never runs.
    """
    pool = default_process_pool()
    return await call(pool, func, args, kwargs, limiter=None, timeout=None, cancel="abandon")
