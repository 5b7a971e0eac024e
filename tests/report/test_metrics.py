"""Metrics export: OpenTelemetry (SDK in-memory reader) and prometheus_client (own registry)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import unstall
from report_samples import realistic_report
from unstall import Frame, Stall
from unstall._report import feed
from unstall._report.metrics import Metrics, enable_metrics

USERS = "/srv/shop/app/users.py:42"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(registry: CollectorRegistry, reader: InMemoryMetricReader) -> Iterator[Metrics]:
    handle = enable_metrics(
        otel=True,
        prometheus=True,
        registry=registry,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    yield handle
    handle.disable()


def _feed_realistic() -> None:
    for stall in realistic_report().stalls:
        feed.emit_stall(stall)


def _otel(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    if data is None:
        return found
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def _stall(line: int, duration: float = 0.2) -> Stall:
    culprit = Frame("/app/h.py", line, f"handler_{line}")
    return Stall(duration, duration, "MainThread", 1, "loop", culprit=culprit, kind="cpu")


# ---------------------------------------------------------------- Prometheus


def test_prometheus_lag_histogram(metrics: Metrics, registry: CollectorRegistry) -> None:
    for lag in (0.0004, 0.003, 0.3, 2.0):
        feed.emit_lag("loop-1", "MainThread", lag)
    feed.emit_lag("loop-2", "worker", 0.02)
    get = registry.get_sample_value
    main = {"thread": "MainThread"}
    assert get("unstall_loop_lag_seconds_count", main) == 4
    assert get("unstall_loop_lag_seconds_sum", main) == pytest.approx(2.3034)
    assert get("unstall_loop_lag_seconds_bucket", {**main, "le": "0.001"}) == 1
    assert get("unstall_loop_lag_seconds_bucket", {**main, "le": "0.5"}) == 3
    assert get("unstall_loop_lag_seconds_bucket", {**main, "le": "+Inf"}) == 4
    assert get("unstall_loop_lag_seconds_count", {"thread": "worker"}) == 1


def test_prometheus_stalls_by_culprit(metrics: Metrics, registry: CollectorRegistry) -> None:
    _feed_realistic()
    get = registry.get_sample_value
    labels = {"culprit": USERS, "function": "fetch_user", "kind": "wait"}
    assert get("unstall_stalls_total", labels) == 4
    assert get("unstall_stall_seconds_total", labels) == pytest.approx(0.42 + 0.35 + 0.75 + 0.3)
    cache = {"culprit": "/srv/shop/app/cache.py:61", "function": "refresh_cache", "kind": "wait"}
    # the hang is still going on: only its finished sibling is counted
    assert get("unstall_stalls_total", cache) == 1
    total = sum(
        s.value
        for family in registry.collect()
        if family.name == "unstall_stalls"
        for s in family.samples
        if s.name == "unstall_stalls_total"
    )
    assert total == 13


# ---------------------------------------------------------------- OpenTelemetry


def test_otel_lag_histogram(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    for lag in (0.0004, 0.003, 0.3):
        feed.emit_lag("loop-1", "MainThread", lag)
    (point,) = _otel(reader)["unstall.loop.lag"]
    assert point.attributes == {"thread": "MainThread"}
    assert point.count == 3
    assert point.sum == pytest.approx(0.3034)
    assert list(point.explicit_bounds)[:3] == [0.001, 0.0025, 0.005]


def test_otel_stalls_by_culprit(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    _feed_realistic()
    found = _otel(reader)
    counts = {p.attributes["culprit"]: p.value for p in found["unstall.stalls"]}
    seconds = {p.attributes["culprit"]: p.value for p in found["unstall.stall.duration"]}
    assert counts[USERS] == 4
    assert sum(counts.values()) == 13
    assert seconds["/srv/shop/app/reports.py:117"] == pytest.approx(2.6 + 4.2)
    (point,) = [p for p in found["unstall.stalls"] if p.attributes["culprit"] == USERS]
    assert point.attributes == {"culprit": USERS, "function": "fetch_user", "kind": "wait"}


# ---------------------------------------------------------------- behaviour


def test_culprit_labels_are_bounded(registry: CollectorRegistry) -> None:
    with enable_metrics(prometheus=True, registry=registry, max_culprits=3):
        for line in range(10):
            feed.emit_stall(_stall(line))
        feed.emit_stall(_stall(0))  # a known culprit keeps its label
    # read before disable() unregistered them: re-enable to check nothing leaked
    handle = enable_metrics(prometheus=True, registry=registry, max_culprits=3)
    try:
        for line in range(10):
            feed.emit_stall(_stall(line))
        get = registry.get_sample_value
        assert (
            get(
                "unstall_stalls_total",
                {"culprit": "/app/h.py:0", "function": "handler_0", "kind": "cpu"},
            )
            == 1
        )
        other = {"culprit": "other", "function": "other", "kind": "cpu"}
        assert get("unstall_stalls_total", other) == 7
        series = [
            s
            for family in registry.collect()
            for s in family.samples
            if s.name == "unstall_stalls_total"
        ]
        assert len(series) == 4
    finally:
        handle.disable()


def test_disable_stops_and_unregisters(registry: CollectorRegistry) -> None:
    handle = enable_metrics(prometheus=True, registry=registry)
    feed.emit_lag("l", "MainThread", 0.01)
    assert (
        registry.get_sample_value("unstall_loop_lag_seconds_count", {"thread": "MainThread"}) == 1
    )
    handle.disable()
    handle.disable()
    assert not handle.enabled
    assert handle not in feed._listeners
    assert (
        registry.get_sample_value("unstall_loop_lag_seconds_count", {"thread": "MainThread"})
        is None
    )
    again = enable_metrics(prometheus=True, registry=registry)  # names are free again
    again.disable()


def test_enabling_twice_on_one_registry_is_a_clear_error(registry: CollectorRegistry) -> None:
    first = enable_metrics(prometheus=True, registry=registry)
    try:
        with pytest.raises(ValueError, match="already in this Prometheus registry"):
            enable_metrics(prometheus=True, registry=registry)
        other = enable_metrics(prometheus=True, registry=registry, prefix="svc")
        feed.emit_lag("l", "MainThread", 0.01)
        assert (
            registry.get_sample_value("svc_loop_lag_seconds_count", {"thread": "MainThread"}) == 1
        )
        other.disable()
    finally:
        first.disable()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "otel=True and/or prometheus=True"),
        ({"otel": True, "registry": CollectorRegistry()}, "registry= is for Prometheus"),
        ({"prometheus": True, "meter_provider": object()}, "meter_provider= is for OpenTelemetry"),
        ({"prometheus": True, "prefix": "my-app"}, "prefix must be"),
        ({"prometheus": True, "max_culprits": 0}, "max_culprits must be"),
        ({"prometheus": True, "lag_buckets": []}, "lag_buckets"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        enable_metrics(**kwargs)
    assert not [x for x in feed._listeners if isinstance(x, Metrics)]


@pytest.mark.parametrize(
    ("module", "flag", "extra"),
    [
        ("prometheus_client", "prometheus", "unstall[prometheus]"),
        ("opentelemetry", "otel", "unstall[otel]"),
    ],
)
def test_missing_backend_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, flag: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what python does for an absent package
    with pytest.raises(ImportError, match=rf"pip install '{re.escape(extra)}'"):
        enable_metrics(**{flag: True})


def test_importing_unstall_imports_no_backend() -> None:
    code = (
        "import sys, unstall; "
        "print([m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- a real watcher


def test_a_real_stall_is_exported(
    registry: CollectorRegistry, reader: InMemoryMetricReader
) -> None:
    async def app() -> None:
        async with unstall.watch(threshold=0.1):
            await asyncio.sleep(0.3)
            time.sleep(0.5)  # the stall
            await asyncio.sleep(0.3)

    with enable_metrics(
        otel=True,
        prometheus=True,
        registry=registry,
        meter_provider=MeterProvider(metric_readers=[reader]),
    ):
        asyncio.run(app())
        stalls = [
            (s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if s.name == "unstall_stalls_total"
        ]
        lag_count = registry.get_sample_value(
            "unstall_loop_lag_seconds_count", {"thread": "MainThread"}
        )
        found = _otel(reader)
    assert len(stalls) == 1
    labels, value = stalls[0]
    assert value == 1
    assert labels["function"] == "app"
    assert labels["culprit"].endswith(f"test_metrics.py:{app.__code__.co_firstlineno + 3}")
    assert lag_count is not None
    assert lag_count >= 2
    (point,) = found["unstall.stalls"]
    assert point.value == 1
    (seconds,) = found["unstall.stall.duration"]
    assert seconds.value >= 0.4
    (lag,) = found["unstall.loop.lag"]
    assert lag.max >= 0.4


# ---------------------------------------------------------------- offload pools


@pytest.mark.asyncio
async def test_pools_are_exported_as_gauges_counters_and_a_queue_wait_histogram(
    metrics: Metrics, registry: CollectorRegistry, reader: InMemoryMetricReader
) -> None:
    import threading

    gate = threading.Event()
    with unstall.ThreadPool(2, name="exported") as pool:
        calls = [asyncio.ensure_future(pool.run(gate.wait, 10)) for _ in range(5)]
        while pool.statistics().workers_busy < 2 or pool.statistics().calls_queued < 3:
            await asyncio.sleep(0.01)
        get = registry.get_sample_value
        key = {"pool": "exported", "kind": "thread"}
        assert get("unstall_pool_workers", {**key, "state": "busy"}) == 2
        assert get("unstall_pool_calls_queued", key) == 3
        assert get("unstall_pool_max_workers", key) == 2
        assert get("unstall_pool_longest_queue_wait_seconds", key) > 0
        gate.set()
        await asyncio.gather(*calls)
        assert get("unstall_pool_calls_total", {**key, "outcome": "completed"}) == 5
        assert get("unstall_pool_calls_total", {**key, "outcome": "timed_out"}) == 0
        assert get("unstall_pool_queue_wait_seconds_count", key) == 5
        assert get("unstall_pool_queue_wait_seconds_bucket", {**key, "le": "+Inf"}) == 5
        assert get("unstall_pool_queue_wait_seconds_sum", key) > 0
        found = _otel(reader)
        (completed,) = [
            p
            for p in found["unstall.pool.calls"]
            if p.attributes == {**key, "outcome": "completed"}
        ]
        assert completed.value == 5
        (cap,) = [p for p in found["unstall.pool.max_workers"] if p.attributes == key]
        assert cap.value == 2


def test_pools_false_exports_no_pool_metrics(registry: CollectorRegistry) -> None:
    with unstall.ThreadPool(1, name="hidden"):
        handle = enable_metrics(prometheus=True, registry=registry, pools=False)
        try:
            names = {family.name for family in registry.collect()}
        finally:
            handle.disable()
    assert not any(name.startswith("unstall_pool") for name in names)
