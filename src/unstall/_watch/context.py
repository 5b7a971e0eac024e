"""What a blocked task was serving: its trace, its request, and what the user adds.

The sampler takes, during a stall, a copy of the running task's (or callback's) context
variables and the ASGI ``scope`` its frames are serving; :func:`describe` turns them
into the stall's ``context`` dict when the stall is built, on the watchdog thread.

Three sources, merged in this order:

* the ASGI request: from :class:`unstall.asgi.StallContextMiddleware` when the app uses
  it, else from the first ``scope`` local (an ASGI HTTP or WebSocket scope) found among the
  stalled frames, innermost first — how ``unstall run -m uvicorn app:app`` names the
  request with no change to the app;
* the current OpenTelemetry span of the task, when ``opentelemetry`` is already imported;
* providers given to ``watch(context=...)``: each is called with no argument inside a
  copy of the task's context variables (so ``ContextVar.get()`` sees the task's values),
  and returns a dict. One that raises or returns something else is logged once and
  skipped from then on.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["ContextProvider", "describe", "register", "request_in", "snapshot", "unregister"]

ContextProvider = Callable[[], Mapping[str, Any]]

_log = logging.getLogger("unstall")
_lock = threading.Lock()
_providers: list[ContextProvider] = []
_failed: set[int] = set()

REQUEST: contextvars.ContextVar[MutableMapping[str, Any] | None] = contextvars.ContextVar(
    "unstall_asgi_request", default=None
)
"""Set by :class:`unstall.asgi.StallContextMiddleware` to the request being served."""


def register(providers: Iterable[ContextProvider]) -> None:
    """Add ``providers`` (a watcher's ``context=``) to those every stall consults."""
    with _lock:
        _providers.extend(providers)


def unregister(providers: Iterable[ContextProvider]) -> None:
    """Remove what :func:`register` added (one occurrence each)."""
    with _lock:
        for provider in providers:
            if provider in _providers:
                _providers.remove(provider)


def snapshot(anchor: object, handle: object = None) -> contextvars.Context | None:
    """A copy of the context variables the running callback sees.

    ``anchor`` is the running task or handle; ``handle`` the ``asyncio.Handle`` whose
    ``_run`` frame is on the stack, if any (Python 3.11's tasks do not expose their
    context, but the handle running their step holds it). ``None`` when neither tells.
    """
    get = getattr(anchor, "get_context", None)  # Task, Python 3.12+
    try:
        ctx = get() if callable(get) else getattr(anchor, "_context", None)
        if not isinstance(ctx, contextvars.Context):
            ctx = getattr(handle, "_context", None)
    except Exception:
        return None
    return ctx.copy() if isinstance(ctx, contextvars.Context) else None


_HTTP_TYPES = ("http", "websocket")


def request_in(chain: list[types.FrameType]) -> dict[str, str] | None:
    """The request of the innermost frame holding an ASGI ``scope`` local, if any."""
    for frame in reversed(chain):
        if "scope" not in frame.f_code.co_varnames:
            continue
        try:
            scope = frame.f_locals.get("scope")
        except Exception:
            continue
        if isinstance(scope, dict) and scope.get("type") in _HTTP_TYPES:
            return request_fields(scope)
    return None


def request_fields(scope: Mapping[str, Any]) -> dict[str, str]:
    """``http.method``, ``http.route`` (the template when known) and ``http.target``."""
    path = str(scope.get("path", ""))
    query = scope.get("query_string") or b""
    target = path + ("?" + query.decode("latin-1") if query else "")
    route = getattr(scope.get("route"), "path", None)  # starlette and FastAPI set it
    fields = {
        "http.method": str(scope.get("method", "WEBSOCKET" if scope.get("type") else "")),
        "http.route": str(route) if isinstance(route, str) else path,
        "http.target": target,
    }
    return {k: v for k, v in fields.items() if v}


def describe(ctx: contextvars.Context | None, request: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``context`` dict of one stall (see the module's docstring for the sources)."""
    found: dict[str, Any] = {}
    if ctx is not None:
        marked = ctx.get(REQUEST)
        if marked:
            request = request_fields(marked)
    if request:
        found.update(request)
    if ctx is not None:
        found.update(_span(ctx))
        with _lock:
            providers = list(_providers)
        for provider in providers:
            found.update(_provided(provider, ctx))
    return found


def _span(ctx: contextvars.Context) -> dict[str, Any]:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # never imported: no span can be current
        return {}
    try:
        span = ctx.copy().run(trace.get_current_span)
        span_context = span.get_span_context()
        if not span_context.is_valid:
            return {}
        found = {
            "trace_id": format(span_context.trace_id, "032x"),
            "span_id": format(span_context.span_id, "016x"),
        }
        name = getattr(span, "name", None)
        if isinstance(name, str):
            found["span_name"] = name
        return found
    except Exception:
        _log.debug("unstall: reading the OpenTelemetry span failed", exc_info=True)
        return {}


def _provided(provider: ContextProvider, ctx: contextvars.Context) -> Mapping[str, Any]:
    if id(provider) in _failed:
        return {}
    try:
        value = ctx.copy().run(provider)
        if not isinstance(value, Mapping):
            raise TypeError(f"returned {type(value).__name__}, not a dict")
        return value
    except Exception as exc:
        _failed.add(id(provider))
        _log.warning(
            "unstall: context provider %r failed and is skipped from now on: %s", provider, exc
        )
        _log.debug("unstall: context provider failure", exc_info=True)
        return {}
