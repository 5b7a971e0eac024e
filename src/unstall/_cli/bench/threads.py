"""Bench section "threads": to_thread against asyncio.to_thread and its peers.

Three figures per implementation, on each event loop:

- latency: sequential awaits of a trivial function (one call in flight), per call;
- throughput: 64 coroutines each awaiting calls back to back (64 calls in flight);
- one offload per new task: 20,000 tasks gathered, 64 at a time past an
  ``asyncio.Semaphore``, each offloading once (a server: one task per request). Here the
  loop's own work (creating and waking tasks, the semaphore, its garbage collection)
  costs about as much as the offload; the harness alone, with a loop round trip instead of
  an offload, is measured too, for scale.

Implementations run interleaved, round after round (the order rotates each round), and each
figure is the median of the rounds, so a noisy neighbour hits every implementation alike.
Latency rounds all come before throughput rounds (see ``_measure``).

Sequential latency on several CPUs is dominated by where the kernel places the woken
worker: a wake-up across CPUs (an inter-processor interrupt, slow in a VM) costs more than
everything the library does. So latency is also measured in a child process pinned to one
CPU, where that placement is the same for every implementation and what remains is the
library's own cost per call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys

from unstall._cli.bench import BenchOptions, _timing
from unstall._cli.bench._table import Table, fmt_ratio, fmt_us
from unstall._cli.bench._timing import Call
from unstall._offload.thread_pool import ThreadPool, to_thread

IN_FLIGHT = 64
BASELINE = "asyncio.to_thread"
HARNESS = "(no offload: the harness alone)"


def _trivial() -> int:
    return 1


def _implementations(loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Call], list[str]]:
    """Name -> a zero-argument async callable running ``_trivial`` in a thread."""
    impls: dict[str, Call] = {
        "unstall.to_thread": lambda: to_thread(_trivial),
        BASELINE: lambda: asyncio.to_thread(_trivial),
        "loop.run_in_executor": lambda: loop.run_in_executor(None, _trivial),
    }
    missing = []
    if importlib.util.find_spec("anyio"):
        import anyio.to_thread

        impls["anyio.to_thread.run_sync"] = lambda: anyio.to_thread.run_sync(_trivial)
    else:
        missing.append("anyio")
    if importlib.util.find_spec("asyncer"):
        from asyncer import asyncify

        asyncified = asyncify(_trivial)
        impls["asyncer.asyncify"] = asyncified
    else:
        missing.append("asyncer")
    if importlib.util.find_spec("asgiref"):
        from asgiref.sync import sync_to_async

        impls["asgiref sync_to_async"] = sync_to_async(_trivial, thread_sensitive=False)
    else:
        missing.append("asgiref")
    return impls, missing


async def _new_tasks(rounds: int, n_tasks: int) -> dict[str, float]:
    """Median calls per second of the one-offload-per-new-task pattern, interleaved."""
    impls, _ = _implementations(asyncio.get_running_loop())
    impls[HARNESS] = _timing.loop_round_trip
    names = list(impls)
    for call in impls.values():
        await _timing.new_tasks(call, n_tasks // 10, IN_FLIGHT)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _timing.rotation(names, r):
            samples[name].append(await _timing.new_tasks(impls[name], n_tasks, IN_FLIGHT))
    return {n: statistics.median(v) for n, v in samples.items()}


def _new_tasks_table(kind: str, rate: dict[str, float], rounds: int, n_tasks: int) -> Table:
    table = Table(
        title=f"Threads: one offload per new task, on the {kind} loop",
        columns=["implementation", "calls per second", "vs asyncio.to_thread"],
    )
    for name, value in rate.items():
        table.add(name, f"{value:,.0f} calls/s", fmt_ratio(value / rate[BASELINE]))
    table.notes += [
        f"{n_tasks:,} tasks gathered, {IN_FLIGHT} in flight through an asyncio.Semaphore, "
        f"each awaiting one trivial call; median of {rounds} interleaved rounds; higher is "
        "better",
        f"{HARNESS}: each task awaits a future resolved by the loop itself (no thread), "
        "for scale: what the pattern costs the loop before any offload",
    ]
    return table


async def _measure(
    loop: asyncio.AbstractEventLoop, rounds: int, n_latency: int, per_task: int
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    impls, missing = _implementations(loop)
    names = list(impls)
    for call in impls.values():  # warm up: threads started, code paths hot
        await _timing.throughput(call, 3, IN_FLIGHT)
    latency: dict[str, list[float]] = {name: [] for name in names}
    throughput: dict[str, list[float]] = {name: [] for name in names}
    # All latency rounds first: right after a burst the scheduler keeps threads spread over
    # CPUs for a while (measured on a 2-vCPU VM: the next 500 to 3,500 sequential calls,
    # every implementation alike), so a latency round there would measure the aftermath
    # of the previous implementation's burst, not sequential calls.
    for r in range(rounds):
        for name in _timing.rotation(names, r):
            latency[name].append(await _timing.latency(impls[name], n_latency))
    for r in range(rounds):
        for name in _timing.rotation(names, r):
            throughput[name].append(await _timing.throughput(impls[name], per_task, IN_FLIGHT))
    return (
        {n: statistics.median(v) for n, v in latency.items()},
        {n: statistics.median(v) for n, v in throughput.items()},
        missing,
    )


async def _latencies(rounds: int, n_latency: int) -> dict[str, float]:
    impls, _ = _implementations(asyncio.get_running_loop())
    names = list(impls)
    for call in impls.values():
        await _timing.latency(call, 50)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _timing.rotation(names, r):
            samples[name].append(await _timing.latency(impls[name], n_latency))
    return {n: statistics.median(v) for n, v in samples.items()}


def _pinned_child(rounds: int, n_latency: int) -> None:
    """In the child process: pin to one CPU (threads started later inherit it), measure."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps(asyncio.run(_latencies(rounds, n_latency))))


