"""Regression tests for the plugin's defects found on real suites (issue 13), each with a
small program of its own that reproduces what the real suite did."""

from __future__ import annotations

import pytest

from helpers import failure_section, marked_line

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

SWAPPED_STDOUT = """
import io
import logging
import sys
from pathlib import Path

import pytest


def swap_streams():
    # what click's CliRunner.invoke does: sys.stdout/sys.stderr become in-memory buffers
    saved = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    return saved


@pytest.mark.asyncio
async def test_logging_to_the_capture_stream_while_stdout_is_swapped():
    handler = logging.StreamHandler(sys.stderr)  # bound to pytest's capture stream
    log = logging.getLogger("swapped")
    log.addHandler(handler)
    log.propagate = False
    saved = swap_streams()
    try:
        log.warning("written while sys.stdout is somebody else's")
        printed = sys.stderr
        print("and a print into the swapped stream")
    finally:
        sys.stdout, sys.stderr = saved
        log.removeHandler(handler)
    printed.seek(0)
    assert "Logging error" not in printed.read()


@pytest.mark.asyncio
async def test_a_real_file_still_fails(tmp_path):
    saved = swap_streams()
    try:
        Path(tmp_path, "out.txt").write_text("x")  # mark-file
    finally:
        sys.stdout, sys.stderr = saved
"""


def test_console_and_capture_streams_are_recognised_whatever_sys_stdout_is(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_swapped=SWAPPED_STDOUT)
    result = pytester.runpytest_subprocess("--unstall-strict", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 1, "passed": 1}, out
    block = failure_section(out, "test_a_real_file_still_fails")
    assert f"{path}:{marked_line(SWAPPED_STDOUT, '# mark-file')}" in block, block


PY_PATH = """
import asyncio

import pytest


@pytest.mark.asyncio
async def test_tmpdir_write(tmpdir):
    tmpdir.join("a.txt").write("x")  # mark-write


@pytest.mark.asyncio
async def test_tmpdir_read(tmpdir):
    path = tmpdir.join("a.txt")
    await asyncio.to_thread(path.write, "x")
    assert path.read() == "x"  # mark-read


@pytest.mark.asyncio
async def test_what_pytest_itself_does_is_allowed(tmpdir, capsys):
    print("captured")
    assert capsys.readouterr().out == "captured\\n"  # capture and assertion rewriting
    await asyncio.to_thread(tmpdir.join("b.txt").write, "offloaded")
"""


def test_py_path_file_io_in_an_async_test_fails_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_py_path=PY_PATH)
    result = pytester.runpytest_subprocess("--unstall-strict", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 2, "passed": 1}, out
    for test, mark in [("test_tmpdir_write", "# mark-write"), ("test_tmpdir_read", "# mark-read")]:
        block = failure_section(out, test)
        assert "blocking call open(" in block, block
        assert f"at {path}:{marked_line(PY_PATH, mark)} in {test}" in block, block


INERT = """
def test_no_unstall_hook_wraps_a_test(request):
    hook = request.config.pluginmanager.hook
    names = ["pytest_runtest_setup", "pytest_runtest_call", "pytest_runtest_teardown",
             "pytest_runtest_makereport"]
    owners = [i.plugin_name for n in names for i in getattr(hook, n).get_hookimpls()]
    assert not [o for o in owners if "unstall" in o], owners


class Noisy:
    def __del__(self):
        raise ValueError("raised in __del__")


def test_unraisable():
    Noisy()
"""


def test_an_inactive_plugin_wraps_no_hook_and_is_named_in_no_warning(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_inert=INERT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "default")
    out = result.stdout.str()
    assert result.parseoutcomes()["passed"] == 2, out
    assert "PytestUnraisableExceptionWarning" in out, out
    assert "/unstall/" not in out, out


GROUP = """
import asyncio
import time

import pytest


class Noisy:
    def __del__(self):
        raise ValueError("raised in __del__")


@pytest.mark.asyncio
async def test_blocking_call_inside_a_task_group():
    async def blocks():
        time.sleep(0.01)  # mark-group

    async with asyncio.TaskGroup() as tg:
        tg.create_task(blocks())


def test_unraisable():
    Noisy()
"""


@pytest.mark.parametrize("style", ["long", "native"])
def test_an_active_plugin_is_not_named_as_the_origin_of_what_it_did_not_cause(
    pytester: pytest.Pytester, style: str
) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_group=GROUP)
    result = pytester.runpytest_subprocess(
        "--unstall-strict", "-p", "no:cacheprovider", "-W", "default", f"--tb={style}"
    )
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 1, "passed": 1, "warnings": 1}, out
    block = failure_section(out, "test_blocking_call_inside_a_task_group")
    assert "BlockingCallError" in block, block
    assert str(path) in block, block
    assert "time.sleep(0.01)  # mark-group" in block, block
    assert "/unstall/" not in out, out  # neither in the group's traceback nor the warning


WRITE_THEN_CLOSE = """
import pytest


@pytest.fixture
def opened(tmp_path):
    with open(tmp_path / "out.txt", "w") as f:  # opened before the loop runs
        yield f


@pytest.mark.asyncio
async def test_write_then_close(opened):
    with opened:
        opened.write("x" * 100)  # mark-write
"""


def test_one_blocking_write_is_reported_once_not_again_at_its_flush(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_once=WRITE_THEN_CLOSE)
    result = pytester.runpytest_subprocess("--unstall-strict", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 1}, out
    block = failure_section(out, "test_write_then_close")
    assert block.count("blocking call ") == 1, block
    assert "blocking call io.TextIOWrapper.write(" in block, block
    assert f"{path}:{marked_line(WRITE_THEN_CLOSE, '# mark-write')}" in block
    assert "BufferedWriter.flush" not in out, out


ISOLATED = """
import asyncio
import time
import unittest

import pytest


async def nothing():
    pass


class Watched(unittest.IsolatedAsyncioTestCase):
    async def test_many_tasks_are_not_a_stall(self):
        assert not asyncio.get_running_loop().get_debug()
        tasks = [asyncio.ensure_future(nothing()) for _ in range(3000)]
        await asyncio.gather(*tasks)

    async def test_a_stall_is_caught(self):
        time.sleep(0.8)  # mark-stall


@pytest.mark.unstall(off=True)
class NotWatched(unittest.IsolatedAsyncioTestCase):
    async def test_keeps_unittests_debug_mode(self):
        assert asyncio.get_running_loop().get_debug()
"""


def test_isolated_asyncio_test_case_is_watched_like_any_other_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    path = pytester.makepyfile(test_isolated=ISOLATED)
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)
    result = pytester.runpytest_subprocess("--unstall=0.5", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.parseoutcomes() == {"failed": 1, "passed": 2}, out
    block = failure_section(out, "Watched.test_a_stall_is_caught")
    assert f"culprit: {path}:{marked_line(ISOLATED, '# mark-stall')}" in block, block


def test_asyncio_machinery_is_never_the_thing_to_offload() -> None:
    from unstall._report.records import Frame, Stall

    user = Frame("/src/app.py", 3, "handler", coroutine=True)
    stall = Stall(0.0, 0.2, "MainThread", 1, "loop", culprit=user, call="asyncio.ensure_future")
    assert "to_process(asyncio" not in stall.fix_hint
    assert "to_thread(asyncio" not in stall.fix_hint
    assert "asyncio's own" in stall.fix_hint
    assert stall.fix.action == "none"
