"""What ``--unstall`` costs per test does not depend on the size of the program's heap."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

COUNTING_CONFTEST = """
import gc
import os

walks = []
_real = gc.get_objects


def _counting(*args):
    walks.append(1)
    return _real(*args)


gc.get_objects = _counting


def pytest_sessionfinish(session):
    with open(os.path.join(str(session.config.rootpath), "walks.txt"), "w") as f:
        f.write(str(len(walks)))
"""

BIG_HEAP_SUITE = """
import asyncio
import threading

import pytest

BIG = [[] for _ in range(1_000_000)]  # a million live objects


@pytest.fixture(scope="module")
def loop_in_a_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.mark.parametrize("n", range(30))
def test_runs_a_loop(n, loop_in_a_thread):
    assert asyncio.run(asyncio.sleep(0, result=n)) == n
    assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, result=n), loop_in_a_thread).result() == n
"""


def test_a_million_live_objects_are_never_walked_per_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(COUNTING_CONFTEST)
    pytester.makepyfile(test_big_heap=BIG_HEAP_SUITE)
    result = pytester.runpytest_subprocess("--unstall", "-p", "no:cacheprovider")
    assert result.parseoutcomes().get("passed") == 30, result.stdout.str()
    assert (pytester.path / "walks.txt").read_text() == "0"
