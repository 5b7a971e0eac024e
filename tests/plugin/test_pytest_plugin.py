"""The pytest plugin, run as installed (pytest11 entry point) on real sample suites."""

from __future__ import annotations

import textwrap

import pytest

from helpers import failure_section, marked_line

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

WATCH_SUITE = """
import asyncio
import time

import pytest
import pytest_asyncio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest_asyncio.fixture
async def slow_setup():
    time.sleep(0.5)  # mark-setup
    yield


@pytest_asyncio.fixture
async def slow_teardown():
    yield
    time.sleep(0.5)  # mark-teardown


@pytest.mark.asyncio
async def test_clean():
    await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_offloaded():
    await asyncio.to_thread(time.sleep, 0.5)


@pytest.mark.asyncio
async def test_stalls():
    await asyncio.sleep(0)
    time.sleep(0.5)  # mark-stall
    await asyncio.sleep(0)


def test_asyncio_run_in_sync_test():
    async def main():
        time.sleep(0.5)  # mark-run

    asyncio.run(main())


@pytest.mark.anyio
async def test_anyio_stalls():
    time.sleep(0.5)  # mark-anyio


@pytest.mark.asyncio
async def test_fixture_stall(slow_setup):
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_teardown_stall(slow_teardown):
    await asyncio.sleep(0)


@pytest.mark.asyncio
@pytest.mark.unstall_allow
async def test_allowed():
    time.sleep(0.5)


@pytest.mark.asyncio
@pytest.mark.unstall(threshold=3)
async def test_marker_threshold():
    time.sleep(0.5)


def test_no_loop_at_all():
    time.sleep(0.3)
"""


@pytest.mark.slow
def test_watch_fails_stalling_tests_at_their_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_watch=WATCH_SUITE)
    result = pytester.runpytest_subprocess("--unstall=0.25", "-p", "no:cacheprovider")
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 4, out
    assert outcomes.get("passed") == 6, out  # the teardown-stall test passes its call...
    assert outcomes.get("errors") == 1, out  # ...and errors in teardown
    result.stdout.fnmatch_lines(
        [
            "FAILED test_watch.py::test_stalls*",
            "FAILED test_watch.py::test_asyncio_run_in_sync_test*",
            "FAILED test_watch.py::test_anyio_stalls*",
            "FAILED test_watch.py::test_fixture_stall*",
            "ERROR test_watch.py::test_teardown_stall*",
        ]
    )
    for test, line, phase in [
        ("test_stalls", "# mark-stall", "call"),
        ("test_asyncio_run_in_sync_test", "# mark-run", "call"),
        ("test_anyio_stalls", "# mark-anyio", "call"),
        ("test_fixture_stall", "# mark-setup", "setup"),
    ]:
        line = marked_line(WATCH_SUITE, line)
        block = failure_section(out, test)
        assert "stalled for 0.5" in block or "stalled for 0.6" in block, block
        assert f"during {phase}" in block, block
        assert f"{path}:{line}: time.sleep(0.5)" in block, block
        assert "stack (most recent call last)" in block, block
        assert "time.sleep" in block
    teardown = failure_section(
        out, "test_teardown_stall"
    )  # pytest titles it "ERROR at teardown of"
    assert f"{path}:{marked_line(WATCH_SUITE, '# mark-teardown')}: time.sleep" in teardown
    assert "during teardown" in teardown


