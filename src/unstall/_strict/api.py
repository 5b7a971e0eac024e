"""Strict mode: make a blocking call on an event loop's thread fail loudly, at its line.

Three ways to switch it on, with the same options::

    with unstall.strict():                      # a block (and tasks created inside it)
        ...

    @unstall.strict(action="warn")              # a sync or async function
    async def handler(request): ...

    uninstall = unstall.strict(allow=["mylib"]).install()   # the whole process
    ...
    uninstall()

A call from the catalogue (:mod:`unstall._strict.rules`) made on a thread that is running
an event loop is reported; the same call in a worker thread (``unstall.to_thread``,
``asyncio.to_thread``) or any thread without a running loop is not even looked at.
Calls are caught two ways: a permanent :func:`sys.addaudithook` hook for the events
CPython raises (it only reads one flag while strict mode is off) and wrappers put on
functions and methods while strict mode is on and removed when it is off.

This module is the public surface; the engine (:mod:`unstall._strict.check`, with
:mod:`~unstall._strict.rules`, :mod:`~unstall._strict.patch`, :mod:`~unstall._strict.allow`
and :mod:`~unstall._strict.report`) is imported on first use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from unstall._exceptions import BlockingCallError, BlockingCallWarning

if TYPE_CHECKING:
    from unstall._strict.allow import AllowList
    from unstall._strict.report import Policy

__all__ = ["BlockingCallError", "BlockingCallWarning", "install", "strict"]

P = ParamSpec("P")
R = TypeVar("R")
Action = Literal["raise", "warn", "log"]
ACTIONS: tuple[str, ...] = ("raise", "warn", "log")
Level = Literal["costly", "all"]
LEVELS: tuple[str, ...] = ("costly", "all")
Only = Literal["all", "project"]
ONLY: tuple[str, ...] = ("all", "project")


def covered_calls() -> list[str]:
    """Every call name strict mode can catch here (audit events and wrapped functions)."""
    from unstall._strict.rules import AUDIT_RULES, PATCHES, THIRD_PARTY_PATCHES

    names = {rule.call for rule in AUDIT_RULES.values()}
    names.update(p.rule.call for p in (*PATCHES, *THIRD_PARTY_PATCHES))
    return sorted(names)


def _check_action(action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"strict: action must be one of {', '.join(ACTIONS)}; got {action!r}")
    return action


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"strict: {name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_budget(budget: object) -> float:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ValueError(f"strict: budget must be a positive number of seconds, got {budget!r}")
    return float(budget)


def _compile_allow(allow: Iterable[str] | str) -> AllowList:
    if isinstance(allow, str):
        raise TypeError(f"strict: allow must be a list of strings, not the string {allow!r}")
    if not isinstance(allow, Iterable):
        raise TypeError(f"strict: allow must be a list of strings, not {type(allow).__name__}")
    from unstall._strict.allow import AllowList, declared_by_libraries
    from unstall._strict.config import project_config

    return AllowList.compile([*project_config().strict_allow, *declared_by_libraries(), *allow])


class strict:  # lowercase: it reads as a function at the call site
    """Report blocking calls made on a thread that is running an event loop.

    ``strict(...)`` is a context manager, a decorator (sync and async functions) and,
    through :meth:`install`, a process-wide switch. Inside a ``with`` block or a
    decorated call, the setting follows the code: tasks created there inherit it (it
    lives in a :mod:`contextvars` variable), other loops in other threads are unaffected.

    Args:
        action: ``"raise"`` (default) raises :class:`BlockingCallError` at the call, before
            it runs; ``"warn"`` emits a :class:`BlockingCallWarning` at the caller's line;
            ``"log"`` logs a warning on the ``unstall.strict`` logger.
        allow: Allow-list entries (call names, modules, qualified functions, file globs),
            added to ``strict_allow`` from ``[tool.unstall]`` in pyproject.toml, to what
            installed libraries declare under the ``unstall.allow`` entry point, and to
            the built-in list (imports, asyncio, pytest and unstall internals).
        level: ``"costly"`` (default): a call that is cheap by nature (metadata of a local
            file such as ``os.stat`` or ``os.path.exists``, a read of at most 64 KiB) is
            timed; within ``budget`` it is reported once per call site as a
            :class:`BlockingCallWarning`, past it as any blocking call. ``"all"``: every
            known blocking call is reported alike.
        budget: Seconds a cheap call may take before it counts as blocking (default 1 ms).
        only: ``"all"`` (default), or ``"project"`` to report only calls whose culprit
            frame (the line the report names) is your own code, not an installed package
            or the standard library: what dependencies do on their own is left out.

    Raises:
        ValueError: unknown ``action``, ``level`` or ``only``, a ``budget`` that is not a
            positive number, an empty allow entry, or a broken ``[tool.unstall]``.
        TypeError: ``allow`` is not a list of strings.

    Cancellation: a decorated coroutine is cancelled like the undecorated one; strict mode
    is switched off for it however it ends.
    """

    def __init__(
        self,
        *,
        action: Action = "raise",
        allow: Iterable[str] = (),
        level: Level = "costly",
        budget: float = 0.001,
        only: Only = "all",
        _sink: Callable[[BlockingCallError], bool | None] | None = None,
        _notice: Callable[[BlockingCallError], bool | None] | None = None,
    ) -> None:
        from unstall._strict.report import Policy  # the engine loads on first use

        self._policy = Policy(
            _check_action(action),
            _compile_allow(allow),
            _sink,
            level=_check_choice("level", level, LEVELS),
            budget_s=_check_budget(budget),
            project_only=_check_choice("only", only, ONLY) == "project",
            notice=_notice,
        )
        self._entered: list[_Scope] = []

    def __repr__(self) -> str:
        return f"unstall.strict(action={self._policy.action!r})"

    def __enter__(self) -> strict:
        scope = _Scope(self._policy)
        scope.__enter__()
        self._entered.append(scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered.pop().__exit__()

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(fn):
            raise TypeError(f"strict() decorates a function, got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"strict() cannot decorate the generator function {fn.__qualname__}: its body "
                "runs after the call returns; use `with unstall.strict():` inside it"
            )
        policy = self._policy
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with _Scope(policy):
                    return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            with _Scope(policy):
                return fn(*args, **kwargs)

        return run_sync

    def install(self) -> Callable[[], None]:
        """Switch strict mode on for the whole process, every loop in every thread.

        Returns a function that switches it off again (calling it twice is harmless).
        The most recent install wins; a ``with``/decorator scope overrides it inside.
        """
        from unstall._strict import check

        policy = self._policy
        check.acquire()
        check.add_process_policy(policy)
        pending = [policy]  # list.pop is atomic: the first caller gets it, later ones nothing

        def uninstall() -> None:
            try:
                pending.pop()
            except IndexError:
                return
            check.remove_process_policy(policy)
            check.release()

        return uninstall


class _Scope:
    """One activation of a policy for the current context (one per decorated call)."""

    __slots__ = ("_policy", "_token")

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def __enter__(self) -> None:
        from unstall._strict import check

        check.acquire()
        self._token = check.scope.set(self._policy)

    def __exit__(self, *exc: object) -> None:
        from unstall._strict import check

        check.scope.reset(self._token)
        check.release()


def install(action: str = "warn", allow: Sequence[str] = ()) -> Callable[[], None]:
    """Switch strict mode on process-wide (for ``unstall run --strict``); returns the off switch.

    Raises:
        ValueError: unknown ``action``. TypeError: ``allow`` is not a list of strings.
    """
    return strict(action=_check_action(action), allow=allow).install()  # type: ignore[arg-type]
