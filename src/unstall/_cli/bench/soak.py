"""``unstall bench --soak SECONDS``: run a mixed load for a while and watch for leaks.

For the whole run, one event loop keeps offloading work the way a busy service does:
bursts of trivial thread calls, short sleeps in threads, calls cancelled while queued or
running, calls that time out, calls that raise, CPU calls in worker processes (some of
them timed out, which kills their worker), and now and then a deliberate stall of the
loop under a watcher. At intervals it prints the process's memory (RSS), its thread
count, its child processes, the calls finished per second and the stalls seen; at the
end, a verdict: how much memory grew after the warm-up interval, whether any thread or
worker process was left behind, and whether the watcher saw every deliberate stall. Exit
status 0 when all is well, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from unstall._cli.bench import BenchOptions
from unstall._exceptions import WorkerDiedError
from unstall._offload.decorator import offload
from unstall._offload.process_pool import ProcessPool
from unstall._offload.thread_pool import DEFAULT_MAX_WORKERS, to_thread
from unstall._report.records import Stall
from unstall._watch.watcher import watch

STALL_S = 0.08
"""A deliberate stall: above the watcher's threshold (below), about once a second."""
THRESHOLD_S = 0.05
PROCESS_WORKERS = 2
GROWTH_ALLOWED_MIB = 32.0
"""RSS growth after the first interval that counts as a leak (allocator noise is far less)."""


def _trivial() -> int:
    return 1


def _raises() -> None:
    raise ValueError("expected by the soak")


