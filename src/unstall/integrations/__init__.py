"""Integrations with other projects, each imported only when used.

* :mod:`unstall.integrations.opentelemetry`: ``UnstallInstrumentor``, an OpenTelemetry
  instrumentor recording stalls as span events and metrics.
* :mod:`unstall.integrations.sentry`: ``UnstallIntegration``, stalls as Sentry events.
"""
