"""``unstall run``: transparent to the program, watches its loops, reports at every kind of exit.

Every transparency test runs the same program twice, with ``python`` and with
``python -m unstall run``, in real subprocesses, and compares what the program saw and did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest

import helpers
from helpers import child_env, run_python
from unstall import Frame, Report, Stall
from unstall._cli.run import Options, Session, UsageError, parse_args
from unstall._report.summary import hang_worth_a_line

PY = sys.executable


def run_unstall(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m unstall run ARGS``."""
    return helpers.run_unstall(["run", *args], cwd)


def split_report(stderr: str) -> tuple[str, str]:
    """The program's own stderr, and what unstall printed at the end."""
    index = max(stderr.find("unstall: the "), stderr.find("unstall: no asyncio event loop ran"))
    assert index >= 0, f"no unstall summary in stderr:\n{stderr}"
    return stderr[:index], stderr[index:]


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


def assert_same_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with python and under unstall; same stdout, stderr and exit status."""
    plain = run_python(args, cwd)
    watched = run_unstall(args, cwd)
    assert watched.returncode == plain.returncode, watched.stderr
    assert watched.stdout == plain.stdout
    own, summary = split_report(watched.stderr)
    assert own == plain.stderr
    assert summary.startswith("unstall: no asyncio event loop ran, so nothing stalled (watched ")
    assert summary.count("\n") == 1  # one line, nothing else from unstall
    return watched


# --- argument parsing ---------------------------------------------------------------------------


def test_options_after_the_script_belong_to_the_script() -> None:
    opts = parse_args(["--threshold", "0.5", "--json", "r.json", "app.py", "--json", "x", "-m"])
    assert opts == Options(
        threshold=0.5, json="r.json", script="app.py", args=["--json", "x", "-m"]
    )


def test_module_form_and_inline_values() -> None:
    opts = parse_args(["--threshold=0.2", "--quiet", "-m", "pkg.mod", "--quiet", "a"])
    assert opts is not None
    assert (opts.threshold, opts.quiet, opts.module, opts.args) == (
        0.2,
        True,
        "pkg.mod",
        ["--quiet", "a"],
    )
    opts = parse_args(["-mhttp.server", "8000"])
    assert opts is not None
    assert (opts.module, opts.args) == ("http.server", ["8000"])
    opts = parse_args(["--", "-weird-name.py", "x"])
    assert opts is not None
    assert (opts.script, opts.args) == ("-weird-name.py", ["x"])
    assert parse_args(["--help"]) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no script or -m module given"),
        (["--threshold", "-1", "a.py"], "positive number"),
        (["--threshold", "0", "a.py"], "positive number"),
        (["--threshold", "nan", "a.py"], "positive number"),
        (["--threshold", "soon", "a.py"], "must be a number of seconds, not 'soon'"),
        (["--threshold"], "--threshold needs a value"),
        (["--frobnicate", "a.py"], "unknown option '--frobnicate'"),
        (["-m"], "-m needs a module name"),
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(argv)


def test_live_lines_of_a_long_hang_thin_out() -> None:
    here = Frame("/app.py", 3, "f", "time.sleep(600)")
    hang = Stall(1.0, 0.1, "MainThread", 1, "loop", culprit=here, ongoing=True)
    printed, previous = [], None
    for second in range(200):
        stall = hang.with_updates(duration_s=0.1 + second)
        if hang_worth_a_line(previous, stall):
            printed.append(round(stall.duration_s, 1))
        previous = stall
    assert printed == [0.1, 1.1, 2.1, 5.1, 10.1, 20.1, 30.1, 60.1, 120.1, 180.1]
    moved = stall.with_updates(duration_s=stall.duration_s + 1, culprit=Frame("/app.py", 9, "g"))
    assert hang_worth_a_line(stall, moved)
    assert hang_worth_a_line(stall, hang.with_updates(start_s=50.0))  # another hang


def test_a_live_hang_is_in_the_report_once_until_it_ends() -> None:
    session = Session(Options(quiet=True, script="app.py"), ["app.py"])  # a real watcher
    try:
        hang = Stall(
            1.0, 2.0, "MainThread", 1, "loop@1", culprit=Frame("/app.py", 3, "f"), ongoing=True
        )
        session._on_hang(hang)
        assert session.report().stalls == [hang]
        session._on_hang(hang.with_updates(duration_s=3.0))
        assert [s.duration_s for s in session.report().stalls] == [3.0]
        session._on_stall(hang.with_updates(duration_s=3.5, ongoing=False))
        assert session.report().stalls == []  # finished: the watcher's own list has it now
        assert session.report().argv == ["app.py"]
    finally:
        session.watcher.stop()


def test_exit_never_waits_forever_on_a_stuck_watcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import unstall._cli.run as runner

    monkeypatch.setattr(runner, "_STUCK_S", 0.2)
    session = Session(Options(quiet=True, script="app.py"), ["app.py"])
    real_stop, release = session.watcher.stop, threading.Event()
    monkeypatch.setattr(session.watcher, "stop", lambda: release.wait(30))  # a fault: stuck
    try:
        started = time.monotonic()
        session.finish()
        assert time.monotonic() - started < 10
        err = capsys.readouterr().err
        assert "the watcher did not stop within 0.2 s; partial report" in err
        assert "unstall: no asyncio event loop ran" in err  # the summary still came
    finally:
        release.set()
        real_stop()


# --- bad input on the command line: one line, exit 2 ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.py"], "can't open file"),
        (["-m", "no_such_module_here"], "no module named no_such_module_here"),
        (["-m", "pkg_without_main"], "'pkg_without_main' is a package and cannot be run"),
        (["-m", "no_such_pkg.sub"], "no_such_pkg"),
        (["empty_dir"], "can't find '__main__' module in 'empty_dir'"),
        (["--threshold", "-0.5", "ok.py"], "--threshold must be a positive number"),
        (["--threshold", "fast", "ok.py"], "--threshold must be a number of seconds"),
        (["--verbose", "ok.py"], "unknown option '--verbose'"),
        (["--json", "no/such/dir/r.json", "ok.py"], "cannot write --json 'no/such/dir/r.json'"),
        (["--json", "a_dir", "ok.py"], "cannot write --json 'a_dir': it is a directory"),
        (["--json", "/proc/r.json", "ok.py"], "cannot write --json"),
        (["--html", "no/such/dir/r.html", "ok.py"], "does not exist"),
        (["--trace", "a_dir", "ok.py"], "cannot write --trace 'a_dir'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write(tmp_path / "ok.py", "print('ran')\n")
    write(tmp_path / "pkg_without_main" / "__init__.py", "")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "a_dir").mkdir()
    proc = run_unstall(args, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""  # the program never ran
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unstall run: ")
    assert message in lines[0]


def test_unwritable_json_path_is_refused_before_the_program_runs(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/report.json"  # even root cannot create files there
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "report.json")
    write(tmp_path / "ok.py", "print('ran')\n")
    proc = run_unstall(["--json", target, "ok.py"], tmp_path)
    assert proc.returncode == 2
    assert "ran" not in proc.stdout
    assert proc.stderr.startswith("unstall run: cannot write --json ")
    assert proc.stderr.count("\n") == 1


# --- transparency --------------------------------------------------------------------------------

PROBE = """\
import json, os, pickle, sys