def _cpu(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return os.getpid() if total >= 0 else 0


@dataclass
class Counts:
    calls: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    died: int = 0
    stalls: int = 0
    deliberate: int = 0
    worker_pids: set[int] = field(default_factory=set)


@dataclass
class Sample:
    t: float
    rss_mib: float
    threads: int
    children: int
    calls: int
    stalls: int


def _interval(total_s: float) -> float:
    """Report every tenth of the run, at least every 5 s and at most every 0.5 s."""
    return min(5.0, max(0.5, total_s / 10))


_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _is_helper(child: Any, me: int) -> bool:
    """multiprocessing's own forkserver and resource tracker: they live until exit."""
    try:
        return child.ppid() == me and any(h in " ".join(child.cmdline()) for h in _HELPERS)
    except Exception:  # it exited meanwhile
        return False


def _measure(proc: Any, t: float, counts: Counts) -> Sample:
    children = proc.children(recursive=True)
    # Every worker process seen (also those killed between two calls) must be gone at the end.
    counts.worker_pids.update(c.pid for c in children if not _is_helper(c, proc.pid))
    return Sample(
        t=t,
        rss_mib=proc.memory_info().rss / 2**20,
        threads=threading.active_count(),
        children=len(children),
        calls=counts.calls,
        stalls=counts.stalls,
    )


def _line(now: Sample, before: Sample) -> str:
    rate = (now.calls - before.calls) / max(now.t - before.t, 1e-9)
    return (
        f"t={now.t:7.1f}s  rss={now.rss_mib:8.1f} MiB  threads={now.threads:3d}  "
        f"children={now.children:3d}  calls/s={rate:10,.0f}  stalls={now.stalls:4d}"
    )


async def _expect(awaitable: Any, counts: Counts) -> None:
    """Await one call, counting how it ended; none of these outcomes is an error here."""
    try:
        await awaitable
        counts.calls += 1
    except asyncio.CancelledError:
        counts.cancelled += 1
    except TimeoutError:
        counts.timed_out += 1
    except ValueError:
        counts.failed += 1
    except WorkerDiedError:  # not expected, but a soak reports it, not dies of it
        counts.died += 1


async def _thread_round(counts: Counts) -> None:
    await asyncio.gather(*(_expect(to_thread(_trivial), counts) for _ in range(200)))
    sleepers = [to_thread(time.sleep, 0.001 * (i % 5)) for i in range(20)]
    await asyncio.gather(*(_expect(c, counts) for c in sleepers))
    await _expect(to_thread(_raises), counts)
    timed = offload(timeout=0.005)(time.sleep)
    await asyncio.gather(*(_expect(timed(0.05), counts) for _ in range(5)))
    doomed = [asyncio.ensure_future(to_thread(time.sleep, 0.02)) for _ in range(20)]
    await asyncio.sleep(0.001)
    for task in doomed:
        task.cancel()
    await asyncio.gather(*(_expect(t, counts) for t in doomed))


async def _process_round(pool: ProcessPool, counts: Counts, kill: bool) -> None:
    async def one() -> None:
        pid = await pool.run(_cpu, 2000)
        counts.worker_pids.add(pid)

    await asyncio.gather(*(_expect(one(), counts) for _ in range(4)))
    if kill:  # a timed-out process call kills its worker; a fresh one takes its place
        slow = offload(on=pool, timeout=0.01)(time.sleep)
        await _expect(slow(5), counts)


async def _load(pool: ProcessPool, counts: Counts, until: float) -> None:
    next_stall = next_kill = time.monotonic() + 0.5
    while time.monotonic() < until:
        now = time.monotonic()
        kill = now >= next_kill
        if kill:
            next_kill = now + 1.0
        await asyncio.gather(_thread_round(counts), _process_round(pool, counts, kill))
        if time.monotonic() >= next_stall:
            time.sleep(STALL_S)  # the deliberate stall the watcher must see
            counts.deliberate += 1
            next_stall = time.monotonic() + 1.0
        await asyncio.sleep(0)


async def _report(proc: Any, counts: Counts, t0: float, until: float) -> list[Sample]:
    every = _interval(until - t0)
    samples = [_measure(proc, 0.0, counts)]
    while True:
        await asyncio.sleep(max(0.0, min(every, until - time.monotonic())))
        now = time.monotonic()
        samples.append(_measure(proc, now - t0, counts))
        print(_line(samples[-1], samples[-2]), flush=True)
        if now >= until:
            return samples


async def _soak(seconds: float, proc: Any) -> tuple[Counts, list[Sample]]:
    counts = Counts()

    def on_stall(stall: Stall) -> None:
        counts.stalls += 1

    t0 = time.monotonic()
    until = t0 + seconds
    async with ProcessPool(PROCESS_WORKERS, name="unstall-soak") as pool:
        with watch(threshold=THRESHOLD_S, on_stall=on_stall, log=False):
            load = asyncio.create_task(_load(pool, counts, until))
            samples = await _report(proc, counts, t0, until)
            await load
    return counts, samples


def _alive(pid: int) -> bool:
    import psutil

    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def _verdict(counts: Counts, samples: list[Sample], baseline_threads: int) -> tuple[str, bool]:
    warm = samples[1] if len(samples) > 2 else samples[0]
    growth = samples[-1].rss_mib - warm.rss_mib
    minutes = max(samples[-1].t - warm.t, 1e-9) / 60
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in counts.worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(p for p in counts.worker_pids if _alive(p))
    threads = threading.active_count()
    thread_cap = baseline_threads + DEFAULT_MAX_WORKERS + 1  # + one helper still exiting
    ok_memory = growth < GROWTH_ALLOWED_MIB
    ok_threads = threads <= thread_cap
    lines = [
        "",
        f"calls: {counts.calls:,} finished, {counts.failed:,} raised (on purpose), "
        f"{counts.cancelled:,} cancelled, {counts.timed_out:,} timed out, "
        f"{counts.died:,} lost to a dying worker; "
        f"worker processes used: {len(counts.worker_pids)}",
        f"memory: {growth:+.1f} MiB after the first interval ({growth / minutes:+.1f} MiB/min): "
        + ("ok" if ok_memory else f"LEAK? (more than {GROWTH_ALLOWED_MIB:.0f} MiB)"),
        f"threads: {threads} alive after the run (at most {thread_cap} expected): "
        + ("ok" if ok_threads else "LEAK"),
        f"worker processes: {len(left)} left after the pool shut down: "
        + ("ok" if not left else f"LEAK {left}"),
    ]
    # Every deliberate stall must be seen; a busy machine may add stalls of its own.
    ok_stalls = counts.stalls >= counts.deliberate
    lines.append(
        f"stalls: {counts.deliberate} made on purpose, {counts.stalls} seen by the watcher: "
        + ("ok" if ok_stalls else "MISSED SOME")
    )
    ok = ok_memory and ok_threads and not left and ok_stalls
    lines.append("verdict: " + ("no leak" if ok else "PROBLEM (see above)"))
    return "\n".join(lines), ok


def run(opts: BenchOptions) -> int:
    """Soak for ``opts.soak_s`` seconds; print the intervals and the verdict.

    Returns the exit status: 0 when all is well, 1 when something leaked or a deliberate
    stall was missed, 2 for a bad duration or a missing ``psutil``.
    """
    seconds = opts.soak_s
    if not math.isfinite(seconds) or seconds <= 0:
        print("unstall bench: --soak must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        import psutil
    except ImportError:
        print("unstall bench: --soak needs psutil: pip install 'unstall[bench]'", file=sys.stderr)
        return 2
    proc = psutil.Process()
    baseline_threads = threading.active_count()
    print(
        f"# unstall bench --soak {seconds:g}\n\n"
        f"Mixed load: thread calls (bursts, sleeps, failures, timeouts, cancels), process "
        f"calls ({PROCESS_WORKERS} workers, one timed out and killed per second), a "
        f"{STALL_S * 1000:.0f} ms stall of the loop per second under a watcher "
        f"(threshold {THRESHOLD_S * 1000:.0f} ms).\n",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        counts, samples = asyncio.run(_soak(seconds, proc))
        text, ok = _verdict(counts, samples, baseline_threads)
        print(text, flush=True)
        return 0 if ok else 1
    print("\nunstall bench: soak interrupted", file=sys.stderr)
    return 130
