"""A ``dask.distributed.Client`` as an offload target: ``offload(on=client)``.

The same code that offloads to a local process pool can run its calls on a cluster.
An asynchronous client used from its own loop is awaited natively. A synchronous client
runs its own loop in a thread (so does an asynchronous client seen from another loop): the
wait and the result transfer are scheduled on that loop and only the final outcome hops
back (one ``call_soon_threadsafe``, no thread per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from unstall._offload.target import CancelMode

T = TypeVar("T")

# Keywords of Client.submit itself: a call's own keyword of that name must not reach it.
_SUBMIT_KEYWORDS = frozenset(
    {
        "key",
        "workers",
        "resources",
        "retries",
        "priority",
        "fifo_timeout",
        "allow_other_workers",
        "actor",
        "actors",
        "pure",
    }
)

_background: set[Any] = set()


class DaskTarget:
    """Run calls as tasks on a dask.distributed cluster.

    Each call is one task (``pure=False``: never deduplicated with an identical call);
    its exception is re-raised with the remote traceback. Works with a synchronous
    ``Client`` and with an asynchronous one (``Client(..., asynchronous=True)``), awaited
    natively from its own loop and bridged from any other.

    Cancellation: the dask future is cancelled, so a task still waiting on the cluster
    never runs. dask cannot interrupt a task already running on a worker thread: with
    ``cancel="abandon"`` the caller returns at once and the outcome is dropped; with
    ``cancel="wait"`` the caller waits until the task has finished, then gets
    ``CancelledError``.

    Raises:
        TypeError: ``client`` is not a ``distributed.Client``.
        RuntimeError (at a call): the client's loop is not running (an asynchronous
            client used outside the loop it was created on, after that loop stopped).
    """

    def __init__(self, client: Any) -> None:
        from distributed import Client

        if not isinstance(client, Client):
            raise TypeError(f"expected a distributed.Client, not {type(client).__name__}")
        self.client: Any = client

    def __repr__(self) -> str:
        return f"DaskTarget({self.client!r})"

    async def submit(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        cancel: CancelMode = "abandon",
    ) -> T:
        """:class:`~unstall._offload.target.OffloadTarget`: run one call as a dask task."""
        if _SUBMIT_KEYWORDS & kwargs.keys():
            func, kwargs = functools.partial(func, **kwargs), {}
        if self.client.asynchronous:  # true when the client lives on the running loop
            return await self._submit_async(func, args, kwargs, cancel)
        return await self._submit_sync(func, args, kwargs, cancel)

    async def _submit_async(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        cancel: CancelMode,
    ) -> T:
        client = self.client
        future = client.submit(func, *args, pure=False, **kwargs)
        try:
            result: T = await future
        except asyncio.CancelledError:
            if cancel == "wait":
                await _wait_quietly(_finished(future))
            if not future.done():
                _in_background(client.cancel([future], asynchronous=True), None)
            raise
        return result

    async def _submit_sync(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        cancel: CancelMode,
    ) -> T:
        client = self.client
        client_loop = client.loop.asyncio_loop
        if not client_loop.is_running():
            raise RuntimeError(
                "the dask Client's event loop is not running: use an asynchronous Client "
                "from the loop it was created on"
            )
        future = client.submit(func, *args, pure=False, **kwargs)
        # Wait and fetch the result on the client's own loop; hop back once, at the end.
        gathered = asyncio.run_coroutine_threadsafe(
            client.gather(future, asynchronous=True), client_loop
        )
        try:
            result: T = await asyncio.wrap_future(gathered)
        except asyncio.CancelledError:
            if cancel == "wait":
                await _wait_quietly(_finished(future))
            if not future.done():
                _in_background(client.cancel([future], asynchronous=True), client_loop)
            raise
        return result


def _finished(future: Any) -> asyncio.Future[None]:
    """An asyncio future on the running loop, done when the dask future is."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def on_loop() -> None:
        if not finished.done():
            finished.set_result(None)

    def on_done(_: Any) -> None:  # runs in dask's callback thread
        if not loop.is_closed():
            loop.call_soon_threadsafe(on_loop)

    future.add_done_callback(on_done)
    return finished


async def _wait_quietly(finished: asyncio.Future[None]) -> None:
    """Wait for a cancelled call to finish; cancelling again stops the wait."""
    with contextlib.suppress(asyncio.CancelledError):
        await finished


def _in_background(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop | None) -> None:
    """Run a fire-and-forget coroutine (the cancel message) without awaiting it."""
    if loop is None:
        task = asyncio.ensure_future(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)
    else:
        asyncio.run_coroutine_threadsafe(coro, loop)