class Point:
    def __init__(self, x):
        self.x = x

seen = {
    "argv": sys.argv,
    "path0": sys.path[0],
    "name": __name__,
    "file": __file__,
    "package": __package__,
    "spec": None if __spec__ is None else __spec__.name,
    "cached": globals().get("__cached__"),
    "main_is_me": sys.modules["__main__"].__dict__ is globals(),
    "pickled": pickle.loads(pickle.dumps(Point(3))).x,
}
print(json.dumps(seen))
print("to stderr", file=sys.stderr)
"""


def test_script_sees_what_python_gives_it(tmp_path: Path) -> None:
    write(tmp_path / "app" / "probe.py", PROBE)
    args = ["app/probe.py", "--json", "x.json", "-m", "--quiet", "--", "é"]
    watched = assert_same_run(args, tmp_path)
    seen = json.loads(watched.stdout)
    assert seen["argv"] == args
    assert seen["path0"] == str(tmp_path / "app")
    assert seen["name"] == "__main__"
    assert seen["file"] == str(tmp_path / "app" / "probe.py")
    assert (seen["package"], seen["spec"], seen["cached"]) == (None, None, None)
    assert seen["main_is_me"] is True
    assert seen["pickled"] == 3
    assert not (tmp_path / "x.json").exists()  # the script's --json was not ours


def test_safe_path_flag_adds_no_directory_like_python(tmp_path: Path) -> None:
    write(tmp_path / "app" / "probe.py", PROBE)
    plain = run_python(["-P", "app/probe.py"], tmp_path)
    watched = subprocess.run(
        [PY, "-P", "-m", "unstall", "run", "app/probe.py"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert watched.stdout == plain.stdout
    assert json.loads(watched.stdout)["path0"] != str(tmp_path / "app")


def test_script_through_a_symlink_gets_the_real_directory(tmp_path: Path) -> None:
    write(tmp_path / "real" / "probe.py", PROBE)
    (tmp_path / "link.py").symlink_to(tmp_path / "real" / "probe.py")
    watched = assert_same_run(["link.py"], tmp_path)
    assert json.loads(watched.stdout)["path0"] == str(tmp_path / "real")


def test_module_sees_what_python_dash_m_gives_it(tmp_path: Path) -> None:
    write(tmp_path / "tools" / "__init__.py", "")
    write(tmp_path / "tools" / "probe.py", PROBE)
    watched = assert_same_run(["-m", "tools.probe", "a", "--b"], tmp_path)
    seen = json.loads(watched.stdout)
    assert seen["argv"] == [str(tmp_path / "tools" / "probe.py"), "a", "--b"]
    assert seen["path0"] == str(tmp_path)
    assert (seen["name"], seen["package"], seen["spec"]) == ("__main__", "tools", "tools.probe")
    assert seen["pickled"] == 3


def test_package_with_dunder_main(tmp_path: Path) -> None:
    write(tmp_path / "tool" / "__init__.py", "")
    write(tmp_path / "tool" / "__main__.py", PROBE)
    seen = json.loads(assert_same_run(["-m", "tool", "x"], tmp_path).stdout)
    assert seen["spec"] == "tool.__main__"
    assert seen["argv"] == [str(tmp_path / "tool" / "__main__.py"), "x"]


def test_directory_and_zip_with_dunder_main(tmp_path: Path) -> None:
    write(tmp_path / "appdir" / "__main__.py", PROBE)
    seen = json.loads(assert_same_run(["appdir", "1"], tmp_path).stdout)
    assert (seen["argv"], seen["path0"]) == (["appdir", "1"], str(tmp_path / "appdir"))
    with zipfile.ZipFile(tmp_path / "app.pyz", "w") as zf:
        zf.writestr("__main__.py", PROBE)
    seen = json.loads(assert_same_run(["app.pyz"], tmp_path).stdout)
    assert seen["path0"] == "app.pyz" or seen["path0"].endswith("app.pyz")


def test_multiprocessing_spawn_can_import_main_functions(tmp_path: Path) -> None:
    write(
        tmp_path / "mp.py",
        """\
        import multiprocessing

        def square(x):
            return x * x

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print(pool.map(square, [1, 2, 3]))
        """,
    )
    assert assert_same_run(["mp.py"], tmp_path).stdout == "[1, 4, 9]\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("print('done')", 0),
        ("import sys; sys.exit(3)", 3),
        ("raise SystemExit", 0),
        ("import sys; sys.exit('bye: something went wrong')", 1),
        ("import os, sys; print('partial', flush=True); os._exit(7)", 7),
        ("def inner():\n    raise ValueError('bad value')\n\ninner()", 1),
        ("import sys\nsys.excepthook = lambda *a: print('custom hook', a[0].__name__)\n1/0", 1),
        ("raise RuntimeError('outer') from KeyError('inner')", 1),
    ],
)
def test_exit_status_output_and_traceback_match_python(
    tmp_path: Path, body: str, code: int
) -> None:
    write(
        tmp_path / "prog.py", "import atexit\natexit.register(print, 'user atexit')\n" + body + "\n"
    )
    plain = run_python(["prog.py"], tmp_path)
    assert plain.returncode == code
    if "os._exit" in body:  # no atexit at all: nothing to add, nothing to lose
        watched = run_unstall(["prog.py"], tmp_path)
        assert (watched.returncode, watched.stdout) == (7, plain.stdout)
        return
    watched = assert_same_run(["prog.py"], tmp_path)
    assert "unstall" not in split_report(watched.stderr)[0]  # no frame of ours in a traceback


def test_syntax_error_is_reported_like_python(tmp_path: Path) -> None:
    write(tmp_path / "broken.py", "def f(:\n    pass\n")
    plain = run_python(["broken.py"], tmp_path)
    watched = run_unstall(["broken.py"], tmp_path)
    assert watched.returncode == plain.returncode == 1
    assert watched.stderr == plain.stderr
    assert "SyntaxError" in watched.stderr


def test_uncaught_keyboard_interrupt_ends_by_sigint_like_python(tmp_path: Path) -> None:
    write(tmp_path / "ki.py", "raise KeyboardInterrupt\n")
    plain = run_python(["ki.py"], tmp_path)
    watched = run_unstall(["ki.py"], tmp_path)
    assert watched.returncode == plain.returncode == -signal.SIGINT
    own, summary = split_report(watched.stderr)
    assert own == plain.stderr
    assert summary.startswith("unstall: no asyncio event loop ran")


def test_report_goes_to_the_real_stderr_even_if_the_program_replaces_it(tmp_path: Path) -> None:
    write(tmp_path / "quiet.py", "import io, sys\nsys.stderr = io.StringIO()\nprint('ok')\n")
    proc = run_unstall(["quiet.py"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == "ok\n"
    assert proc.stderr.startswith("unstall: no asyncio event loop ran")
    write(tmp_path / "none.py", "import sys\nsys.stderr = None\n")
    assert run_unstall(["none.py"], tmp_path).stderr.startswith(
        "unstall: no asyncio event loop ran"
    )


def test_help(tmp_path: Path) -> None:
    proc = run_unstall(["--help"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: unstall run")
    assert "--threshold" in proc.stdout


# --- watching ------------------------------------------------------------------------------------

BLOCKER = """\
import asyncio, sys, time

