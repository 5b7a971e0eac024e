"""Shared fixtures. Constants and run helpers shared by many modules are in ``helpers.py``."""

from __future__ import annotations

import pytest

from helpers import SLACK_S


@pytest.fixture
def slack() -> float:
    """Seconds a test may wait for something that should happen at once."""
    return SLACK_S
