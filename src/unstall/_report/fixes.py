"""What to do about a stall: the fix catalogue.

Every stall gets one :class:`Fix`, an action and a sentence. The action is decided by what
the stall is, in this order:

- garbage collection (``kind == "gc"``) -> ``tune_gc``;
- a first import (``kind == "import"``) -> ``import_early``;
- no culprit, or a culprit in asyncio's own machinery or a test framework's, or a line that
  calls asyncio's own functions -> ``none``, saying what to look at instead;
- a known waiting call, or a C call that releases the GIL (hashing, compression, file and
  socket I/O, ``ssl`` loading, ``sqlite3``) -> ``to_thread``: a thread is the cheap fix;
- a C call known to hold the GIL (``sum``, ``sorted``, ``re``, ``json``), an operator, or
  Python code computing -> ``to_process``;
- otherwise the measured kind: ``wait`` -> ``to_thread``, ``cpu`` -> ``to_process``.

The decision depends on the call site first, so one line gets the same action in every
report. The code in the sentence names what the source line names: for
``db.execute(QUERY, (n,))`` it says ``to_thread(db.execute, QUERY, (n,))``, not the
resolved ``sqlite3.Connection.execute``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from unstall._report.records import Frame, Stall

__all__ = ["ACTIONS", "Fix", "FixAction", "decide"]

FixAction = Literal["to_thread", "to_process", "tune_gc", "import_early", "none"]
ACTIONS: tuple[FixAction, ...] = ("to_thread", "to_process", "tune_gc", "import_early", "none")

# Resolved call names (``call``) whose time is spent waiting or in C code that releases
# the GIL: a thread runs them in parallel with the loop.
_TO_THREAD = (
    "time.sleep",
    "socket.",
    "_socket.",
    "ssl.",
    "_ssl.",
    "select.",
    "selectors.",
    "os.",
    "posix.",
    "shutil.",
    "pathlib.",
    "signal.pause",
    "signal.sigwait",
    "fcntl.",
    "multiprocessing.",
    "subprocess.",
    "_thread.",
    "threading.",
    "queue.",
    "_queue.",
    "sqlite3.",
    "_sqlite3.",
    "_io.",
    "io.",
    "open",
    "builtins.open",
    "http.",
    "urllib.",
    "requests.",
    "urllib3.",
    "input",
    "concurrent.futures.",
    "hashlib.",
    "_hashlib.",
    "_sha",
    "_md5.",
    "_blake2.",
    "zlib.",
    "_bz2.",
    "bz2.",
    "_lzma.",
    "lzma.",
    "gzip.",
    "zipfile.",
    "tarfile.",
    "dbm.",
    "psycopg2.",
    "pymysql.",
    "redis.",
)
# Calls that hold the GIL while they compute: only another process runs them in parallel.
_TO_PROCESS = (
    "sum",
    "sorted",
    "min",
    "max",
    "list.sort",
    "re.",
    "_sre.",
    "json.",
    "_json.",
    "pickle.",
    "_pickle.",
    "math.",
    "statistics.",
    "str.",
    "bytes.",
    "bytearray.",
    "list.",
    "dict.",
    "set.",
    "frozenset.",
    "itertools.",
    "functools.reduce",
    "collections.",
    "copy.deepcopy",
    "len",
    "any",
    "all",
    "map",
    "filter",
    "zip",
    "range",
    "enumerate",
)
_ASYNCIO_CALLS = ("asyncio.", "_asyncio.")
_FRAMEWORK_MARKERS = tuple(
    f"{os.sep}{name}{os.sep}" for name in ("_pytest", "pytest", "pluggy", "unittest", "anyio")
)
_ASYNCIO_MARKER = f"{os.sep}asyncio{os.sep}"


@dataclass(frozen=True, slots=True)
class Fix:
    """What to do about one stall: ``action`` (one of :data:`ACTIONS`) and a sentence."""

    action: FixAction
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "text": self.text}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fix:
        action = data.get("action")
        if action not in ACTIONS:
            raise ValueError(f"unknown fix action {action!r}")
        return cls(action, str(data.get("text", "")))


def _starts(call: str | None, prefixes: Sequence[str]) -> bool:
    return call is not None and any(
        call == p or (call.startswith(p) and (p.endswith((".", "_")) or call[len(p)] == "."))
        for p in prefixes
    )


def releases_gil(call: str | None) -> bool:
    """Whether ``call`` (a resolved name) waits or runs C code that releases the GIL."""
    return _starts(call, _TO_THREAD)


def holds_gil(call: str | None) -> bool:
    """Whether ``call`` is C code known to compute holding the GIL."""
    return _starts(call, _TO_PROCESS)


def _machinery(frame: Frame) -> str | None:
    """``"asyncio"`` or ``"a test framework"`` when ``frame`` is their code, else ``None``."""
    if _ASYNCIO_MARKER in frame.file:
        return "asyncio"
    if any(m in frame.file for m in _FRAMEWORK_MARKERS):
        return "a test framework"
    return None


def _calls_on(code: str | None) -> list[ast.Call]:
    """The call expressions of a source line, outermost first (empty when none parse)."""
    if not code:
        return []
    text = code.strip().rstrip(":")
    for prefix in ("return ", "await ", "yield ", "elif ", "if ", "while ", "with ", "assert "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    for candidate in (text, text.split(" as ")[0]):
        try:
            tree = ast.parse(candidate)
        except SyntaxError:
            continue
        return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return []


def _spell(node: ast.Call) -> str:
    """``db.execute, QUERY, (n,)`` for ``db.execute(QUERY, (n,))``."""
    parts = [ast.unparse(node.func)]
    parts += [ast.unparse(a) for a in node.args]
    parts += [
        f"{k.arg}={ast.unparse(k.value)}" if k.arg else f"**{ast.unparse(k.value)}"
        for k in node.keywords
    ]
    return ", ".join(parts)


def _on_line(code: str | None, name: str | None) -> str | None:
    """How the line spells the call to ``name`` (matched on its last part), with arguments."""
    calls = _calls_on(code)
    if not calls:
        return None
    if name is not None:
        tail = name.rsplit(".", 1)[-1]
        for node in calls:
            func = node.func
            last = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if last == tail:
                return _spell(node)
    return None


def _candidate(stall: Stall) -> str:
    """The callable to offload, as the source line spells it (with its arguments)."""
    culprit = stall.culprit
    assert culprit is not None
    coro_name = (stall.coro or "").rsplit(".", 1)[-1]
    inline = culprit.coroutine or culprit.function.startswith("<") or culprit.function == coro_name
    if not inline:
        # A plain function the task calls: offload the whole function, as its caller calls it.
        caller = _caller(stall)
        name = "__init__" if culprit.function == "__init__" else culprit.function
        spelled = _on_line(caller.code, name) if caller is not None else None
        if spelled is None and caller is not None and name == "__init__":
            calls = _calls_on(caller.code)
            spelled = _spell(calls[0]) if calls else None
        return spelled or f"{culprit.function}, ..."
    spelled = _on_line(culprit.code, stall.call)
    if spelled is not None:
        return spelled
    return f"{stall.call or culprit.function}, ..."


def _caller(stall: Stall) -> Frame | None:
    stack, culprit = stall.stack, stall.culprit
    for i in range(len(stack) - 1, 0, -1):
        if stack[i] == culprit:
            return stack[i - 1]
    return None


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _gc_fix(stall: Stall) -> Fix:
    gens = ", ".join(str(g) for g in stall.gc_generations) or "?"
    pause = _seconds(stall.gc_s)
    collected = f", {stall.gc_collected} objects freed" if stall.gc_collected else ""
    if stall.call == "gc.collect":
        return Fix(
            "tune_gc",
            f"an explicit `gc.collect()` paused the loop for {pause}{collected}: drop it, or "
            "call `gc.freeze()` once after start-up so long-lived objects are not scanned again",
        )
    return Fix(
        "tune_gc",
        f"garbage collection (generation {gens}) paused the loop for {pause}{collected}: call "
        "`gc.freeze()` after start-up so long-lived objects are not scanned again, create "
        "fewer reference cycles, or collect less often with `gc.set_threshold`",
    )


def _none(stall: Stall) -> Fix | None:
    culprit = stall.culprit
    if culprit is None:
        return Fix(
            "none",
            "no line of the program's own code was seen running: look at the task or callback "
            "named, or run again with a lower threshold to catch it",
        )
    owner = _machinery(culprit)
    if owner == "asyncio":
        return Fix(
            "none",
            f"the time went in asyncio's own machinery (`{culprit.function}`), which cannot be "
            "offloaded: look at how many callbacks or tasks became ready at once",
        )
    if owner is not None:
        return Fix(
            "none",
            f"the time went in {owner}'s own code (`{culprit.function}`): look at the fixture "
            "or plugin in the stack",
        )
    if _starts(stall.call, _ASYNCIO_CALLS):
        return Fix(
            "none",
            f"this line calls asyncio's own `{stall.call}`, which cannot be offloaded: look at "
            "how much work it schedules at once",
        )
    return None


def decide(stall: Stall) -> Fix:
    """The :class:`Fix` for ``stall`` from the catalogue (see the module docstring)."""
    if stall.kind == "gc":
        return _gc_fix(stall)
    if stall.kind == "import":
        module = stall.call or "the module"
        return Fix(
            "import_early",
            f"a first `import {module}` ran on the loop: import it at start-up (at the top of "
            "the module, or before the loop starts)",
        )
    none = _none(stall)
    if none is not None:
        return none
    call = stall.call
    if releases_gil(call) or (call is not None and not holds_gil(call) and stall.kind == "wait"):
        what = _candidate(stall)
        return Fix(
            "to_thread", f"blocking call: run it in a thread with `await unstall.to_thread({what})`"
        )
    culprit = stall.culprit
    assert culprit is not None
    if call is None and culprit.coroutine:
        # Python code or an operator (``b"*" * n``) right in the coroutine: nothing to pass.
        return Fix(
            "to_process",
            "CPU work on this line: move it into a plain function and run that with "
            "`await unstall.to_process(fn, ...)`",
        )
    if call is None and stall.kind == "wait":
        return Fix(
            "to_thread",
            f"blocking call: run it in a thread with `await unstall.to_thread({_candidate(stall)})`",
        )
    what = _candidate(stall)
    return Fix(
        "to_process", f"CPU work: run it in a process with `await unstall.to_process({what})`"
    )
