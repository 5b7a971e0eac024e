"""Turn a flagged call into a :class:`BlockingCallError`, then raise, warn or log it."""

from __future__ import annotations

import linecache
import logging
import reprlib
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from unstall._exceptions import BlockingCallError, BlockingCallWarning
from unstall._report.records import Frame
from unstall._strict.allow import AllowList, is_installed, is_stdlib
from unstall._strict.rules import Rule
from unstall._util import is_async_code

__all__ = ["Policy", "build_error", "describe", "emit", "site"]

_log = logging.getLogger("unstall.strict")
_STACK_LIMIT = 30


@dataclass(frozen=True, slots=True)
class Policy:
    """What one ``strict(...)`` asks for: the action, the allow-list, an optional sink.

    A sink that returns ``False`` takes the report over: the action is not taken and the
    call goes ahead. ``files`` holds the file objects already reported under this policy,
    so that one file is reported once (its ``write``, not the ``flush`` on close too).

    ``level`` is ``"costly"`` (cheap calls of a minor rule warn once per call site unless
    they take longer than ``budget_s``) or ``"all"`` (every known call is reported alike);
    ``project_only`` reports only calls made by the project's own code (the innermost frame
    outside the standard library is not an installed package).
    """

    action: str
    allow: AllowList
    sink: Callable[[BlockingCallError], bool | None] | None = None
    files: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, compare=False)
    level: str = "costly"
    budget_s: float = 0.001
    project_only: bool = False
    warned: set[tuple[str, str, int]] = field(default_factory=set, compare=False)
    """Call sites of cheap calls already reported."""
    notice: Callable[[BlockingCallError], bool | None] | None = None
    """Told of a cheap call within the budget, once per call site of this policy; returning
    ``False`` keeps the warning back (the pytest plugin lists it in its summary instead)."""


def describe(rule: Rule, args: tuple[Any, ...], method: bool) -> str:
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
    return Frame(code.co_filename, line, code.co_qualname, source, coroutine=is_async_code(code))


def site(frames: Sequence[FrameType], rule: Rule) -> FrameType | None:
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


def build_error(
    rule: Rule, shown: str, frames: Sequence[FrameType], took: float | None = None
) -> BlockingCallError:
    culprit = site(frames, rule)
    stack = tuple(_to_frame(f) for f in reversed(frames[:_STACK_LIMIT]))
    if culprit is None:
        file, line, function, code = "<unknown>", 0, "?", None
    else:
        here = _to_frame(culprit)
        file, line, function, code = here.file, here.line, here.function, here.code
    via = ""
    if frames and culprit is not None and frames[0] is not culprit:
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
        kind=rule.kind,
        took_s=took,
    )


def emit_minor(
    policy: Policy, error: BlockingCallError, where: FrameType | None, took: float
) -> None:
    """A cheap call within the budget: a warning (or a log line), once per call site."""
    key = (error.call, error.file, error.line)
    if key in policy.warned:
        return
    policy.warned.add(key)  # not the sink's: a cheap call fails no test
    if policy.notice is not None and policy.notice(error) is False:
        return
    note = (
        f"A cheap call ({took * 1e6:.0f} us, within the {policy.budget_s * 1e3:g} ms budget): "
        'reported once per call site, not failed; strict(level="all") fails it.'
    )
    text = "\n".join(line for line in str(error).splitlines() if not line.startswith("  at "))
    if policy.action == "log":
        _log.warning("%s\n%s", error, note)
        return
    module = where.f_globals.get("__name__", "?") if where is not None else "?"
    registry = where.f_globals.setdefault("__warningregistry__", {}) if where is not None else None
    warnings.warn_explicit(
        f"{text}\n{note}",
        BlockingCallWarning,
        error.file,
        error.line,
        module=module,
        registry=registry,
    )


def emit(policy: Policy, error: BlockingCallError, where: FrameType | None) -> None:
    __tracebackhide__ = True  # pytest: show the user's line, not strict mode's frames
    if policy.sink is not None and policy.sink(error) is False:
        return
    if policy.action == "raise":
        raise error
    if policy.action == "log":
        _log.warning("%s", error)
        return
    module = where.f_globals.get("__name__", "?") if where is not None else "?"
    registry = where.f_globals.setdefault("__warningregistry__", {}) if where is not None else None
    # The warning's own header names file:line already: drop the "at" line.
    text = "\n".join(line for line in str(error).splitlines() if not line.startswith("  at "))
    warnings.warn_explicit(
        text, BlockingCallWarning, error.file, error.line, module=module, registry=registry
    )
