"""Which blocking calls unstall's strict mode and blockbuster catch, side by side.

Runs ``probes/test_probes.py`` (pytest-asyncio) plainly, with ``--unstall-strict`` and
with blockbuster's ``blockbuster_ctx()`` as an autouse fixture (its README's recipe),
then prints a Markdown table. ``test_block_*`` probes should fail under a tool (caught),
``test_fine_*`` probes should pass (a failure is a false alarm).

    python benchmarks/plugin_peers/compare.py   # needs: pip install blockbuster pytest-asyncio
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBES = HERE / "probes" / "test_probes.py"
BB_PLUGIN = """
import pytest
from blockbuster import blockbuster_ctx


@pytest.fixture(autouse=True)
def _blockbuster():
    with blockbuster_ctx() as bb:
        yield bb
"""
INI = "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"


_CALL = re.compile(r"blocking call (?:to )?([\w.]+)", re.IGNORECASE)


def _caught(case: ET.Element) -> str | None:
    """The call a tool named in a probe's failure, ``""`` if unnamed; ``None``: it passed."""
    problem = case.find("failure")
    if problem is None:
        problem = case.find("error")
    if problem is None:
        return None
    match = _CALL.search((problem.get("message") or "") + "\n" + (problem.text or ""))
    return match.group(1) if match else ""


def _run(name: str, args: list[str], env_path: str | None) -> tuple[dict[str, str | None], float]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp, "out.xml")
        Path(tmp, "pytest.ini").write_text(INI)
        env = None if env_path is None else {**os.environ, "PYTHONPATH": env_path}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c"]
        cmd += [str(Path(tmp, "pytest.ini")), f"--junitxml={xml}", *args, str(PROBES)]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, check=False)
        took = time.perf_counter() - start
        failed = {case.get("name", "?"): _caught(case) for case in ET.parse(xml).iter("testcase")}
    count = sum(v is not None for v in failed.values())
    print(f"{name}: {count} of {len(failed)} probes failed in {took:.1f} s", file=sys.stderr)
    return failed, took


def main() -> None:
    try:
        bb_version = version("blockbuster")
    except PackageNotFoundError:
        sys.exit("blockbuster is not installed: pip install blockbuster")
    with tempfile.TemporaryDirectory() as plugdir:
        Path(plugdir, "bb_probe_plugin.py").write_text(BB_PLUGIN)
        runs = {
            "plain": _run("plain", ["-p", "no:unstall"], None),
            "unstall": _run("unstall", ["--unstall-strict"], None),
            "blockbuster": _run(
                "blockbuster", ["-p", "no:unstall", "-p", "bb_probe_plugin"], plugdir
            ),
        }
    print(
        f"unstall {version('unstall')}, blockbuster {bb_version}, Python {sys.version.split()[0]}"
    )
    print()
    sys.stdout.flush()
    print("| probe | plain | unstall --unstall-strict | blockbuster |")
    print("| --- | --- | --- | --- |")
    for probe in runs["plain"][0]:
        should_fail = probe.startswith("test_block_")
        cells = ["fails" if runs["plain"][0].get(probe) is not None else "passes"]
        for name in ("unstall", "blockbuster"):
            call = runs[name][0].get(probe)
            if should_fail:
                cells.append("missed" if call is None else f"caught ({call or '?'})")
            else:
                cells.append("passes" if call is None else "**false alarm**")
        print(f"| `{probe}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
