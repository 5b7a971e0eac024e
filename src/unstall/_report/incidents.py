"""unstall's own failures, contained: logged once, noted in the reports, never raised.

unstall runs inside other people's programs and test suites, so no failure of its own may
become theirs. Every entry point that runs there (watcher start and stop, the watchdog,
the loop hooks, the probe, strict mode's wrappers, the pytest hooks, ``unstall run``'s
start and exit) catches what goes wrong in its own code and calls :func:`contain`, which

* logs it to the ``unstall`` logger: one WARNING per place, the traceback at DEBUG;
* keeps a note, saying what was lost, that every report made afterwards carries
  (:attr:`unstall.Report.notes`, the summary, ``--json``, the pytest report);

and the entry point then lets the user's code go on as it would without unstall.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["contain", "notes_since"]

_log = logging.getLogger("unstall")
_lock = threading.Lock()
_MAX_NOTES = 200
_notes: list[tuple[float, str]] = []
"""``(monotonic time, text)`` of each incident, oldest first, at most ``_MAX_NOTES``."""
_warned: set[str] = set()


def contain(where: str, lost: str, exc: BaseException | None = None) -> str:
    """Record that unstall's ``where`` failed with ``exc``, costing the user ``lost``.

    Returns the note's text, e.g. "watching stopped for loop X: internal error in the
    probe, see the unstall log". Never raises.
    """
    text = f"{lost}: internal error in {where}, see the unstall log"
    try:
        with _lock:
            first = where not in _warned
            _warned.add(where)
            if len(_notes) < _MAX_NOTES:
                _notes.append((time.monotonic(), text))
        if first:
            detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            _log.warning("unstall: %s%s", text, detail)
        if exc is not None:
            _log.debug("unstall: internal error in %s", where, exc_info=exc)
    except Exception:  # logging itself failed: the note is still kept, when it could be
        pass
    return text


def notes_since(since: float, until: float | None = None) -> list[str]:
    """The distinct notes of incidents from monotonic time ``since`` (to ``until``), in order."""
    with _lock:
        texts = [text for t, text in _notes if t >= since and (until is None or t <= until)]
    return list(dict.fromkeys(texts))
