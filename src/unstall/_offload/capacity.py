"""The default pools' statistics, and every live pool's, in one place."""

from __future__ import annotations

from unstall._offload import process_pool, thread_pool
from unstall._offload.statistics import PoolStatistics

__all__ = ["all_pool_statistics", "pool_statistics"]


def pool_statistics() -> dict[str, PoolStatistics]:
    """Statistics of the default pools: ``"thread"`` (behind :func:`unstall.to_thread` and
    ``offload()``) and, once it was used, ``"process"`` (behind :func:`unstall.to_process`
    and ``offload(on="process")``). See :class:`~unstall.PoolStatistics`."""
    stats = {"thread": thread_pool.default_thread_pool().statistics()}
    process = process_pool._default
    if process is not None and not process._closed:
        stats["process"] = process.statistics()
    return stats


def all_pool_statistics() -> list[PoolStatistics]:
    """Statistics of every pool alive in this process, thread pools first."""
    pools: list[thread_pool.ThreadPool | process_pool.ProcessPool] = [
        *thread_pool._pools,
        *process_pool._pools,
    ]
    return [pool.statistics() for pool in pools]
