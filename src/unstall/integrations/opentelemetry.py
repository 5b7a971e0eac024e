"""OpenTelemetry instrumentor for unstall, in the style of ``opentelemetry-instrumentation-*``.

::

    from unstall.integrations.opentelemetry import UnstallInstrumentor

    UnstallInstrumentor().instrument(threshold=0.1)

It watches every asyncio loop of the process. Each stall becomes an event named
``unstall.stall`` on the span that was current in the blocked task (attributes: the
duration, the culprit's file, line and function, the call, the kind and the fix). The event
is added as soon as the stall passes the threshold, while the blocked code (and so its span)
is still running: its ``unstall.duration_s`` is the duration at that moment, at least the
threshold; the stall record, the log and the metrics have the full duration. It also feeds
unstall's metrics (loop lag histogram, stall counter by culprit and kind) through the
global meter provider, or the ``meter_provider`` given. ``uninstrument()`` stops both.

Needs ``opentelemetry-api`` and ``opentelemetry-instrumentation`` (``unstall[otel]``).
The instrumentor is also registered under the ``opentelemetry_instrumentor`` entry point,
so ``opentelemetry-instrument`` can load it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from unstall._report.metrics import Metrics, enable_metrics
from unstall._report.records import Stall
from unstall._watch.watcher import Watcher, watch

__all__ = ["UnstallInstrumentor"]

_MAX_SPANS = 1000


class UnstallInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Records stalls on the blocked task's span and as metrics.

    ``instrument()`` keyword arguments: ``threshold`` (seconds, default 0.1),
    ``meter_provider`` (default: the global one), ``metrics`` (default ``True``) and
    ``log`` (log each stall to the ``unstall`` logger, default ``True``). Instrumenting
    twice is a no-op (``BaseInstrumentor`` keeps one instance per process).
    """

    _watcher: Watcher | None = None
    _metrics: Metrics | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        self._spans: OrderedDict[str, Any] = OrderedDict()
        self._evented: OrderedDict[tuple[str, float], bool] = OrderedDict()
        self._lock = threading.Lock()
        if kwargs.get("metrics", True):
            self._metrics = enable_metrics(otel=True, meter_provider=kwargs.get("meter_provider"))
        try:
            self._watcher = watch(
                threshold=kwargs.get("threshold", 0.1),
                on_stall=self._on_stall,
                on_hang=self._on_hang,
                log=kwargs.get("log", True),
                context=self._remember_span,
            )
        except BaseException:
            self._stop_metrics()
            raise

    def _uninstrument(self, **kwargs: Any) -> None:
        watcher, self._watcher = self._watcher, None
        try:
            if watcher is not None:
                watcher.stop()
        finally:
            self._stop_metrics()

    def _stop_metrics(self) -> None:
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            metrics.disable()

    def _remember_span(self) -> Mapping[str, Any]:
        """Runs in a copy of the blocked task's context: keep its span for ``_on_stall``."""
        span = trace.get_current_span()
        context = span.get_span_context()
        if context.is_valid and span.is_recording():
            with self._lock:
                self._spans[format(context.span_id, "016x")] = span
                while len(self._spans) > _MAX_SPANS:
                    self._spans.popitem(last=False)
        return {}

    def _on_hang(self, stall: Stall) -> None:
        """A stall has passed the threshold and still lasts: its span is still open."""
        self._add_event(stall)

    def _on_stall(self, stall: Stall) -> None:
        """The stall ended: add the event now if the hang path could not (span still open)."""
        self._add_event(stall)
        with self._lock:
            self._spans.pop(stall.context.get("span_id", ""), None)
            self._evented.pop((stall.loop, round(stall.start_s, 3)), None)

    def _add_event(self, stall: Stall) -> None:
        key = (stall.loop, round(stall.start_s, 3))
        span_id = stall.context.get("span_id")
        with self._lock:
            span = self._spans.get(span_id) if span_id else None
            if span is None or key in self._evented:
                return
            self._evented[key] = True
            while len(self._evented) > _MAX_SPANS:
                self._evented.popitem(last=False)
        if span.is_recording():
            span.add_event("unstall.stall", attributes=stall_attributes(stall))


def stall_attributes(stall: Stall) -> dict[str, str | int | float]:
    """A stall as OpenTelemetry attributes (semantic-convention names where they exist)."""
    attributes: dict[str, str | int | float] = {
        "unstall.duration_s": round(stall.duration_s, 6),
        "unstall.kind": stall.kind,
        "thread.name": stall.thread,
    }
    if stall.culprit is not None:
        attributes["code.file.path"] = stall.culprit.file
        attributes["code.line.number"] = stall.culprit.line
        attributes["code.function.name"] = stall.culprit.function
    if stall.call:
        attributes["unstall.call"] = stall.call
    fix = getattr(stall, "fix", None)
    if isinstance(fix, Mapping) and fix.get("action"):
        attributes["unstall.fix"] = str(fix["action"])
    if stall.task:
        attributes["unstall.task"] = stall.task
    return attributes
