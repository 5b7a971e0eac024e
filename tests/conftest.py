"""Shared fixtures. Constants and run helpers shared by many modules are in ``helpers.py``."""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator

import pytest

from helpers import SLACK_S

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
# so would every program a test starts (an ignored signal stays ignored across exec): the
# Ctrl-C tests need it as a terminal delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's own, whose pytest processes (and their xdist workers) load no hypothesis:
    none of them uses it, and importing it costs each one 0.75 s, minutes over the suite.
    (Through ``PYTEST_ADDOPTS``, which pytester clears when it starts.)"""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")
    return pytester


@pytest.fixture
def slack() -> float:
    """Seconds a test may wait for something that should happen at once."""
    return SLACK_S


@pytest.fixture(autouse=True)
def _garbage_collector_as_found() -> Iterator[None]:
    """Each test starts with the collector as the suite found it: a library run in-process
    may retune it for good (mypy's API sets the thresholds to 200,000, after which no full
    collection happens in a test that needs one)."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()
    else:
        gc.disable()
