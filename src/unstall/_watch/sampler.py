"""Take one sample of a loop thread's stack from the watchdog thread.

A sample keeps plain data only (no frame objects), so a stall's samples never keep the
loop's locals alive: the stack outermost first, which frame is the culprit, the call it is
making, which callback is running (to tell two callbacks apart in one loop iteration), the
running task and the thread's CPU clock (to tell waiting from computing).
"""

from __future__ import annotations

import asyncio
import builtins
import linecache
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unstall._report.records import Frame
from unstall._util import is_async_code
from unstall._watch.callname import call_at, callee_from_line, resolve
from unstall._watch.checkpoint import Positions, lasti, lineno, locate, outward, positions
from unstall._watch.context import describe, request_in, snapshot
from unstall._watch.culprit import callback_start, culprit_index, is_machinery, origin
from unstall._watch.threadclock import ThreadClock

__all__ = ["Sample", "capture", "capture_own", "frame_record"]

_frame_cache: dict[tuple[types.CodeType, int], Frame] = {}


@dataclass(slots=True)
class Sample:
    """One look at a loop thread's stack, taken at monotonic time ``t``."""

    t: float
    frames: tuple[Frame, ...]
    """Outermost first."""
    culprit: int
    """Index of the culprit in ``frames``; ``-1`` when the stack is empty."""
    call: str | None = None
    root: int | None = None
    """Identity of the running callback (its task, handle or first frame); ``None`` if unknown."""
    anchor: object = None
    """The object ``root`` is the id of, kept alive so that the id is not reused meanwhile."""
    task: str | None = None
    coro: str | None = None
    callback: str | None = None
    cpu: float | None = None
    """The thread's busy seconds (:class:`ThreadClock`) at ``t``."""
    method: str = "sampler"
    truncated: bool = False
    """The stack lost its outer frames (faulthandler keeps the innermost 100)."""
    gil: bool = False
    """The thread was waiting for the GIL: blocked in ``futex`` outside any lock call."""
    gil_sure: bool = False
    """``gil`` is certain: the thread was running Python or a builtin that never waits, so
    its ``futex`` can only be the GIL (not a C library's own lock)."""
    context: dict[str, Any] | None = None
    """What the running task was serving (see :mod:`unstall._watch.context`)."""
    importing: bool = False
    """The culprit is an ``import`` line: the thread was running a first import."""


_OWN_HANDLERS: set[types.CodeType] = set()


def never_sample_in(function: Callable[..., object]) -> None:
    """A handler of ours that interrupts a loop thread and samples it itself: the watchdog
    takes no sample while it runs (reading source there may let the watchdog in)."""
    _OWN_HANDLERS.add(function.__code__)


def frame_record(code: types.CodeType, line: int) -> Frame:
    """A :class:`Frame` for ``code`` at ``line``, shared between samples."""
    key = (code, line)
    found = _frame_cache.get(key)
    if found is None:
        if len(_frame_cache) > 20_000:
            _frame_cache.clear()
        found = _frame_cache[key] = Frame(
            code.co_filename, line, code.co_name, coroutine=is_async_code(code)
        )
    return found


