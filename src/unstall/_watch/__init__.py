"""Detection: ``watch()`` and everything that finds, times and explains a stall.

``watcher`` is the public face; ``watchdog`` is the one background thread that polls every
loop's ``probe`` (hooked into loops by ``loop_hooks``) and samples stacks (``sampler``,
``threadclock``, ``faultdump``). ``attribution`` turns samples into stall records and
``culprit`` / ``callname`` decide which line and which call to blame; ``starvation``
tells a loop that was kept from running apart from one that blocked. ``stall_log`` writes
the log lines.
"""
