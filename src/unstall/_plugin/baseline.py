"""The baseline file: findings a project knows about, that do not fail its tests.

Like mypy's or ruff's baseline, it lets a project turn unstall on today and fix its
stalls one at a time. A finding is keyed by the test id, the kind (``stall`` or
``blocking``), the culprit's file (relative to the rootdir, or to site-packages), the call
and the culprit's source line text, so that an edit elsewhere in the file, which moves the
line, does not turn a known finding into a new one. The line number is kept for readers
(and used as the key only when the source line cannot be read).

A blocking call (strict mode) is one finding per call site, whichever tests reach it: its
key leaves the test out, and the file keeps the first test that reached it and ``tests``,
how many did. A stall is a finding of its test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

BASELINE_VERSION = 1
_SITE_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")

Key = tuple[str, str, str, str, str]


class BaselineError(Exception):
    """The baseline file cannot be read or is not one."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem unstall found in one test."""

    test: str
    kind: str  # "stall" or "blocking"
    file: str
    line: int
    code: str
    call: str

    @property
    def key(self) -> Key:
        test = "" if self.kind == "blocking" else self.test  # a call site, whatever the test
        return (test, self.kind, self.file, self.call, self.code or f"line {self.line}")

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def relative_file(file: str, root: Path) -> str:
    """``file`` as a stable key: relative to ``root``, else to site-packages."""
    if file.startswith("<"):
        return file
    real = os.path.realpath(file)
    rel = os.path.relpath(real, os.path.realpath(root))
    if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
        return Path(rel).as_posix()
    for marker in _SITE_MARKERS:
        if marker in real:
            return Path(real.split(marker, 1)[1]).as_posix()
    return Path(real).as_posix()


def finding(
    test: str,
    kind: str,
    file: str | None,
    line: int,
    code: str | None,
    call: str | None,
    root: Path,
) -> Finding:
    """A finding with its file made relative to ``root``."""
    where = relative_file(file, root) if file else "?"
    return Finding(test, kind, where, line, (code or "").strip(), call or "")


def from_dict(data: object) -> Finding:
    """A finding from its JSON form (a baseline entry, or one sent by an xdist worker).

    Raises:
        ValueError: ``data`` is not a finding (needs test, kind, file, line, code, call).
    """
    try:
        assert isinstance(data, dict)
        return Finding(
            test=str(data["test"]),
            kind=str(data["kind"]),
            file=str(data["file"]),
            line=int(data.get("line", 0)),
            code=str(data.get("code", "")),
            call=str(data.get("call", "")),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ValueError(f"not a finding: {data!r}") from None


def _entry(data: object, path: Path, index: int) -> Finding:
    try:
        return from_dict(data)
    except ValueError:
        raise BaselineError(
            f"{path}: entry {index} is not a finding "
            f"(needs test, kind, file, line, code, call): {data!r}"
        ) from None


def read(path: Path) -> list[Finding]:
    """The findings in a baseline file; :class:`BaselineError` naming the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"baseline {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise BaselineError(f"{path} is not an unstall baseline (no 'findings' list)")
    if data.get("version") != BASELINE_VERSION:
        raise BaselineError(
            f"baseline {path} has version {data.get('version')!r}; this unstall "
            f"reads version {BASELINE_VERSION}"
        )
    return [_entry(item, path, i) for i, item in enumerate(data["findings"])]


def write(path: Path, findings: Iterable[Finding]) -> int:
    """Write the distinct findings, sorted; atomically. Returns how many were written.

    A blocking call site is written once, with the first test that reached it and the
    number of tests that did.
    """
    unique: dict[Key, Finding] = {}
    tests: dict[Key, set[str]] = {}
    for found in findings:
        unique.setdefault(found.key, found)
        tests.setdefault(found.key, set()).add(found.test)
    ordered = sorted(unique.values(), key=lambda f: (f.test, f.file, f.line, f.kind, f.call))
    entries = [
        {**asdict(f), "tests": len(tests[f.key])} if f.kind == "blocking" else asdict(f)
        for f in ordered
    ]
    text = json.dumps({"version": BASELINE_VERSION, "findings": entries}, indent=2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(ordered)


class Baseline:
    """The run's view of the baseline: what is known, what was seen, what is stale.

    Without a file yet (``entries is None``) every finding is known: the run records them
    all and passes, and :meth:`save` writes the file at the end.
    """

    def __init__(self, path: Path, entries: list[Finding] | None) -> None:
        self.path = path
        self.entries = entries
        self._known = {f.key for f in entries or ()}
        self.seen: list[Finding] = []
        self.tests_run: set[str] = set()

    @classmethod
    def load(cls, path: Path) -> Baseline:
        return cls(path, read(path) if path.exists() else None)

    @property
    def writing(self) -> bool:
        return self.entries is None

    def known(self, found: Finding) -> bool:
        """Record ``found``; whether it is listed (so it must not fail its test)."""
        self.seen.append(found)
        return self.writing or found.key in self._known

    def stale(self) -> list[Finding]:
        """Entries for tests that ran this time whose finding was not seen.

        A call site's entry is judged by its first test: when that test ran and no test
        reached the call site, the entry is stale.
        """
        seen = {f.key for f in self.seen}
        return [f for f in self.entries or () if f.test in self.tests_run and f.key not in seen]

    def save(self) -> int:
        return write(self.path, self.seen)
