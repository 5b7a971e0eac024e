"""The ``unstall`` command: ``main`` dispatches to ``run`` (with ``launch``), ``demo``,
``report_cmd`` and ``bench``."""
