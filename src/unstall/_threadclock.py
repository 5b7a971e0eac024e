"""How long a thread has been busy: on a CPU, or runnable and waiting for one.

A stall is ``cpu`` when its thread was busy most of the time, ``wait`` when it slept. The
thread's CPU clock alone misreads a computing thread on a crowded machine (it gets a
fraction of a core), so on Linux the run-queue wait from ``/proc/self/task/N/schedstat``
is added: a runnable thread accrues one or the other, a sleeping thread neither.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["ThreadClock"]


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
        if self._path is None:
            return None
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fields = os.read(fd, 256).split()
        finally:
            os.close(fd)
        try:
            return (int(fields[0]) + int(fields[1])) / 1e9
        except (IndexError, ValueError):
            return None

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
