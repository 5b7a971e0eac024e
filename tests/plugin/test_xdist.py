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


BASELINE_SUITE = """
import asyncio
import time


def test_a():
    async def main():
        time.sleep(0.3)  # stall-a

    asyncio.run(main())


def test_b():
    async def main():
        time.sleep(0.3)  # stall-b

    asyncio.run(main())


def test_c():
    async def main():
        await asyncio.sleep(0)  # clean-c

    asyncio.run(main())
"""


def _run_xdist(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, int], str]:
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "xdist", "-p", "no:cacheprovider", "--unstall", *args
    )
    return result.parseoutcomes(), result.stdout.str()


@pytest.mark.slow
def test_the_baseline_round_trip_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=BASELINE_SUITE)
    baseline = pytester.path / "baseline.json"
    arg = f"--unstall-baseline={baseline}"

    # 1. No file yet: the controller writes every worker's findings, and the run passes.
    outcomes, out = _run_xdist(pytester, arg)
    assert outcomes == {"passed": 3}, out
    assert f"wrote 2 findings to the new baseline {baseline}" in out
    entries = json.loads(baseline.read_text())["findings"]
    assert [(e["test"], e["kind"], e["code"]) for e in entries] == [
        ("test_suite.py::test_a", "stall", "time.sleep(0.3)  # stall-a"),
        ("test_suite.py::test_b", "stall", "time.sleep(0.3)  # stall-b"),
    ]
    assert not list(pytester.path.glob(".baseline.json.*.tmp"))

    # 2. Again: the known stalls pass, and the file is left as it was.
    written = baseline.read_text()
    outcomes, out = _run_xdist(pytester, arg)
    assert outcomes == {"passed": 3}, out
    assert baseline.read_text() == written

    # 3. A new stall fails its test only.
    grown = BASELINE_SUITE.replace("await asyncio.sleep(0)  # clean-c", "time.sleep(0.3)  # new-c")
    pytester.makepyfile(test_suite=grown)
    outcomes, out = _run_xdist(pytester, arg, "-rf")
    assert outcomes == {"passed": 2, "failed": 1}, out
    assert re.search(r"FAILED test_suite.py::test_c - unstall: the event loop stalled", out)

    # 4. A known stall fixed: the controller, which ran no test itself, says it is stale.
    fixed = BASELINE_SUITE.replace("time.sleep(0.3)  # stall-a", "await asyncio.sleep(0)")
    pytester.makepyfile(test_suite=fixed)
    outcomes, out = _run_xdist(pytester, arg)
    assert outcomes == {"passed": 3}, out
    stale = out[out.index("1 baseline entry is fixed") :]
    assert "test_suite.py::test_a  stall" in stale
    assert "test_suite.py::test_b" not in stale
    assert baseline.read_text() == written


STRICT_SUITE = """
import asyncio
import time


def test_blocks():
    async def main():
        time.sleep(0.001)  # blocking

    asyncio.run(main())


def test_clean():
    asyncio.run(asyncio.sleep(0))
"""


def test_a_worker_s_blocking_call_reaches_the_controller_s_strict_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=STRICT_SUITE)
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "xdist", "-p", "no:cacheprovider", "--unstall-strict"
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    summary = out[out.index("unstall summary") :]
    assert "1 call site in 1 test; 1 of them failed tests" in summary, summary
    assert "fail      time.sleep  test_suite.py:7" in summary, summary


MARKED_SUITE = """
import asyncio
import time

import pytest


@pytest.mark.unstall
def test_marked():
    async def main():
        time.sleep(0.3)  # the blocking line

    asyncio.run(main())


def test_unmarked():
    pass
"""


def test_a_marked_test_s_stall_reaches_the_controller_without_the_option(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=MARKED_SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    summary = out[out.index("unstall summary") :]
    assert "test_suite.py:10 in main" in summary, summary


SHARED_STRICT_SUITE = """
import asyncio

import pytest


def load():
    with open(__file__) as f:  # the shared call site
        return f.read()


@pytest.mark.parametrize("n", range(4))
def test_loads(n):
    async def main():
        load()

    asyncio.run(main())
"""


def test_a_strict_call_site_hit_on_several_workers_is_one_line_of_the_summary(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SHARED_STRICT_SUITE)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--unstall-strict", "-p", "no:cacheprovider", "-p", "xdist"
    )
    result.assert_outcomes(failed=4)
    summary = result.stdout.str()[result.stdout.str().index("unstall summary") :]
    assert "1 call site in 4 tests; 1 of them failed tests" in summary, summary
    row = "4x       4  -         file        test code   fail      open  test_suite.py:7"
    assert row in summary, summary
