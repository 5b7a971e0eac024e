"""Replace functions and methods with wrappers, and put the originals back.

Methods of immutable C types (``io.TextIOWrapper.write``, ``threading.Lock.acquire``,
``sqlite3.Connection.execute``) refuse ``setattr``. For those the type's real dict is
reached through :func:`gc.get_referents` on its read-only proxy, changed, and the type's
method cache invalidated with ``PyType_Modified`` (the technique of the forbiddenfruit
package that blockbuster uses, done here with the standard library only). CPython only;
elsewhere those patches are skipped and reported by :func:`applied`.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from unstall._strict.rules import Patch, Rule

__all__ = ["Applied", "apply", "restore"]

_log = logging.getLogger("unstall.strict")

Wrap = Callable[[Patch, Callable[..., Any]], Callable[..., Any]]
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Applied:
    """One attribute replaced: enough to put the original back exactly."""

    target: Any
    attr: str
    previous: Any  # the owner's own attribute before patching, or _MISSING if inherited
    builtin: bool
    rule: Rule


def _resolve(owner: str, *, imported_only: bool) -> Any:
    module_name, _, class_path = owner.partition(":")
    target: Any
    if imported_only:
        target = sys.modules.get(module_name)
        if target is None:
            return None
    else:
        try:
            target = importlib.import_module(module_name)
        except ImportError:
            return None
    for part in filter(None, class_path.split(".")):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def _type_dict(cls: type) -> dict[str, Any]:
    real: dict[str, Any] = gc.get_referents(cls.__dict__)[0]
    return real


def _type_modified(cls: type) -> None:
    import ctypes

    ctypes.pythonapi.PyType_Modified(ctypes.py_object(cls))


def _set(target: Any, attr: str, value: Any, *, builtin: bool) -> None:
    if not builtin:
        if value is _MISSING:
            delattr(target, attr)
        else:
            setattr(target, attr, value)
        return
    real = _type_dict(target)
    if value is _MISSING:
        real.pop(attr, None)
    else:
        real[attr] = value
    _type_modified(target)


def _own(target: Any, attr: str) -> Any:
    return vars(target).get(attr, _MISSING) if isinstance(target, type) else getattr(target, attr)


def apply(patches: Iterable[Patch], wrap: Wrap, *, third_party: bool = False) -> list[Applied]:
    """Wrap every patch target that exists; return what to :func:`restore` later.

    ``third_party`` targets are wrapped only if already imported: strict mode never
    imports a client library (no side effects, no import time on a loop thread).
    """
    done: list[Applied] = []
    for patch in patches:
        target = _resolve(patch.owner, imported_only=third_party)
        original = None if target is None else getattr(target, patch.attr, None)
        if original is None:
            continue
        previous = _own(target, patch.attr)
        try:
            _set(target, patch.attr, wrap(patch, original), builtin=patch.builtin)
        except (TypeError, AttributeError, IndexError, OSError) as exc:
            _log.debug("unstall.strict: cannot wrap %s: %s", patch.rule.call, exc)
            continue
        done.append(Applied(target, patch.attr, previous, patch.builtin, patch.rule))
    return done


def restore(applied: Iterable[Applied]) -> None:
    """Put the originals back, last patched first."""
    for item in reversed(list(applied)):
        _set(item.target, item.attr, item.previous, builtin=item.builtin)
