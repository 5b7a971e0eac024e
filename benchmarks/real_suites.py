"""``pytest`` vs ``pytest --unstall`` on real projects' own test suites, side by side.

Each suite comes from its PyPI sdist (which ships ``tests/``), is installed with its test
requirements and this checkout of unstall (editable) into its own venv, and is run
``--rounds`` times in each mode, the modes interleaved (plain, --unstall, plain, ...) so
that a busy machine weighs on both alike. Prints a Markdown table of medians: wall time,
the CPU time of the pytest process (user + system, less sensitive to other load on the
machine), and each mode's outcome counts.

    python benchmarks/real_suites.py                       # starlette and httpx, 3 rounds
    python benchmarks/real_suites.py --suites starlette --rounds 5 --out results/x.md
    python benchmarks/real_suites.py --suites fastapi --rounds 1 --extra=-x
    python benchmarks/real_suites.py --own-network    # a private loopback (Linux, root)

Needs the network to reach PyPI (``pip download``), and about 400 MB per suite.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    extras: str
    pins: tuple[str, ...]
    args: tuple[str, ...] = ()


# Test pins: the suite's requirements.txt where the sdist ships one (starlette), else the
# versions current when the release came out. anyio 4.10 predates the deprecation
# warnings (errors under these suites' filterwarnings) that later anyio releases add.
SUITES = {
    "starlette": Suite(
        "starlette",
        "0.47.3",
        "full",
        ("pytest==8.4.1", "trio==0.30.0", "anyio==4.10.0"),
    ),
    "httpx": Suite(
        "httpx",
        "0.28.1",
        "brotli,cli,http2,socks,zstd",
        (
            "pytest==8.4.1",
            "trio==0.30.0",
            "anyio==4.10.0",
            "chardet==5.2.0",
            "trustme==1.2.0",
            "uvicorn==0.32.1",
            "click==8.1.8",
        ),
    ),
    "fastapi": Suite(
        "fastapi",
        "0.165.0",
        "all",
        (
            "pytest>=8",
            "anyio[trio]",
            "dirty-equals",
            "inline-snapshot",
            "sqlmodel",
            "flask",
            "PyJWT",
            "pwdlib[argon2]",
            "passlib[bcrypt]",
            "pyyaml",
            "strawberry-graphql",
        ),
    ),
}


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    outcome: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    """``FAILED``/``ERROR`` lines' test ids."""


def sh(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def prepare(suite: Suite, work: Path, python: str) -> tuple[Path, Path]:
    """Download, unpack and install ``suite``; return its source dir and its python."""
    src = work / f"{suite.name}-{suite.version}"
    venv = work / f"venv-{suite.name}"
    py = venv / "bin" / "python"
    if not src.exists():
        sdists = work / "sdists"
        sh(
            [
                python,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{suite.name}=={suite.version}",
                "-d",
                str(sdists),
            ]
        )
        (archive,) = sdists.glob(f"{suite.name}-{suite.version}.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    if not py.exists():
        sh([python, "-m", "venv", str(venv)])
        sh(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "-e",
                f"{src}[{suite.extras}]",
                *suite.pins,
                "-e",
                str(REPO),
            ]
        )
    return src, py


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def run_once(py: Path, src: Path, args: list[str], own_network: bool) -> Run:
    command = [str(py), "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args]
    if own_network:  # a private loopback: httpx's tests bind port 8000, which may be taken
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "-", *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        command,
        cwd=src,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    outcome: dict[str, int] = {}
    for count, kind in _COUNT.findall(tail):
        outcome["errors" if kind.startswith("error") else kind] = int(count)
    failed = {
        f"{line.split()[0]} {line.split()[1]}"
        for line in proc.stdout.splitlines()
        if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1
    }
    return Run(wall, cpu, outcome, failed)


def describe(outcome: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in outcome.items()) or "?"


def measure(
    suite: Suite, work: Path, python: str, rounds: int, extra: list[str], own_network: bool
) -> str:
    src, py = prepare(suite, work, python)
    modes = {"plain": [*suite.args, *extra], "--unstall": [*suite.args, "--unstall", *extra]}
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    for i in range(rounds):
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        for mode in order:
            run = run_once(py, src, modes[mode], own_network)
            runs[mode].append(run)
            print(
                f"{suite.name} {mode}: {run.wall_s:.1f} s wall, {run.cpu_s:.1f} s CPU, "
                f"{describe(run.outcome)}",
                file=sys.stderr,
            )
    plain, watched = runs["plain"], runs["--unstall"]
    ever_plain = set().union(*(r.failed for r in plain))
    for test in sorted(set().union(*(r.failed for r in watched)) - ever_plain):
        print(f"{suite.name}: only under --unstall: {test}", file=sys.stderr)
    wall = [statistics.median(r.wall_s for r in rs) for rs in (plain, watched)]
    cpu = [statistics.median(r.cpu_s for r in rs) for rs in (plain, watched)]
    return (
        f"| {suite.name} {suite.version} | {wall[0]:.1f} s | {wall[1]:.1f} s | "
        f"**{wall[1] / wall[0]:.2f}x** | {cpu[0]:.1f} s | {cpu[1]:.1f} s | "
        f"{cpu[1] / cpu[0]:.2f}x | {describe(plain[-1].outcome)} | "
        f"{describe(watched[-1].outcome)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="starlette,httpx", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/unstall-real-suites"))
    parser.add_argument("--python", default=sys.executable, help="makes the venvs")
    parser.add_argument("--extra", action="append", default=[], help="more pytest arguments")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--own-network",
        action="store_true",
        help="run each suite in its own network namespace (Linux, root: `unshare -n`), so "
        "that another process on the machine holding a port the tests bind cannot hang them",
    )
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(SUITES[name], opts.work, opts.python, opts.rounds, opts.extra, opts.own_network)
        for name in opts.suites.split(",")
    ]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    lines = [
        f"<!-- benchmarks/real_suites.py --rounds {opts.rounds}, "
        f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {' '.join(load)} -->",
        "| suite | plain pytest | `pytest --unstall` | wall ratio | plain CPU | "
        "`--unstall` CPU | CPU ratio | plain outcome | `--unstall` outcome |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if opts.out is not None:
        opts.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