def capture(
    thread_id: int,
    loop: asyncio.AbstractEventLoop,
    clock: ThreadClock,
    now: float,
    gap_from: float | None = None,
) -> Sample | None:
    """Sample the stack of thread ``thread_id``; ``None`` if the thread is gone.

    ``gap_from``: the watchdog could not run since then (C code may have held the GIL),
    and the thread stopped at its first check since: the culprit is located from there
    (:func:`~unstall._watch.checkpoint.locate`), and the sample stands for the gap.
    """
    top = sys._current_frames().get(thread_id)
    if top is None:
        return None
    # First, before anything lets the thread run (reading files, or holding the GIL for
    # long enough that the thread asks for it back).
    at = positions(top)
    futex = clock.in_futex()
    if gap_from is not None and origin(top.f_code.co_filename) != "unstall":
        place = locate(top, at)
        if place is not None:
            taken = capture_own(top, gap_from, "checkpoint", place, loop, at)
            if taken is not None:
                taken.cpu = clock.read()
                # Parked at a check, it waits for the GIL the watchdog holds (see starvation).
                taken.gil = bool(futex)
                return taken
    chain = outward(top, at)
    del top
    if any(fr.f_code in _OWN_HANDLERS for fr in chain):
        return None  # the thread runs a handler of ours, which takes its own sample
    if is_async_code(chain[0].f_code):
        return None  # a coroutine cut from its callers: caught between two frames
    # Positions as read first: naming the call reads source files, which releases the
    # GIL, and the loop thread may move on meanwhile.
    lastis = [lasti(fr, at) for fr in chain]
    frames = tuple(frame_record(fr.f_code, lineno(fr, at)) for fr in chain)
    files = [fr.file for fr in frames]
    start = callback_start(files, [fr.function for fr in frames])
    index = culprit_index(files, start)
    sample = Sample(now, frames, index)
    try:
        sample.call = call_at(chain[index], lastis[index]) if index >= 0 else None
    except Exception:  # naming the call is best effort: never break sampling
        sample.call = None
    _describe_running(sample, loop, chain, start)
    # Read during the stall: a span or scope the blocked code opened is still open now.
    variables = snapshot(sample.anchor, _running_handle(chain, start))
    sample.context = describe(variables, request_in(chain[start:] if start > 0 else chain))
    sample.cpu = clock.read()
    if futex:
        wait = _gil_wait(chain[-1], lastis[-1], sample.call, index == len(chain) - 1)
        sample.gil, sample.gil_sure = wait != _NOT_THE_GIL, wait == _SURELY_THE_GIL
    return sample


def capture_own(
    top: types.FrameType,
    t: float,
    method: str,
    place: tuple[list[types.FrameType], int] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    at: Positions | None = None,
) -> Sample | None:
    """A sample of the calling thread's own stack from frame ``top`` outwards, dated ``t``.

    ``place`` overrides where the culprit is: ``(frames, line)``, the frames outermost
    first ending with the culprit's, and the line it ran (used when the stack was caught
    just after the culprit's line, see :mod:`unstall._watch.interrupt`). ``at`` holds the
    frames' lines read earlier, when the frames may have moved on since.
    """
    chain = outward(top, at)
    frames = [frame_record(fr.f_code, lineno(fr, at)) for fr in chain]
    if place is not None:
        chain = place[0]
        frames = [frame_record(fr.f_code, lineno(fr, at)) for fr in chain[:-1]]
        frames.append(frame_record(chain[-1].f_code, place[1]))
    files = [fr.file for fr in frames]
    start = callback_start(files, [fr.function for fr in frames])
    index = culprit_index(files, start)
    if index < 0:
        return None
    sample = Sample(t, tuple(frames), index, method=method)
    try:
        if place is None or index < len(chain) - 1:
            sample.call = call_at(chain[index], lasti(chain[index], at))
        else:
            # The located line, not where the frame is now (it may have moved on while
            # this thread read source and let it run): named from the line's text.
            sample.call = _call_on_line(chain[index], place[1])
    except Exception:
        sample.call = None
    loop = loop or asyncio._get_running_loop()
    if loop is not None:
        _describe_running(sample, loop, chain, start)
    return sample


def _call_on_line(frame: types.FrameType, line: int) -> str | None:
    path = callee_from_line(linecache.getline(frame.f_code.co_filename, line))
    return None if path is None else resolve(tuple(path.split(".")), frame)


# A thread blocked in futex is waiting for a lock, a condition... or for the GIL, which the
# watchdog holds while it samples. What the innermost frame is doing tells them apart.
_LOCK_CALLS = (
    "_thread.",
    "threading.",
    "queue.",
    "_queue.",
    "concurrent.futures.",
    "multiprocessing.",
)
_LOCK_FILES = ("threading.py", "queue.py", "_base.py", "synchronize.py", "connection.py")


