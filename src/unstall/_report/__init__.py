"""Reports: the records a watch produces, and every way of showing them.

``records`` holds ``Frame``, ``Stall``, ``LoopInfo`` and ``Report`` (with the JSON form);
``format`` the shared helpers (durations, paths, colour, atomic writes); ``writers`` the
one registry of file outputs; ``summary`` (terminal), ``html`` (+ ``html_assets``),
``trace`` (Perfetto/Chrome) and ``metrics`` (OpenTelemetry, Prometheus) render them;
``feed`` passes live stalls to exporters.
"""
