"""The HTML timeline: escaping and structure in Python, drawing in a real headless Chromium.

The Chromium tests dump the DOM after the page's script ran (``--dump-dom``) and read
what it drew: one ``<rect data-stall=N>`` per stall, one lag line per loop, and the
``data-rendered`` / ``data-errors`` attributes the script sets on ``<body>``. Console
output is read from Chromium's log on stderr: the page must print nothing.

Set ``UNSTALL_TIMELINE_PNG=docs/timeline.png`` to refresh the README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from report_samples import (
    HOSTILE,
    empty_report,
    hostile_report,
    many_stalls_report,
    realistic_report,
    watched_report,
)
from unstall import Frame, Report, Stall
from unstall._report.format import format_duration, short_path
from unstall._report.html import MAX_LAG_POINTS, _downsample, render_html, write_html

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


# ---------------------------------------------------------------- pure Python


def _embedded_data(page: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="unstall-data">(.*?)</script>', page, re.S
    )
    assert match, "no embedded data element"
    return json.loads(match.group(1))


def test_embedded_json_cannot_close_its_script_element() -> None:
    page = render_html(hostile_report())
    raw = re.search(r'id="unstall-data">(.*?)</script>', page, re.S)
    assert raw
    assert "<" not in raw.group(1)
    assert "&" not in raw.group(1)
    data = _embedded_data(page)
    assert data["stalls"][0]["task"] == f"task {HOSTILE}"
    assert data["meta"]["argv"] == [HOSTILE]


def test_hostile_strings_are_escaped_in_static_html() -> None:
    page = render_html(hostile_report())
    # exactly the page's own two script elements, and no injected markup
    assert page.count("<script") == 2
    assert "<img" not in page
    assert "fn_&lt;/script&gt;&lt;script&gt;alert(&#x27;x&#x27;)" in page


def test_page_is_self_contained() -> None:
    page = render_html(realistic_report())
    urls = set(re.findall(r"https?://[^\s\"')]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(link|img|iframe)\b", page)
    assert "<style>" in page
    assert "@import" not in page


def test_culprit_table_groups_with_counts_totals_and_fix_hints() -> None:
    page = render_html(realistic_report())
    rows = re.findall(r'<tr data-group="(\d+)".*?</tr>', page, re.S)
    assert rows == [str(i) for i in range(5)]
    first = re.search(r'<tr data-group="0".*?</tr>', page, re.S)
    assert first
    text = first.group(0)
    # the hang's culprit has the most total time: 1.4 s + 5.5 s
    assert "refresh_cache" in text
    assert "6.90 s" in text
    assert "5.50 s" in text
    assert "hang" in text
    assert "unstall.to_thread(refresh_cache" in text
    assert "with self._lock:" in text


def test_header_states_counts_and_the_hang() -> None:
    page = render_html(realistic_report())
    assert "<title>unstall: 14 stalls in app/main.py --port 8000</title>" in page
    assert 'class="stat hang"' in page
    assert "still blocked at the end" in page
    assert 'class="stat hang"' not in render_html(empty_report())


def test_payload_links_stalls_to_lanes_groups_and_frames() -> None:
    report = realistic_report()
    data = _embedded_data(render_html(report))
    assert [lane["thread"] for lane in data["lanes"]] == ["MainThread", "loop-worker"]
    for stall, item in zip(report.stalls, data["stalls"], strict=True):
        assert data["lanes"][item["lane"]]["id"] == stall.loop
        assert [data["frames"][k]["function"] for k in item["stack"]] == [
            f.function for f in stall.stack
        ]
        assert item["i"] in data["groups"][item["group"]]
        assert item["fix"] == stall.fix_hint
    # frames are shared between stalls, not repeated
    assert len(data["frames"]) < sum(len(s.stack) for s in report.stalls) / 3


def test_stall_in_an_unlisted_loop_gets_its_own_lane() -> None:
    report = realistic_report()
    report.loops = report.loops[:1]
    data = _embedded_data(render_html(report))
    assert len(data["lanes"]) == 2
    assert data["lanes"][1]["thread"] == "loop-worker"


def test_downsampling_keeps_peaks() -> None:
    points = [(i / 100, 0.001) for i in range(20_000)]
    points[12_345] = (123.45, 7.5)
    kept = _downsample(points, MAX_LAG_POINTS)
    assert len(kept) <= MAX_LAG_POINTS
    assert [123.45, 7.5] in kept


def test_write_html_is_atomic_and_reports_unwritable_paths(tmp_path: Path) -> None:
    target = tmp_path / "t.html"
    write_html(realistic_report(), target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(OSError):
        write_html(realistic_report(), tmp_path / "no-such-dir" / "t.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.html"]


# ---------------------------------------------------------------- real Chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        message = (
            "chromium is not installed: the HTML timeline must be checked in a real browser "
            "(Debian: apt-get install chromium; .ci/run installs it)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@dataclass
class Dom(HTMLParser):
    """What the page's script drew, read from Chromium's DOM dump."""

    body: dict[str, str] = field(default_factory=dict)
    bars: dict[int, dict[str, str]] = field(default_factory=dict)
    lag_lines: int = 0
    timelines: int = 0
    svg_width: float = 0.0
    scripts: int = 0
    details: dict[str, str] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "script":
            self.scripts += 1
        elif tag == "svg" and "data-timeline" in a:
            self.timelines += 1
            self.svg_width = float(a["width"])
        elif tag == "rect" and "data-stall" in a:
            self.bars[int(a["data-stall"])] = a
        elif tag == "path" and "lag-line" in a.get("class", ""):
            self.lag_lines += 1
        elif a.get("id") == "details":
            self.details = a

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@dataclass
class Rendered:
    dom: Dom
    console: list[str]
    page: Path


def _chromium(
    binary: str, tmp_path: Path, url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def _render(
    binary: str, tmp_path: Path, page: str, *, fragment: str = "", width: int = 1280
) -> Rendered:
    path = tmp_path / "timeline.html"
    path.write_text(page, encoding="utf-8")
    proc = _chromium(
        binary, tmp_path, path.as_uri() + fragment, f"--window-size={width},900", "--dump-dom"
    )
    dom = Dom()
    dom.feed(proc.stdout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(dom, console, path)


def _assert_clean(r: Rendered) -> None:
    assert r.dom.body.get("data-errors") is None, r.dom.body["data-errors"]
    assert r.dom.body.get("data-rendered") == "ok"
    assert r.console == []


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_timeline_draws_every_stall_and_lane(chromium: str, tmp_path: Path) -> None:
    report = realistic_report()
    r = _render(chromium, tmp_path, render_html(report), fragment="#stall=11")
    _assert_clean(r)
    assert r.dom.timelines == 1
    assert r.dom.lag_lines == len(report.loops)
    assert sorted(r.dom.bars) == list(range(len(report.stalls)))
    assert all(b["data-visible"] == "1" for b in r.dom.bars.values())
    # the hang is drawn distinctly; widths follow durations
    assert r.dom.bars[12]["class"] == "bar sev-hang"
    assert r.dom.bars[11]["class"] == "bar sev-severe selected"
    assert r.dom.bars[0]["class"] == "bar sev-moderate"
    width = {i: float(b["width"]) for i, b in r.dom.bars.items()}
    assert width[11] > width[3] > width[0] > width[5]  # 4.2 s, 2.6 s, 0.42 s, 0.18 s
    # a link to a stall opens its details: culprit, fix hint and stack
    assert r.dom.details.get("data-selected") == "11"
    text = " ".join(r.dom.text)
    assert "render_invoice_pdf" in text
    assert "unstall.to_process" in text
    assert "stack, outermost call first (16 frames)" in text


def test_screenshot(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    write_html(realistic_report(), page)
    shot = tmp_path / "timeline.png"
    _chromium(
        chromium,
        tmp_path,
        page.as_uri() + "#stall=11",
        f"--screenshot={shot}",
        "--window-size=1280,900",
    )
    assert _png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 40_000  # a drawn page, not a blank one
    target = os.environ.get("UNSTALL_TIMELINE_PNG")
    if target:
        shutil.copyfile(shot, target)


def test_a_thousand_stalls(chromium: str, tmp_path: Path) -> None:
    r = _render(chromium, tmp_path, render_html(many_stalls_report(1000)))
    _assert_clean(r)
    assert len(r.dom.bars) == 1000
    assert all(float(b["width"]) >= 2 for b in r.dom.bars.values())


def test_no_stalls(chromium: str, tmp_path: Path) -> None:
    r = _render(chromium, tmp_path, render_html(empty_report()))
    _assert_clean(r)
    assert r.dom.bars == {}
    assert r.dom.lag_lines == 1
    assert "No stalls: every callback returned within 0.10 s." in " ".join(r.dom.text)


def test_nothing_recorded(chromium: str, tmp_path: Path) -> None:
    r = _render(chromium, tmp_path, render_html(Report(threshold_s=0.1)))
    _assert_clean(r)
    assert r.dom.timelines == 0
    assert "Nothing was recorded" in " ".join(r.dom.text)


def test_hostile_strings_stay_text(chromium: str, tmp_path: Path) -> None:
    r = _render(chromium, tmp_path, render_html(hostile_report()), fragment="#stall=0")
    _assert_clean(r)
    assert r.dom.scripts == 2  # nothing injected
    assert len(r.dom.bars) == 1
    assert f"coro {HOSTILE}" in " ".join(r.dom.text)


def test_narrow_window(chromium: str, tmp_path: Path) -> None:
    # headless Chromium lays out at least 500 px wide: a phone's 360 px is set on the body
    page = render_html(realistic_report()).replace(
        "</head>", "<style>body{width:360px}</style></head>"
    )
    r = _render(chromium, tmp_path, page, width=500)
    _assert_clean(r)
    assert len(r.dom.bars) == 14
    assert r.dom.svg_width <= 360 - 2 * 12


def test_a_script_error_is_caught_and_reported(chromium: str, tmp_path: Path) -> None:
    # a stall pointing at a lane that does not exist makes the drawing code throw
    page = render_html(realistic_report()).replace('"lane":1,', '"lane":7,', 1)
    r = _render(chromium, tmp_path, page)
    assert r.dom.body.get("data-rendered") == "error"
    assert r.dom.body.get("data-errors")


def test_a_real_watched_run(chromium: str, tmp_path: Path) -> None:
    report = watched_report()
    assert len(report.stalls) >= 2
    r = _render(chromium, tmp_path, render_html(report), fragment="#stall=worst")
    _assert_clean(r)
    assert sorted(r.dom.bars) == list(range(len(report.stalls)))
    assert r.dom.lag_lines == len(report.loops) >= 2
    assert r.dom.details.get("data-selected") is not None


_INTERACT = """<script>
(function () {
  const out = {};
  const bar = document.querySelector('rect[data-stall="3"]');
  bar.dispatchEvent(new PointerEvent("pointerenter"));
  const tip = document.querySelector(".tip");
  out.tip = tip.hidden ? null : tip.textContent;
  bar.dispatchEvent(new MouseEvent("click", { bubbles: true }));
  out.selected = document.getElementById("details").getAttribute("data-selected");
  out.details = document.getElementById("details").textContent;
  const more = document.querySelector("#details li.more button");
  out.collapsed = document.querySelectorAll("#details ol.stack:not(.samples) li").length;
  if (more) more.click();
  out.expanded = document.querySelectorAll("#details ol.stack:not(.samples) li").length;
  document.querySelector('tr[data-group="1"]').click();
  out.dimmed = document.querySelectorAll("rect.bar.dim").length;
  out.activeRows = document.querySelectorAll("tr.active").length;
  const svg = document.querySelector("svg[data-timeline]");
  const box = svg.getBoundingClientRect();
  const at = (type, x) => svg.dispatchEvent(new PointerEvent(type, {
    bubbles: true, button: 0, pointerId: 1, clientX: box.left + x, clientY: box.top + 60 }));
  const px = (f) => 56 + (box.width - 70) * f;  // the plot's left margin and width
  at("pointerdown", px(0.2));
  at("pointermove", px(0.3));
  at("pointerup", px(0.45));
  out.visibleAfterZoom = document.querySelectorAll('rect.bar[data-visible="1"]').length;
  out.resetShown = !document.getElementById("reset-zoom").hidden;
  document.getElementById("reset-zoom").click();
  out.visibleAfterReset = document.querySelectorAll('rect.bar[data-visible="1"]').length;
  document.body.setAttribute("data-test", JSON.stringify(out));
})();
</script></body>"""


def test_hover_click_table_and_zoom(chromium: str, tmp_path: Path) -> None:
    page = render_html(realistic_report()).replace("</body>", _INTERACT)
    r = _render(chromium, tmp_path, page)
    _assert_clean(r)
    out = json.loads(r.dom.body["data-test"])
    # stall 3: render_invoice_pdf, 2.6 s of CPU work in the main loop
    assert out["tip"].startswith("render_invoice_pdf2.60 s · cpu · reports.py:117")
    assert out["selected"] == "3"
    assert "CPU work: run it in a process" in out["details"]
    assert out["collapsed"] < out["expanded"] == 16  # the deep stack unfolds
    # table row 1 is render_invoice_pdf's group: its 2 stalls stay lit, 12 are dimmed
    assert out["activeRows"] == 1
    assert out["dimmed"] == 12
    # dragging over 20%..45% of 30 s keeps the 5 stalls overlapping 6 s..13.5 s
    assert out["visibleAfterZoom"] == 5
    assert out["resetShown"] is True
    assert out["visibleAfterReset"] == 14


def test_stall_without_culprit_or_stack(chromium: str, tmp_path: Path) -> None:
    # e.g. C code with no Python frame of the program: the page must still explain it
    bare = Stall(start_s=0.2, duration_s=0.5, thread="MainThread", thread_id=1, loop="L")
    report = Report(threshold_s=0.1, stalls=[bare], duration_s=1.0)
    page = render_html(report)
    assert "no frame of your code" in page
    r = _render(chromium, tmp_path, page, fragment="#stall=0")
    _assert_clean(r)
    assert list(r.dom.bars) == [0]
    assert r.dom.details.get("data-selected") == "0"
    assert "stack, outermost call first (0 frames)" in " ".join(r.dom.text)


# Around every boundary of format_duration: the page's script must write the same text.
_DURATIONS = [0.005, 0.05, 0.0994, 0.0996, 0.1, 0.25, 0.999, 3.1, 59.99, 59.996, 60.0, 62.5]
_DURATIONS += [65.0, 3599.4, 3599.6, 3600.0, 3725.0, 7199.0]


def test_the_script_formats_durations_and_paths_as_python_does(
    chromium: str, tmp_path: Path
) -> None:
    installed = Frame("/venv/lib/python3.12/site-packages/httpx/_client.py", 9, "send")
    mine = Frame(str(Path.cwd() / "app" / "views.py"), 7, "handler")
    start, stalls = 1.0, []
    for i, duration in enumerate(_DURATIONS):
        stalls.append(
            Stall(start, duration, "MainThread", 1, "L", culprit=mine, stack=(mine, installed))
        )
        start += duration + 1.0
    report = Report(threshold_s=0.005, stalls=stalls, duration_s=start)
    r = _render(chromium, tmp_path, render_html(report), fragment="#stall=0")
    _assert_clean(r)
    drawn = {
        i: bar["aria-label"].rpartition(" blocked the loop for ")[2]
        for i, bar in r.dom.bars.items()
    }
    assert drawn == {i: format_duration(d) for i, d in enumerate(_DURATIONS)}
    text = " ".join(r.dom.text)
    assert f"{short_path(mine.file)}:7" in text  # the stack in the details panel
    assert "httpx/_client.py:9" in text
    assert "threshold 0.005 s" in text
