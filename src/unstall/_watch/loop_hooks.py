"""Notice every event loop that starts or stops running, in any thread.

Every asyncio loop announces itself through ``asyncio.events._set_running_loop``:
``BaseEventLoop.run_forever`` looks it up on the ``events`` module at each call, and
uvloop's ``Loop`` binds ``asyncio._set_running_loop`` once, when ``uvloop.loop`` is
imported (``includes/stdlib.pxi``). So the hook replaces both module attributes, and when
uvloop was imported before the hook, it also wraps ``uvloop.Loop.run_forever`` (a Python
subclass of the Cython loop, whose ``run_until_complete`` calls ``self.run_forever()``).

The hook is installed once and never removed (uvloop may hold on to it). From then on it
keeps a registry of the loop running in each thread, so finding the running loops costs
one dictionary copy, whatever the size of the heap. Loops that were already running when
the hook was installed are found once, at installation, from the threads' stacks
(``sys._current_frames()``: a frame of ``run_forever`` or ``_run_once`` names its loop).
"""

from __future__ import annotations

import asyncio
import asyncio.events
import functools
import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from unstall._report.incidents import contain

__all__ = ["install", "running_loops", "set_listener"]

_log = logging.getLogger("unstall")

Listener = Callable[[asyncio.AbstractEventLoop, bool], None]
"""Called in the loop's thread with ``(loop, True)`` when it starts, ``(loop, False)`` when it stops."""

_listener: Listener | None = None
_install_lock = threading.Lock()
_installed = False
_original_set: Callable[[asyncio.AbstractEventLoop | None], None] = asyncio.events._set_running_loop
_get_ident = threading.get_ident

_registry_lock = threading.Lock()
_running: dict[int, asyncio.AbstractEventLoop] = {}
"""The loop running in each thread (by thread id), since the hook was installed."""

_LOOP_FRAMES = frozenset({"run_forever", "_run_once"})


def set_listener(listener: Listener | None) -> None:
    """Set (or clear) the one function told about loops starting and stopping."""
    global _listener
    _listener = listener


def _notify(loop: asyncio.AbstractEventLoop, started: bool) -> None:
    listener = _listener
    if listener is not None:
        try:
            listener(loop, started)
        except Exception as exc:  # a watcher bug must never stop the user's loop
            lost = "a loop that started is not watched" if started else "a loop's end was missed"
            contain("the loop hook", lost, exc)


def _set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    # The original's own behaviour (and errors) are the user's; everything else is ours.
    if loop is None:
        try:
            _stopping()
        except Exception as exc:
            contain("the loop hook", "a loop's end was missed", exc)
        _original_set(None)
    else:
        _original_set(loop)
        try:
            _starting(loop)
        except Exception as exc:
            contain("the loop hook", "a loop that started is not watched", exc)


def _starting(loop: asyncio.AbstractEventLoop) -> None:
    with _registry_lock:
        _running[_get_ident()] = loop
    if _listener is not None:
        _notify(loop, True)


def _stopping() -> None:
    with _registry_lock:
        previous = _running.pop(_get_ident(), None)
    if _listener is None:
        return
    if previous is None:
        previous = asyncio.events._get_running_loop()
    if previous is not None:
        _notify(previous, False)


def install() -> None:
    """Install the hooks (idempotent); the first call also finds the loops running now."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _is_installed():  # another thread got here first
            return
        uvloop_first = "uvloop.loop" in sys.modules
        asyncio.events._set_running_loop = _set_running_loop
        asyncio._set_running_loop = _set_running_loop
        if uvloop_first:
            _wrap_uvloop()
        # After the hook: a loop starting from now on registers itself.
        found = _loops_on_stacks()
        with _registry_lock:
            for ident, loop in found.items():
                _running.setdefault(ident, loop)
        _installed = True


def _is_installed() -> bool:
    return _installed


def _wrap_uvloop() -> None:
    uvloop = sys.modules.get("uvloop")
    cls: Any = getattr(uvloop, "Loop", None)
    if cls is None or getattr(cls.run_forever, "_unstall_hook", False):
        return
    original = cls.run_forever

    @functools.wraps(original)
    def run_forever(self: asyncio.AbstractEventLoop) -> None:
        ident = _get_ident()
        try:
            _starting(self)
        except Exception as exc:
            contain("the uvloop hook", "a loop that started is not watched", exc)
        try:
            return original(self)  # type: ignore[no-any-return]
        finally:
            try:
                _forget(ident, self)
                if _listener is not None:
                    _notify(self, False)
            except Exception as exc:
                contain("the uvloop hook", "a loop's end was missed", exc)

    run_forever._unstall_hook = True  # type: ignore[attr-defined]
    cls.run_forever = run_forever


def _loop_of(frame: FrameType | None) -> asyncio.AbstractEventLoop | None:
    """The loop a thread runs, from its stack: the ``self`` of a ``run_forever`` frame."""
    while frame is not None:
        if frame.f_code.co_name in _LOOP_FRAMES:
            try:
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, asyncio.AbstractEventLoop) and candidate.is_running():
                    return candidate
            except Exception:  # an odd object in a frame must not break anything
                pass
        frame = frame.f_back
    return None


def _loops_on_stacks() -> dict[int, asyncio.AbstractEventLoop]:
    found: dict[int, asyncio.AbstractEventLoop] = {}
    try:
        frames = sys._current_frames()
    except Exception:
        _log.debug("unstall: could not read the threads' stacks", exc_info=True)
        return found
    for ident, frame in frames.items():
        loop = _loop_of(frame)
        if loop is not None:
            found[ident] = loop
    return found


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """The loops running now, in any thread (known since :func:`install`).

    Costs one copy of the registry: no heap scan. A uvloop loop started before both the
    hook and ``import uvloop``'s wrapper cannot be found (it has no Python frame to read).
    """
    with _registry_lock:
        known = list(_running.items())
    found: list[asyncio.AbstractEventLoop] = []
    for _, loop in known:
        try:
            if loop.is_running():
                found.append(loop)
        except Exception:  # a broken loop object is not watched, and breaks nothing
            continue
    return found


def _forget(ident: int, loop: asyncio.AbstractEventLoop) -> None:
    with _registry_lock:
        if _running.get(ident) is loop:
            del _running[ident]
