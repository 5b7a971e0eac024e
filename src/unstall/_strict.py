"""Strict mode: make a blocking call on an event loop's thread fail loudly, at its line.

Three ways to switch it on, with the same options::

    with unstall.strict():                      # a block (and tasks created inside it)
        ...

    @unstall.strict(action="warn")              # a sync or async function
    async def handler(request): ...

    uninstall = unstall.strict(allow=["mylib"]).install()   # the whole process
    ...
    uninstall()

A call from the catalogue (:mod:`unstall._strict_rules`) made on a thread that is running
an event loop is reported; the same call in a worker thread (``unstall.to_thread``,
``asyncio.to_thread``) or any thread without a running loop is not even looked at.
Calls are caught two ways: a permanent :func:`sys.addaudithook` hook for the events
CPython raises (it only reads one flag while strict mode is off) and wrappers put on
functions and methods while strict mode is on and removed when it is off.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import linecache
import logging
import reprlib
import sys
import threading
import warnings
from asyncio import _get_running_loop
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from unstall import _strict_patch
from unstall._stall import Frame
from unstall._strict_allow import (
    DEFAULT_ALLOW,
    AllowList,
    callback_frames,
    is_installed,
    is_stdlib,
    own_frames,
)
from unstall._strict_rules import AUDIT_RULES, PATCHES, THIRD_PARTY_PATCHES, Patch, Rule

__all__ = ["BlockingCallError", "BlockingCallWarning", "install", "strict"]

P = ParamSpec("P")
R = TypeVar("R")
Action = Literal["raise", "warn", "log"]
ACTIONS: tuple[str, ...] = ("raise", "warn", "log")

_log = logging.getLogger("unstall.strict")
_OWN_FILES = frozenset({__file__, _strict_patch.__file__})
_STACK_LIMIT = 30


class BlockingCallError(RuntimeError):
    """A known blocking call was made on a thread running an event loop, in strict mode.

    Attributes:
        call: The call, e.g. ``"time.sleep"`` or ``"socket.socket.recv"``.
        file: Absolute path of the code that made it (the first frame outside the
            standard library, so ``Path.write_text`` is reported at your line).
        line: Line number in ``file``.
        function: The function containing that line.
        stack: The callback's frames, outermost first.
        hint: How to move the call off the loop.
    """

    def __init__(
        self,
        message: str,
        *,
        call: str,
        file: str,
        line: int,
        function: str = "?",
        stack: tuple[Frame, ...] = (),
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.call = call
        self.file = file
        self.line = line
        self.function = function
        self.stack = stack
        self.hint = hint

    def __reduce__(self) -> Any:  # keep the attributes across pickling (xdist, processes)
        return _rebuild_error, (self.args[0], self.call, self.file, self.line, self.function)


def _rebuild_error(message: str, call: str, file: str, line: int, fn: str) -> BlockingCallError:
    return BlockingCallError(message, call=call, file=file, line=line, function=fn)


class BlockingCallWarning(RuntimeWarning):
    """Emitted by strict mode with ``action="warn"``."""


@dataclass(frozen=True, slots=True)
class _Policy:
    action: str
    allow: AllowList
    sink: Callable[[BlockingCallError], None] | None = None


_DEFAULTS = AllowList.compile(DEFAULT_ALLOW)
_scope: contextvars.ContextVar[_Policy | None] = contextvars.ContextVar(
    "unstall_strict", default=None
)
# Process-wide policies, the last installed wins. A tuple, replaced whole under
# _state_lock, so that wrappers in other threads read it without a lock.
_process: tuple[_Policy, ...] = ()
_tls = threading.local()  # .depth is True while a checked call runs on this thread
_state_lock = threading.Lock()
_users = 0  # active scopes + installs; wrappers are in place while > 0
_active = False  # read by the audit hook on every event: keep it a plain global
_applied: list[_strict_patch.Applied] = []
_hook_added = False


def _policy() -> _Policy | None:
    policy = _scope.get()
    if policy is None:
        installed = _process
        return installed[-1] if installed else None
    return policy


# --- reporting -------------------------------------------------------------------------


def _describe(rule: Rule, args: tuple[Any, ...], method: bool) -> str:
    shown = args[1:] if method else args[:2] if rule.call == "open" else args
    try:
        text = ", ".join(reprlib.repr(a) for a in shown[:3])
    except Exception:
        text = "..."
    return f"{rule.call}({text})"


def _to_frame(frame: FrameType) -> Frame:
    code = frame.f_code
    line = frame.f_lineno or 0
    source = linecache.getline(code.co_filename, line).strip() or None
    return Frame(code.co_filename, line, code.co_qualname, source)


def _site(frames: Sequence[FrameType], rule: Rule) -> FrameType | None:
    """The frame to blame: your code, rather than the libraries it went through.

    The first frame outside the standard library, installed packages and the called
    library itself; else the first outside the standard library; else the innermost.
    """
    package = rule.call.partition(".")[0]
    fallback = None
    for frame in frames:
        filename = frame.f_code.co_filename
        if is_stdlib(filename):
            continue
        module = frame.f_globals.get("__name__", "")
        if module.partition(".")[0] == package:
            continue
        if not is_installed(filename):
            return frame
        fallback = fallback or frame
    return fallback or (frames[0] if frames else None)


def _build_error(rule: Rule, shown: str, frames: Sequence[FrameType]) -> BlockingCallError:
    site = _site(frames, rule)
    stack = tuple(_to_frame(f) for f in reversed(frames[:_STACK_LIMIT]))
    if site is None:
        file, line, function, code = "<unknown>", 0, "?", None
    else:
        here = _to_frame(site)
        file, line, function, code = here.file, here.line, here.function, here.code
    via = ""
    if frames and site is not None and frames[0] is not site:
        inner = frames[0].f_code
        via = f" (via {frames[0].f_globals.get('__name__', '?')}.{inner.co_qualname})"
    lines = [
        f"blocking call {shown} on the event loop's thread{via}",
        f"  at {file}:{line} in {function}" + (f": {code}" if code else ""),
        "It stops every other task on this loop until it returns.",
        f"Fix: {rule.hint}.",
        f'Or allow it: unstall.strict(allow=["{rule.call}"]) or strict_allow in [tool.unstall].',
    ]
    return BlockingCallError(
        "\n".join(lines),
        call=rule.call,
        file=file,
        line=line,
        function=function,
        stack=stack,
        hint=rule.hint,
    )


def _emit(policy: _Policy, error: BlockingCallError, site: FrameType | None) -> None:
    __tracebackhide__ = True  # pytest: show the user's line, not strict mode's frames
    if policy.sink is not None:
        policy.sink(error)
    if policy.action == "raise":
        raise error
    if policy.action == "log":
        _log.warning("%s", error)
        return
    module = site.f_globals.get("__name__", "?") if site is not None else "?"
    registry = site.f_globals.setdefault("__warningregistry__", {}) if site is not None else None
    # The warning's own header names file:line already: drop the "at" line.
    text = "\n".join(line for line in str(error).splitlines() if not line.startswith("  at "))
    warnings.warn_explicit(
        text, BlockingCallWarning, error.file, error.line, module=module, registry=registry
    )


def _judge(rule: Rule, args: tuple[Any, ...], method: bool, policy: _Policy) -> None:
    """Report the call unless an allow-list covers it. Runs with ``_tls.depth`` set."""
    __tracebackhide__ = True
    if policy.allow.allows_call(rule.call):
        return
    frames = callback_frames(sys._getframe(1), _OWN_FILES)
    if _DEFAULTS.allows_any(own_frames(frames)) or policy.allow.allows_any(frames):
        return
    error = _build_error(rule, _describe(rule, args, method), frames)
    _emit(policy, error, _site(frames, rule))


# --- the two ways calls reach the check ------------------------------------------------


def _wrap(patch: Patch, original: Callable[..., Any]) -> Callable[..., Any]:
    rule = patch.rule
    method = ":" in patch.owner

    @functools.wraps(original)
    def checked(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if _get_running_loop() is None or getattr(_tls, "depth", False):
            return original(*args, **kwargs)
        policy = _policy()
        if policy is None:
            return original(*args, **kwargs)
        _tls.depth = True
        try:
            if rule.blocks(args, kwargs):
                _judge(rule, args, method, policy)
            return original(*args, **kwargs)
        finally:
            _tls.depth = False

    return checked


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    __tracebackhide__ = True
    if not _active:
        return
    rule = AUDIT_RULES.get(event)
    if rule is None or _get_running_loop() is None or getattr(_tls, "depth", False):
        return
    policy = _policy()
    if policy is None:
        return
    _tls.depth = True
    try:
        if rule.blocks(args, {}):
            _judge(rule, args, False, policy)
    finally:
        _tls.depth = False


def _acquire() -> None:
    global _users, _active, _hook_added
    with _state_lock:
        _users += 1
        if _users > 1:
            return
        if not _hook_added:
            sys.addaudithook(_audit_hook)  # permanent by design: audit hooks cannot be removed
            _hook_added = True
        patches = [p for p in PATCHES if not (p.rule.call == "time.sleep" and _SLEEP_AUDITED)]
        _applied.extend(_strict_patch.apply(patches, _wrap))
        _applied.extend(_strict_patch.apply(THIRD_PARTY_PATCHES, _wrap, third_party=True))
        _active = True


def _release() -> None:
    global _users, _active
    with _state_lock:
        _users -= 1
        if _users > 0:
            return
        _active = False
        _strict_patch.restore(_applied)
        _applied.clear()


_SLEEP_AUDITED = sys.version_info >= (3, 13)


def covered_calls() -> list[str]:
    """Every call name strict mode can catch here (audit events and wrapped functions)."""
    names = {rule.call for rule in AUDIT_RULES.values()}
    names.update(p.rule.call for p in (*PATCHES, *THIRD_PARTY_PATCHES))
    return sorted(names)


# --- public API ------------------------------------------------------------------------


def _check_action(action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"strict: action must be one of {', '.join(ACTIONS)}; got {action!r}")
    return action


def _compile_allow(allow: Iterable[str] | str) -> AllowList:
    if isinstance(allow, str):
        raise TypeError(f"strict: allow must be a list of strings, not the string {allow!r}")
    from unstall._config import project_config

    return AllowList.compile([*project_config().strict_allow, *allow])


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
            added to ``strict_allow`` from ``[tool.unstall]`` in pyproject.toml and to the
            built-in list (imports, asyncio, pytest and unstall internals).

    Raises:
        ValueError: unknown ``action``, empty allow entry, or a broken ``[tool.unstall]``.
        TypeError: ``allow`` is not a list of strings.

    Cancellation: a decorated coroutine is cancelled like the undecorated one; strict mode
    is switched off for it however it ends.
    """

    def __init__(
        self,
        *,
        action: Action = "raise",
        allow: Iterable[str] = (),
        _sink: Callable[[BlockingCallError], None] | None = None,
    ) -> None:
        self._policy = _Policy(_check_action(action), _compile_allow(allow), _sink)
        self._tokens: list[contextvars.Token[_Policy | None]] = []

    def __repr__(self) -> str:
        return f"unstall.strict(action={self._policy.action!r})"

    def __enter__(self) -> strict:
        _acquire()
        self._tokens.append(_scope.set(self._policy))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _scope.reset(self._tokens.pop())
        _release()

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(fn):
            raise TypeError(f"strict() decorates a function, got {fn!r}")
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
        policy = self._policy
        _acquire()
        _add_process_policy(policy)
        done = False

        def uninstall() -> None:
            nonlocal done
            with _state_lock:
                if done:
                    return
                done = True
                _remove_process_policy(policy)
            _release()

        return uninstall


def _add_process_policy(policy: _Policy) -> None:
    global _process
    with _state_lock:
        _process = (*_process, policy)


def _remove_process_policy(policy: _Policy) -> None:
    """Remove the latest install of ``policy``; the caller holds ``_state_lock``."""
    global _process
    index = max(i for i, p in enumerate(_process) if p is policy)
    _process = _process[:index] + _process[index + 1 :]


class _Scope:
    """One activation of a policy for the current context (one per decorated call)."""

    __slots__ = ("_policy", "_token")

    def __init__(self, policy: _Policy) -> None:
        self._policy = policy

    def __enter__(self) -> None:
        _acquire()
        self._token = _scope.set(self._policy)

    def __exit__(self, *exc: object) -> None:
        _scope.reset(self._token)
        _release()


def install(action: str = "warn", allow: Sequence[str] = ()) -> Callable[[], None]:
    """Switch strict mode on process-wide (for ``unstall run --strict``); returns the off switch.

    Raises:
        ValueError: unknown ``action``. TypeError: ``allow`` is not a list of strings.
    """
    return strict(action=_check_action(action), allow=allow).install()  # type: ignore[arg-type]