_NOT_THE_GIL, _MAYBE_THE_GIL, _SURELY_THE_GIL = 0, 1, 2
# Builtins that may wait on a lock of their own (a stream's, the import lock).
_WAITING_BUILTINS = frozenset({"print", "input", "open", "__import__", "breakpoint", "help"})
# Calls that let the GIL go around one system call and take no lock of their own: found in
# futex, they are taking the GIL back (after a write, beside threads that compute).
_SYSCALL_ONLY = frozenset(
    {
        *(f"os.{name}" for name in ("read", "write", "pread", "pwrite", "readv", "writev")),
        *(f"os.{name}" for name in ("fsync", "fdatasync", "stat", "lstat", "fstat", "lseek")),
        *(f"os.{name}" for name in ("open", "close", "access", "listdir", "mkdir", "rmdir")),
        *(f"os.{name}" for name in ("unlink", "remove", "rename", "replace", "truncate")),
        *(f"socket.socket.{name}" for name in ("send", "sendto", "recv", "recv_into")),
        *(f"socket.socket.{name}" for name in ("recvfrom", "recvfrom_into")),
        "time.sleep",
        "select.select",
        "select.poll.poll",
        "select.epoll.poll",
    }
)


def _gil_wait(
    frame: types.FrameType, lasti: int, culprit_call: str | None, culprit_is_innermost: bool
) -> int:
    """What a thread found in ``futex`` at ``frame`` waits for: surely, maybe or not the GIL."""
    if frame.f_code.co_filename.endswith(_LOCK_FILES):
        return _NOT_THE_GIL
    try:
        call = culprit_call if culprit_is_innermost else call_at(frame, lasti)
    except Exception:
        return _NOT_THE_GIL  # unknown: not claimed as a GIL wait
    if call is None:
        return _SURELY_THE_GIL  # not in a call at all: it runs Python
    if call.startswith(_LOCK_CALLS):
        return _NOT_THE_GIL
    if "." not in call and call not in _WAITING_BUILTINS and hasattr(builtins, call):
        return _SURELY_THE_GIL  # sum, sorted, len...: stopped at a switch point after it
    if call in _SYSCALL_ONLY:
        return _SURELY_THE_GIL
    return _MAYBE_THE_GIL


def _describe_running(
    sample: Sample, loop: asyncio.AbstractEventLoop, chain: list[types.FrameType], start: int
) -> None:
    try:
        task = asyncio.current_task(loop)
    except Exception:
        task = None
    if task is None:
        # Between two steps (a sample located in the task's suspended coroutine): the
        # task whose step the running handle made.
        task = _stepped_task(chain)
    if task is not None:
        sample.root, sample.anchor = id(task), task
        sample.task = task.get_name()
        coro = task.get_coro()
        sample.coro = getattr(coro, "__qualname__", None) or type(coro).__qualname__
        return
    if start > 0 and chain[start - 1].f_code.co_name == "_run":
        handle = chain[start - 1].f_locals.get("self")
        if isinstance(handle, asyncio.Handle):
            sample.root, sample.anchor = id(handle), handle
            sample.callback = _handle_repr(handle)
            return
    if start < len(chain):
        sample.root, sample.anchor = id(chain[start]), chain[start]
        code = chain[start].f_code
        sample.callback = f"{code.co_qualname}() at {code.co_filename}:{code.co_firstlineno}"


def _running_handle(chain: list[types.FrameType], start: int) -> object:
    """The ``asyncio.Handle`` whose ``_run`` called the callback, on pure-Python loops."""
    if 0 < start <= len(chain) and chain[start - 1].f_code.co_name == "_run":
        try:
            return chain[start - 1].f_locals.get("self")
        except Exception:
            return None
    return None


def _stepped_task(chain: list[types.FrameType]) -> asyncio.Task[Any] | None:
    for frame in reversed(chain):
        if frame.f_code.co_name == "_run" and is_machinery(
            frame.f_code.co_filename, frame.f_code.co_name
        ):
            handle = frame.f_locals.get("self")
            owner = getattr(getattr(handle, "_callback", None), "__self__", None)
            return owner if isinstance(owner, asyncio.Task) else None
    return None


def _handle_repr(handle: asyncio.Handle) -> str:
    try:
        return repr(handle)
    except Exception:
        return object.__repr__(handle)
