"""A process-wide feed of what watchers observe, for exporters (metrics, live views).

Watchers call :func:`emit_lag` and :func:`emit_stall`; exporters :func:`subscribe`.
With no subscriber, emitting costs one empty-tuple check. A listener that raises is
logged and kept: an exporter must never break the watcher that feeds it.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from unstall._report.records import Stall

__all__ = ["Listener", "emit_lag", "emit_stall", "subscribe", "unsubscribe"]

_log = logging.getLogger("unstall")
_lock = threading.Lock()
_listeners: tuple[Listener, ...] = ()


class Listener(Protocol):
    def on_lag(self, loop_id: str, thread: str, lag_s: float) -> None:
        """One heartbeat measurement: how late the loop ran a callback due now."""

    def on_stall(self, stall: Stall) -> None:
        """A finished stall (``stall.ongoing`` is false)."""


def subscribe(listener: Listener) -> None:
    global _listeners
    with _lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)


def unsubscribe(listener: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x is not listener)


def has_listeners() -> bool:
    return bool(_listeners)


def emit_lag(loop_id: str, thread: str, lag_s: float) -> None:
    for listener in _listeners:
        try:
            listener.on_lag(loop_id, thread, lag_s)
        except Exception:
            _log.exception("unstall: metrics listener %r failed on lag", listener)


def emit_stall(stall: Stall) -> None:
    for listener in _listeners:
        try:
            listener.on_stall(stall)
        except Exception:
            _log.exception("unstall: metrics listener %r failed on stall", listener)
