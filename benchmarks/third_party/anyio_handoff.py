"""An informal measure of ``anyio.to_thread.run_sync``'s hand-off, with and without
``unstall.integrations.anyio.install()`` (not part of ``unstall bench``).

Each round runs, for every variant in turn (the order rotates between rounds), one
``anyio.run`` of 64 tasks (``--in-flight N``) each calling ``anyio.to_thread.run_sync`` of
a trivial function, and one of a single task calling it again and again (sequential
calls). Calls/s are printed per round, then the medians.

Variants: ``anyio`` (anyio's own threads), ``unstall`` (this checkout's integration) and,
with ``--before PATH``, the integration module at PATH (an earlier version, e.g. from
``git show main:src/unstall/integrations/anyio.py > /tmp/before.py``), to compare a change
with what it replaces in one run::

    python benchmarks/third_party/anyio_handoff.py --before /tmp/before.py --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread

from unstall.integrations import anyio as unstall_anyio

IN_FLIGHT = 64  # the default of --in-flight


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("unstall_anyio_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--before: cannot load a Python module from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nothing() -> None:
    return None


async def _in_flight(calls: int, in_flight: int) -> float:
    per_task = calls // in_flight
    start = time.perf_counter()

    async def one() -> None:
        for _ in range(per_task):
            await anyio.to_thread.run_sync(_nothing)

    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(one)
    return per_task * in_flight / (time.perf_counter() - start)


async def _sequential(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await anyio.to_thread.run_sync(_nothing)
    return calls / (time.perf_counter() - start)


def _measure(integration: Any, calls: int, in_flight: int) -> tuple[float, float]:
    if integration is not None:
        integration.install()
    try:
        return anyio.run(_in_flight, calls, in_flight), anyio.run(_sequential, calls // 4)
    finally:
        if integration is not None:
            integration.uninstall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=32_000)
    parser.add_argument(
        "--in-flight",
        type=int,
        default=IN_FLIGHT,
        help="calls in flight at once (anyio's default limiter has 40 tokens: more than 40 "
        "measures calls queueing for a token too)",
    )
    parser.add_argument("--before", help="path of an earlier integration module to compare")
    args = parser.parse_args()
    variants: dict[str, Any] = {"anyio": None, "unstall": unstall_anyio}
    if args.before:
        variants["before"] = _load(args.before)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            results[name].append(_measure(variants[name], args.calls, args.in_flight))
        print(
            f"round {round_ + 1}: "
            + ", ".join(f"{n} {results[n][-1][0]:,.0f}/{results[n][-1][1]:,.0f}" for n in names)
        )
    print(f"\nmedian calls/s over {args.rounds} rounds ({args.in_flight} in flight / sequential):")
    for name in names:
        burst = statistics.median(r[0] for r in results[name])
        seq = statistics.median(r[1] for r in results[name])
        print(f"  {name:8} {burst:10,.0f} {seq:10,.0f}")


if __name__ == "__main__":
    main()
