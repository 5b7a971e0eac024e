"""``unstall bench``: measure unstall side by side with asyncio and its peers, in one run.

Each section is a module with ``run(opts: BenchOptions) -> list[Table]``; the command
prints every table as Markdown (the form of the tables in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from unstall._cli.bench._table import Table

SECTIONS: dict[str, str] = {
    "threads": "unstall._cli.bench.threads",
    "watcher": "unstall._cli.bench.watcher",
    "process": "unstall._cli.bench.process",
    "frameworks": "unstall._cli.bench.frameworks",
    "startup": "unstall._cli.bench.startup",
}
# Run only when named: they need more than Python (frameworks: wrk, fastapi, uvicorn).
ON_REQUEST = frozenset({"frameworks"})


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False
    """Fewer repetitions: a smoke run for CI, figures not for publishing."""
    loops: tuple[str, ...] = ("asyncio", "uvloop")
    soak_s: float = 0.0


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unstall bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=(
            f"which sections to run (default: {', '.join(s for s in SECTIONS if s not in ON_REQUEST)}; "
            f"only when named: {', '.join(sorted(ON_REQUEST))})"
        ),
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (figures are noisy)")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "both"],
        default="both",
        help="which event loop to measure on (default: both; uvloop only if installed)",
    )
    p.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        default=None,
        help="run the soak benchmark for SECONDS instead of the sections",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(
            f"unstall bench: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    if args.soak is not None and not 0 < args.soak < math.inf:
        print("unstall bench: --soak must be a positive number of seconds", file=sys.stderr)
        return 2
    opts = BenchOptions(quick=args.quick, loops=loops, soak_s=args.soak or 0.0)
    if args.soak is not None:
        module = importlib.import_module("unstall._cli.bench.soak")
        return int(module.run(opts))
    print(f"# unstall bench\n\nMachine: {machine_line()}\n", flush=True)
    for name in args.sections or [s for s in SECTIONS if s not in ON_REQUEST]:
        module = importlib.import_module(SECTIONS[name])
        tables: list[Table] = module.run(opts)
        for table in tables:
            print(table.to_markdown(), end="\n\n", flush=True)
    return 0
