"""``unstall report FILE.json [--html F] [--trace F] [--json F]``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from report_samples import realistic_report
from unstall import Report
from unstall._cli.report_cmd import main


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    realistic_report().write(path)
    return path


def test_converts_to_every_form(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html, trace, again = tmp_path / "t.html", tmp_path / "t.trace.json", tmp_path / "again.json"
    code = main([str(saved), "--html", str(html), "--trace", str(trace), "--json", str(again)])
    assert code == 0
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    events = json.loads(trace.read_text())["traceEvents"]
    assert len([e for e in events if e["ph"] == "X"]) == 14
    assert Report.read(again) == Report.read(saved)
    err = capsys.readouterr().err
    assert f"wrote html to {html}" in err
    assert f"wrote trace to {trace}" in err


def test_no_option_prints_the_summary(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(saved)]) == 0
    out = capsys.readouterr().out
    assert "render_invoice_pdf" in out
    assert "refresh_cache" in out
    assert "\x1b[" not in out  # captured stdout is not a terminal: no colour


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{ nope", "not valid JSON"),
        ('{"hello": "world"}', "not an unstall report"),
        ('{"version": 1, "stalls": [{"start_s": 1}]}', "malformed unstall report"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    assert main([str(path), "--html", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("unstall report: ")
    assert message in err
    assert not (tmp_path / "out.html").exists()


def test_unwritable_output_is_one_line_and_exit_2(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-dir" / "t.html"
    assert main([str(saved), "--html", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"unstall report: cannot write {str(target)!r}: No such file or directory\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FILE.json" in err


def test_through_the_unstall_command(saved: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, "-m", "unstall", "report", str(saved), "--trace", str(trace)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(trace.read_text())["displayTimeUnit"] == "ms"
    bad = subprocess.run(
        [sys.executable, "-m", "unstall", "report", str(tmp_path / "absent.json")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("unstall report: cannot read")
