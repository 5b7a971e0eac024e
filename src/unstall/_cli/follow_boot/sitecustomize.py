"""Imported as ``sitecustomize`` by each Python process a program run by ``unstall run`` starts.

``unstall run`` puts this file's folder first on ``PYTHONPATH`` (and sets
``UNSTALL_FOLLOW`` to its run directory) for the program it runs, so every new interpreter
the program starts imports this module at start-up, as ``site`` imports ``sitecustomize``;
it starts watching that process (:func:`unstall._cli.follow.start_in_child`). Outside such
a run the folder is on no path: a Python start-up runs none of unstall's code.

Then it takes its folder off ``sys.path`` and imports the environment's own
``sitecustomize``, if there is one, as ``site`` would have; an error in it is reported by
``site`` as usual.
"""

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _follow() -> None:
    try:
        from unstall._cli.follow import start_in_child
    except Exception:  # an interpreter of another environment, without unstall (or with
        return  # one it cannot import): not followed, and its start-up goes on as usual
    start_in_child()


def _chain() -> None:
    """Leave ``sys.path`` as it would be, and run the ``sitecustomize`` this one hides."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    this = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
        if this is not None:  # none to chain to: the import system expects this module
            sys.modules["sitecustomize"] = this


if os.environ.get("UNSTALL_FOLLOW"):
    _follow()
_chain()
