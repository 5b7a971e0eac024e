"""A pytest plugin that runs a third-party test suite with unstall.integrations.anyio installed.

Use: ``PYTHONPATH=benchmarks/third_party pytest -p unstall_anyio_plugin ...`` (see
docs/frameworks.md). The summary line says how many of unstall's anyio threads the run
started, so a run that never went through the integration shows 0.
"""

from __future__ import annotations

import pytest

from unstall.integrations import anyio as unstall_anyio


def pytest_configure(config: pytest.Config) -> None:
    unstall_anyio.install()


def pytest_report_header(config: pytest.Config) -> str:
    return "unstall.integrations.anyio installed"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    started = unstall_anyio._threads_started()
    terminalreporter.write_line(
        f"unstall.integrations.anyio: installed={unstall_anyio.installed()}, "
        f"unstall-anyio threads started: {started}"
    )
