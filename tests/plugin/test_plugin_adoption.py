"""Adopting the plugin on an existing suite: the baseline file, per-test markers, the
suite's summary and timeline, and tests on trio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import failure_section, marked_line

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

SUITE = """
import asyncio
import time

import pytest


@pytest.mark.asyncio
async def test_a():
    time.sleep(0.4)  # stall-a


@pytest.mark.asyncio
async def test_b():
    time.sleep(0.4)  # stall-b


@pytest.mark.asyncio
async def test_c():
    await asyncio.sleep(0)  # clean-c
"""


def _run(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, int], str]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    return result.parseoutcomes(), result.stdout.str()


def test_the_baseline_round_trip(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    baseline = pytester.path / "unstall-baseline.json"
    args = ("--unstall=0.1", f"--unstall-baseline={baseline}")

    # 1. No file yet: the run passes and writes every finding.
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"passed": 3}, out
    assert f"wrote 2 findings to the new baseline {baseline}" in out
    entries = json.loads(baseline.read_text())["findings"]
    assert [(e["test"], e["kind"], e["file"], e["call"]) for e in entries] == [
        ("test_suite.py::test_a", "stall", "test_suite.py", "time.sleep"),
        ("test_suite.py::test_b", "stall", "test_suite.py", "time.sleep"),
    ]
    assert entries[0]["code"] == "time.sleep(0.4)  # stall-a"

    # 2. Again: the known stalls do not fail.
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"passed": 3}, out

    # 3. A new stall fails its test only, even with every line moved down by two.
    grown = SUITE.replace("await asyncio.sleep(0)  # clean-c", "time.sleep(0.4)  # new-c")
    pytester.makepyfile(test_suite="# a comment\n# another\n" + grown)
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"failed": 1, "passed": 2}, out
    assert "new-c" in failure_section(out, "test_c")

    # 4. One known stall fixed: the run says its entry is stale.
    fixed = SUITE.replace("time.sleep(0.4)  # stall-a", "await asyncio.sleep(0)  # fixed-a")
    pytester.makepyfile(test_suite=fixed)
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"passed": 3}, out
    assert f"1 baseline entry is fixed: remove them from {baseline}" in out
    assert "test_suite.py::test_a  stall time.sleep at test_suite.py:" in out
    assert "test_suite.py::test_b  stall" not in out.split("baseline entry is fixed")[1]

    # Running one test does not call the others' entries stale.
    outcomes, out = _run(pytester, *args, "test_suite.py::test_b")
    assert outcomes == {"passed": 1}, out
    assert "fixed: remove them" not in out


STRICT_SUITE = """
import time

import pytest


@pytest.mark.asyncio
async def test_known():
    time.sleep(0.001)  # known


@pytest.mark.asyncio
async def test_later():
    pass  # later
"""


def test_a_baselined_blocking_call_goes_ahead_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_strict=STRICT_SUITE)
    baseline = pytester.path / "baseline.json"
    args = ("--unstall-strict", f"--unstall-baseline={baseline}")
    assert _run(pytester, *args)[0] == {"passed": 2}
    assert _run(pytester, *args)[0] == {"passed": 2}
    pytester.makepyfile(test_strict=STRICT_SUITE.replace("pass  # later", "time.sleep(0.001)"))
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"failed": 1, "passed": 1}, out
    assert "blocking call time.sleep(0.001)" in failure_section(out, "test_later")


def test_a_broken_baseline_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    (pytester.path / "bad.json").write_text('{"findings": "no"}')
    result = pytester.runpytest_subprocess("--unstall-baseline=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is not an unstall baseline (no 'findings' list)" in result.stderr.str()
    result = pytester.runpytest_subprocess("--unstall-baseline=missing/dir/b.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--unstall-baseline: directory 'missing/dir' does not exist" in result.stderr.str()


MARKED = """
import time

import pytest

import slowlib


@pytest.mark.asyncio
@pytest.mark.unstall(threshold=2, strict=False)
async def test_own_threshold():
    time.sleep(0.4)


@pytest.mark.asyncio
@pytest.mark.unstall(strict=False)
async def test_strict_off():
    time.sleep(0.001)


@pytest.mark.asyncio
@pytest.mark.unstall(allow=["slowlib.crunch"])
async def test_allowed_function():
    slowlib.crunch()


@pytest.mark.asyncio
@pytest.mark.unstall(allow=["slowlib.crunch"])
async def test_allow_is_narrow():
    time.sleep(0.4)  # not-allowed


@pytest.mark.asyncio
@pytest.mark.unstall(off=True)
async def test_off():
    time.sleep(0.4)
"""

SLOWLIB = """
import time


