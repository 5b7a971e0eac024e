"""The checking engine: state, the audit hook, the wrappers and the allow-list verdict.

Loaded on the first ``strict(...)``, so that ``import unstall`` stays light.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
import time
from asyncio import _get_running_loop
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from unstall._report.incidents import contain
from unstall._strict import patch, report
from unstall._strict.allow import (
    DEFAULT_ALLOW,
    DEFAULT_EXCEPT,
    AllowList,
    callback_frames,
    is_installed,
    is_stdlib,
    own_frames,
)
from unstall._strict.report import Policy, build_error, describe, emit, emit_minor, site
from unstall._strict.rules import AUDIT_RULES, PATCHES, THIRD_PARTY_PATCHES, Patch, Rule

if TYPE_CHECKING:
    from unstall._exceptions import BlockingCallError

__all__ = ["Policy", "acquire", "add_process_policy", "release", "remove_process_policy", "scope"]

_OWN_FILES = frozenset({__file__, patch.__file__, report.__file__})
_SLEEP_AUDITED = sys.version_info >= (3, 13)
_DEFAULTS = AllowList.compile(DEFAULT_ALLOW, DEFAULT_EXCEPT)

scope: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "unstall_strict", default=None
)
# Process-wide policies, the last installed wins. A tuple, replaced whole under
# _state_lock, so that wrappers in other threads read it without a lock.
_process: tuple[Policy, ...] = ()
_tls = threading.local()  # .depth is True while a checked call runs on this thread
_state_lock = threading.Lock()
_users = 0  # active scopes + installs; wrappers are in place while > 0
_active = False  # read by the audit hook on every event: keep it a plain global
_applied: list[patch.Applied] = []
_hook_added = False


def _policy() -> Policy | None:
    policy = scope.get()
    if policy is None:
        installed = _process
        return installed[-1] if installed else None
    return policy


def _frames(rule: Rule, policy: Policy, caller: FrameType) -> list[FrameType] | None:
    """The callback's frames, innermost first; ``None`` when the call is let through."""
    if policy.allow.allows_call(rule.call):
        return None
    frames = callback_frames(caller, _OWN_FILES)
    if _DEFAULTS.allows_any(own_frames(frames)) or policy.allow.allows_any(frames):
        return None
    if policy.project_only and not _made_by_project(frames, rule):
        return None
    return frames


def _made_by_project(frames: list[FrameType], rule: Rule) -> bool:
    """The culprit frame (the one the report names) is the project's, not a dependency's.

    A dependency's own call (fastapi stat-ing an endpoint's source file with no project
    frame on the stack) is not; ``requests.get`` in your handler is.
    """
    culprit = site(frames, rule)
    if culprit is None:
        return False
    filename = culprit.f_code.co_filename
    return not is_stdlib(filename) and not is_installed(filename)


def _judge(
    rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any], method: bool, policy: Policy
) -> None:
    """Report the call if it blocks, unless an allow-list covers it.

    Runs with ``_tls.depth`` set. Strict mode's own errors are contained (the call goes
    on unchecked); what :func:`emit` raises (``BlockingCallError``, a warning turned into
    an error, the policy's sink) is the user's.
    """
    __tracebackhide__ = True
    try:
        verdict = _verdict(rule, args, kwargs, method, policy, sys._getframe(1))
    except Exception as exc:
        contain(f"strict mode's check of {rule.call}", "a call went unchecked", exc)
        return
    if verdict is not None:
        emit(policy, *verdict)


def _verdict(
    rule: Rule,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: bool,
    policy: Policy,
    caller: FrameType,
) -> tuple[BlockingCallError, FrameType | None] | None:
    if not rule.blocks(args, kwargs) or policy.allow.allows_call(rule.call):
        return None
    file = args[0] if method and rule.call.startswith("io.") else None
    if file is not None and file in policy.files:
        return None  # this file was reported already: its flush on close is the same I/O
    frames = _frames(rule, policy, caller)
    if frames is None:
        return None
    if file is not None:
        _remember_file(policy, file)
    return build_error(rule, describe(rule, args, method), frames), site(frames, rule)


