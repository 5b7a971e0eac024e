"""Stalls as Sentry events, by Sentry's conventions (``unstall[sentry]``).

::

    import sentry_sdk
    from unstall.integrations.sentry import UnstallIntegration

    sentry_sdk.init(dsn=..., integrations=[UnstallIntegration(threshold=0.1)])

From ``init`` on, every asyncio loop of the process is watched. Each stall becomes an event
at level ``warning`` whose stack trace is the stall's stack with the culprit line on top,
tagged with the stall's kind, call and route, and fingerprinted by the culprit line, so
that repeats group into one issue. The event carries the trace of the blocked task (its
Sentry span, else its OpenTelemetry span), which links it to the request's transaction.
At most ``max_events_per_hour`` events are sent (the rest are dropped, as Sentry's
event-loop-block integration for Node does).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import sentry_sdk
from sentry_sdk.integrations import Integration

from unstall._report.format import format_duration
from unstall._report.records import Frame, Stall
from unstall._watch.watcher import Watcher, watch

__all__ = ["UnstallIntegration", "stall_event", "stop_watching"]

_HOUR_S = 3600.0


_watcher: Watcher | None = None
_watcher_lock = threading.Lock()


class UnstallIntegration(Integration):
    """Send each stall above ``threshold`` seconds to Sentry.

    As Sentry's own integrations do, it sets up once per process: the first
    ``sentry_sdk.init`` with it starts one watcher over every loop, at that integration's
    ``threshold``; each stall is then handed to the integration of the client current at
    that moment, which applies its own ``threshold`` and ``max_events_per_hour``.
    :func:`stop_watching` stops the watcher (at shutdown, if you must).

    Args:
        threshold: The shortest stall reported, in seconds (> 0).
        max_events_per_hour: At most this many events an hour (>= 1).
        log: Also log each stall to the ``unstall`` logger.

    Raises:
        TypeError, ValueError: a bad argument (when the integration is made).
    """

    identifier = "unstall"

    def __init__(
        self, threshold: float = 0.1, max_events_per_hour: int = 60, log: bool = True
    ) -> None:
        if isinstance(max_events_per_hour, bool) or not isinstance(max_events_per_hour, int):
            raise TypeError("UnstallIntegration: max_events_per_hour must be an int")
        if max_events_per_hour < 1:
            raise ValueError("UnstallIntegration: max_events_per_hour must be at least 1")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0:
            raise ValueError(
                f"UnstallIntegration: threshold must be > 0 seconds, got {threshold!r}"
            )
        self.threshold = float(threshold)
        self.max_events_per_hour = max_events_per_hour
        self.log = log
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    @staticmethod
    def setup_once() -> None:
        """Nothing to patch: the watcher starts with the options, below."""

    def setup_once_with_options(self, options: Mapping[str, Any] | None = None) -> None:
        global _watcher
        with _watcher_lock:
            if _watcher is None or not _watcher.running:
                _watcher = watch(
                    threshold=self.threshold,
                    on_stall=_on_stall,
                    log=self.log,
                    context=_sentry_trace,
                )

    def _admit(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._sent and now - self._sent[0] >= _HOUR_S:
                self._sent.popleft()
            if len(self._sent) >= self.max_events_per_hour:
                return False
            self._sent.append(now)
            return True


def stop_watching() -> None:
    """Stop the watcher the integration started (idempotent)."""
    global _watcher
    with _watcher_lock:
        watcher, _watcher = _watcher, None
    if watcher is not None:
        watcher.stop()


def _on_stall(stall: Stall) -> None:
    client = sentry_sdk.get_client()
    integration = client.get_integration(UnstallIntegration) if client.is_active() else None
    if integration is None or stall.duration_s < integration.threshold:
        return
    if integration._admit():
        sentry_sdk.capture_event(stall_event(stall))  # type: ignore[arg-type]


def _sentry_trace() -> Mapping[str, Any]:
    """Runs in a copy of the blocked task's context: the Sentry trace it belongs to."""
    span = sentry_sdk.get_current_span()
    if span is None:
        return {}
    return {"sentry.trace_id": span.trace_id, "sentry.span_id": span.span_id}


def _frame(frame: Frame, culprit: Frame | None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "abs_path": frame.file,
        "filename": frame.file,
        "lineno": frame.line,
        "function": frame.function,
        "in_app": frame == culprit or "site-packages" not in frame.file,
    }
    if frame.code:
        found["context_line"] = frame.code
    return found


def stall_event(stall: Stall) -> dict[str, Any]:
    """The Sentry event of one stall (a plain dict, as ``sentry_sdk.capture_event`` takes)."""
    culprit = stall.culprit
    stack = list(stall.stack)
    if culprit is not None:
        cut = next((i for i in range(len(stack) - 1, -1, -1) if stack[i] == culprit), None)
        stack = stack[: cut + 1] if cut is not None else [*stack, culprit]
    where = culprit.location if culprit is not None else "an unknown place"
    message = f"event loop blocked for {format_duration(stall.duration_s)} at {where}"
    if stall.call:
        message += f" ({stall.call})"
    tags = {"unstall.kind": stall.kind, "unstall.call": stall.call or "-"}
    route = stall.context.get("http.route")
    if route:
        tags["http.route"] = str(route)
    event: dict[str, Any] = {
        "level": "warning",
        "logger": "unstall",
        "message": message,
        "fingerprint": [
            "unstall-stall",
            culprit.file if culprit else stall.loop,
            str(culprit.line if culprit else 0),
        ],
        "tags": tags,
        "extra": {"duration_s": stall.duration_s, "task": stall.task, "loop": stall.loop},
        "threads": {
            "values": [
                {
                    "id": stall.thread_id,
                    "name": stall.thread,
                    "current": True,
                    "crashed": False,
                    "stacktrace": {"frames": [_frame(f, culprit) for f in stack]},
                }
            ]
        },
    }
    trace_id = stall.context.get("sentry.trace_id") or stall.context.get("trace_id")
    span_id = stall.context.get("sentry.span_id") or stall.context.get("span_id")
    if trace_id:
        event["contexts"] = {"trace": {"trace_id": trace_id, "span_id": span_id}}
    if route:
        event["transaction"] = f"{stall.context.get('http.method', '')} {route}".strip()
    return event