def crunch():
    time.sleep(0.4)
"""


def test_per_test_markers(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_marked=MARKED, slowlib=SLOWLIB)
    pytester.syspathinsert()
    outcomes, out = _run(pytester, "--unstall=0.1", "--unstall-strict")
    assert outcomes == {"failed": 1, "passed": 4}, out
    assert "not-allowed" in failure_section(out, "test_allow_is_narrow")
    # watching only (strict off): the allowed function's stall does not count either
    outcomes, out = _run(pytester, "--unstall=0.1", "-k", "allow")
    assert outcomes == {"failed": 1, "passed": 1, "deselected": 3}, out


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("threshold='fast'", "unstall(threshold=...) must be a number of seconds, got 'fast'"),
        ("threshold=-1", "unstall(threshold=...) must be > 0 seconds, got -1"),
        ("strict='yes'", "unstall(strict=...) must be True or False, got 'yes'"),
        ("off=1", "unstall(off=...) must be True or False, got 1"),
        ("allow='time.sleep'", "unstall(allow=...) must be a list of strings"),
        ("allow=['']", "unstall(allow=...): entries must be non-empty strings, got ''"),
        ("0.5", "unstall takes threshold=, strict=, allow= and off= only, got positional (0.5,)"),
    ],
)
def test_bad_marker_arguments_are_clear_usage_errors(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x=f"import pytest\n\n@pytest.mark.unstall({marker})\ndef test_x():\n    pass\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert f"test_x.py::test_x: @pytest.mark.{message}" in result.stderr.str()


SUMMARY_SUITE = """
import time

import pytest


def load():
    time.sleep(0.3)  # shared


@pytest.mark.asyncio
@pytest.mark.unstall(strict=False)
async def test_one():
    load()


@pytest.mark.asyncio
@pytest.mark.unstall(strict=False)
async def test_two():
    load()


@pytest.mark.asyncio
async def test_blocks():
    open(__file__).close()  # blocks
"""


def test_the_suite_summary_and_timeline(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_summary=SUMMARY_SUITE)
    html = pytester.path / "timeline.html"
    outcomes, out = _run(pytester, "--unstall=0.1", "--unstall-strict", f"--unstall-html={html}")
    assert outcomes == {"failed": 3}, out
    summary = out.split("unstall summary")[1]
    assert "the event loop stalled 2 times" in summary, summary
    assert "2x" in summary, summary
    shared = marked_line(SUMMARY_SUITE, "# shared")
    assert f"test_summary.py:{shared}" in summary, summary  # one group: the shared line
    assert "strict mode: 1 call site in 1 test; 1 of them failed tests" in summary, summary
    blocks = marked_line(SUMMARY_SUITE, "# blocks")
    row = f"1x       1  -         file        test code   fail      open  test_summary.py:{blocks}"
    assert row in summary, summary
    assert f"unstall: wrote html (2 stalls) to {html}" in summary
    page = html.read_text()
    assert "test_summary.py" in page
    assert "test test_summary.py::test_one" in page


TRIO_SUITE = """
import time

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_on_both():
    time.sleep(0.3)
"""


def test_trio_tests_are_counted_not_silently_skipped(pytester: pytest.Pytester) -> None:
    pytest.importorskip("trio", reason="trio is not installed (pip install trio)")
    pytester.makeini(INI)
    pytester.makepyfile(test_trio=TRIO_SUITE)
    outcomes, out = _run(pytester, "--unstall=0.1")
    assert outcomes == {"failed": 1, "passed": 1}, out
    assert "test_on_both[asyncio]" in out.split("short test summary")[1]
    assert "unstall: 1 test on the trio backend not watched" in out


def test_baseline_keys_survive_a_moved_line() -> None:
    from unstall._plugin.baseline import Finding

    before = Finding("t.py::test", "stall", "t.py", 10, "time.sleep(1)", "time.sleep")
    after = Finding("t.py::test", "stall", "t.py", 12, "time.sleep(1)", "time.sleep")
    unreadable = Finding("t.py::test", "stall", "t.py", 10, "", "time.sleep")
    assert before.key == after.key
    assert unreadable.key != Finding("t.py::test", "stall", "t.py", 12, "", "time.sleep").key


def test_baseline_files_relative_to_the_rootdir_or_site_packages(tmp_path: Path) -> None:
    from unstall._plugin.baseline import relative_file

    assert relative_file(str(tmp_path / "tests" / "t.py"), tmp_path) == "tests/t.py"
    lib = "/opt/venv/lib/python3.12/site-packages/httpx/_config.py"
    assert relative_file(lib, tmp_path) == "httpx/_config.py"