def _remember_file(policy: Policy, file: Any) -> None:
    """Remember a file object and the layers under it (text -> buffered -> raw)."""
    for _ in range(3):
        if file is None:
            return
        with contextlib.suppress(TypeError):  # not weak-referenceable
            policy.files.add(file)
        file = getattr(file, "buffer", None) or getattr(file, "raw", None)


def _is_cheap(rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A call of a minor rule that blocks and is cheap by nature (contained: never raises)."""
    assert rule.minor is not None
    try:
        return bool(rule.blocks(args, kwargs) and rule.minor(args, kwargs))
    except Exception as exc:
        contain(f"strict mode's check of {rule.call}", "a call went unchecked", exc)
        return False


def _cheap(
    rule: Rule,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: bool,
    policy: Policy,
    original: Callable[..., Any],
) -> Any:
    """Run a call of a minor rule, timed: over the budget it is reported as any blocking
    call (after it ran); within it, a warning once per call site."""
    __tracebackhide__ = True
    try:
        frames = _frames(rule, policy, sys._getframe(1))
    except Exception as exc:
        contain(f"strict mode's check of {rule.call}", "a call went unchecked", exc)
        frames = None
    if frames is None:
        return original(*args, **kwargs)
    started = time.perf_counter()
    try:
        return original(*args, **kwargs)
    finally:  # also when it raised (os.path.exists of a missing file)
        _report_cheap(rule, args, method, policy, frames, time.perf_counter() - started)


def _report_cheap(
    rule: Rule,
    args: tuple[Any, ...],
    method: bool,
    policy: Policy,
    frames: list[FrameType],
    took: float,
) -> None:
    __tracebackhide__ = True
    shown = describe(rule, args, method)
    if took > policy.budget_s:
        shown += f", which took {took * 1e3:.1f} ms (over the {policy.budget_s * 1e3:g} ms budget)"
        emit(policy, build_error(rule, shown, frames, took), site(frames, rule))
    else:
        emit_minor(policy, build_error(rule, shown, frames, took), site(frames, rule), took)


def _wrap(spec: Patch, original: Callable[..., Any]) -> Callable[..., Any]:
    rule = spec.rule
    method = ":" in spec.owner

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
            if rule.minor is not None and policy.level != "all" and _is_cheap(rule, args, kwargs):
                return _cheap(rule, args, kwargs, method, policy, original)
            _judge(rule, args, kwargs, method, policy)
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
        _judge(rule, args, {}, False, policy)
    finally:
        _tls.depth = False


def acquire() -> None:
    global _users
    with _state_lock:
        _users += 1
        if _users > 1:
            return
        try:
            _start()
        except Exception as exc:
            contain("strict mode's start", "blocking calls may go unchecked", exc)


def _start() -> None:
    global _active, _hook_added
    if not _hook_added:
        sys.addaudithook(_audit_hook)  # permanent by design: audit hooks cannot be removed
        _hook_added = True
    patches = [p for p in PATCHES if not (p.rule.call == "time.sleep" and _SLEEP_AUDITED)]
    _applied.extend(patch.apply(patches, _wrap))
    _applied.extend(patch.apply(THIRD_PARTY_PATCHES, _wrap, third_party=True))
    _active = True


def release() -> None:
    global _users, _active
    with _state_lock:
        _users -= 1
        if _users > 0:
            return
        _active = False
        try:
            patch.restore(_applied)
        except Exception as exc:  # a wrapper left in place only forwards: no policy is set
            contain("strict mode's stop", "some functions stay wrapped (inactive)", exc)
        _applied.clear()


def add_process_policy(policy: Policy) -> None:
    global _process
    with _state_lock:
        _process = (*_process, policy)


def remove_process_policy(policy: Policy) -> None:
    """Remove the latest install of ``policy``."""
    global _process
    with _state_lock:
        index = max(i for i, p in enumerate(_process) if p is policy)
        _process = _process[:index] + _process[index + 1 :]
