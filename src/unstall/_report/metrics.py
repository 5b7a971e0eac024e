"""Loop health for production monitoring: OpenTelemetry metrics and Prometheus.

:func:`enable_metrics` subscribes to the watcher feed (:mod:`unstall._report.feed`) and
exports three instruments, each under ``prefix``:

=================================  ======================  =============================
OpenTelemetry                      Prometheus              what
=================================  ======================  =============================
``unstall.loop.lag`` (histogram)   ``unstall_loop_lag_     how late each heartbeat ran,
                                   seconds``               seconds; label ``thread``
``unstall.stalls`` (counter)       ``unstall_stalls_       stalls, by ``culprit``
                                   total``                 (``file:line``), ``function``
                                                           and ``kind``
``unstall.stall.duration``         ``unstall_stall_        seconds blocked, same labels
(counter)                          seconds_total``
=================================  ======================  =============================

With ``pools=True`` (the default) every live offload pool is exported as well: workers
busy and idle, calls queued, the longest current queue wait, calls by outcome, worker
restarts and a queue-wait histogram, labelled by pool name (see
:mod:`unstall._report.pool_metrics`).

Label values are bounded: after ``max_culprits`` distinct culprit lines (and 64 thread
names) new ones are counted as ``"other"``, so a long-running service cannot grow its
series without limit. Neither backend is imported until asked for.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from unstall._report import feed
from unstall._report.pool_metrics import OtelPools, PrometheusPools, pool_snapshot
from unstall._report.records import Stall

__all__ = ["LAG_BUCKETS", "Metrics", "enable_metrics"]

LAG_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Histogram bucket bounds for loop lag, in seconds: from healthy (1 ms) to hung (30 s)."""

MAX_THREADS = 64
OTHER = "other"
_PREFIX = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class _Sink(Protocol):
    def lag(self, thread: str, lag_s: float) -> None: ...
    def stall(self, labels: tuple[str, str, str], duration_s: float) -> None: ...
    def close(self) -> None: ...


