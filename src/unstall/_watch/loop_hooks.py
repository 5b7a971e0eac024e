"""Notice every event loop that starts or stops running, in any thread.

Every asyncio loop announces itself through ``asyncio.events._set_running_loop``:
``BaseEventLoop.run_forever`` looks it up on the ``events`` module at each call, and
uvloop's ``Loop`` binds ``asyncio._set_running_loop`` once, when ``uvloop.loop`` is
imported (``includes/stdlib.pxi``). So the hook replaces both module attributes, and when
uvloop was imported before the hook, it also wraps ``uvloop.Loop.run_forever`` (a Python
subclass of the Cython loop, whose ``run_until_complete`` calls ``self.run_forever()``).

The hook is installed once and never removed (uvloop may hold on to it); with no listener
it only forwards the call.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import functools
import gc
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["install", "running_loops", "set_listener"]

Listener = Callable[[asyncio.AbstractEventLoop, bool], None]
"""Called in the loop's thread with ``(loop, True)`` when it starts, ``(loop, False)`` when it stops."""

_listener: Listener | None = None
_install_lock = threading.Lock()
_installed = False
_original_set: Callable[[asyncio.AbstractEventLoop | None], None] = asyncio.events._set_running_loop


def set_listener(listener: Listener | None) -> None:
    """Set (or clear) the one function told about loops starting and stopping."""
    global _listener
    _listener = listener


def _notify(loop: asyncio.AbstractEventLoop, started: bool) -> None:
    listener = _listener
    if listener is not None:
        try:
            listener(loop, started)
        except Exception:  # a watcher bug must never stop the user's loop
            import logging

            logging.getLogger("unstall").exception("unstall: loop hook failed")


def _set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    if _listener is None:
        _original_set(loop)
        return
    if loop is None:
        previous = asyncio.events._get_running_loop()
        if previous is not None:
            _notify(previous, False)
        _original_set(None)
    else:
        _original_set(loop)
        _notify(loop, True)


def install() -> None:
    """Install the hooks (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        uvloop_first = "uvloop.loop" in sys.modules
        asyncio.events._set_running_loop = _set_running_loop
        asyncio._set_running_loop = _set_running_loop
        if uvloop_first:
            _wrap_uvloop()
        _installed = True


def _wrap_uvloop() -> None:
    uvloop = sys.modules.get("uvloop")
    cls: Any = getattr(uvloop, "Loop", None)
    if cls is None or getattr(cls.run_forever, "_unstall_hook", False):
        return
    original = cls.run_forever

    @functools.wraps(original)
    def run_forever(self: asyncio.AbstractEventLoop) -> None:
        if _listener is None:
            return original(self)  # type: ignore[no-any-return]
        _notify(self, True)
        try:
            return original(self)  # type: ignore[no-any-return]
        finally:
            _notify(self, False)

    run_forever._unstall_hook = True  # type: ignore[attr-defined]
    cls.run_forever = run_forever


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """Loops already running when watching began (asyncio's own loops only).

    A one-off scan of the heap: uvloop loops started before the hook cannot be found.
    """
    found: list[asyncio.AbstractEventLoop] = []
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.BaseEventLoop):
            try:
                if obj.is_running():
                    found.append(obj)
            except Exception:
                continue
    return found
