"""Any ``concurrent.futures.Executor`` as an offload target: ``offload(on=executor)``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from unstall._offload.target import CancelMode

T = TypeVar("T")

log = logging.getLogger("unstall")


class ExecutorTarget:
    """Run calls on a ``concurrent.futures.Executor`` (thread, process, or any other kind).

    Cancellation: a call still queued in the executor is cancelled (``Future.cancel()``)
    and never runs. A running call cannot be stopped by an executor: with
    ``cancel="abandon"`` the caller returns at once and the call's outcome is discarded
    (an exception it raises later is logged); with ``cancel="wait"`` the caller waits for
    it to finish, then gets ``CancelledError``. Use :class:`unstall.ProcessPool` when a
    running call must really be stopped.

    Raises:
        TypeError: ``executor`` is not a ``concurrent.futures.Executor``.
    """

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        if not isinstance(executor, concurrent.futures.Executor):
            raise TypeError(
                f"expected a concurrent.futures.Executor, not {type(executor).__name__}"
            )
        self.executor = executor

    def __repr__(self) -> str:
        return f"ExecutorTarget({self.executor!r})"

    async def submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> T:
        """:class:`~unstall._offload.target.OffloadTarget`: submit to the executor and await it."""
        done = self.executor.submit(func, *args, **kwargs)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            # wrap_future already tried done.cancel(): that works only while queued.
            if not done.done() and cancel == "wait":
                try:
                    await asyncio.wrap_future(done)
                except asyncio.CancelledError:  # cancelled again: stop waiting
                    done.add_done_callback(_log_abandoned)
                except Exception:
                    pass  # the caller was cancelled: the outcome is discarded
            elif not done.done():
                done.add_done_callback(_log_abandoned)
            raise


def _log_abandoned(done: concurrent.futures.Future[Any]) -> None:
    if done.cancelled():
        return
    exc = done.exception()
    if exc is not None:
        log.warning("an abandoned offloaded call raised", exc_info=exc)