def slow_function(seconds):
    time.sleep(seconds)

async def blocked():
    slow_function(float(sys.argv[1]))

async def ticker():
    for _ in range(3):
        await asyncio.sleep(0.01)

async def main():
    await asyncio.gather(blocked(), ticker())

asyncio.run(main())
print("program done")
"""


def test_summary_and_json_name_the_blocking_line(tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", BLOCKER + "import sys; sys.exit(3)\n")
    proc = run_unstall(["--json", "report.json", "app.py", "0.5"], tmp_path)
    assert proc.returncode == 3
    assert proc.stdout == "program done\n"
    line = line_of(app, "time.sleep(seconds)")
    _, summary = split_report(proc.stderr)
    assert f"app.py:{line} in slow_function" in summary
    assert f"{line} | time.sleep(seconds)" in summary
    assert "call: time.sleep" in summary
    assert "await unstall.to_thread(" in summary
    report = Report.read(tmp_path / "report.json")
    # (a busy CI machine may add a pause with no frame of the program: not counted here)
    stalls = [s for s in report.stalls if s.culprit is not None]
    assert len(stalls) == 1
    stall = stalls[0]
    assert stall.culprit is not None
    assert (stall.culprit.file, stall.culprit.line) == (str(app), line)
    assert stall.culprit.function == "slow_function"
    assert stall.call == "time.sleep"
    assert 0.4 <= stall.duration_s < 3.0
    assert stall.ongoing is False
    assert report.argv == ["app.py", "0.5"]
    assert stall.stack[0].file == str(app)  # the program's <module> first: no start-up frames
    assert stall.stack[0].function == "<module>"
    assert stall.stack[-1] == stall.culprit or stall.stack[-1].function == "slow_function"
    assert report.threshold_s == 0.1
    raw = json.loads((tmp_path / "report.json").read_text())
    assert {"version", "threshold_s", "stalls"} <= raw.keys()


def test_json_is_written_when_the_program_raises(tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", BLOCKER + "raise RuntimeError('after the stall')\n")
    proc = run_unstall(["--json", "r.json", "app.py", "0.3"], tmp_path)
    assert proc.returncode == 1
    assert "RuntimeError: after the stall" in proc.stderr
    stalls = Report.read(tmp_path / "r.json").stalls
    assert [s.culprit.line for s in stalls if s.culprit] == [line_of(app, "time.sleep(seconds)")]


def test_threshold_option_filters_short_blocks(tmp_path: Path) -> None:
    write(tmp_path / "app.py", BLOCKER)
    proc = run_unstall(["--threshold", "2", "--json", "r.json", "app.py", "0.3"], tmp_path)
    assert proc.returncode == 0
    assert "never stalled above 2.00 s" in proc.stderr
    assert Report.read(tmp_path / "r.json").stalls == []


def test_live_lines_during_a_hang_and_quiet_hides_them(tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", BLOCKER)
    line = line_of(app, "time.sleep(seconds)")
    loud = run_unstall(["app.py", "1.3"], tmp_path)
    live = [text for text in loud.stderr.splitlines() if "stuck for" in text]
    assert live, loud.stderr
    assert live[0].startswith("unstall: loop in MainThread stuck for ")
    # the first line may come before the first stack sample; by a second in, it has the line
    assert live[-1].endswith(f"at app.py:{line} in slow_function: time.sleep(seconds)")
    quiet = run_unstall(["--quiet", "app.py", "1.3"], tmp_path)
    assert "stuck for" not in quiet.stderr
    assert f"app.py:{line} in slow_function" in quiet.stderr


HANG_THEN_EXIT = """\
import asyncio, os, threading, time

