"""The pytest plugin's machinery; ``unstall._pytest_plugin`` is the thin ``pytest11`` entry.

* :mod:`.options`: command-line and ini options, the run's defaults;
* :mod:`.markers`: ``@pytest.mark.unstall(...)`` read and checked per test;
* :mod:`.guard`: what one test is watched with, and the failure texts;
* :mod:`.baseline`: the ``--unstall-baseline`` file of known findings;
* :mod:`.summary`: the suite's summary and the ``--unstall-json/html/trace`` files;
* :mod:`.tracebacks`: unstall's frames taken out of the tracebacks users read;
* :mod:`.session`: the hooks, registered only when some test is watched.
"""
