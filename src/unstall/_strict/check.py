"""The checking engine: state, the audit hook, the wrappers and the allow-list verdict.

Loaded on the first ``strict(...)``, so that ``import unstall`` stays light.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
from asyncio import _get_running_loop
from collections.abc import Callable
from typing import Any

from unstall._strict import patch, report
from unstall._strict.allow import (
    DEFAULT_ALLOW,
    DEFAULT_EXCEPT,
    AllowList,
    callback_frames,
    own_frames,
)
from unstall._strict.report import Policy, build_error, describe, emit, site
from unstall._strict.rules import AUDIT_RULES, PATCHES, THIRD_PARTY_PATCHES, Patch, Rule

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


def _judge(rule: Rule, args: tuple[Any, ...], method: bool, policy: Policy) -> None:
    """Report the call unless an allow-list covers it. Runs with ``_tls.depth`` set."""
    __tracebackhide__ = True
    if policy.allow.allows_call(rule.call):
        return
    file = args[0] if method and rule.call.startswith("io.") else None
    if file is not None and file in policy.files:
        return  # this file was reported already: its flush on close is the same I/O
    frames = callback_frames(sys._getframe(1), _OWN_FILES)
    if _DEFAULTS.allows_any(own_frames(frames)) or policy.allow.allows_any(frames):
        return
    if file is not None:
        _remember_file(policy, file)
    error = build_error(rule, describe(rule, args, method), frames)
    emit(policy, error, site(frames, rule))


def _remember_file(policy: Policy, file: Any) -> None:
    """Remember a file object and the layers under it (text -> buffered -> raw)."""
    for _ in range(3):
        if file is None:
            return
        with contextlib.suppress(TypeError):  # not weak-referenceable
            policy.files.add(file)
        file = getattr(file, "buffer", None) or getattr(file, "raw", None)


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


def acquire() -> None:
    global _users, _active, _hook_added
    with _state_lock:
        _users += 1
        if _users > 1:
            return
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
        patch.restore(_applied)
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
