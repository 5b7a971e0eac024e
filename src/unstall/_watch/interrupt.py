"""C code holding the GIL on a main-thread loop, caught by a timer signal.

While C code holds the GIL (``sum(range(10**9))``, ``b"*" * n``, a catastrophic regex), no
other Python thread runs, the watchdog included: its first sample comes after the C code
returned, on whatever line runs then. The thread that was lucky enough to be woken first
decided the culprit.

This route makes it deterministic for a loop on the main thread. The watchdog keeps a
one-shot ``ITIMER_REAL`` timer armed (re-armed at every poll, well before it expires), so
the timer fires only when the watchdog could not run for ``TIMEOUT_FRACTION`` of the
threshold; the handler names a line only if the loop thread computed meanwhile (other
threads holding the GIL keep the watchdog and the loop waiting alike). The kernel
delivers ``SIGALRM``; CPython's C handler only notes it, and the
Python handler runs on the main thread at its next check for pending work: right after
the C call returns (``CALL`` checks when it ends), at the next function start or loop
jump (after an operator). The handler's ``frame`` argument is therefore the culprit's
frame or a frame just started from it, and the bytecode between the last check and the
handler's position holds the culprit: :func:`locate` finds it (the call that just
returned, or the last operator before a check). No frame is read without the GIL.

The route is used only when nobody else uses ``SIGALRM`` or the real-time interval timer
(pytest-timeout's signal method, ``signal.alarm``): the handler must be the default one
when a watcher starts, and if someone installs theirs later, the watcher leaves the
signal to them. ``UNSTALL_SIGNAL=0`` turns it off. Loops on other threads are sampled by
the watchdog only (signal handlers run on the main thread).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import types
from collections.abc import Callable

from unstall._watch import witness
from unstall._watch.checkpoint import locate
from unstall._watch.sampler import capture_own, never_sample_in

__all__ = ["arm", "attach", "block_here", "detach", "disarm", "poll_began", "poll_ended"]

_log = logging.getLogger("unstall")
_monotonic = time.monotonic
TIMEOUT_FRACTION = 0.5
"""The timer fires after this fraction of the threshold without a re-arm."""

_SIGNAL = signal.SIGALRM
_TIMER = signal.ITIMER_REAL
_enabled = os.environ.get("UNSTALL_SIGNAL", "1") != "0" and hasattr(signal, "setitimer")
_installed = False
_armed_at: float | None = None
_previous: float | None = None
_timeout = 0.0
_threshold = 0.1
_busy: Callable[[float], tuple[float, float] | None] | None = None
"""The main loop's probe: ``(key, start)`` of its running iteration."""
_poll = (0.0, 0.0)
"""When the watchdog's latest poll began and ended (``end < start`` while under way)."""
_computed: Callable[[float, float], bool] | None = None
"""The main loop's probe: whether its thread computed since the watchdog's look at a time."""


# -- the handler and the timer ---------------------------------------------------------------


def _handler(signum: int, frame: types.FrameType | None) -> None:
    try:
        _take(frame)
    except Exception:  # runs in the middle of the program's code: never raise into it
        _log.debug("unstall: signal handler failed", exc_info=True)


def _take(frame: types.FrameType | None) -> None:
    now = _monotonic()
    armed_at, busy, computed = _armed_at, _busy, _computed
    if frame is None or armed_at is None or busy is None or computed is None:
        return
    # The timer fired: the watchdog could not run for a while. If it got the GIL first
    # and re-armed, the arm that expired is the one before.
    expired = armed_at if now >= armed_at + _timeout else (_previous or armed_at)
    running = busy(now)
    # The look the watchdog took when it armed the timer that expired (this handler may
    # already have let it poll again: at its first check point, if it was asking for the GIL).
    if (
        running is None
        or now - running[1] < _threshold / 2
        or _in_a_poll(expired + _timeout)
        or not computed(now, expired)
    ):
        # Not C code of the loop's holding the GIL: the watchdog was merely late (behind
        # Python code, or in a long poll), or both waited (for the GIL other threads held,
        # for a CPU). Keep the timer going until the watchdog runs again, or C code that
        # starts before then would go unseen.
        _rearm(now)
        return
    place = locate(frame)
    if place is None:
        return
    # It stands for the time since the watchdog last ran: the C code held the GIL.
    taken = capture_own(frame, max(expired, running[1]), "signal", place)
    if taken is not None:
        witness.push(threading.main_thread().ident or 0, taken)


never_sample_in(_handler)


def _in_a_poll(when: float) -> bool:
    """Whether the watchdog was in a poll at ``when``: a long poll (it lets the GIL go to
    read a file, then waits for it) lets the timer expire with no C code to blame."""
    start, end = _poll
    return start <= when and (end < start or end >= when)


def poll_began(now: float) -> None:
    """The watchdog starts a poll (watchdog thread)."""
    global _poll
    _poll = (now, _poll[1])


def poll_ended(now: float) -> None:
    """The watchdog's poll is over (watchdog thread)."""
    global _poll
    _poll = (_poll[0], now)


def attach(
    busy: Callable[[float], tuple[float, float] | None],
    computed: Callable[[float, float], bool],
    threshold: float,
) -> bool:
    """Use the route for the main thread's loop; call in the main thread. ``False`` if not."""
    global _installed, _busy, _computed, _threshold
    if not _enabled or threading.current_thread() is not threading.main_thread():
        return False
    if not _installed:
        if signal.getsignal(_SIGNAL) is not signal.SIG_DFL or signal.getitimer(_TIMER) != (
            0.0,
            0.0,
        ):
            return False  # someone else's
        signal.signal(_SIGNAL, _handler)
        _installed = True
    _busy, _computed, _threshold = busy, computed, threshold
    return True


def block_here() -> None:
    """Keep the signal off the calling thread (the watchdog): the kernel delivers it to a
    thread that takes it, and only one that can run the handler makes it run at once."""
    if _enabled and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {_SIGNAL})


def detach() -> None:
    """The main loop stopped: cancel the timer, and give ``SIGALRM`` its default handler
    back when called in the main thread (elsewhere ours stays, and ignores the signal)."""
    global _busy, _installed
    _busy = None
    disarm()
    if (
        _installed
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(_SIGNAL) is _handler
    ):
        signal.signal(_SIGNAL, signal.SIG_DFL)
        _installed = False


def _ours() -> bool:
    global _installed
    if _installed and signal.getsignal(_SIGNAL) is not _handler:
        _installed = False
        _log.warning(
            "unstall: SIGALRM got another handler; C code holding the GIL is attributed "
            "by the sampler only"
        )
    return _installed


def arm(now: float, threshold: float) -> None:
    """Re-arm the timer (watchdog thread, at every poll while the main loop runs)."""
    global _threshold, _timeout
    if _busy is None or not _ours():
        return
    _threshold = threshold
    _timeout = max(threshold * TIMEOUT_FRACTION, 0.01)
    _rearm(now)


def _rearm(now: float) -> None:
    global _armed_at, _previous
    _previous, _armed_at = _armed_at, now
    signal.setitimer(_TIMER, _timeout)


def disarm() -> None:
    global _armed_at
    if _armed_at is not None and _installed:
        signal.setitimer(_TIMER, 0)
    _armed_at = None
