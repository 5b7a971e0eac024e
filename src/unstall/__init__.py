"""unstall: find what stalls your asyncio event loop, and move it off the loop.

Offload blocking work::

    result = await unstall.to_thread(requests.get, url)      # threads, for waiting
    digest = await unstall.to_process(crunch, data)          # processes, for CPU work

    @unstall.offload(limit=4, timeout=10)
    def query(sql: str) -> list[Row]: ...

Find what blocks the loop::

    async with unstall.watch(threshold=0.1) as watcher:
        ...
    print(watcher.stalls)

or, with no code change: ``unstall run app.py``.
"""

from __future__ import annotations

from unstall import from_thread
from unstall._exceptions import BlockingCallError, BlockingCallWarning, ReportError, WorkerDiedError
from unstall._offload.capacity import pool_statistics
from unstall._offload.decorator import offload
from unstall._offload.iterate import iterate
from unstall._offload.limiter import Limiter
from unstall._offload.process_pool import ProcessPool, to_process
from unstall._offload.statistics import PoolStatistics
from unstall._offload.thread_pool import ThreadPool, cancelled, to_thread
from unstall._report.metrics import enable_metrics
from unstall._report.records import Frame, LoopInfo, Report, Stall
from unstall._strict.api import strict
from unstall._version import __version__
from unstall._watch.watcher import Watcher, watch

__all__ = [
    "BlockingCallError",
    "BlockingCallWarning",
    "Frame",
    "Limiter",
    "LoopInfo",
    "PoolStatistics",
    "ProcessPool",
    "Report",
    "ReportError",
    "Stall",
    "ThreadPool",
    "Watcher",
    "WorkerDiedError",
    "__version__",
    "cancelled",
    "enable_metrics",
    "from_thread",
    "iterate",
    "offload",
    "pool_statistics",
    "strict",
    "to_process",
    "to_thread",
    "watch",
]
