"""``unittest.IsolatedAsyncioTestCase`` watched like any other test.

It runs every test's loop in asyncio's debug mode, where each task and callback records
the stack that created it: creating 100 tasks costs tens of milliseconds instead of about
one, and a watched test would fail on asyncio's bookkeeping, not on its own code. While
the test is watched its loop runs in normal mode, as pytest-asyncio's and anyio's do,
unless the user asked for debug mode (``PYTHONASYNCIODEBUG``, ``-X dev``).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def debug_requested() -> bool:
    return sys.flags.dev_mode or bool(os.environ.get("PYTHONASYNCIODEBUG"))


def normal_mode_loop(instance: Any) -> None:
    """Make an ``IsolatedAsyncioTestCase`` instance's loop run without debug mode."""
    import unittest

    if not isinstance(instance, unittest.IsolatedAsyncioTestCase) or debug_requested():
        return
    setup = getattr(instance, "_setupAsyncioRunner", None)  # Python 3.11-3.13
    if setup is None:
        return

    def setup_runner() -> None:
        setup()
        runner = getattr(instance, "_asyncioRunner", None)
        if runner is not None:
            runner.get_loop().set_debug(False)

    instance._setupAsyncioRunner = setup_runner  # type: ignore[attr-defined]
