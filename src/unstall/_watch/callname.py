"""Name the call a frame is making right now, e.g. ``time.sleep`` or ``socket.socket.recv``.

A blocking C function (``time.sleep``, ``sock.recv``) has no Python frame of its own, so
the name is read from the caller: the source span of the instruction the frame is executing
(``code.co_positions()``) gives the call expression, its callee is a dotted path
(``sock.recv``), and the path is resolved in the frame's namespace with static lookups only
(``inspect.getattr_static``): naming a call never runs user code.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import linecache
import types
import weakref
from functools import lru_cache
from typing import Any

__all__ = ["call_at", "callee_from_line", "callee_path", "qualified_name"]

_BEFORE_WITH = dis.opmap.get("BEFORE_WITH", -1)


@lru_cache(maxsize=4096)
def callee_path(code: types.CodeType, lasti: int) -> tuple[str, ...] | None:
    """The dotted callee of the call at ``lasti`` in ``code`` (``("sock", "recv")``), if any."""
    index = lasti // 2
    positions = list(code.co_positions())
    if not 0 <= index < len(positions):
        return None
    line, end_line, col, end_col = positions[index]
    if line is None or end_line is None or col is None or end_col is None:
        return None
    lines = linecache.getlines(code.co_filename)
    if end_line > len(lines):
        return None
    if line == end_line:
        text = lines[line - 1].encode()[col:end_col].decode(errors="replace")
    else:
        parts = [lines[line - 1].encode()[col:].decode(errors="replace")]
        parts += lines[line : end_line - 1]
        parts.append(lines[end_line - 1].encode()[:end_col].decode(errors="replace"))
        text = "".join(parts)
    if code.co_code[lasti] == _BEFORE_WITH:
        return _with_target(text)
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return None


def _with_target(text: str) -> tuple[str, ...] | None:
    """``("lock", "__enter__")`` for ``with lock:``.

    The instruction's span is the whole statement on 3.11-3.12, the context expression on
    3.13.
    """
    head = text.strip().splitlines()[0] if text.strip() else ""
    try:
        if head.startswith("with "):
            stmt = ast.parse(head + "\n    pass").body[0]
            if not isinstance(stmt, ast.With) or not stmt.items:
                return None
            expr = stmt.items[0].context_expr
        else:
            expr = ast.parse(head, mode="eval").body
    except SyntaxError:
        return None
    if isinstance(expr, ast.Call):
        return _dotted(expr.func)
    path = _dotted(expr)
    return None if path is None else (*path, "__enter__")


def callee_from_line(line: str) -> str | None:
    """The callee of the outermost call on a source line, as written (``"json.dumps"``)."""
    text = line.strip()
    for prefix in ("return ", "await ", "yield "):
        text = text.removeprefix(prefix)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            path = _dotted(node.func)
            return None if path is None else ".".join(path)
    return None


def _dotted(node: ast.expr) -> tuple[str, ...] | None:
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return tuple(reversed(names))


def call_at(frame: types.FrameType, lasti: int | None = None) -> str | None:
    """The qualified name of the call ``frame`` is executing, or ``None`` when not in a call.

    ``lasti`` pins the instruction: reading source may release the GIL, and a frame of
    another thread moves on meanwhile.
    """
    path = callee_path(frame.f_code, frame.f_lasti if lasti is None else lasti)
    if path is None:
        return None
    return resolve(path, frame)


def resolve(path: tuple[str, ...], frame: types.FrameType) -> str:
    """Resolve a dotted path in a frame's namespace to a qualified name, statically."""
    head = path[0]
    missing = object()
    obj: Any = missing
    code = frame.f_code
    if head in code.co_varnames or head in code.co_cellvars or head in code.co_freevars:
        obj = frame.f_locals.get(head, missing)
    if obj is missing:
        obj = frame.f_globals.get(head, missing)
    if obj is missing:
        obj = getattr(builtins, head, missing)
    if obj is missing:
        return ".".join(path)
    owner: Any = None
    for attr in path[1:]:
        owner = obj
        try:
            obj = inspect.getattr_static(obj, attr)
        except AttributeError:
            return ".".join(path)
    if owner is None:
        return qualified_name(obj) or head
    return _member_name(owner, path[-1])


def _plain(obj: Any) -> bool:
    """Whether reading ``obj``'s attributes runs none of its own code.

    The user's objects are looked at from the watchdog thread: a lazy proxy (Django's
    ``SimpleLazyObject``) would be evaluated there, a dead ``weakref.proxy`` raises.
    ``type()`` never runs an object's code; ``isinstance`` may (``__class__``).
    """
    kind = type(obj)
    if issubclass(kind, type | types.ModuleType):
        return True
    if issubclass(kind, weakref.ProxyTypes):
        return False
    # C attribute lookup (a slot wrapper), no Python __getattribute__ or __getattr__
    getattribute = inspect.getattr_static(kind, "__getattribute__", None)
    return isinstance(getattribute, types.WrapperDescriptorType) and not hasattr(
        kind, "__getattr__"
    )


def _member_name(owner: Any, attr: str) -> str:
    kind = type(owner)
    if issubclass(kind, types.ModuleType) and _plain(owner):
        return f"{owner.__name__}.{attr}"
    if issubclass(kind, type):
        kind = owner
    if attr == "__enter__" and hasattr(kind, "acquire"):
        attr = "acquire"
    base = f"{kind.__module__}.{kind.__qualname__}"
    return f"{base.removeprefix('builtins.')}.{attr}"


def qualified_name(obj: Any) -> str | None:
    """``module.qualname`` of a function, class or builtin, ``None`` when it has none."""
    if not _plain(obj):
        return None
    try:
        qual = obj.__qualname__
        module = obj.__module__
    except Exception:
        return None
    if not isinstance(qual, str):
        return None
    if not isinstance(module, str) or module == "builtins":
        return qual
    if module == "posix":
        module = "os"
    return f"{module}.{qual}"
