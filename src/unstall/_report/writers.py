"""The one registry of report files: JSON, the HTML timeline and the Perfetto trace.

Every place that writes a report file (``unstall run``, ``unstall report``, the pytest
plugin) looks its writer up here, so adding a kind of file here adds it everywhere the
same way. Each writer has a ``name`` (``--NAME`` is its option on the command line), a
description of the file it writes, ``load()`` to import what it needs ahead of time, and
``write(report, path)``.

The renderers are imported when first needed (deferred imports inside the writers), so
importing this module costs nothing the caller did not ask for.
"""

from __future__ import annotations

import abc
import os
from typing import ClassVar

from unstall._report.records import Report

__all__ = ["WRITERS", "HtmlWriter", "JsonWriter", "TraceWriter", "Writer", "writer"]


class Writer(abc.ABC):
    """One kind of report file.

    Subclasses set ``name`` and ``describes`` and implement :meth:`write`; those whose
    renderer has imports of its own override :meth:`load`.
    """

    name: ClassVar[str]
    """Short name: ``--NAME`` on ``unstall run`` and ``unstall report``."""
    describes: ClassVar[str]
    """What the file holds, for help texts and messages."""

    @property
    def option(self) -> str:
        """The command-line option naming this file, e.g. ``--html``."""
        return f"--{self.name}"

    def load(self) -> None:  # noqa: B027 (most writers import nothing of their own)
        """Import what :meth:`write` needs now, before a watched program can change
        ``sys.path``; raises ``ImportError`` when the renderer cannot be imported."""

    @abc.abstractmethod
    def write(self, report: Report, path: str | os.PathLike[str]) -> None:
        """Write ``report`` to ``path`` atomically; raises ``OSError`` if that fails."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.option}>"


class JsonWriter(Writer):
    """The report as JSON (:meth:`Report.write`), the form ``unstall report`` reads back."""

    name = "json"
    describes = "the report as JSON"

    def write(self, report: Report, path: str | os.PathLike[str]) -> None:
        report.write(path)


class HtmlWriter(Writer):
    """A self-contained HTML page: the timeline and the culprit table."""

    name = "html"
    describes = "the HTML timeline"

    def load(self) -> None:
        from unstall._report import html  # noqa: F401

    def write(self, report: Report, path: str | os.PathLike[str]) -> None:
        from unstall._report.html import write_html

        write_html(report, path)


class TraceWriter(Writer):
    """A Chrome Trace Event file, for Perfetto and chrome://tracing."""

    name = "trace"
    describes = "a Chrome/Perfetto trace"

    def load(self) -> None:
        from unstall._report import trace  # noqa: F401

    def write(self, report: Report, path: str | os.PathLike[str]) -> None:
        from unstall._report.trace import write_trace

        write_trace(report, path)


WRITERS: dict[str, Writer] = {w.name: w for w in (JsonWriter(), HtmlWriter(), TraceWriter())}
"""Every writer by name, in the order their options are listed."""


def writer(name: str) -> Writer:
    """The writer called ``name``.

    Raises:
        ValueError: no writer has that name (the message lists those that exist).
    """
    try:
        return WRITERS[name]
    except KeyError:
        known = ", ".join(WRITERS)
        raise ValueError(f"no report writer named {name!r} (known: {known})") from None
