"""Shared fixtures. Constants and run helpers shared by many modules are in ``helpers.py``."""

from __future__ import annotations

import signal

import pytest

from helpers import SLACK_S

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
# so would every program a test starts (an ignored signal stays ignored across exec): the
# Ctrl-C tests need it as a terminal delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def slack() -> float:
    """Seconds a test may wait for something that should happen at once."""
    return SLACK_S
