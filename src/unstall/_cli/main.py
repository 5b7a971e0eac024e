"""The ``unstall`` command: a thin dispatcher to one module per subcommand.

Each subcommand lives in its own module with a ``main(argv: list[str]) -> int`` and is
imported only when used, so ``unstall --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("unstall._cli.run", "run a Python script or module and report every loop stall"),
    "demo": ("unstall._cli.demo", "watch a blocking call freeze a loop, then fix it"),
    "bench": ("unstall._cli.bench", "benchmark unstall against asyncio and its peers"),
    "report": (
        "unstall._cli.report_cmd",
        "turn a saved JSON report into HTML, a trace or a summary",
    ),
}

_USAGE = "usage: unstall {" + ",".join(_COMMANDS) + "} [options] ..."


def _help() -> str:
    width = max(map(len, _COMMANDS))
    lines = [_USAGE, "", "Find what stalls your asyncio event loop, and move it off the loop.", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in _COMMANDS.items()]
    lines += ["", "Run `unstall COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unstall`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from unstall._version import __version__

        print(f"unstall {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in _COMMANDS:
        print(f"unstall: unknown command {name!r}\n{_USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    code: int = module.main(rest)
    return code
