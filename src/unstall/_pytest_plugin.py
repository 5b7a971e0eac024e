"""The pytest plugin: fail a test whose event loop stalls, or that blocks it in strict mode.

Loaded in every pytest run through the ``pytest11`` entry point, it does nothing (no
hook wrapper, no watcher, no thread) unless asked:

* ``pytest --unstall[=THRESHOLD]`` or ini ``unstall_watch = true``: every test is
  watched (the loops of pytest-asyncio, anyio and ``asyncio.run`` inside a sync test);
  one that stalls a loop longer than the threshold fails, with culprit, duration, stack.
* ``pytest --unstall-strict[=costly|all|project]`` or ini ``unstall_strict = true`` (or
  a mode): strict mode (action ``raise``) for every test: a costly blocking call on a
  loop fails the test at its line; a cheap one within ``--unstall-strict-budget`` warns
  once per call site. The summary lists each call site once, with its count of tests.
* ``--unstall-baseline=FILE``: findings listed in FILE do not fail their test; a missing
  FILE is written with every finding of the run (which passes).
* ``--unstall-html=FILE``: the suite's stalls as an HTML timeline.
* ``@pytest.mark.unstall(threshold=..., strict=..., allow=[...], off=True)`` for one test
  or module; ``@pytest.mark.unstall_allow`` lets a test block (with arguments: allow-list
  entries for strict mode only).

Fixtures run inside the test's window: a stall or blocking call in setup fails the test
itself; one in teardown is reported as an error in the test's teardown. The machinery is
in :mod:`unstall._plugin`; this module only registers it when some test is watched.
"""

from __future__ import annotations

import pytest

from unstall._plugin.markers import ALLOW_MARKER_HELP, MARKER_HELP, has_marker, settings_for
from unstall._plugin.options import Defaults, add_options, read_defaults

_DEFAULTS = pytest.StashKey[Defaults]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.addinivalue_line("markers", ALLOW_MARKER_HELP)
    defaults = read_defaults(config)
    config.stash[_DEFAULTS] = defaults
    if defaults.active or _xdist_controller(config):
        _register(config, defaults)


def _xdist_controller(config: pytest.Config) -> bool:
    """pytest-xdist's controller: it collects no test, so it cannot know whether a marker
    watches one; it listens to the workers' reports (its session runs no test)."""
    workers = config.getoption("numprocesses", None)
    return bool(workers) and not hasattr(config, "workerinput")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    defaults = config.stash.get(_DEFAULTS, None)
    if defaults is None:
        return
    marked = [i for i in items if i.get_closest_marker("unstall") is not None]
    for item in marked:
        settings_for(item, defaults)  # a bad marker stops the run before any test runs
    if not defaults.active and any(has_marker(i) for i in marked):
        _register(config, defaults)


def _register(config: pytest.Config, defaults: Defaults) -> None:
    from unstall._plugin.session import NAME, Session

    if not config.pluginmanager.has_plugin(NAME):
        config.pluginmanager.register(Session(config, defaults), NAME)
