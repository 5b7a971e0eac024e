"""Argument checks shared by every way of offloading a call, so errors read the same."""

from __future__ import annotations

import functools
import inspect
import math
import types
from typing import Any

_CANCEL_MODES = ("abandon", "wait")


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{name!s}" if name else repr(obj)


_ASYNC_CODE_FLAGS = (
    inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
)


def is_async_code(code: types.CodeType) -> bool:
    """Whether ``code`` is the body of an ``async def`` (coroutine or async generator)."""
    return bool(code.co_flags & _ASYNC_CODE_FLAGS)


def _is_async_callable(func: object) -> bool:
    # Fast paths: this runs on every to_thread call.
    if type(func) is types.BuiltinFunctionType:
        return False
    if isinstance(func, types.MethodType):
        func = func.__func__
    if type(func) is types.FunctionType and not func.__dict__:
        return bool(func.__code__.co_flags & _ASYNC_CODE_FLAGS)
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    if inspect.isroutine(func) or isinstance(func, type):
        return False
    # An instance whose class defines ``async def __call__``.
    call = inspect.getattr_static(type(func), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def validate_callable(func: object) -> None:
    """Raise ``TypeError`` unless ``func`` is a plain (sync) callable.

    ``None``, non-callables, ``async def`` functions (also wrapped in ``functools.partial``),
    async generator functions and objects with an ``async def __call__`` are rejected: their
    call only creates a coroutine, so running it in a thread would do nothing useful.
    """
    if func is None:
        raise TypeError("expected a callable to run off the loop, got None")
    if not callable(func):
        raise TypeError(f"expected a callable to run off the loop, got {type(func).__name__!r}")
    if _is_async_callable(func):
        raise TypeError(
            f"{_describe(func)} is an async function: await it directly instead of "
            "offloading it (offloading runs sync code only)"
        )


def validate_timeout(timeout: object) -> float | None:
    """Return ``timeout`` as a float (``None`` stays ``None``: no timeout).

    Raises ``TypeError`` for non-numbers (and ``bool``), ``ValueError`` for NaN, zero or
    negative values: a call given no time at all could never succeed. ``math.inf`` is
    accepted and means no timeout.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    value = float(timeout)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return value


def validate_cancel(cancel: object) -> None:
    """Raise ``ValueError`` unless ``cancel`` is ``"abandon"`` or ``"wait"``."""
    if cancel not in _CANCEL_MODES:
        raise ValueError(f"cancel must be 'abandon' or 'wait', got {cancel!r}")


def validate_positive_int(value: Any, what: str) -> int:
    """Return ``value`` if it is an int >= 1; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value!r}")
    return value
