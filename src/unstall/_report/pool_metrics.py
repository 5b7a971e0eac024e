"""Offload pools as metrics: read from every live pool's ``statistics()`` when collected.

Nothing is recorded on the offload path: Prometheus asks at each scrape, OpenTelemetry at
each collection (observable instruments). Labels: ``pool`` (the pool's name) and ``kind``
(``thread`` or ``process``); pools sharing a name and kind are added up.

===========================================  ==========================================
Prometheus (prefix ``unstall``)              OpenTelemetry
===========================================  ==========================================
``unstall_pool_workers{state=busy|idle}``    ``unstall.pool.workers`` (gauge)
``unstall_pool_max_workers``                 ``unstall.pool.max_workers`` (gauge)
``unstall_pool_calls_queued``                ``unstall.pool.calls.queued`` (gauge)
``unstall_pool_longest_queue_wait_seconds``  ``unstall.pool.queue.longest_wait`` (gauge)
``unstall_pool_calls_total{outcome=...}``    ``unstall.pool.calls`` (counter): ``outcome``
                                             ``completed``, ``cancelled``, ``timed_out``
``unstall_pool_worker_restarts_total``       ``unstall.pool.worker.restarts`` (counter)
``unstall_pool_queue_wait_seconds``          ``unstall.pool.queue.wait`` (counter, seconds
(histogram)                                  waited; the histogram is Prometheus only)
===========================================  ==========================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from unstall._offload.statistics import QUEUE_WAIT_BUCKETS, PoolStatistics

__all__ = ["OtelPools", "PrometheusPools", "pool_snapshot"]


def pool_snapshot() -> list[PoolStatistics]:
    """Every live pool's statistics, pools of one name and kind added up."""
    from unstall._offload.capacity import all_pool_statistics

    merged: dict[tuple[str, str], PoolStatistics] = {}
    for stats in all_pool_statistics():
        key = (stats.name, stats.kind)
        merged[key] = _add(merged[key], stats) if key in merged else stats
    return list(merged.values())


def _add(a: PoolStatistics, b: PoolStatistics) -> PoolStatistics:
    summed = {
        f.name: getattr(a, f.name) + getattr(b, f.name)
        for f in dataclasses.fields(PoolStatistics)
        if f.type in ("int", "float")
    }
    return dataclasses.replace(
        a,
        **summed,
        longest_queue_wait_s=max(a.longest_queue_wait_s, b.longest_queue_wait_s),
        max_queue_wait_s=max(a.max_queue_wait_s, b.max_queue_wait_s),
        max_queued=max(a.max_queued, b.max_queued),
        queue_wait_buckets=tuple(
            x + y for x, y in zip(a.queue_wait_buckets, b.queue_wait_buckets, strict=True)
        ),
    )


_OUTCOMES = (
    ("completed", "calls_completed"),
    ("cancelled", "calls_cancelled"),
    ("timed_out", "calls_timed_out"),
)


class PrometheusPools:
    """A ``prometheus_client`` collector of every pool's statistics."""

    def __init__(self, prefix: str, snapshot: Callable[[], list[PoolStatistics]]) -> None:
        self._prefix = prefix
        self._snapshot = snapshot

    def describe(self) -> Iterator[Any]:
        """The families without samples: lets the registry spot duplicate names."""
        return self._families([])

    def collect(self) -> Iterator[Any]:
        return self._families(self._snapshot())

    def _families(self, pools: list[PoolStatistics]) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        p, labels = self._prefix, ["pool", "kind"]
        workers = GaugeMetricFamily(
            f"{p}_pool_workers", "Workers of an offload pool, by state.", labels=[*labels, "state"]
        )
        most = GaugeMetricFamily(f"{p}_pool_max_workers", "The pool's worker cap.", labels=labels)
        queued = GaugeMetricFamily(
            f"{p}_pool_calls_queued", "Calls waiting for a worker now.", labels=labels
        )
        longest = GaugeMetricFamily(
            f"{p}_pool_longest_queue_wait_seconds",
            "How long the oldest queued call has waited so far.",
            labels=labels,
        )
        calls = CounterMetricFamily(
            f"{p}_pool_calls", "Calls by outcome.", labels=[*labels, "outcome"]
        )
        restarts = CounterMetricFamily(
            f"{p}_pool_worker_restarts", "Workers started to replace one.", labels=labels
        )
        wait = HistogramMetricFamily(
            f"{p}_pool_queue_wait_seconds",
            "How long calls waited for a worker.",
            labels=labels,
        )
        for s in pools:
            key = [s.name, s.kind]
            workers.add_metric([*key, "busy"], s.workers_busy)
            workers.add_metric([*key, "idle"], s.workers_idle)
            most.add_metric(key, s.max_workers)
            queued.add_metric(key, s.calls_queued)
            longest.add_metric(key, s.longest_queue_wait_s)
            for outcome, field in _OUTCOMES:
                calls.add_metric([*key, outcome], getattr(s, field))
            restarts.add_metric(key, s.worker_restarts)
            wait.add_metric(key, _cumulative(s), s.queue_wait_sum_s)
        yield from (workers, most, queued, longest, calls, restarts, wait)


def _cumulative(s: PoolStatistics) -> list[tuple[str, float]]:
    bounds = [*(str(b) for b in QUEUE_WAIT_BUCKETS), "+Inf"]
    total, out = 0, []
    for bound, count in zip(bounds, s.queue_wait_buckets, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class OtelPools:
    """Observable OpenTelemetry instruments of every pool's statistics."""

    def __init__(
        self, meter: Any, prefix: str, snapshot: Callable[[], list[PoolStatistics]]
    ) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self._snapshot = snapshot
        self.enabled = True
        p = prefix
        meter.create_observable_gauge(
            f"{p}.pool.workers", [self._workers], unit="{worker}", description="Workers by state."
        )
        meter.create_observable_gauge(
            f"{p}.pool.max_workers", [self._field("max_workers")], unit="{worker}"
        )
        meter.create_observable_gauge(
            f"{p}.pool.calls.queued", [self._field("calls_queued")], unit="{call}"
        )
        meter.create_observable_gauge(
            f"{p}.pool.queue.longest_wait", [self._field("longest_queue_wait_s")], unit="s"
        )
        meter.create_observable_counter(f"{p}.pool.calls", [self._calls], unit="{call}")
        meter.create_observable_counter(
            f"{p}.pool.worker.restarts", [self._field("worker_restarts")], unit="{worker}"
        )
        meter.create_observable_counter(
            f"{p}.pool.queue.wait", [self._field("queue_wait_sum_s")], unit="s"
        )

    def _pools(self) -> list[PoolStatistics]:
        return self._snapshot() if self.enabled else []

    def _field(self, name: str) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            return [
                self._observation(getattr(s, name), {"pool": s.name, "kind": s.kind})
                for s in self._pools()
            ]

        return observe

    def _workers(self, options: Any) -> Iterable[Any]:
        out = []
        for s in self._pools():
            attrs = {"pool": s.name, "kind": s.kind}
            out.append(self._observation(s.workers_busy, {**attrs, "state": "busy"}))
            out.append(self._observation(s.workers_idle, {**attrs, "state": "idle"}))
        return out

    def _calls(self, options: Any) -> Iterable[Any]:
        return [
            self._observation(getattr(s, field), {"pool": s.name, "kind": s.kind, "outcome": o})
            for s in self._pools()
            for o, field in _OUTCOMES
        ]