class _Bounded:
    """Maps unbounded label values onto at most ``limit`` distinct ones plus ``"other"``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[Any] = set()
        self._lock = threading.Lock()

    def __call__(self, key: Any) -> bool:
        """Whether ``key`` keeps its own label value."""
        if key in self._seen:
            return True
        with self._lock:
            if len(self._seen) >= self._limit:
                return False
            self._seen.add(key)
            return True


def _stall_labels(stall: Stall, culprits: _Bounded) -> tuple[str, str, str]:
    c = stall.culprit
    if c is None:
        return ("unknown", stall.call or "unknown", stall.kind)
    if not culprits((c.file, c.line)):
        return (OTHER, OTHER, stall.kind)
    return (c.location, c.function, stall.kind)


class _Prometheus:
    def __init__(self, registry: Any, prefix: str, buckets: Sequence[float], pools: bool) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise _missing("prometheus=True", "prometheus_client", "prometheus") from exc
        self.registry = prom.REGISTRY if registry is None else registry
        labels = ("culprit", "function", "kind")
        made: list[Any] = []
        try:
            made.append(
                prom.Histogram(
                    f"{prefix}_loop_lag_seconds",
                    "How late the event loop ran a callback that was due (heartbeat lag).",
                    ["thread"],
                    buckets=list(buckets),
                    registry=self.registry,
                )
            )
            made.append(
                prom.Counter(
                    f"{prefix}_stalls",
                    "Event loop stalls longer than the watcher's threshold, by culprit line.",
                    labels,
                    registry=self.registry,
                )
            )
            made.append(
                prom.Counter(
                    f"{prefix}_stall_seconds",
                    "Seconds the event loop was blocked by stalls, by culprit line.",
                    labels,
                    registry=self.registry,
                )
            )
            if pools:
                collector = PrometheusPools(prefix, pool_snapshot)
                self.registry.register(collector)
                made.append(collector)
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            for collector in made:
                self.registry.unregister(collector)
            raise ValueError(
                f"unstall metrics with prefix {prefix!r} are already in this Prometheus "
                "registry: disable() the first handle, or pass another prefix or registry"
            ) from exc
        self._collectors = made
        self._lag, self._stalls, self._seconds = made[:3]
        self._lag_children: dict[str, Any] = {}

    def lag(self, thread: str, lag_s: float) -> None:
        child = self._lag_children.get(thread)
        if child is None:
            child = self._lag_children.setdefault(thread, self._lag.labels(thread))
        child.observe(lag_s)

    def stall(self, labels: tuple[str, str, str], duration_s: float) -> None:
        self._stalls.labels(*labels).inc()
        self._seconds.labels(*labels).inc(duration_s)

    def close(self) -> None:
        for collector in self._collectors:
            self.registry.unregister(collector)


class _OpenTelemetry:
    def __init__(
        self, meter_provider: Any, prefix: str, buckets: Sequence[float], pools: bool
    ) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:
            raise _missing("otel=True", "opentelemetry-api", "otel") from exc
        from unstall._version import __version__

        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("unstall", __version__)
        self._lag = _histogram(meter, f"{prefix}.loop.lag", buckets)
        self._stalls = meter.create_counter(
            f"{prefix}.stalls",
            unit="{stall}",
            description="Event loop stalls longer than the watcher's threshold, by culprit line.",
        )
        self._seconds = meter.create_counter(
            f"{prefix}.stall.duration",
            unit="s",
            description="Seconds the event loop was blocked by stalls, by culprit line.",
        )
        self._thread_attrs: dict[str, dict[str, str]] = {}
        self._pools = OtelPools(meter, prefix, pool_snapshot) if pools else None

    def lag(self, thread: str, lag_s: float) -> None:
        attrs = self._thread_attrs.get(thread)
        if attrs is None:
            attrs = self._thread_attrs.setdefault(thread, {"thread": thread})
        self._lag.record(lag_s, attrs)

    def stall(self, labels: tuple[str, str, str], duration_s: float) -> None:
        attrs = dict(zip(("culprit", "function", "kind"), labels, strict=True))
        self._stalls.add(1, attrs)
        self._seconds.add(duration_s, attrs)

    def close(self) -> None:
        """OpenTelemetry instruments cannot be removed; they simply stop receiving data."""
        if self._pools is not None:
            self._pools.enabled = False


def _histogram(meter: Any, name: str, buckets: Sequence[float]) -> Any:
    description = "How late the event loop ran a callback that was due (heartbeat lag)."
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23 has no bucket advisory
        return meter.create_histogram(name, unit="s", description=description)


def _missing(flag: str, package: str, extra: str) -> ImportError:
    return ImportError(
        f"unstall.enable_metrics({flag}) needs {package}: pip install 'unstall[{extra}]'"
    )


class Metrics:
    """A handle on enabled metrics; :meth:`disable` stops exporting.

    It is the :class:`unstall._report.feed.Listener` the watchers feed; its methods are called
    from loop and watchdog threads and are thread-safe.
    """

    def __init__(self, sinks: Sequence[_Sink], max_culprits: int) -> None:
        self._sinks = tuple(sinks)
        self._culprits = _Bounded(max_culprits)
        self._threads = _Bounded(MAX_THREADS)
        self._enabled = True

    @property
    def enabled(self) -> bool:
        return self._enabled

    def on_lag(self, loop_id: str, thread: str, lag_s: float) -> None:
        label = thread if self._threads(thread) else OTHER
        for sink in self._sinks:
            sink.lag(label, lag_s)

    def on_stall(self, stall: Stall) -> None:
        if stall.ongoing:  # counted once, when it ends
            return
        labels = _stall_labels(stall, self._culprits)
        for sink in self._sinks:
            sink.stall(labels, stall.duration_s)

    def disable(self) -> None:
        """Stop exporting and unregister the Prometheus collectors. Safe to call twice."""
        if not self._enabled:
            return
        self._enabled = False
        feed.unsubscribe(self)
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disable()


def _lag_buckets(bounds: Sequence[float]) -> list[float]:
    try:
        buckets = sorted(float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"lag_buckets must be positive bounds, in seconds, not {bounds!r}"
        ) from None
    if not buckets or buckets[0] <= 0:
        raise ValueError("lag_buckets must be positive bounds, in seconds")
    return buckets


def enable_metrics(
    *,
    otel: bool = False,
    prometheus: bool = False,
    registry: Any = None,
    meter_provider: Any = None,
    prefix: str = "unstall",
    max_culprits: int = 100,
    lag_buckets: Sequence[float] = LAG_BUCKETS,
    pools: bool = True,
) -> Metrics:
    """Export loop lag and stalls from every watcher in this process as metrics.

    Call it once at start-up, next to your other metrics set-up; then every
    ``unstall.watch()`` or ``unstall run`` in the process feeds it. Nothing is measured
    unless a watcher runs.

    Args:
        otel: Export through the OpenTelemetry metrics API (``unstall[otel]``).
        prometheus: Export through ``prometheus_client`` (``unstall[prometheus]``).
        registry: The Prometheus ``CollectorRegistry`` (default: the global one).
        meter_provider: The OpenTelemetry ``MeterProvider`` (default: the global one).
        prefix: Metric name prefix: letters, digits and ``_``.
        max_culprits: Distinct culprit lines given their own label; later ones are "other".
        lag_buckets: Histogram bucket bounds for the lag, in seconds.
        pools: Also export every offload pool's statistics (workers, queue, calls by
            outcome, queue-wait histogram), read when the metrics are collected.

    Returns:
        A :class:`Metrics` handle; call ``.disable()`` (or leave its ``with`` block) to stop.

    Raises:
        ImportError: a requested backend is not installed (the message names the extra).
        ValueError: no backend requested, a bad argument, or the Prometheus registry
            already holds unstall metrics with this prefix.
    """
    if not isinstance(pools, bool):
        raise TypeError(f"pools must be True or False, not {pools!r}")
    if not (otel or prometheus):
        raise ValueError("enable_metrics() needs otel=True and/or prometheus=True")
    if registry is not None and not prometheus:
        raise ValueError("registry= is for Prometheus: pass prometheus=True too")
    if meter_provider is not None and not otel:
        raise ValueError("meter_provider= is for OpenTelemetry: pass otel=True too")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(f"prefix must be letters, digits and '_', not {prefix!r}")
    if isinstance(max_culprits, bool) or not isinstance(max_culprits, int) or max_culprits < 1:
        raise ValueError(f"max_culprits must be a positive int, not {max_culprits!r}")
    if registry is not None and not callable(getattr(registry, "register", None)):
        raise TypeError(
            f"registry must be a prometheus_client CollectorRegistry, not {type(registry).__name__}"
        )
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        raise TypeError(
            "meter_provider must be an OpenTelemetry MeterProvider, "
            f"not {type(meter_provider).__name__}"
        )
    buckets = _lag_buckets(lag_buckets)
    sinks: list[_Sink] = []
    if otel:
        sinks.append(_OpenTelemetry(meter_provider, prefix, buckets, pools))
    if prometheus:
        sinks.append(_Prometheus(registry, prefix, buckets, pools))
    handle = Metrics(sinks, max_culprits)
    feed.subscribe(handle)
    return handle