def test_plugin_is_inert_without_options(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_inert="""
        import time
        import pytest

        @pytest.mark.asyncio
        async def test_blocks_and_stalls():
            time.sleep(0.3)
            open(__file__).close()

        def test_nothing_installed():
            import socket
            assert "recv" not in vars(socket.socket)
            assert type(time.sleep).__name__ == "builtin_function_or_method"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "unstall:" not in result.stdout.str()


STRICT_SUITE = """
import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest_asyncio.fixture
async def reads_config(tmp_path):
    name = "config.txt"
    return (tmp_path / name).write_text("x")  # mark-fixture


@pytest.mark.asyncio
async def test_sleep_5ms():
    time.sleep(0.005)  # mark-sleep


@pytest.mark.asyncio
async def test_small_file_write(tmp_path):
    Path(tmp_path, "out.txt").write_text("hi")  # mark-write


@pytest.mark.asyncio
async def test_swallowed():
    try:
        time.sleep(0.005)  # mark-swallowed
    except Exception:
        pass


@pytest.mark.asyncio
async def test_offloaded(tmp_path):
    await asyncio.to_thread(time.sleep, 0.005)
    await asyncio.to_thread(Path(tmp_path, "out.txt").write_text, "hi")


@pytest.mark.asyncio
@pytest.mark.unstall_allow
async def test_allowed():
    time.sleep(0.005)


@pytest.mark.asyncio
@pytest.mark.unstall_allow("time.sleep")
async def test_allowed_entry():
    time.sleep(0.005)


@pytest.mark.anyio
async def test_anyio_blocks():
    time.sleep(0.005)  # mark-anyio


def test_asyncio_run_blocks():
    async def main():
        time.sleep(0.005)  # mark-run

    asyncio.run(main())


@pytest.mark.asyncio
async def test_fixture_blocks(reads_config):
    pass


def test_sync_code_is_fine(tmp_path):
    time.sleep(0.005)
    Path(tmp_path, "x").write_text("x")
"""


def test_strict_fails_blocking_calls_at_their_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_strict_suite=STRICT_SUITE)
    result = pytester.runpytest_subprocess("--unstall-strict", "-p", "no:cacheprovider")
    out = result.stdout.str()
    # the fixture's blocking call raises in setup: an error of that test
    assert result.parseoutcomes() == {"failed": 5, "errors": 1, "passed": 4}, out
    for test, line, call in [
        ("test_sleep_5ms", "# mark-sleep", "time.sleep"),
        ("test_small_file_write", "# mark-write", "open"),
        ("test_swallowed", "# mark-swallowed", "time.sleep"),
        ("test_anyio_blocks", "# mark-anyio", "time.sleep"),
        ("test_asyncio_run_blocks", "# mark-run", "time.sleep"),
        ("test_fixture_blocks", "# mark-fixture", "open"),
    ]:
        line = marked_line(STRICT_SUITE, line)
        block = failure_section(out, test)
        assert f"blocking call {call}(" in block, block
        assert f"at {path}:{line} in " in block, block
        assert "Fix:" in block, block
    assert "_strict.py" not in out  # strict mode's own frames are hidden from tracebacks
    assert "unstall strict mode, during call" in failure_section(out, "test_swallowed")


PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "strict"
asyncio_default_fixture_loop_scope = "function"
unstall_watch = true
unstall_threshold = "0.25"
unstall_strict = true

[tool.unstall]
strict_allow = ["os.listdir"]
"""

INI_SUITE = """
import os
import time

import pytest


@pytest.mark.asyncio
@pytest.mark.unstall(strict=False)
async def test_stall_fails():
    time.sleep(0.5)


@pytest.mark.asyncio
async def test_blocking_fails():
    time.sleep(0.005)


@pytest.mark.asyncio
@pytest.mark.unstall(strict=False)
async def test_marker_turns_strict_off():
    time.sleep(0.005)


@pytest.mark.asyncio
async def test_pyproject_allow_list():
    os.listdir(".")
"""


def test_ini_and_pyproject_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(test_ini=INI_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 2, "passed": 2}, out
    assert "threshold 0.25 s" in failure_section(out, "test_stall_fails")
    assert "blocking call time.sleep(0.005)" in failure_section(out, "test_blocking_fails")


def test_unstall_option_followed_by_a_path(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_one="import asyncio, time, pytest\n\n@pytest.mark.asyncio\n"
        "async def test_x():\n    time.sleep(0.5)\n",
        test_other="def test_never_collected():\n    pass\n",
    )
    result = pytester.runpytest_subprocess("--unstall", "test_one.py", "-p", "no:cacheprovider")
    assert result.parseoutcomes() == {"failed": 1}, result.stdout.str()
    assert "threshold 0.10 s" in result.stdout.str()


def test_bad_threshold_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("--unstall=fast")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unstall takes an optional threshold*'fast'*"])
    result = pytester.runpytest_inprocess("--unstall=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unstall must be > 0 seconds*"])


def test_bad_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_x=textwrap.dedent(
            """
            import pytest

            @pytest.mark.unstall(treshold=1)
            def test_x():
                pass
            """
        )
    )
    result = pytester.runpytest_inprocess()
    assert result.ret != 0
    assert (
        "takes threshold=, strict=, allow= and off= only, got treshold"
        in result.stdout.str() + result.stderr.str()
    )


def test_one_stall_per_blocked_period_preferring_a_user_culprit() -> None:
    from unstall._plugin import guard
    from unstall._report.records import Frame, Stall

    user = Frame("/src/app.py", 3, "handler")
    own = Frame(guard.__file__, 1, "hook")
    stalls = [
        Stall(0.0, 0.5, "MainThread", 1, "loop", culprit=own),  # the same period, seen twice
        Stall(0.01, 0.5, "MainThread", 1, "loop", culprit=user),
        Stall(0.2, 0.5, "worker", 2, "loop2", culprit=own),  # another thread's loop
        Stall(1.0, 0.2, "MainThread", 1, "loop", culprit=user),  # a later stall
    ]
    kept = guard.distinct(stalls)
    assert [(s.thread_id, s.start_s, s.culprit) for s in kept] == [
        (1, 0.01, user),
        (2, 0.2, own),
        (1, 1.0, user),
    ]
