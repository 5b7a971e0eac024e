"""``--unstall-strict`` on a suite (issue 19): severity, modes, budget, and one finding per
call site in the summary and the baseline, however many tests reach it."""

from __future__ import annotations

import json
import re

import pytest

from helpers import failure_section, marked_line

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

# A stand-in for a stat on a slow network mount: installed at import, before strict mode
# wraps os.stat, so the wrapper times it as it would time the real slow call.
CONFTEST = """
import http.server
import os
import threading
import time

import pytest

SLOW = os.path.join(os.path.dirname(__file__), "on-a-slow-mount")
_real_stat = os.stat


def _stat(path, *args, **kwargs):
    if os.fspath(path) == SLOW:
        time.sleep(0.005)
    return _real_stat(path, *args, **kwargs)


os.stat = _stat


@pytest.fixture
def server():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
"""

SEVERITY_SUITE = """
import inspect
import os

import pytest
import requests

from conftest import SLOW


@pytest.mark.asyncio
async def test_source_lookup():
    assert inspect.getsourcefile(test_source_lookup) == __file__  # cached by the stdlib


@pytest.mark.asyncio
async def test_requests(server):
    requests.get(server, timeout=5)  # network


@pytest.mark.asyncio
async def test_slow_stat():
    os.stat(SLOW)  # slow-stat
"""


def _run(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, int], str]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    return result.parseoutcomes(), result.stdout.str()


def _suite(pytester: pytest.Pytester, **files: str) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    (pytester.path / "on-a-slow-mount").write_text("")
    pytester.makepyfile(**files)


def test_strict_fails_costly_calls_and_lets_cached_lookups_through(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, test_severity=SEVERITY_SUITE)
    outcomes, out = _run(pytester, "--unstall-strict", "-rA")
    assert outcomes == {"passed": 1, "failed": 2}, out
    assert "PASSED test_severity.py::test_source_lookup" in out
    network = failure_section(out, "test_requests")
    assert "blocking call requests.Session.request" in network
    assert f"test_severity.py:{marked_line(SEVERITY_SUITE, '# network')}" in network
    stat = failure_section(out, "test_slow_stat")
    assert "blocking call os.stat(" in stat
    assert "over the 1 ms budget" in stat
    summary = out.split("unstall summary")[1]
    assert "network     test code   fail      requests.Session.request" in summary, summary


def test_the_budget_option_lets_a_call_within_it_pass_with_a_line_in_the_summary(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, test_severity=SEVERITY_SUITE)
    outcomes, out = _run(
        pytester, "--unstall-strict", "--unstall-strict-budget=1", "-k", "slow_stat"
    )
    assert outcomes == {"passed": 1, "deselected": 2}, out
    stat_line = marked_line(SEVERITY_SUITE, "# slow-stat")
    assert f"file        test code   warn      os.stat  test_severity.py:{stat_line}" in out, out


def test_level_all_fails_a_cheap_call_too(pytester: pytest.Pytester) -> None:
    _suite(pytester, test_severity=SEVERITY_SUITE)
    outcomes, out = _run(pytester, "--unstall-strict=all", "-k", "slow_stat")
    assert outcomes == {"failed": 1, "deselected": 2}, out
    assert "over the" not in failure_section(out, "test_slow_stat")  # not timed: not run


SHARED_SUITE = """
import os

import pytest

from conftest import SLOW


def load():
    with open(__file__) as f:  # shared-open
        return f.read()


def exists():
    return os.path.exists(__file__)  # shared-stat


@pytest.mark.parametrize("n", range(4))
@pytest.mark.asyncio
async def test_loads(n):
    exists()
    load()


@pytest.mark.asyncio
async def test_only_exists():
    assert exists()
"""


def test_one_finding_per_call_site_in_the_summary_and_the_baseline(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, test_shared=SHARED_SUITE)
    # A budget no stat reaches, even on a loaded machine: the cheap call stays cheap.
    strict = ("--unstall-strict", "--unstall-strict-budget=1")
    # -W error, as suites with filterwarnings = error run: a cheap call is no warning.
    outcomes, out = _run(pytester, *strict, "-W", "error")
    # Each test still fails on its own at the costly call.
    assert outcomes == {"failed": 4, "passed": 1}, out
    # Counted in the tracebacks: the short summary repeats each message in full on CI
    # (pytest does not cut its lines when $CI is set).
    assert len(re.findall(r"^E +\S+BlockingCallError: blocking call open\(", out, re.M)) == 4, out
    assert "os.stat" not in out.split("unstall summary")[0], out
    summary = out.split("unstall summary")[1]
    assert "2 call sites in 5 tests; 1 of them failed tests" in summary, summary
    opened = marked_line(SHARED_SUITE, "# shared-open")
    stat = marked_line(SHARED_SUITE, "# shared-stat")
    row = f"4x       4  -         file        test code   fail      open  test_shared.py:{opened}"
    assert row in summary, summary
    assert "     5x       -  " in summary, summary
    assert f"test code   warn      os.stat  test_shared.py:{stat}" in summary, summary

    baseline = pytester.path / "baseline.json"
    outcomes, out = _run(pytester, *strict, f"--unstall-baseline={baseline}")
    assert outcomes == {"passed": 5}, out
    # With open() let through, the read after it is found too: two call sites, two entries.
    assert f"wrote 2 findings to the new baseline {baseline}" in out, out
    entries = json.loads(baseline.read_text())["findings"]
    assert [(e["kind"], e["call"], e["line"], e["tests"]) for e in entries] == [
        ("blocking", "open", opened, 4),
        ("blocking", "io.TextIOWrapper.read", opened + 1, 4),
    ]
    # An entry covers its call site in every test, including tests added later.
    pytester.makepyfile(
        test_shared=SHARED_SUITE.replace("range(4)", "range(6)"),
    )
    outcomes, out = _run(pytester, *strict, f"--unstall-baseline={baseline}")
    assert outcomes == {"passed": 7}, out
    assert "6x       -  -         file        test code   baseline  open  test_shared.py:" in out
    # Fixed: no test reaches the call sites any more, so their entries are stale.
    fixed = SHARED_SUITE.replace("with open(__file__) as f:", "if True:").replace(
        "return f.read()", "return ''"
    )
    pytester.makepyfile(test_shared=fixed)
    outcomes, out = _run(pytester, *strict, f"--unstall-baseline={baseline}")
    assert outcomes == {"passed": 5}, out
    assert "2 baseline entries are fixed" in out, out


