"""Imported by the ``unstall-follow.pth`` start-up hook, only when ``UNSTALL_FOLLOW`` is set.

Importing it starts watching this new interpreter (see :mod:`unstall._cli.follow`). The
hook's line names this module rather than calling a function so that it stays as short
as it can be: every Python start-up in the environment compiles it.
"""

from __future__ import annotations

from unstall._cli.follow import start_in_child

start_in_child()
