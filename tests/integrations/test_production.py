"""Running in production (issue 15): which request and trace stalled, Sentry, OpenTelemetry,
no log floods and bounded memory. Real uvicorn, starlette, httpx, the OpenTelemetry SDK and
sentry_sdk (with an in-memory transport); no mocks of them."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from helpers import SLACK_S, SRC, child_env
from unstall import Frame, Stall, Watcher
from unstall.asgi import StallContextMiddleware

SERVER_THREAD = "uvicorn-production"
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")


async def traced(request: Request) -> PlainTextResponse:
    with TRACER.start_as_current_span("work on item"):
        blocking.sleep_block(0.3)
    return PlainTextResponse("done")


async def untraced(request: Request) -> PlainTextResponse:
    blocking.sleep_block(0.2)
    return PlainTextResponse("done")


APP = Starlette(routes=[Route("/items/{item_id}", traced), Route("/plain/{n}", untraced)])


@pytest.fixture(autouse=True)
def _no_spans_yet() -> None:
    EXPORTER.clear()


def _serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The asyncio loop: the watchers of these tests start after the server.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, args=([sock],), name=SERVER_THREAD)
    thread.start()
    deadline = time.monotonic() + SLACK_S
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread, sock


@pytest.fixture(params=["frames", "middleware"])
def served(request: pytest.FixtureRequest) -> Iterator[str]:
    app = APP if request.param == "frames" else StallContextMiddleware(APP)
    url, server, thread, sock = _serve(app)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=SLACK_S)
        sock.close()


def _server_stalls(watcher: Watcher) -> list[Stall]:
    return [s for s in watcher.stalls if s.thread == SERVER_THREAD]


def test_a_stall_names_its_request_and_its_span_and_the_span_gets_an_event(served: str) -> None:
    from unstall.integrations.opentelemetry import UnstallInstrumentor

    instrumentor = UnstallInstrumentor()
    instrumentor.instrument(threshold=0.1, metrics=False, log=False)
    try:
        watcher = unstall.watch(threshold=0.1, log=False)
        with httpx.Client(base_url=served, timeout=30) as client:
            assert client.get("/items/42", params={"q": "x"}).text == "done"
        watcher.stop()
    finally:
        instrumentor.uninstrument()
    found = _server_stalls(watcher)
    assert len(found) == 1, (watcher.stalls, watcher.starved)
    (stall,) = found
    (span,) = [s for s in EXPORTER.get_finished_spans() if s.name == "work on item"]
    assert stall.context["trace_id"] == format(span.context.trace_id, "032x")
    assert stall.context["span_id"] == format(span.context.span_id, "016x")
    assert stall.context["span_name"] == "work on item"
    assert stall.context["http.method"] == "GET"
    assert stall.context["http.route"] == "/items/{item_id}"
    assert stall.context["http.target"] == "/items/42?q=x"
    (event,) = [e for e in span.events if e.name == "unstall.stall"]
    assert event.attributes is not None
    assert event.attributes["code.file.path"] == blocking.HERE
    assert event.attributes["code.line.number"] == line_of("sleep")
    assert event.attributes["unstall.call"] == "time.sleep"
    assert event.attributes["unstall.duration_s"] >= 0.1  # when it passed the threshold
    assert Stall.from_dict(json.loads(json.dumps(stall.to_dict()))).context == stall.context


def test_stalls_outside_a_request_and_a_span_have_an_empty_context() -> None:
    async def main() -> Watcher:
        async with unstall.watch(threshold=0.1, log=False) as watcher:
            blocking.sleep_block(0.2)
        return watcher

    (stall,) = asyncio.run(main()).stalls
    assert stall.context == {}
    assert stall.to_dict()["context"] == {}


TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


def test_context_providers_see_the_blocked_tasks_variables(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def tenant() -> dict[str, str]:
        calls.append(threading.current_thread().name)
        return {"tenant": TENANT.get()}

    def broken() -> dict[str, str]:
        raise RuntimeError("provider bug")

    async def serve(name: str) -> None:
        TENANT.set(name)
        await asyncio.sleep(0.01)
        blocking.sleep_block(0.15)

    async def main() -> Watcher:
        async with unstall.watch(threshold=0.1, log=False, context=[tenant, broken]) as w:
            await asyncio.create_task(serve("acme"))
            await asyncio.create_task(serve("globex"))
        return w

    with caplog.at_level(logging.WARNING, logger="unstall"):
        watcher = asyncio.run(main())
    assert sorted(s.context["tenant"] for s in watcher.stalls) == ["acme", "globex"]
    assert calls
    failures = [r for r in caplog.records if "provider" in r.getMessage()]
    assert len(failures) == 1  # logged once, then skipped
    assert "provider bug" in failures[0].getMessage()


@pytest.mark.parametrize(
    ("context", "error"),
    [
        ("tenant", TypeError),
        (42, TypeError),
        ([print, 3], TypeError),
    ],
)
def test_bad_context_arguments_are_refused(context: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="context"):
        unstall.watch(context=context)


@pytest.mark.parametrize("name", ["max_records", "max_log_per_minute"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_bad_limits_are_refused(name: str, value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        unstall.watch(**{name: value})


def test_unstall_run_names_the_route_of_a_uvicorn_app_with_no_code_change(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import time
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def item(request):
                time.sleep(0.25)  # the culprit
                return PlainTextResponse("done")

            app = Starlette(routes=[Route("/orders/{order_id}", item)])
            """
        )
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    report = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "unstall", "run", "--json", str(report), "-m", "uvicorn"]
    cmd += ["app:app", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SLACK_S * 2
        while True:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/orders/7", timeout=30)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        assert reply.text == "done"
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=SLACK_S * 3)
    data = json.loads(report.read_text())
    source = (tmp_path / "app.py").read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if "# the culprit" in text)
    (stall,) = [s for s in data["stalls"] if s["culprit"] and s["culprit"]["line"] == line]
    assert stall["context"]["http.method"] == "GET"
    assert stall["context"]["http.route"] == "/orders/{order_id}"
    assert stall["context"]["http.target"] == "/orders/7"
    assert "request: GET /orders/{order_id}" in stderr


