"""Integrations with other projects, each imported only when used.

* :mod:`unstall.integrations.opentelemetry`: ``UnstallInstrumentor``, an OpenTelemetry
  instrumentor recording stalls as span events and metrics.
* :mod:`unstall.integrations.sentry`: ``UnstallIntegration``, stalls as Sentry events.
* :mod:`unstall.integrations.anyio`: ``anyio.to_thread.run_sync`` (and so every FastAPI and
  Starlette ``def`` endpoint, sync dependency and background task) on unstall's threads.
* :mod:`unstall.integrations.asgiref`: ``sync_to_async(thread_sensitive=False)`` (Django)
  on unstall's threads.
"""