PROJECT_SUITE = """
import asyncio
import time

import pytest

import napdep


@pytest.mark.asyncio
async def test_dependency_on_its_own():
    asyncio.get_running_loop().call_soon(napdep.nap)  # no project frame on its stack
    await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_project_through_a_dependency(server):
    napdep.fetch(server)  # through-dependency


@pytest.mark.asyncio
async def test_project_itself():
    time.sleep(0.001)  # own-sleep
"""

NAPDEP = """
import time
import urllib.request


def nap():
    time.sleep(0.001)


def fetch(url):
    return urllib.request.urlopen(url, timeout=5).read()
"""


@pytest.mark.parametrize("mode", ["all", "project"])
def test_project_mode_reports_only_calls_whose_culprit_is_the_project(
    pytester: pytest.Pytester, mode: str
) -> None:
    _suite(pytester, test_project=PROJECT_SUITE)
    # An installed dependency: is_installed() knows one by its site-packages directory.
    site = pytester.mkdir("site-packages")
    (site / "napdep.py").write_text(NAPDEP)
    pytester.makeconftest(CONFTEST + f"\nimport sys\nsys.path.insert(0, {str(site)!r})\n")
    option = "--unstall-strict" if mode == "all" else "--unstall-strict=project"
    outcomes, out = _run(pytester, option, "-rA")
    assert outcomes == ({"failed": 3} if mode == "all" else {"failed": 2, "passed": 1}), out
    assert "test_project_itself" in out
    assert f"test_project.py:{marked_line(PROJECT_SUITE, '# own-sleep')}" in out
    # The culprit of a dependency's call made for the project is the project's line.
    through = failure_section(out, "test_project_through_a_dependency")
    assert f"test_project.py:{marked_line(PROJECT_SUITE, '# through-dependency')}" in through
    summary = out.split("unstall summary")[1]
    if mode == "project":
        assert "PASSED test_project.py::test_dependency_on_its_own" in out
        assert "2 call sites in 2 tests; 2 of them failed tests" in summary, summary
        assert "napdep.py" not in summary, summary
    else:
        assert "dependency  fail      time.sleep  site-packages/napdep.py" in summary, summary


def test_a_strict_mode_option_followed_by_a_test_path_keeps_the_path(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester, test_severity=SEVERITY_SUITE)
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    outcomes, out = _run(pytester, "--unstall-strict", "test_other.py")
    assert outcomes == {"passed": 1}, out


def test_the_ini_sets_strict_mode_and_its_budget(pytester: pytest.Pytester) -> None:
    _suite(pytester, test_severity=SEVERITY_SUITE)
    pytester.makeini(INI + "unstall_strict = all\nunstall_strict_budget = 0.5\n")
    outcomes, out = _run(pytester, "-k", "slow_stat")
    assert outcomes == {"failed": 1, "deselected": 2}, out  # level all: a cheap call fails
    pytester.makeini(INI + "unstall_strict = true\nunstall_strict_budget = 0.5\n")
    outcomes, out = _run(pytester, "-k", "slow_stat")
    assert outcomes == {"passed": 1, "deselected": 2}, out


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--unstall-strict=most"],
            "",
            "--unstall-strict takes costly, all or project (or all,project), got 'most'",
        ),
        (
            ["--unstall-strict=all,costly"],
            "",
            "--unstall-strict takes costly, all or project (or all,project), got 'all,costly'",
        ),
        (
            ["--unstall-strict", "--unstall-strict-budget=0"],
            "",
            "--unstall-strict-budget must be > 0 seconds, got '0'",
        ),
        (
            ["--unstall-strict-budget=1ms"],
            "",
            "--unstall-strict-budget must be a number of seconds, got '1ms'",
        ),
        (
            [],
            "unstall_strict = maybe\n",
            "ini option unstall_strict takes costly, all or project (or all,project), got 'maybe'",
        ),
        (
            [],
            "unstall_strict_budget = -1\n",
            "ini option unstall_strict_budget must be > 0 seconds, got '-1'",
        ),
    ],
)
def test_bad_strict_options_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makeini(INI + ini)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_the_summary_lists_every_failing_site_and_the_rest_with_verbose(
    pytester: pytest.Pytester,
) -> None:
    # 13 cheap call sites within a generous budget: more than the summary's twelve lines.
    lines = "".join(f"    os.path.exists(__file__)  # site {n}\n" for n in range(13))
    suite = f"import os\n\nimport pytest\n\n\n@pytest.mark.asyncio\nasync def test_many():\n{lines}"
    _suite(pytester, test_many=suite)
    args = ("--unstall-strict", "--unstall-strict-budget=1")
    outcomes, out = _run(pytester, *args)
    assert outcomes == {"passed": 1}, out
    assert "13 call sites in 1 test; 0 of them failed tests" in out, out
    assert out.count("warn      os.stat  test_many.py:") == 12, out
    assert "... and 1 more call sites that failed no test (-v lists them)" in out
    outcomes, out = _run(pytester, *args, "-v")
    assert out.count("warn      os.stat  test_many.py:") == 13, out
