"""``unstall demo``: the blocking scenario, found, then fixed, printed in the promised order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unstall import Report
from unstall._cli.demo import BLOCKING_SCRIPT, FAST_TIMINGS, FIXED_SCRIPT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TICKS = [str(i) for i in range(10)]
BLOCKING_ORDER = ["Finish test1", *TICKS, "Finish test2"]
FIXED_ORDER = [*TICKS[:6], "Finish test1", *TICKS[6:], "Finish test2"]
FAST_ARGS = [f"{t:g}" for t in FAST_TIMINGS]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(extra)
    return env


def _sleep_line(source: str) -> int:
    return next(i for i, t in enumerate(source.splitlines(), 1) if "time.sleep(BLOCK_S)" in t)


def test_examples_are_the_scripts_the_demo_runs() -> None:
    assert (EXAMPLES / "blocking_call.py").read_text() == BLOCKING_SCRIPT
    assert (EXAMPLES / "fixed_call.py").read_text() == FIXED_SCRIPT
    blocking_code = BLOCKING_SCRIPT.split('"""', 2)[2]
    fixed_code = FIXED_SCRIPT.split('"""', 2)[2]
    one_line_fix = blocking_code.replace(
        "import time\n", "import time\n\nimport unstall\n"
    ).replace("    slow_function()\n", "    await unstall.to_thread(slow_function)\n")
    assert fixed_code == one_line_fix  # the import, and the one line the demo shows as a diff


@pytest.mark.slow
def test_demo_tells_the_story_in_order(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "demo", "--fast", "--no-color"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == BLOCKING_ORDER + FIXED_ORDER
    err = proc.stderr
    assert "\x1b[" not in err + proc.stdout
    line = _sleep_line(BLOCKING_SCRIPT)
    live = [text for text in err.splitlines() if " stuck for " in text]
    assert live  # the stall shown as it was found, while it lasted
    assert live[0].startswith("unstall: loop in MainThread stuck for ")
    assert f"Found it: slow_function() at blocking_call.py:{line} held the loop for" in err
    assert "inside time.sleep" in err
    diff = "-    slow_function()\n+    await unstall.to_thread(slow_function)\n"
    assert diff in err
    steps = [err.index(marker) for marker in ("[1/2]", "stuck for", "Found it", diff, "[2/2]")]
    assert steps == sorted(steps)
    assert "in slow_function" not in err[err.index("[2/2]") :]
    assert "The loop stayed free" in err


@pytest.mark.slow
def test_demo_colours_only_its_narration(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "demo", "--fast"],
        cwd=tmp_path,
        env=_env(FORCE_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stderr
    assert (
        proc.stdout.splitlines() == BLOCKING_ORDER + FIXED_ORDER
    )  # the program's lines stay exact


def test_blocking_example_report_names_slow_function_and_time_sleep(tmp_path: Path) -> None:
    script = EXAMPLES / "blocking_call.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unstall",
            "run",
            "--quiet",
            "--json",
            "r.json",
            str(script),
            *FAST_ARGS,
        ],
        cwd=tmp_path,
        env=_env(NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == BLOCKING_ORDER
    stalls = [s for s in Report.read(tmp_path / "r.json").stalls if s.culprit is not None]
    assert len(stalls) == 1
    stall = stalls[0]
    assert stall.culprit is not None
    assert stall.culprit.file == str(script)
    assert stall.culprit.line == _sleep_line(BLOCKING_SCRIPT)
    assert stall.culprit.function == "slow_function"
    assert stall.call == "time.sleep"
    assert stall.duration_s >= FAST_TIMINGS[0] * 0.9


def test_fixed_example_does_not_stall(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unstall",
            "run",
            "--json",
            "r.json",
            str(EXAMPLES / "fixed_call.py"),
            *FAST_ARGS,
        ],
        cwd=tmp_path,
        env=_env(NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == FIXED_ORDER
    # a busy machine may pause the loop between callbacks, but never in the program's code
    stalls = Report.read(tmp_path / "r.json").stalls
    assert [s for s in stalls if s.culprit is not None] == []


def test_demo_rejects_unknown_options_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "demo", "--slow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "unstall demo: unknown option '--slow' (usage: unstall demo [--fast] [--no-color])"
    ]
