"""A real FastAPI app on uvicorn, hit by httpx, with unstall.integrations.anyio installed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
import uvicorn
from fastapi import BackgroundTasks, Depends, FastAPI

from helpers import SLACK_S
from unstall.integrations import anyio as unstall_anyio

TOKENS = 4
"""The default limiter's size in the server: small, so that every token is easy to take."""

# fastapi#3205: a `def` endpoint takes a connection from a small pool, the `yield`
# dependency's cleanup gives it back. With every token held by endpoints waiting for a
# connection, the cleanup must still find a thread.
connections = threading.Semaphore(2)
# Every nested request holds a token at the same moment before it calls back into the loop.
nested_barrier = threading.Barrier(TOKENS)
background_done: list[str] = []


class Connection:
    held = False


def get_connection() -> Iterator[Connection]:
    conn = Connection()
    try:
        yield conn
    finally:
        if conn.held:
            connections.release()


async def lookup() -> str:
    return await anyio.to_thread.run_sync(lambda: threading.current_thread().name)


def looked_up() -> str:
    nested_barrier.wait(SLACK_S)
    return anyio.from_thread.run(lookup)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = TOKENS
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/thread")
def thread() -> dict[str, str]:
    return {"name": threading.current_thread().name}


# No response model: FastAPI would validate a `def` endpoint's result on a thread, with a
# token of the default limiter (a deadlock of its own when every token waits, with or
# without unstall).
@app.get("/query", response_model=None)
def query(conn: Annotated[Connection, Depends(get_connection)]) -> dict[str, bool]:
    connections.acquire()
    conn.held = True
    time.sleep(0.005)
    return {"ok": True}


@app.get("/nested")
def nested(name: Annotated[str, Depends(looked_up)]) -> dict[str, str]:
    return {"name": name}


@app.get("/background")
def background(tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(lambda: background_done.append(threading.current_thread().name))
    return {"ok": True}


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The app on uvicorn in its own thread, with the integration installed."""
    unstall_anyio.install()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", loop=request.param, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, args=([sock],), name="uvicorn-server")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not uv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert thread.is_alive(), "uvicorn stopped while starting"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(timeout=20)
        sock.close()
        unstall_anyio.uninstall()


async def get_all(url: str, path: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=SLACK_S, limits=limits) as client:
        return await asyncio.gather(*(client.get(path) for _ in range(n)))


def test_def_endpoints_run_on_unstall_threads(server: str) -> None:
    response = httpx.get(f"{server}/thread", timeout=SLACK_S)
    assert response.status_code == 200
    assert response.json()["name"].startswith("unstall-anyio-")


def test_background_tasks_run_on_unstall_threads(server: str) -> None:
    background_done.clear()
    assert httpx.get(f"{server}/background", timeout=SLACK_S).status_code == 200
    deadline = time.monotonic() + SLACK_S
    while not background_done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert background_done
    assert background_done[0].startswith("unstall-anyio-")


def test_yield_dependency_cleanups_do_not_deadlock_with_every_token_taken(server: str) -> None:
    responses = asyncio.run(get_all(server, "/query", TOKENS * 8))
    assert [r.status_code for r in responses] == [200] * (TOKENS * 8)
    assert connections.acquire(blocking=False)  # every connection came back
    connections.release()


def test_a_sync_dependency_offloading_again_does_not_deadlock_with_every_token_taken(
    server: str,
) -> None:
    nested_barrier.reset()
    responses = asyncio.run(get_all(server, "/nested", TOKENS))
    assert [r.status_code for r in responses] == [200] * TOKENS
    assert all(r.json()["name"].startswith("unstall-anyio-") for r in responses)