def stuck_forever():
    time.sleep(60)

async def main():
    stuck_forever()

threading.Timer(float(os.environ.get("KILL_AFTER", "2.5")), os._exit, args=(9,)).start()
asyncio.run(main())
"""


@pytest.mark.slow
def test_os_exit_during_a_hang_leaves_a_json_naming_the_line(tmp_path: Path) -> None:
    app = write(tmp_path / "hang.py", HANG_THEN_EXIT)
    proc = run_unstall(["--json", "r.json", "hang.py"], tmp_path)
    assert proc.returncode == 9
    assert "stuck for" in proc.stderr  # the live line came before the end
    ongoing = [s for s in Report.read(tmp_path / "r.json").stalls if s.ongoing]
    assert len(ongoing) == 1
    stall = ongoing[0]
    assert stall.culprit is not None
    assert (stall.culprit.line, stall.culprit.function) == (
        line_of(app, "time.sleep(60)"),
        "stuck_forever",
    )
    assert stall.duration_s >= 0.1


def test_finished_stalls_reach_the_json_before_an_os_exit(tmp_path: Path) -> None:
    app = write(
        tmp_path / "app.py",
        """\
        import asyncio, os, time

        def blocking_step():
            time.sleep(0.3)

        async def main():
            blocking_step()
            await asyncio.sleep(2.0)  # the JSON is rewritten within about a second
            os._exit(5)

        asyncio.run(main())
        """,
    )
    proc = run_unstall(["--quiet", "--json", "r.json", "app.py"], tmp_path)
    assert proc.returncode == 5
    assert "unstall: the" not in proc.stderr  # os._exit: no summary, as no atexit runs
    stalls = Report.read(tmp_path / "r.json").stalls
    assert [s.culprit.line for s in stalls if s.culprit] == [line_of(app, "time.sleep(0.3)")]


HANG_BY_HAND = """\
import asyncio, time

