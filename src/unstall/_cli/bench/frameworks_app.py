"""The FastAPI server ``unstall bench frameworks`` measures, run in a child process.

``python -m unstall._cli.bench.frameworks_app VARIANT LOOP`` binds a free port on
127.0.0.1, prints ``PORT <n>`` and serves until terminated. VARIANT:

- ``default``: FastAPI as shipped (``def`` routes on anyio's worker threads);
- ``unstall``: the same app after ``unstall.integrations.anyio.install()``;
- ``asyncio``: ``async def`` routes that offload with ``asyncio.to_thread``, for reference;
- ``to_thread``: ``async def`` routes that offload with ``unstall.to_thread``, for reference;
- ``no_thread``: ``async def`` routes that offload nothing (``/sleep`` awaits
  ``asyncio.sleep``): the most any way of offloading could reach on this loop.

Routes: ``/sleep`` (20 ms of ``time.sleep``), ``/constant`` (returns a constant) and
``/health`` (``async def``, never offloads).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from typing import Any

VARIANTS = ("default", "unstall", "asyncio", "to_thread", "no_thread")
SLEEP_S = 0.02


def _sleep() -> dict[str, bool]:
    time.sleep(SLEEP_S)
    return {"ok": True}


def _constant() -> dict[str, int]:
    return {"value": 1}


def make_app(variant: str) -> Any:
    """The FastAPI app for ``variant`` (installs the integration for ``"unstall"``)."""
    from fastapi import FastAPI

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "unstall":
        from unstall.integrations import anyio as unstall_anyio

        unstall_anyio.install()
    app = FastAPI()
    if variant == "no_thread":
        _no_thread_routes(app)
    elif variant in ("asyncio", "to_thread"):
        if variant == "asyncio":
            offload = asyncio.to_thread
        else:
            from unstall._offload.thread_pool import to_thread as offload

        async def sleep_offloaded() -> dict[str, bool]:
            return await offload(_sleep)

        async def constant_offloaded() -> dict[str, int]:
            return await offload(_constant)

        app.get("/sleep")(sleep_offloaded)
        app.get("/constant")(constant_offloaded)
    else:
        app.get("/sleep")(_sleep)
        app.get("/constant")(_constant)

    async def health() -> dict[str, bool]:
        return {"ok": True}

    app.get("/health")(health)
    return app


def _no_thread_routes(app: Any) -> None:
    async def sleep_awaited() -> dict[str, bool]:
        await asyncio.sleep(SLEEP_S)
        return {"ok": True}

    async def constant_inline() -> dict[str, int]:
        return _constant()

    app.get("/sleep")(sleep_awaited)
    app.get("/constant")(constant_inline)


def main(argv: list[str]) -> int:
    variant, loop = argv
    import uvicorn

    # Proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it every response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = make_app(variant)
    # Start-up objects out of the collector's sight, in every variant: otherwise a few full
    # collections of FastAPI's heap (30-50 ms each) per run decide the health route's p99.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(app, loop=loop, log_level="warning", access_log=False, backlog=512)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
