"""Kept for environments that still hold the ``unstall-follow.pth`` of earlier versions.

That file (no longer installed; reinstalling unstall removes it) imported this module at
start-up when ``UNSTALL_FOLLOW`` was set. Children are now followed through
``follow_boot/sitecustomize.py``; starting twice is harmless (the second start sees this
process watched already).
"""

from __future__ import annotations

from unstall._cli.follow import start_in_child

start_in_child()
