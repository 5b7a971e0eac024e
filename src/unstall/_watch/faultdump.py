"""The faulthandler route (opt-in): stacks of C code that holds the GIL, from a C thread.

While C code holds the GIL (``sum(range(10**9))``, a catastrophic regex, ``json.dumps``
of a huge object), no Python thread runs, the watchdog included. The watchdog's gap
weighting (:mod:`unstall._watch.attribution`) usually still names the right line: CPython checks
for a pending GIL request right after a call returns, so the watchdog's first sample lands
on the line that made the C call. This module adds a second witness:
``faulthandler.dump_traceback_later`` dumps every thread's stack from a C thread that needs
no GIL. The watchdog uses it as a dead man's switch: it re-arms the timer (``timeout``
below the threshold) well before it expires, so the timer fires only when the watchdog
itself could not run for that long. The dump is written to an unlinked temporary file,
read back when the watchdog runs again, and each thread's stack becomes a sample at the
time it fired.

It is OFF by default (``UNSTALL_FAULTHANDLER=1`` or :func:`enable` turns it on): the dump
reads other threads' frames without the GIL, which is safe while they are stuck in C code
but not if the watchdog was merely descheduled by a busy machine while the loop ran
Python; we saw that crash a process (SIGSEGV) once in six benchmark runs under load.

The timer is process-wide. When enabled, ``faulthandler.dump_traceback_later`` and
``cancel_dump_traceback_later`` are wrapped so that someone else arming it (pytest's
``faulthandler_timeout``, the program itself) is noticed: the watcher then leaves the timer
alone, falls back on the sampler, and says so once in the log.
"""

from __future__ import annotations

import faulthandler
import functools
import linecache
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unstall._report.records import Frame
from unstall._watch.callname import callee_from_line
from unstall._watch.culprit import callback_start, culprit_index
from unstall._watch.sampler import Sample

__all__ = ["Dump", "available", "disarm", "enable", "forget_after_fork", "parse", "tick"]

_log = logging.getLogger("unstall")
_THREAD_RE = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME_RE = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
TIMEOUT_FRACTION = 0.8
"""The timer fires after this fraction of the threshold without a re-arm."""

_original_arm: Callable[..., None] = faulthandler.dump_traceback_later
_original_cancel: Callable[[], None] = faulthandler.cancel_dump_traceback_later
_foreign = False
_said_foreign = False
_enabled = False
_fds: list[int | None] = [None, None]
"""Two dump files, used in turn: the timer is armed on one while the other is read."""
_current = 0
"""The file the armed timer writes to."""
_armed_at: float | None = None
_timeout = 0.0


@dataclass(frozen=True, slots=True)
class Dump:
    """One faulthandler dump: each thread's stack (outermost first) at monotonic time ``t``."""

    t: float
    threads: dict[int, tuple[tuple[Frame, ...], bool]]
    """thread id -> (frames, truncated)."""

    def sample(self, thread_id: int) -> Sample | None:
        found = self.threads.get(thread_id)
        if not found or not found[0]:
            return None
        frames, truncated = found
        files = [f.file for f in frames]
        start = callback_start(files, [f.function for f in frames])
        index = culprit_index(files, start)
        call = None
        if index >= 0:
            call = callee_from_line(linecache.getline(frames[index].file, frames[index].line))
        return Sample(self.t, frames, index, call=call, method="faulthandler", truncated=truncated)


_FAULTHANDLER_MAX_FRAMES = 100


def parse(text: str, t: float) -> Dump:
    """Parse faulthandler's output (``Thread 0x... (most recent call first):`` blocks)."""
    threads: dict[int, tuple[tuple[Frame, ...], bool]] = {}
    ident: int | None = None
    frames: list[Frame] = []
    truncated = False

    def close() -> None:
        if ident is not None:
            # faulthandler writes at most 100 frames a thread; 3.13.0 drops its "..." line.
            cut = truncated or len(frames) >= _FAULTHANDLER_MAX_FRAMES
            threads[ident] = (tuple(reversed(frames)), cut)

    for line in text.splitlines():
        head = _THREAD_RE.match(line)
        if head:
            close()
            ident, frames, truncated = int(head.group(1), 16), [], False
            continue
        frame = _FRAME_RE.match(line)
        if frame and ident is not None:
            frames.append(Frame(frame.group(1), int(frame.group(2)), frame.group(3).strip()))
        elif line.strip() == "..." and ident is not None:
            truncated = True
    close()
    return Dump(t, threads)


