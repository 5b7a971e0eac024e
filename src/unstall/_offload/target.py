"""Where offloaded work runs: the one small protocol every pool and adapter implements.

``offload`` and the ``to_*`` functions handle limits and timeouts in one place and then
hand the call to a target. Cancellation (a timeout is a cancellation) reaches the target
as ``asyncio.CancelledError`` inside :meth:`OffloadTarget.submit`, and the target applies
its own cancellation semantics there: a thread pool abandons or waits for the call, a
process pool kills the worker running it, a dask target cancels the dask future.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

CancelMode = Literal["abandon", "wait"]
"""What cancelling a running call does: ``"abandon"`` returns at once and discards the
result; ``"wait"`` waits for the call to finish (then raises ``CancelledError``)."""


@runtime_checkable
class OffloadTarget(Protocol):
    """Anything that can run a sync call away from the event loop."""

    async def submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> T:
        """Run ``func(*args, **kwargs)`` off the loop and return its result.

        Must raise the call's own exception (with its traceback) when it fails, and
        must handle ``asyncio.CancelledError`` raised into it as described above.
        """
        ...
