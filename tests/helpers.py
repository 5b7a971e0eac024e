"""What many test modules share: time slack, the clean child environment, run helpers.

Importable from any test module (``pythonpath = ["tests"]`` in the pytest settings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import unstall

SLACK_S = 10.0
"""How long a test waits for something that should happen at once: generous, since CI
machines are small and busy. A test that waits this long has failed, not passed slowly."""

PY = sys.executable
SRC = str(Path(unstall.__file__).resolve().parents[1])
"""The folder holding the ``unstall`` under test, for a child's ``PYTHONPATH``."""


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no colour, no inherited warning filters."""
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PYTHONWARNINGS")}
    return {**clean, "NO_COLOR": "1", **extra}


def wait_until(predicate: Callable[[], object], timeout: float = SLACK_S) -> bool:
    """Poll ``predicate`` every 10 ms until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return bool(predicate())


def run_python(args: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd``, captured as text."""
    return subprocess.run(
        [PY, *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120, **kw
    )


def run_unstall(args: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m unstall ARGS`` in ``cwd``, captured as text."""
    return subprocess.run(
        [PY, "-m", "unstall", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def marked_line(source: str, mark: str) -> int:
    """The line of ``mark`` in a sample file written by pytester's ``makepyfile`` (it strips)."""
    lines = source.strip().splitlines()
    return next(i for i, text in enumerate(lines, 1) if mark in text)


def failure_section(output: str, test: str) -> str:
    """The failure (or error) section of one test in pytest's output."""
    import re

    match = re.search(
        rf"_{{3,}} (?:ERROR at \w+ of )?{re.escape(test)}(?:\[\w+\])? _{{3,}}\n(.*?)(?=\n_{{3,}} |\n=+ )",
        output,
        re.S,
    )
    assert match, f"no failure section for {test}:\n{output}"
    return match.group(1)
