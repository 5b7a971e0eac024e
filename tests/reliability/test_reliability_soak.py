"""``unstall bench --soak SECONDS`` (issue 8): a short soak runs, reports and finds no leak."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from helpers import SRC
from unstall._cli.bench import BenchOptions
from unstall._cli.bench.soak import _interval, run

INTERVAL = re.compile(
    r"^t=\s*[\d.]+s  rss=\s*[\d.]+ MiB  threads=\s*\d+  children=\s*\d+  "
    r"calls/s=\s*[\d,]+  stalls=\s*\d+$"
)


def test_a_short_soak_prints_intervals_and_a_clean_verdict() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "bench", "--soak", "2.5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == "# unstall bench --soak 2.5"
    intervals = [line for line in lines if line.startswith("t=")]
    assert len(intervals) >= 4, proc.stdout  # every 0.5 s here (a tenth of the run, >= 0.5 s)
    assert all(INTERVAL.match(line) for line in intervals), intervals
    final_stalls = int(intervals[-1].rsplit("=", 1)[1])
    assert final_stalls >= 1  # the deliberate stalls were seen by the watcher
    assert re.search(r"^calls: [\d,]+ finished, [\d,]+ raised", proc.stdout, re.M)
    assert re.search(r"^memory: [+-][\d.]+ MiB after the first interval .*: ok$", proc.stdout, re.M)
    assert re.search(r"^threads: \d+ alive after the run .*: ok$", proc.stdout, re.M)
    assert "worker processes: 0 left after the pool shut down: ok" in proc.stdout
    assert re.search(
        r"^stalls: [1-9]\d* made on purpose, \d+ seen by the watcher: ok$", proc.stdout, re.M
    )
    assert lines[-1] == "verdict: no leak"


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_a_bad_duration_is_one_line_and_exit_2(
    seconds: float, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(BenchOptions(soak_s=seconds)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "unstall bench: --soak must be a positive number of seconds\n"


def test_intervals_are_a_tenth_of_the_run_within_bounds() -> None:
    assert _interval(2.5) == 0.5
    assert _interval(30) == 3.0
    assert _interval(3600) == 5.0
