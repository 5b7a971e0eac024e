"""What a pool is doing now and has done: the snapshot ``statistics()`` returns.

Both pools count per worker (a counter only its own worker writes, so no lock on the hot
path) and add the counts up when asked; a snapshot is therefore consistent per counter,
not across counters taken at the same instant.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

__all__ = ["QUEUE_WAIT_BUCKETS", "PoolStatistics", "WaitClock"]

QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
)  # fmt: skip
"""Upper bounds, in seconds, of the queue-wait histogram (a last bucket counts the rest)."""
_FIRST_BOUND = QUEUE_WAIT_BUCKETS[0]


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`~unstall.ThreadPool` or :class:`~unstall.ProcessPool`.

    A pool is *saturated* when every worker it may have is busy and calls are queued:
    those calls wait for a worker. ``longest_queue_wait_s`` tells how long the oldest has
    waited so far; ``max_queue_wait_s`` the longest any call waited since the pool started.
    """

    name: str
    """The pool's name (thread or process name prefix)."""
    kind: Literal["thread", "process"]
    max_workers: int
    """The cap on workers."""
    workers_busy: int
    """Workers running a call (or between two calls)."""
    workers_idle: int
    """Workers alive and waiting for a call."""
    calls_queued: int
    """Calls submitted and waiting for a worker now."""
    longest_queue_wait_s: float
    """How long the oldest queued call has waited so far (0 when none is queued)."""
    calls_completed: int
    """Calls that ran to their end (returned or raised), whether or not anyone still
    waited for them."""
    calls_cancelled: int
    """Calls whose caller was cancelled (while queued or running), timeouts included."""
    calls_timed_out: int
    """Calls whose ``timeout`` (of ``offload`` / ``call``) expired."""
    worker_restarts: int
    """Workers started to replace one that exited: for processes, one that died, was
    killed by a cancel or timeout, or was recycled (``max_tasks_per_worker``,
    ``max_memory_per_worker``); for threads, one that retired after ``idle_timeout``."""
    max_queued: int
    """The most calls queued at once since the pool started."""
    max_queue_wait_s: float
    """The longest time a call waited for a worker, since the pool started."""
    queue_wait_sum_s: float
    """Seconds waited for a worker, over every call that started."""
    queue_wait_buckets: tuple[int, ...]
    """How many started calls waited at most each bound of :data:`QUEUE_WAIT_BUCKETS`
    (not cumulative), plus one last count for longer waits."""

    @property
    def workers_alive(self) -> int:
        """Workers alive now (busy and idle)."""
        return self.workers_busy + self.workers_idle

    @property
    def saturated(self) -> bool:
        """Every worker the pool may have is busy and calls wait for one."""
        return self.calls_queued > 0 and self.workers_busy >= self.max_workers


class WaitClock:
    """One worker's queue-wait tally: only that worker adds to it."""

    __slots__ = ("buckets", "completed", "max", "sum")

    def __init__(self) -> None:
        self.completed = 0
        self.sum = 0.0
        self.max = 0.0
        self.buckets = [0] * (len(QUEUE_WAIT_BUCKETS) + 1)

    def started(self, waited: float) -> None:
        self.sum += waited
        if waited <= _FIRST_BOUND:  # the usual case, without the search
            self.buckets[0] += 1
            return
        if waited > self.max:
            self.max = waited
        self.buckets[bisect.bisect_left(QUEUE_WAIT_BUCKETS, waited)] += 1

    def add(self, other: WaitClock) -> None:
        self.completed += other.completed
        self.sum += other.sum
        self.max = max(self.max, other.max)
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