# -- noticing someone else's use of the timer ------------------------------------------------


@functools.wraps(_original_arm)
def _arm_wrapper(*args: Any, **kwargs: Any) -> None:
    global _foreign, _armed_at
    _foreign, _armed_at = True, None
    _original_arm(*args, **kwargs)


@functools.wraps(_original_cancel)
def _cancel_wrapper() -> None:
    global _foreign, _armed_at
    _foreign, _armed_at = False, None
    _original_cancel()


def enable(on: bool = True) -> None:
    """Turn the faulthandler route on (or off) for every watcher in the process."""
    global _enabled
    if on:
        faulthandler.dump_traceback_later = _arm_wrapper
        faulthandler.cancel_dump_traceback_later = _cancel_wrapper
    elif _armed_at is not None and not _foreign:
        disarm()
    _enabled = on


if os.environ.get("UNSTALL_FAULTHANDLER", "0") == "1":
    enable()


def available() -> bool:
    """Whether the watcher may use the timer now (enabled, and nobody else armed it)."""
    return _enabled and not _foreign


# -- the watchdog's side ---------------------------------------------------------------------


def _file(index: int) -> int:
    """One of the two dump files (unlinked temporary files), made on first use."""
    fd = _fds[index]
    if fd is None:
        fd, path = tempfile.mkstemp(prefix="unstall-faulthandler-")
        os.close(fd)
        fd = _fds[index] = os.open(path, os.O_RDWR | os.O_APPEND)
        os.unlink(path)
    return fd


def _collect(index: int, fired_at: float) -> list[Dump]:
    """Read what a cancelled or fired timer wrote in file ``index``, then empty it."""
    fd = _file(index)
    if os.fstat(fd).st_size == 0:
        return []
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.ftruncate(fd, 0)
    return [parse(b"".join(chunks).decode("utf-8", "replace"), fired_at)]


def tick(now: float, active: bool, threshold: float) -> list[Dump]:
    """Re-arm the timer when due; return any dump it wrote. Call only from the watchdog."""
    global _armed_at, _timeout, _said_foreign, _current
    if not _enabled:
        return []
    if _foreign:
        if active and not _said_foreign:
            _said_foreign = True
            _log.warning(
                "unstall: faulthandler's timer is in use by someone else (e.g. pytest's "
                "faulthandler_timeout); stalls in C code holding the GIL are attributed "
                "by the sampler only, which may name the line after the C call"
            )
        return []
    timeout = max(threshold * TIMEOUT_FRACTION, 0.02)
    if _armed_at is not None and active and now - _armed_at < timeout / 2:
        return []
    # Re-armed on the other file before the expired timer's file is read: reading releases
    # the GIL, and C code the loop thread starts meanwhile must find a timer armed.
    expired = None if _armed_at is None else _armed_at + _timeout
    if _armed_at is not None:
        _original_cancel()
        _armed_at = None
    previous = _current
    if active:
        try:
            _original_arm(timeout, repeat=False, file=_file(1 - previous), exit=False)
        except (OSError, RuntimeError, ValueError) as exc:
            _disable(f"cannot arm faulthandler's timer ({exc})")
        else:
            _armed_at, _timeout, _current = now, timeout, 1 - previous
    return [] if expired is None else _collect(previous, expired)


def _disable(reason: str) -> None:
    global _enabled
    _enabled = False
    _log.warning("unstall: %s; stalls in C code are attributed by the sampler only", reason)


def forget_after_fork() -> None:
    """In a forked child: the timer and its file belong to the parent; start afresh."""
    global _armed_at, _fds
    _armed_at, _fds = None, [None, None]


def disarm() -> None:
    """Cancel our timer (when the last watcher stops); keeps someone else's."""
    global _armed_at
    if _armed_at is not None and not _foreign:
        _original_cancel()
        _collect(_current, _armed_at + _timeout)  # emptied for the next watcher
        _armed_at = None
