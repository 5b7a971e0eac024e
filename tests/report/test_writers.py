"""The one registry of report files, reached from ``unstall run``, ``unstall report`` and pytest.

Every writer is checked from every place that writes files: a writer added to the
registry without a check here fails ``test_every_writer_has_a_check``.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import run_unstall
from report_samples import realistic_report
from unstall import Report
from unstall._report.writers import WRITERS, HtmlWriter, JsonWriter, TraceWriter, writer

pytest_plugins = ["pytester"]

BLOCKING = textwrap.dedent(
    """
    import asyncio
    import time


    async def handler():
        time.sleep(0.4)


    asyncio.run(handler())
    """
)


def _json_culprits(path: Path) -> set[str]:
    return {s.culprit.function for s in Report.read(path).stalls if s.culprit}


def _html_culprits(path: Path) -> set[str]:
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    data = re.search(r'id="unstall-data">(.*?)</script>', page, re.S)
    assert data
    return {s["culprit"]["function"] for s in json.loads(data.group(1))["stalls"] if s["culprit"]}


def _trace_culprits(path: Path) -> set[str]:
    events = json.loads(path.read_text(encoding="utf-8"))["traceEvents"]
    return {e["name"].split(" ")[0] for e in events if e["ph"] == "X"}


CULPRITS: dict[str, Callable[[Path], set[str]]] = {
    "json": _json_culprits,
    "html": _html_culprits,
    "trace": _trace_culprits,
}


def test_every_writer_has_a_check() -> None:
    assert set(CULPRITS) == set(WRITERS)


def test_the_registry_names_each_writer_and_its_option() -> None:
    assert [type(w) for w in WRITERS.values()] == [JsonWriter, HtmlWriter, TraceWriter]
    assert [w.option for w in WRITERS.values()] == ["--json", "--html", "--trace"]
    assert writer("html") is WRITERS["html"]
    with pytest.raises(
        ValueError, match=r"no report writer named 'pdf' \(known: json, html, trace\)"
    ):
        writer("pdf")


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_writer_writes_its_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"out.{name}"
    WRITERS[name].load()
    WRITERS[name].write(realistic_report(), path)
    assert "render_invoice_pdf" in CULPRITS[name](path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def _outputs(folder: Path, option: str = "--{}") -> tuple[dict[str, Path], list[str]]:
    """One output file per writer, and the options asking for them all."""
    outs = {name: folder / f"out.{name}" for name in WRITERS}
    return outs, [arg for name, out in outs.items() for arg in (option.format(name), str(out))]


def test_each_writer_is_reached_from_unstall_run(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(BLOCKING)
    outs, options = _outputs(tmp_path)
    proc = run_unstall(["run", "--quiet", *options, "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, out in outs.items():
        assert "handler" in CULPRITS[name](out), name


def test_each_writer_is_reached_from_unstall_report(tmp_path: Path) -> None:
    saved = tmp_path / "saved.json"
    realistic_report().write(saved)
    outs, options = _outputs(tmp_path)
    proc = run_unstall(["report", str(saved), *options], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, out in outs.items():
        assert f"unstall: wrote {name} to {out}" in proc.stderr
        assert "render_invoice_pdf" in CULPRITS[name](out), name


def test_every_writer_is_an_option_of_run_and_report(tmp_path: Path) -> None:
    run_help = run_unstall(["run", "--help"], tmp_path).stdout
    report_help = run_unstall(["report", "--help"], tmp_path).stdout
    for w in WRITERS.values():
        assert f"{w.option} FILE" in run_help
        assert f"{w.option} FILE" in report_help


SUITE = """
import asyncio
import time


def test_blocks_its_loop():
    async def handler():
        time.sleep(0.4)

    asyncio.run(handler())


def test_is_fine():
    asyncio.run(asyncio.sleep(0.01))


def test_blocks_again():
    async def handler_again():
        time.sleep(0.3)

    asyncio.run(handler_again())
"""


def test_each_writer_is_reached_from_the_pytest_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    outs, options = _outputs(pytester.path, "--unstall-{}")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *options)
    result.assert_outcomes(passed=1, failed=2)  # the options watch, as --unstall does
    for name, out in outs.items():
        result.stdout.fnmatch_lines([f"unstall: wrote {name} (2 stalls) to {out}"])
        assert CULPRITS[name](out) == {"handler", "handler_again"}, name
    # every test's watcher on one clock, in test order; a loop per test, one lane per thread
    report = Report.read(outs["json"])
    first, second = report.stalls
    assert [first.culprit.function, second.culprit.function] == ["handler", "handler_again"]  # type: ignore[union-attr]
    assert second.start_s >= first.start_s + first.duration_s
    assert [loop.thread for loop in report.loops] == ["MainThread"]
    assert {first.loop, second.loop} == {report.loops[0].id}
    assert report.duration_s >= second.start_s + second.duration_s


def test_a_plugin_output_in_a_missing_directory_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--unstall-html", "no-such-dir/out.html"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--unstall-html 'no-such-dir/out.html': directory * does not exist*"]
    )
