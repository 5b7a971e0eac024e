"""`unstall bench` runs every section end to end (a --quick run: figures are not checked)."""

from __future__ import annotations

import re
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
