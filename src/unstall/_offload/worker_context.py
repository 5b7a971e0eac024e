"""What a worker thread knows about the call it is running: its loop and its cancellation.

Each worker thread keeps the call it is running in a thread-local, so ``cancelled()`` and
``from_thread`` work without the offloaded function taking any extra argument.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol


class CurrentCall(Protocol):
    """The view of a running call that code inside the worker may use."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def cancel_requested(self) -> bool: ...


_local = threading.local()  # .call: the CurrentCall running in this thread, set by workers

_OUTSIDE = (
    "{what} can only be called inside a call offloaded by unstall "
    "(unstall.to_thread, @unstall.offload, ThreadPool.run, unstall.iterate)"
)


def current_call(what: str) -> CurrentCall:
    """The call running in this worker thread; ``RuntimeError`` outside one."""
    call: CurrentCall | None = getattr(_local, "call", None)
    if call is None:
        raise RuntimeError(_OUTSIDE.format(what=what))
    return call


def cancelled() -> bool:
    """Tell, from inside an offloaded call, whether its caller gave up on it.

    Returns ``True`` once the task awaiting the call was cancelled or its timeout expired,
    so a long loop can stop early (the result is discarded anyway in ``"abandon"`` mode).
    Threads cannot be interrupted: checking this is the cooperative way to stop.

    Raises:
        RuntimeError: when called outside a call offloaded by unstall to a thread (as
            anyio and trio do), since there is no caller to ask about.
    """
    return current_call("unstall.cancelled()").cancel_requested
