"""`unstall bench` runs every section end to end (a --quick run: figures are not checked)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_bench_prints_every_section_with_every_peer() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "bench", "--quick", "--loop", "asyncio"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    titles = re.findall(r"^### (.+)$", out, re.M)
    assert titles == [
        "Threads: a trivial call, on the asyncio loop",
        "Threads: one offload per new task, on the asyncio loop",
        "Threads: latency per call on one CPU (the library's own cost)",
        "Watcher",
        "Processes: per-call latency and throughput (asyncio)",
        "Processes: the loop's lag while CPU work runs (asyncio)",
        "Start-up: following child processes, with and without unstall run",
        "Start-up: instructions executed by python -c pass (callgrind)",
    ]
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    for peer in (
        "unstall.to_thread",
        "asyncio.to_thread",
        "anyio.to_thread.run_sync",
        "asyncer.asyncify",
        "asgiref sync_to_async",
        "(no offload: the harness alone)",
        "unstall.to_process",
        "ProcessPoolExecutor",
        "loky (reusable executor)",
        "anyio.to_process.run_sync",
        "pebble.ProcessPool",
    ):
        assert peer in rows, peer
    # every ratio cell is a number: nothing was left unmeasured
    assert not re.search(r"\| (nan|inf)", out)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_frameworks_bench_measures_every_variant_under_wrk() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian: apt-get install wrk): the section needs it")
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "bench", "frameworks", "--quick", "--loop", "asyncio"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.findall(r"^### (.+)$", out, re.M) == [
        "Frameworks: FastAPI on uvicorn under wrk (asyncio loop)"
    ]
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for variant in (
        "default FastAPI (anyio threads)",
        "unstall.integrations.anyio.install()",
        "async def + asyncio.to_thread",
        "async def + unstall.to_thread",
        "async def, no thread (awaits asyncio.sleep)",
    ):
        assert variant in rows, variant
        assert re.search(r"\| [\d,]+ +\| \d+\.\d\dx", rows[variant]), rows[variant]
    assert not re.search(r"\| (nan|inf|n/a)", out)
    assert "cannot exceed 32 connections / 20 ms = 1,600 req/s" in out
    assert "Traceback" not in proc.stderr


def test_the_frameworks_section_runs_only_when_named() -> None:
    from unstall._cli.bench import ON_REQUEST, SECTIONS

    assert "frameworks" in SECTIONS
    assert "frameworks" in ON_REQUEST
