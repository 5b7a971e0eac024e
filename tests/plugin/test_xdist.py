"""The pytest plugin under pytest-xdist: each worker's findings reach the controller."""

from __future__ import annotations

import json
import os
import re

import pytest

pytest.importorskip("xdist", reason="pytest-xdist is in the test extra; not installed here")

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

SUITE = """
import asyncio
import time


def test_blocks():
    async def main():
        time.sleep(0.3)  # the blocking line

    asyncio.run(main())


def test_clean_one():
    asyncio.run(asyncio.sleep(0.01))


def test_clean_two():
    asyncio.run(asyncio.sleep(0.01))
"""


def test_a_worker_s_stall_fails_its_test_and_reaches_the_controller_s_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--unstall", "-p", "no:cacheprovider", "-p", "xdist", "-rf"
    )
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert re.search(r"FAILED test_suite.py::test_blocks - unstall: the event loop stalled", out)
    summary = out[out.index("unstall summary") :]
    assert "the event loop stalled once" in summary
    assert "test_suite.py:7 in main" in summary


def test_a_worker_s_stalls_reach_the_controller_s_json_file(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "--unstall",
        "--unstall-json",
        "out.json",
        "-p",
        "no:cacheprovider",
        "-p",
        "xdist",
    )
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "out.json").read_text())
    [stall] = report["stalls"]
    assert stall["culprit"]["line"] == 7
    assert stall["process"] in ("gw0", "gw1")
    assert stall["pid"] != os.getpid()