# ------------------------------------------------------------------------------ Sentry


SENTRY_PROGRAM = """
import asyncio, json, sys
import sentry_sdk
from sentry_sdk.transport import Transport
from fixtures import blocking
from unstall.integrations.sentry import UnstallIntegration, stop_watching

events = []

class Memory(Transport):
    def capture_envelope(self, envelope):
        events.extend(i.payload.json for i in envelope.items if i.type == "event")

sentry_sdk.init(
    dsn="http://public@127.0.0.1:9/1",
    transport=Memory,
    integrations=[UnstallIntegration(threshold=0.03, max_events_per_hour=5, log=False)],
    default_integrations=False,
    traces_sample_rate=1.0,
)

async def repeats():
    for _ in range(50):
        blocking.sleep_block(0.06)
        await asyncio.sleep(0.005)
    return None

async def in_a_transaction():
    with sentry_sdk.start_transaction(name="GET /items/{item_id}") as transaction:
        blocking.sleep_block(0.1)
        return transaction.trace_id

trace_id = asyncio.run(repeats() if sys.argv[1] == "repeats" else in_a_transaction())
stop_watching()
sentry_sdk.flush(timeout=10)
print(json.dumps({"events": events, "trace_id": trace_id}))
"""


def _run_sentry(tmp_path: Path, scenario: str) -> dict[str, Any]:
    script = tmp_path / "with_sentry.py"
    script.write_text(SENTRY_PROGRAM)
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = child_env(PYTHONPATH=os.pathsep.join([SRC, tests_dir]))
    proc = subprocess.run(
        [sys.executable, str(script), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return found


def test_sentry_groups_repeats_into_one_issue_and_respects_its_hourly_limit(
    tmp_path: Path,
) -> None:
    events = _run_sentry(tmp_path, "repeats")["events"]
    assert 1 <= len(events) <= 5  # 50 stalls, at most max_events_per_hour events
    assert len({tuple(e["fingerprint"]) for e in events}) == 1
    event = events[0]
    assert event["level"] == "warning"
    assert event["tags"]["unstall.call"] == "time.sleep"
    top = event["threads"]["values"][0]["stacktrace"]["frames"][-1]
    assert (top["abs_path"], top["lineno"]) == (blocking.HERE, line_of("sleep"))


def test_sentry_events_carry_the_request_trace(tmp_path: Path) -> None:
    found = _run_sentry(tmp_path, "transaction")
    stalls = [e for e in found["events"] if e.get("logger") == "unstall"]
    assert stalls
    assert stalls[0]["contexts"]["trace"]["trace_id"] == found["trace_id"]


def test_sentry_integration_refuses_bad_limits() -> None:
    from unstall.integrations.sentry import UnstallIntegration

    with pytest.raises(ValueError, match="max_events_per_hour"):
        UnstallIntegration(max_events_per_hour=0)
    with pytest.raises(TypeError, match="max_events_per_hour"):
        UnstallIntegration(max_events_per_hour=2.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ noise and memory


def test_a_hundred_identical_stalls_write_at_most_three_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> Watcher:
        async with unstall.watch(threshold=0.01) as watcher:
            for _ in range(100):
                blocking.sleep_block(0.02)
                await asyncio.sleep(0.005)
        return watcher

    with caplog.at_level(logging.WARNING, logger="unstall"):
        watcher = asyncio.run(main())
    assert len(watcher.stalls) >= 90  # a stall or two may go unseen on a busy machine
    lines = [r.getMessage() for r in caplog.records if r.name == "unstall"]
    # On a busy machine a short stall may end before it is sampled: it has no culprit, and
    # is another place (folded the same way). The culprit line gets two lines.
    where = f"blocking.py:{line_of('sleep')}"
    mine = [line for line in lines if where in line]
    assert len(mine) == 2, lines
    assert "blocked for" in mine[0]
    assert "more times at" in mine[1]
    assert len(lines) - len(mine) <= 2, lines


def test_past_max_records_stalls_are_counted_in_bounded_memory() -> None:
    watcher = unstall.watch(threshold=0.002, log=False, max_records=1000)
    watcher.stop()
    culprits = [Frame(f"/srv/app{i % 7}.py", 10 + i % 13, "handler") for i in range(20_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, culprit in enumerate(culprits):
        stall = Stall(0.01 * i, 0.003, "MainThread", 1, "Loop@1", culprit=culprit)
        watcher._take_stall(stall)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    report = watcher.report()
    assert len(watcher.stalls) == 1000
    assert report.stall_count == 20_000
    assert grown < 20 * 2**20
    assert sum(a.count for a in report.aggregated) == 19_000
    again = unstall.Report.from_json(report.to_json())
    assert again.stall_count == 20_000


def test_real_stalls_past_max_records_are_aggregated_and_reported() -> None:
    async def main() -> Watcher:
        async with unstall.watch(threshold=0.01, log=False, max_records=10) as watcher:
            for _ in range(40):
                blocking.sleep_block(0.02)
                await asyncio.sleep(0.005)
        return watcher

    watcher = asyncio.run(main())
    report = watcher.report()
    assert len(report.stalls) == 10
    assert report.stall_count >= 36  # a stall or two may go unseen on a busy machine
    # A stall that ended before it was sampled (a busy machine) has no culprit: its own bucket.
    here = (blocking.HERE, line_of("sleep"))
    (aggregate,) = [
        a for a in report.aggregated if a.culprit and (a.culprit.file, a.culprit.line) == here
    ]
    assert aggregate.worst_s >= 0.02
    from unstall._report.summary import render_summary

    assert "more stalls counted but not kept" in render_summary(report, color=False)


def test_a_paused_watcher_reports_nothing_until_resumed() -> None:
    async def main() -> Watcher:
        async with unstall.watch(threshold=0.1, log=False) as watcher:
            watcher.pause()
            assert watcher.paused
            blocking.sleep_block(0.2)
            await asyncio.sleep(0.05)
            watcher.resume()
            await asyncio.sleep(0.05)
            blocking.sleep_block(0.2)
            await asyncio.sleep(0.05)
        return watcher

    watcher = asyncio.run(main())
    assert len(watcher.stalls) == 1
    assert not watcher.paused


def test_the_middleware_refuses_what_is_not_an_app() -> None:
    with pytest.raises(TypeError, match="ASGI app"):
        StallContextMiddleware("app")  # type: ignore[arg-type]


def test_the_instrumentor_is_an_opentelemetry_entry_point() -> None:
    from importlib.metadata import entry_points

    (found,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "unstall"]
    assert found.value == "unstall.integrations.opentelemetry:UnstallInstrumentor"


_ = (os, trace)