def _one_cpu_table(rounds: int, n_latency: int) -> Table:
    table = Table(
        title="Threads: latency per call on one CPU (the library's own cost)",
        columns=["implementation", "latency per call", "latency vs asyncio.to_thread"],
    )
    if not hasattr(os, "sched_setaffinity"):
        table.notes.append("needs os.sched_setaffinity (Linux): not measured here")
        return table
    code = f"from unstall._cli.bench.threads import _pinned_child; _pinned_child({rounds}, {n_latency})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        table.notes.append(f"the pinned child failed: {proc.stderr.strip().splitlines()[-1:]}")
        return table
    latency: dict[str, float] = json.loads(proc.stdout)
    for name, value in latency.items():
        table.add(name, fmt_us(value), fmt_ratio(value / latency[BASELINE]))
    table.notes.append(
        f"asyncio loop, a child process pinned to one CPU; median of {rounds} interleaved "
        f"rounds of {n_latency} sequential awaits; lower is better"
    )
    return table


def _new_loop(kind: str) -> asyncio.AbstractEventLoop | None:
    if kind == "uvloop":
        if importlib.util.find_spec("uvloop") is None:
            return None
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def run(opts: BenchOptions) -> list[Table]:
    """Measure every implementation on every loop of ``opts.loops``; one table per loop."""
    rounds, n_latency, per_task = (3, 300, 10) if opts.quick else (9, 2000, 150)
    n_tasks = 1000 if opts.quick else 20_000
    tables = []
    for kind in opts.loops:
        loop = _new_loop(kind)
        table = Table(
            title=f"Threads: a trivial call, on the {kind} loop",
            columns=[
                "implementation",
                "latency per call",
                "latency vs asyncio.to_thread",
                f"throughput ({IN_FLIGHT} in flight)",
                "throughput vs asyncio.to_thread",
            ],
        )
        if loop is None:
            table.notes.append(f"{kind} is not installed: pip install '.[bench]' to measure it")
            tables.append(table)
            continue
        try:
            latency, throughput, missing = loop.run_until_complete(
                _measure(loop, rounds, n_latency, per_task)
            )
            new_tasks = loop.run_until_complete(_new_tasks(rounds, n_tasks))
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
        for name in latency:
            table.add(
                name,
                fmt_us(latency[name]),
                fmt_ratio(latency[name] / latency[BASELINE]),
                f"{throughput[name]:,.0f} calls/s",
                fmt_ratio(throughput[name] / throughput[BASELINE]),
            )
        table.notes += [
            f"median of {rounds} interleaved rounds; latency: {n_latency} sequential awaits, "
            f"throughput: {IN_FLIGHT} tasks x {per_task} awaits"
            + (" (--quick: noisy, not for publishing)" if opts.quick else ""),
            "latency ratio: lower is better; throughput ratio: higher is better",
            f"threads: unstall up to {ThreadPool().max_workers}; asyncio's default "
            f"executor up to {min(32, (os.cpu_count() or 1) + 4)}; anyio up to 40",
        ]
        if missing:
            table.notes.append(f"not installed, not measured: {', '.join(missing)}")
        tables.append(table)
        tables.append(_new_tasks_table(kind, new_tasks, rounds, n_tasks))
    tables.append(_one_cpu_table(rounds, n_latency))
    return tables
