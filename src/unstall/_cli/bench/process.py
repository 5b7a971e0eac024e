"""Bench section "process": to_process against ProcessPoolExecutor and its peers.

Per implementation, with the same number of worker processes (``os.cpu_count()``):

- latency: sequential awaits of a trivial function (one call in flight), per call;
- throughput: 32 coroutines each awaiting calls back to back (32 calls in flight).

Every pool is started and warmed up first (start-up is not measured); implementations run
interleaved, round after round, and each figure is the median of the rounds.

A second table shows the loop's own lag (how late a 1 ms heartbeat wakes up) while
CPU-bound pure-Python work runs in processes, and while the same work runs in threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from unstall._cli.bench import BenchOptions, _timing
from unstall._cli.bench._table import Table, fmt_ratio, fmt_us
from unstall._cli.bench._timing import Call
from unstall._offload.process_pool import to_process

IN_FLIGHT = 32
BASELINE = "ProcessPoolExecutor"


def _trivial() -> int:
    return 1


def _spin(n: int) -> int:
    """CPU-bound pure Python: holds the GIL of whichever process runs it."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def _implementations(
    loop: asyncio.AbstractEventLoop, workers: int, stack: ExitStack
) -> tuple[dict[str, Call], list[str]]:
    """Name -> a zero-argument async callable running ``_trivial`` in a worker process."""
    ctx = multiprocessing.get_context("forkserver")
    ppe = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx))
    impls: dict[str, Call] = {
        "unstall.to_process": lambda: to_process(_trivial),
        BASELINE: lambda: loop.run_in_executor(ppe, _trivial),
    }
    missing = []
    if importlib.util.find_spec("loky"):
        from loky import get_reusable_executor

        lky = get_reusable_executor(max_workers=workers)
        stack.callback(lky.shutdown, wait=True)
        impls["loky (reusable executor)"] = lambda: asyncio.wrap_future(lky.submit(_trivial))
    else:
        missing.append("loky")
    if importlib.util.find_spec("anyio"):
        import anyio
        import anyio.to_process

        limiter = anyio.CapacityLimiter(workers)
        impls["anyio.to_process.run_sync"] = lambda: anyio.to_process.run_sync(
            _trivial, limiter=limiter
        )
    else:
        missing.append("anyio")
    if importlib.util.find_spec("pebble"):
        import pebble

        peb = pebble.ProcessPool(max_workers=workers, context=ctx)
        stack.callback(peb.join)
        stack.callback(peb.close)
        impls["pebble.ProcessPool"] = lambda: asyncio.wrap_future(peb.schedule(_trivial))
    else:
        missing.append("pebble")
    return impls, missing


async def _speed(opts: BenchOptions, loop_name: str) -> Table:
    loop = asyncio.get_running_loop()
    workers = os.cpu_count() or 1
    rounds = 2 if opts.quick else 7
    n_latency = 50 if opts.quick else 1000
    per_task = 10 if opts.quick else 60
    with ExitStack() as stack:
        impls, missing = _implementations(loop, workers, stack)
        for name, call in list(impls.items()):
            try:
                await call()  # one call first: a broken implementation fails alone
            except Exception as exc:
                del impls[name]
                missing.append(f"{name} (failed: {type(exc).__name__}: {exc})")
                continue
            await asyncio.gather(*(call() for _ in range(workers * 4)))  # start every worker
        lat: dict[str, list[float]] = {name: [] for name in impls}
        thr: dict[str, list[float]] = {name: [] for name in impls}
        names = list(impls)
        for r in range(rounds):
            for name in _timing.rotation(names, r):
                lat[name].append(await _timing.latency(impls[name], n_latency))
                thr[name].append(await _timing.throughput(impls[name], per_task, IN_FLIGHT))
    table = Table(
        title=f"Processes: per-call latency and throughput ({loop_name})",
        columns=[
            "implementation",
            "latency",
            "vs PPE",
            f"calls/s ({IN_FLIGHT} in flight)",
            "vs PPE",
        ],
    )
    base_lat = statistics.median(lat[BASELINE])
    base_thr = statistics.median(thr[BASELINE])
    for name in impls:
        latency, rate = statistics.median(lat[name]), statistics.median(thr[name])
        table.add(
            name,
            fmt_us(latency),
            fmt_ratio(latency / base_lat),
            f"{rate:,.0f}",
            fmt_ratio(rate / base_thr),
        )
    table.notes.append(
        f"{workers} worker processes each (forkserver), a trivial function; median of "
        f"{rounds} interleaved rounds. Latency: lower is better; throughput: higher is better."
    )
    if missing:
        table.notes.append(f"skipped (not installed or failed): {'; '.join(missing)}")
    return table


async def _heartbeat_lag(work: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """Run ``work`` while a 1 ms heartbeat measures how late the loop wakes it."""
    late: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            expected = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            late.append(max(0.0, time.perf_counter() - expected))

    beat = asyncio.create_task(heartbeat())
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    done.set()
    await beat
    late.sort()
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else 0.0
    return elapsed, max(late, default=0.0), p99


async def _lag(opts: BenchOptions, loop_name: str) -> Table:
    workers = os.cpu_count() or 1
    jobs = workers * 2
    spin = 300_000 if opts.quick else 2_000_000
    await asyncio.gather(*(to_process(_trivial) for _ in range(workers * 2)))  # warm
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "unstall.to_process (processes)": lambda: asyncio.gather(
            *(to_process(_spin, spin) for _ in range(jobs))
        ),
        "asyncio.to_thread (threads)": lambda: asyncio.gather(
            *(asyncio.to_thread(_spin, spin) for _ in range(jobs))
        ),
    }
    table = Table(
        title=f"Processes: the loop's lag while CPU work runs ({loop_name})",
        columns=["where the work runs", "work took", "heartbeat late, max", "p99"],
    )
    for name, work in ways.items():
        elapsed, worst, p99 = await _heartbeat_lag(work)
        table.add(name, f"{elapsed * 1e3:,.0f} ms", f"{worst * 1e3:.2f} ms", f"{p99 * 1e3:.2f} ms")
    table.notes.append(
        f"{jobs} pure-Python jobs ({spin:,} iterations each) on {workers} CPUs; a 1 ms "
        "heartbeat on the loop records how late it wakes up. Threads share the GIL with "
        "the loop; processes do not."
    )
    return table


async def _all(opts: BenchOptions, loop_name: str) -> list[Table]:
    return [await _speed(opts, loop_name), await _lag(opts, loop_name)]


def run(opts: BenchOptions) -> list[Table]:
    tables: list[Table] = []
    loops = opts.loops[:1] if opts.quick else opts.loops
    for loop_name in loops:
        if loop_name == "uvloop":
            if not importlib.util.find_spec("uvloop"):
                continue
            import uvloop

            tables += uvloop.run(_all(opts, loop_name))
        else:
            tables += asyncio.run(_all(opts, loop_name))
    return tables