def stuck_forever():
    time.sleep(60)

async def handler():
    stuck_forever()

loop = asyncio.new_event_loop()
loop.run_until_complete(handler())
"""

# asyncio.run's first Ctrl-C only cancels the main task (the sleep goes on); the second
# raises KeyboardInterrupt where the loop is stuck.
HANG_IN_ASYNCIO_RUN = HANG_BY_HAND.replace(
    "loop = asyncio.new_event_loop()\nloop.run_until_complete(handler())", "asyncio.run(handler())"
)


def _interrupt_during_hang(args: list[str], cwd: Path, presses: int) -> tuple[int, str]:
    """Start ``args``, press Ctrl-C ``presses`` times once the hang is under way."""
    env = {**child_env(), "PYTHONFAULTHANDLER": "1"}  # SIGABRT on a hang dumps every stack
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    stream = proc.stderr
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(stream.readline, "")))
    reader.start()
    try:
        if "unstall" in args:
            _wait_for_line(err, "stuck for", proc, timeout=30)
        else:
            time.sleep(1.0)  # plain python says nothing: give it the same head start
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            reader.join()
            pytest.fail("still running 30 s after Ctrl-C; stacks:\n" + "".join(err))
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join()
    return proc.returncode, "".join(err)


def _wait_for_line(
    stream: list[str], needle: str, proc: subprocess.Popen[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in text for text in stream):
        assert proc.poll() is None, "".join(stream)
        assert time.monotonic() < deadline, "".join(stream)
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "presses"),
    [(HANG_BY_HAND, 1), (HANG_IN_ASYNCIO_RUN, 2)],
    ids=["by-hand", "asyncio.run"],
)
def test_ctrl_c_during_a_hang_interrupts_the_program_and_prints_the_report(
    tmp_path: Path, source: str, presses: int
) -> None:
    app = write(tmp_path / "hang.py", source)
    plain_code, plain_err = _interrupt_during_hang([PY, "hang.py"], tmp_path, presses)
    code, stderr = _interrupt_during_hang(
        [PY, "-m", "unstall", "run", "--json", "r.json", "hang.py"], tmp_path, presses
    )
    assert code == plain_code == -signal.SIGINT  # python ends on an uncaught Ctrl-C by SIGINT
    assert plain_err.rstrip().endswith("KeyboardInterrupt")
    line = line_of(app, "time.sleep(60)")
    own, summary = split_report(stderr)
    assert own.rstrip().endswith("KeyboardInterrupt")
    assert f"hang.py:{line} in stuck_forever" in summary
    stalls = Report.read(tmp_path / "r.json").stalls
    assert [s.culprit.line for s in stalls if s.culprit] == [line]


def test_every_kind_of_loop_is_watched_without_code_change(tmp_path: Path) -> None:
    pytest.importorskip("uvloop", reason="uvloop is part of the test extras")
    app = write(
        tmp_path / "threads.py",
        """\
        import asyncio, threading, time
        import uvloop

        def in_worker_thread():
            time.sleep(0.4)

        def in_uvloop():
            time.sleep(0.3)

        async def worker():
            in_worker_thread()

        async def healthy():
            for _ in range(20):
                await asyncio.sleep(0.01)

        thread = threading.Thread(target=asyncio.run, args=(worker(),), name="worker-thread")
        thread.start()
        asyncio.run(healthy())
        thread.join()

        async def on_uvloop():
            in_uvloop()

        uvloop.run(on_uvloop())

        import anyio

        def in_anyio():
            time.sleep(0.2)

        async def on_anyio():
            in_anyio()

        anyio.run(on_anyio)

        def in_runner():
            time.sleep(0.2)

        async def on_runner():
            in_runner()

        with asyncio.Runner() as runner:
            runner.run(on_runner())

        def in_hand_made_loop():
            time.sleep(0.2)

        async def on_hand_made_loop():
            in_hand_made_loop()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(on_hand_made_loop())
        loop.close()
        """,
    )
    proc = run_unstall(["--json", "r.json", "threads.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stalls = Report.read(tmp_path / "r.json").stalls
    found = {(s.thread, s.culprit.function if s.culprit else None) for s in stalls}
    assert {
        ("worker-thread", "in_worker_thread"),
        ("MainThread", "in_uvloop"),
        ("MainThread", "in_anyio"),
        ("MainThread", "in_runner"),
        ("MainThread", "in_hand_made_loop"),
    } <= found
    assert not any(f == "healthy" for _, f in found)
    assert f"threads.py:{line_of(app, 'time.sleep(0.4)')} in in_worker_thread" in proc.stderr


SERVER = """\
import sys, time
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

