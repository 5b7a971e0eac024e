"""How long a thread has been busy: on a CPU, or runnable and waiting for one.

A stall is ``cpu`` when its thread was busy most of the time, ``wait`` when it slept. The
thread's CPU clock alone misreads a computing thread on a crowded machine (it gets a
fraction of a core), so on Linux the run-queue wait from ``/proc/self/task/N/schedstat``
is added: a runnable thread accrues one or the other, a sleeping thread neither.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable

__all__ = ["ThreadClock"]

# The futex syscall's number in /proc/self/task/N/syscall, where known.
_FUTEX = {"x86_64": b"202", "aarch64": b"98", "i686": b"240", "armv7l": b"240"}.get(
    platform.machine()
)


def _libc_reader() -> Callable[[str], bytes | None] | None:
    """A file reader that keeps the GIL (``ctypes.PyDLL``), or ``None`` without ctypes.

    The loop thread reads its own counters between iterations; ``os.read`` would release
    the GIL, and with another thread computing, getting it back costs the loop a switch
    interval (5 ms) each time: the watcher would slow down the loop it watches.
    """
    try:
        import ctypes

        libc = ctypes.PyDLL(None)
        c_open, c_read, c_close = libc.open, libc.read, libc.close
    except (ImportError, OSError, AttributeError):
        return None
    c_open.argtypes, c_open.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
    c_read.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    c_read.restype = ctypes.c_ssize_t
    c_close.argtypes, c_close.restype = [ctypes.c_int], ctypes.c_int
    buffer = ctypes.create_string_buffer(256)

    def read(path: str) -> bytes | None:
        # One shared buffer is safe: nothing here lets another thread run.
        fd = c_open(path.encode(), os.O_RDONLY)
        if fd < 0:
            return None
        try:
            n = c_read(fd, buffer, 255)
        finally:
            c_close(fd)
        return buffer.raw[:n] if n > 0 else None

    return read


def _read_with_os(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 256)
    except OSError:
        return None
    finally:
        os.close(fd)


_read_holding_the_gil = _libc_reader() or _read_with_os


class ThreadClock:
    """Busy seconds of the thread that created it, readable from any thread."""

    def __init__(self) -> None:
        self._path: str | None = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._clock: int | None = None
        if self._schedstat() is None:
            self._path = None
            try:
                self._clock = time.pthread_getcpuclockid(threading.get_ident())
            except (AttributeError, OSError):
                self._clock = None

    def _schedstat(self) -> float | None:
        both = self.stat()
        return None if both is None else both[0] + both[1]

    def stat(self) -> tuple[float, float] | None:
        """``(on_cpu, run_delay)`` seconds so far from schedstat; ``None`` off Linux.

        ``run_delay`` is the time the thread was runnable but waiting for a CPU: time the
        OS, not the thread's own code, kept it from running.
        """
        if self._path is None:
            return None
        text = _read_holding_the_gil(self._path)
        if text is None:
            return None
        fields = text.split()
        try:
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9
        except (IndexError, ValueError):
            return None

    def in_futex(self) -> bool | None:
        """Whether the thread is in ``futex`` (a lock, a condition, the GIL) now.

        Called by a thread holding the GIL, a thread found on a CPU counts too: it runs
        no Python then, and one waiting for the GIL wakes every switch interval (5 ms) to
        ask again. ``None`` when unknown (not Linux, an unknown architecture).
        """
        if self._path is None or _FUTEX is None:
            return None
        # Holding the GIL, so that the thread cannot take it meanwhile and move on.
        text = _read_holding_the_gil(self._path[: -len("schedstat")] + "syscall")
        if text is None:
            return None
        return text.split(maxsplit=1)[:1] in ([_FUTEX], [b"running"])

    def run_delay(self) -> float | None:
        """Seconds the thread has waited on the run queue so far; ``None`` if unknown."""
        both = self.stat()
        return None if both is None else both[1]

    def read(self) -> float | None:
        """Busy seconds so far, ``None`` if unknown (the thread is gone, or no clock)."""
        if self._path is not None:
            return self._schedstat()
        if self._clock is None:
            return None
        try:
            return time.clock_gettime(self._clock)
        except OSError:
            return None
