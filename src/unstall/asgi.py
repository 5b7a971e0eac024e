"""ASGI middleware naming the request a stall happened in.

``unstall run -m uvicorn app:app`` finds the request without it (from the ASGI ``scope``
the stalled frames hold); the middleware makes it certain and cheap, for an app watched
with ``unstall.watch()`` in code, whatever its server::

    app = unstall.asgi.StallContextMiddleware(app)

A stall inside a request then has ``context["http.method"]``, ``["http.route"]`` (the
route template when the framework records it in the scope, as Starlette and FastAPI do)
and ``["http.target"]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from unstall._watch.context import REQUEST

__all__ = ["StallContextMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StallContextMiddleware:
    """Wraps an ASGI app; marks each HTTP and WebSocket request for the watcher.

    Costs one context-variable set and reset per request; changes nothing else.
    """

    def __init__(self, app: ASGIApp) -> None:
        if not callable(app):
            raise TypeError(f"StallContextMiddleware(app): app must be an ASGI app, not {app!r}")
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = REQUEST.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST.reset(token)
