"""unstall.watch() on a real uvicorn + starlette server, hit by httpx (issue 3)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from unstall import Watcher

SERVER_THREAD = "uvicorn-server"


async def ok(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.001)
    return PlainTextResponse("ok")


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("s", "0.4"))
    return JSONResponse({"truth": blocking.sleep_block(seconds)})


APP = Starlette(routes=[Route("/ok", ok), Route("/slow", slow)])


@pytest.fixture(params=["asyncio", "uvloop"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, Watcher]]:
    """A uvicorn server in its own thread, and a watcher over every loop."""
    watcher = unstall.watch(threshold=0.1, log=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(APP, log_level="warning", loop=request.param, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, args=([sock],), name=SERVER_THREAD)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", watcher
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        watcher.stop()


def server_stalls(watcher: Watcher) -> list[unstall.Stall]:
    return [s for s in watcher.stalls if s.thread == SERVER_THREAD]


def test_blocking_endpoint_is_found(served: tuple[str, Watcher]) -> None:
    url, watcher = served
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/ok").text == "ok"
        truth = client.get("/slow", params={"s": "0.4"}).json()["truth"]
        assert client.get("/ok").text == "ok"
    watcher.stop()
    (stall,) = server_stalls(watcher)
    assert abs(stall.duration_s - truth) <= 0.1 * truth
    assert stall.culprit is not None
    assert (stall.culprit.file, stall.culprit.line) == (blocking.HERE, line_of("sleep"))
    assert stall.call == "time.sleep"
    assert stall.task is not None
    # The endpoint is on the stack, under starlette's and uvicorn's frames.
    assert any(f.function == "slow" and f.file == __file__ for f in stall.stack)


def test_busy_but_healthy_server_reports_nothing(served: tuple[str, Watcher]) -> None:
    url, watcher = served

    async def load() -> int:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            done = 0
            for _ in range(15):
                replies = await asyncio.gather(*(client.get("/ok") for _ in range(20)))
                done += sum(r.text == "ok" for r in replies)
            return done

    assert asyncio.run(load()) == 300
    watcher.stop()
    assert server_stalls(watcher) == []
