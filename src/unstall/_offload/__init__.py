"""Offloading: running sync calls off the event loop.

``call`` is the one pipeline (limit, timeout, cancel) that ``to_thread``, ``to_process``
and ``@offload`` go through; each *target* runs the calls: ``thread_pool`` (with its
``inbox`` that hands results back to the loop), ``process_pool`` (and the
``process_worker`` it starts), ``executors`` and ``dask``. ``limiter``, ``iterate`` and
``worker_context`` are the pieces around them.
"""
