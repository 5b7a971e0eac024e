"""Run asgiref's ``sync_to_async(thread_sensitive=False)`` on unstall's threads (Django).

``sync_to_async`` with ``thread_sensitive=False`` and no ``executor`` runs its function on
the event loop's default executor (``min(32, CPUs + 4)`` threads). After :func:`install`
it runs on unstall's default thread pool (up to 40 threads, see
:func:`unstall.to_thread`), whether the wrapper was made before or after the call to
:func:`install`.

Unchanged: ``thread_sensitive=True`` (Django's default: the main thread under
``async_to_sync``, else one thread per ``ThreadSensitiveContext``, else asgiref's single
thread), an explicit ``executor=``, context variables, ``async_to_sync`` inside the call,
exceptions, and cancellation (a call cancelled while queued never runs; a running one
finishes, as with any executor).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from unstall._offload.thread_pool import default_thread_pool

__all__ = ["install", "installed", "uninstall"]

_ATTRIBUTE = "_executor"
_lock = threading.Lock()
_installed_on: Any = None  # the SyncToAsync class while installed


class PoolExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running its calls on unstall's default thread pool.

    ``shutdown()`` does not stop the pool, which other code shares.
    """

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        default_thread_pool().spawn_detached(lambda: _run(future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to do: the pool is shared."""


def _run(
    future: concurrent.futures.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    if not future.set_running_or_notify_cancel():  # cancelled while queued
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


_EXECUTOR = PoolExecutor()


class _ExecutorAttribute:
    """Stands for ``SyncToAsync._executor``: unstall's executor where asgiref would use the
    loop's default one (``None`` with ``thread_sensitive=False``), else the stored value."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__.get(_ATTRIBUTE)
        if value is None and not obj.__dict__.get("_thread_sensitive", True):
            return _EXECUTOR
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[_ATTRIBUTE] = value


def _sync_to_async_class() -> Any:
    try:
        from asgiref.sync import SyncToAsync
    except ImportError as exc:
        raise ImportError(
            "unstall.integrations.asgiref needs asgiref, which is not installed "
            "(pip install 'unstall[asgiref]')"
        ) from exc
    if _ATTRIBUTE in SyncToAsync.__dict__:
        raise RuntimeError(
            f"this asgiref version has a class attribute SyncToAsync.{_ATTRIBUTE}: "
            "unstall.integrations.asgiref cannot hook into it"
        )
    return SyncToAsync


def install() -> None:
    """Run ``sync_to_async(thread_sensitive=False)`` calls on unstall's threads from now on.

    Installing again is harmless.

    Raises:
        ImportError: asgiref is not installed.
        RuntimeError: the installed asgiref has no hook point this integration knows.
    """
    global _installed_on
    with _lock:
        if _installed_on is not None:
            return
        cls = _sync_to_async_class()
        setattr(cls, _ATTRIBUTE, _ExecutorAttribute())
        _installed_on = cls


def uninstall() -> None:
    """Give asgiref back the loop's default executor (calls in flight finish where they run).

    Does nothing if :func:`install` was not called.
    """
    global _installed_on
    with _lock:
        if _installed_on is None:
            return
        delattr(_installed_on, _ATTRIBUTE)
        _installed_on = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed_on is not None
