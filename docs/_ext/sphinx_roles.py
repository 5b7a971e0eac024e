"""A griffe extension for the API reference: show Sphinx roles in docstrings as code.

The docstrings cross-reference with Sphinx roles (``:func:`~unstall.cancelled```), which
mkdocstrings would print as they are. This turns each into inline code holding the name
(the last part only after ``~``), and a ``:pep:`578``` into "PEP 578".
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_PEP = re.compile(r":pep:`(\d+)`")


def _plain(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring as Markdown inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_plain, obj.docstring.value)
            obj.docstring.value = _PEP.sub(r"PEP \1", text)
