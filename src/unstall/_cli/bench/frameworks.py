"""Bench section "frameworks": a real FastAPI server under ``wrk``, three ways to run ``def``.

A uvicorn server in a child process (see :mod:`unstall._cli.bench.frameworks_app`) serves
a ``def`` route sleeping 20 ms, a ``def`` route returning a constant and an ``async def``
health route; Debian's ``wrk`` (another process, 127.0.0.1) drives it:

- 32 connections on the sleeping route and, at the same time, 4 on the health route:
  requests per second of the first, 99th percentile latency of the second;
- then 32 connections on the constant route alone: requests per second.

Variants: default FastAPI (anyio's threads), FastAPI after
``unstall.integrations.anyio.install()``, and, for reference, ``async def`` routes
offloading with ``asyncio.to_thread`` and with ``unstall.to_thread``, and ``async def``
routes that use no thread at all (the sleep is ``await asyncio.sleep``): what the same
loop serves when offloading costs nothing, so no way of offloading can beat it. Variants
run interleaved, round after round (the order rotates each round), each in a fresh
server; every figure is the median of the rounds, so a noisy neighbour on a shared machine
hits every variant alike.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from unstall._cli.bench import BenchOptions, _timing
from unstall._cli.bench._table import Table, fmt_ratio
from unstall._cli.bench.frameworks_app import SLEEP_S

LABELS = {
    "default": "default FastAPI (anyio threads)",
    "unstall": "unstall.integrations.anyio.install()",
    "asyncio": "async def + asyncio.to_thread",
    "to_thread": "async def + unstall.to_thread",
    "no_thread": "async def, no thread (awaits asyncio.sleep)",
}
BASELINE = "default"
SLEEP_CONNECTIONS = 32
HEALTH_CONNECTIONS = 4
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_START_S = 30.0


@dataclass(frozen=True)
class Round:
    sleep_rps: float
    health_p99_s: float
    health_timeouts: int
    constant_rps: float


def run(opts: BenchOptions) -> list[Table]:
    wrk = shutil.which("wrk")
    if wrk is None:
        table = Table("Frameworks", ["variant"])
        table.notes.append("not measured: `wrk` is not installed (Debian: apt-get install wrk)")
        return [table]
    return [_measure_loop(wrk, loop, opts.quick) for loop in opts.loops if _has_loop(loop)]


def _has_loop(loop: str) -> bool:
    return loop == "asyncio" or _importable(loop)


def _importable(module: str) -> bool:
    """Whether ``module`` is installed (the server runs in this same interpreter)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _measure_loop(wrk: str, loop: str, quick: bool) -> Table:
    rounds, duration = (1, 1) if quick else (3, 5)
    results: dict[str, list[Round]] = {v: [] for v in LABELS}
    for r in range(rounds):
        for variant in _timing.rotation(list(LABELS), r):
            results[variant].append(_one_round(wrk, variant, loop, duration))
    return _table(results, loop, rounds, duration)


def _one_round(wrk: str, variant: str, loop: str, duration: int) -> Round:
    with _Server(variant, loop) as url:
        _wrk(wrk, f"{url}/sleep", SLEEP_CONNECTIONS, 1).wait()  # warm-up: threads started
        sleep = _wrk(wrk, f"{url}/sleep", SLEEP_CONNECTIONS, duration)
        health = _wrk(wrk, f"{url}/health", HEALTH_CONNECTIONS, duration)
        sleep_out, health_out = _output(sleep), _output(health)
        constant_out = _output(_wrk(wrk, f"{url}/constant", SLEEP_CONNECTIONS, duration))
    return Round(
        sleep_rps=_rps(sleep_out),
        health_p99_s=_p99(health_out),
        health_timeouts=_timeouts(health_out),
        constant_rps=_rps(constant_out),
    )


class _Server:
    """The FastAPI app in a uvicorn child process, for one round."""

    def __init__(self, variant: str, loop: str) -> None:
        self._args = [sys.executable, "-m", "unstall._cli.bench.frameworks_app", variant, loop]

    def __enter__(self) -> str:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self._proc.kill()
            raise RuntimeError(f"the benchmark server did not start: {self._args}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        deadline = time.monotonic() + _START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return url
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self._proc.kill()
                    raise RuntimeError("the benchmark server did not answer") from None
                time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _wrk(wrk: str, url: str, connections: int, seconds: int) -> subprocess.Popen[str]:
    args = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _output(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    return out


def _rps(out: str) -> float:
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def _p99(out: str) -> float:
    match = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def _timeouts(out: str) -> int:
    match = re.search(r"timeout (\d+)", out)
    return int(match.group(1)) if match else 0


def _table(results: dict[str, list[Round]], loop: str, rounds: int, duration: int) -> Table:
    med = {
        v: Round(
            sleep_rps=statistics.median(r.sleep_rps for r in rs),
            health_p99_s=statistics.median(r.health_p99_s for r in rs),
            health_timeouts=max(r.health_timeouts for r in rs),
            constant_rps=statistics.median(r.constant_rps for r in rs),
        )
        for v, rs in results.items()
    }
    base = med[BASELINE]
    table = Table(
        f"Frameworks: FastAPI on uvicorn under wrk ({loop} loop)",
        [
            "variant",
            f"`def` 20 ms route, req/s ({SLEEP_CONNECTIONS} conn.)",
            "vs default",
            f"`async def` health p99 ({HEALTH_CONNECTIONS} conn., same time)",
            "default / this",
            f"`def` constant route, req/s ({SLEEP_CONNECTIONS} conn.)",
            "vs default",
        ],
    )
    for variant, label in LABELS.items():
        m = med[variant]
        p99 = f"{m.health_p99_s * 1e3:,.1f} ms"
        if m.health_timeouts:
            p99 += f" ({m.health_timeouts} timeouts)"
        table.add(
            label,
            f"{m.sleep_rps:,.0f}",
            fmt_ratio(m.sleep_rps / base.sleep_rps) if base.sleep_rps else "n/a",
            p99,
            fmt_ratio(base.health_p99_s / m.health_p99_s) if m.health_p99_s else "n/a",
            f"{m.constant_rps:,.0f}",
            fmt_ratio(m.constant_rps / base.constant_rps) if base.constant_rps else "n/a",
        )
    table.notes.append(
        f"median of {rounds} interleaved round(s) of {duration} s per measurement, each "
        f"variant in a fresh server process; wrk -t1 --latency from another process on "
        f"127.0.0.1; {os.cpu_count()} CPUs shared by the server, wrk and anything else running; "
        f"uvicorn's HTTP parser: {_http_parser()}"
    )
    table.notes.append(
        "each server calls gc.freeze() once its app is built (what `unstall run` advises "
        "for the full collections it finds there)"
    )
    table.notes.append(
        f"the 20 ms route cannot exceed {SLEEP_CONNECTIONS} connections / "
        f"{SLEEP_S * 1e3:.0f} ms = {SLEEP_CONNECTIONS / SLEEP_S:,.0f} req/s"
    )
    return table


def _http_parser() -> str:
    """What uvicorn's ``http="auto"`` picks in the server."""
    return "httptools" if _importable("httptools") else "h11"