def load_report():
    time.sleep(0.3)
    return "report"

async def report(request):
    return PlainTextResponse(load_report())

app = Starlette(routes=[Route("/report", report)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_real_uvicorn_server_stopped_by_ctrl_c(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx", reason="httpx is part of the test extras")
    app = write(tmp_path / "server.py", SERVER)
    port = _free_port()
    proc = subprocess.Popen(
        [PY, "-m", "unstall", "run", "--json", "r.json", "server.py", str(port)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/report").text == "report"
                break
            except httpx.TransportError:
                assert proc.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/report").text == "report"
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly, as under python
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    line = line_of(app, "time.sleep(0.3)")
    assert f"server.py:{line} in load_report" in stderr
    assert "Traceback" not in stderr
    stalls = [s for s in Report.read(tmp_path / "r.json").stalls if s.culprit]
    assert [(s.culprit.function, s.culprit.line) for s in stalls] == [("load_report", line)] * 2


def test_trace_output_is_written(tmp_path: Path) -> None:
    write(tmp_path / "app.py", BLOCKER)
    proc = run_unstall(["--trace", "t.json", "app.py", "0.3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    trace = json.loads((tmp_path / "t.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert any(e.get("ph") == "X" and "slow_function" in e.get("name", "") for e in events)


def test_html_output_is_written(tmp_path: Path) -> None:
    write(tmp_path / "app.py", BLOCKER)
    proc = run_unstall(["--html", "r.html", "app.py", "0.3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "slow_function" in page


def test_strict_option_warns_about_blocking_calls_below_the_threshold(tmp_path: Path) -> None:
    app = write(tmp_path / "app.py", BLOCKER)
    proc = run_unstall(["--strict", "app.py", "0.02"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "program done\n"
    assert "BlockingCallWarning" in proc.stderr
    warning = next(text for text in proc.stderr.splitlines() if "BlockingCallWarning" in text)
    assert f"app.py:{line_of(app, 'time.sleep(seconds)')}" in warning
    assert "time.sleep" in warning
    assert "never stalled above 0.10 s" in proc.stderr  # too short for the watcher, not for strict


def test_forked_child_does_not_print_the_parents_report(tmp_path: Path) -> None:
    write(
        tmp_path / "forks.py",
        """\
        import os, sys
        pid = os.fork()
        if pid == 0:
            print("child", flush=True)
            sys.exit(0)  # a normal exit: atexit hooks run in the child too
        os.waitpid(pid, 0)
        print("parent")
        """,
    )
    proc = run_unstall(["forks.py"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == "child\nparent\n"
    assert proc.stderr.count("unstall: no asyncio event loop ran") == 1


def test_the_console_script_is_transparent_too(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("unstall")
    assert script.exists(), "the package is installed with its `unstall` command in development"
    write(tmp_path / "probe.py", PROBE)
    plain = run_python(["probe.py", "x"], tmp_path)
    watched = subprocess.run(
        [str(script), "run", "probe.py", "x"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert watched.returncode == plain.returncode == 0
    assert watched.stdout == plain.stdout
    assert json.loads(watched.stdout)["path0"] == str(tmp_path)
