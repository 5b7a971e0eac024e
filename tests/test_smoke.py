"""A quick end-to-end check of the installed package: imports, the command, one offload.

CI runs this file alone on the newest supported Python as a smoke test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import unstall


def test_public_api_is_importable() -> None:
    for name in unstall.__all__:
        assert hasattr(unstall, name), name


def test_command_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "unstall", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("run", "demo", "bench", "report"):
        assert command in out


def test_unknown_command_is_one_clear_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown command 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_to_thread_round_trip() -> None:
    assert asyncio.run(unstall.to_thread(sum, [1, 2, 3])) == 6


def test_import_loads_no_optional_integration() -> None:
    """The core stays light: extras are imported only when a feature needs them."""
    optional = [
        "cloudpickle",
        "distributed",
        "dask",
        "uvloop",
        "prometheus_client",
        "opentelemetry",
        "psutil",
        "loky",
        "pebble",
        "anyio",
        "httpx",
        "requests",
        "rich",
    ]
    code = f"import sys, unstall; print(sorted(set({optional!r}) & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
