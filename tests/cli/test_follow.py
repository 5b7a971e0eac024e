"""``unstall run`` follows every Python process the program starts (issue 18).

Real servers (uvicorn ``--workers``, gunicorn with uvicorn's worker), real
``multiprocessing`` pools and subprocesses; each run's temporary directory is pointed at
the test's own folder (``TMPDIR``) so the test can see that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import SLACK_S, child_env

PY = sys.executable
ROUTE_LINE = 8  # the time.sleep line of APP below

APP = """\
    import time
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route


    async def slow(request):
        time.sleep(0.15)  # the route's blocking line
        return PlainTextResponse("slow")


    async def ready(request):
        return PlainTextResponse("ready")


    app = Starlette(routes=[Route("/slow", slow), Route("/ready", ready)])
"""

POOL = """\
    import asyncio
    import multiprocessing
    import sys
    import time


    async def job(i):
        time.sleep(0.15)  # the task's blocking line
        return i


    def task(i):
        return asyncio.run(job(i))


    if __name__ == "__main__":
        with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
            print(pool.map(task, range(4), chunksize=1))
"""
POOL_LINE = 8


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def in_a_spawned_child(source: str, show: str) -> str:
    """``source`` (defining ``task``) run in a spawned child; the parent prints ``p.<show>``."""
    main = f"""
        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=task)
            p.start()
            p.join()
            print(p.{show})
        """
    return textwrap.dedent(source) + textwrap.dedent(main)


def env_for(tmp_path: Path) -> dict[str, str]:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return child_env(TMPDIR=str(temp))


def left_behind(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "tmp").rglob("*"))


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [PY, "-m", "unstall", "run", "--json", "r.json", *args],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((tmp_path / "r.json").read_text())


def at_line(report: dict[str, Any], file: Path, line: int) -> list[dict[str, Any]]:
    return [
        s
        for s in report["stalls"]
        if s["culprit"] and s["culprit"]["file"] == str(file) and s["culprit"]["line"] == line
    ]


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVERS = {
    "uvicorn": ["-m", "uvicorn", "app:app", "--workers", "2", "--host", "127.0.0.1"],
    "gunicorn": ["-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "app:app"],
}


@pytest.fixture
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``unstall run`` serving APP with two worker processes; killed in any case."""
    kind = request.param
    write(tmp_path / "app.py", APP)
    port = free_port()
    where = ["--port", str(port)] if kind == "uvicorn" else ["-b", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [PY, "-m", "unstall", "run", "--json", "r.json", *SERVERS[kind], *where],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as Ctrl-C would
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 6 * SLACK_S
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"], indirect=True)
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_every_request_blocking_a_worker_is_one_stall_in_the_report(
    server: tuple[subprocess.Popen[str], str], how: str, tmp_path: Path
) -> None:
    proc, url = server
    for _ in range(4):
        assert httpx.get(f"{url}/slow", timeout=SLACK_S).text == "slow"
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)  # to the main process only, as a supervisor does
    else:
        os.killpg(proc.pid, signal.SIGINT)  # to the whole group, as a terminal does
    _, stderr = proc.communicate(timeout=6 * SLACK_S)
    report = json.loads((tmp_path / "r.json").read_text())
    stalls = at_line(report, tmp_path / "app.py", ROUTE_LINE)
    assert len(stalls) == 4, stderr
    processes = {p["pid"]: p["role"] for p in report["processes"]}
    main = report["processes"][0]
    assert main["role"] == "main"
    for stall in stalls:
        assert stall["pid"] != main["pid"]
        assert processes[stall["pid"]] == stall["process"]
        assert stall["process"].startswith(("uvicorn worker", "gunicorn worker"))
    assert len(processes) >= 3, processes  # the main process and two workers
    # each worker's loop is known even though its end was cut short by the signal
    assert {lp["pid"] for lp in report["loops"]} >= {s["pid"] for s in stalls}
    assert f"{len(processes)} processes" in stderr
    assert left_behind(tmp_path) == []
    # nor next to the report (a half-written --json file, a part)
    ours = {"app.py", "r.json", "tmp", "__pycache__"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ours) == []


@pytest.mark.slow
def test_a_worker_s_live_line_names_its_pid(tmp_path: Path) -> None:
    write(tmp_path / "app.py", APP.replace("0.15", "1.3"))
    script = write(
        tmp_path / "hit.py",
        in_a_spawned_child(
            """\
            import multiprocessing, asyncio, time

            async def job():
                time.sleep(1.3)

            def task():
                asyncio.run(job())

            """,
            "pid",
        ),
    )
    proc, report = run(tmp_path, script.name)
    pid = int(proc.stdout.strip())
    assert f"unstall [pid {pid}, SpawnProcess-1]: loop in MainThread stuck for" in proc.stderr
    assert [s["pid"] for s in report["stalls"]] == [pid]


# --- multiprocessing and subprocesses --------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_every_stall_of_a_pool_s_tasks_is_reported_with_its_line(
    tmp_path: Path, method: str
) -> None:
    script = write(tmp_path / "pool.py", POOL)
    proc, report = run(tmp_path, script.name, method)
    assert proc.stdout.strip() == "[0, 1, 2, 3]"
    stalls = at_line(report, script, POOL_LINE)
    assert len(stalls) == 4, proc.stderr
    prefix = {"spawn": "SpawnPoolWorker-", "fork": "ForkPoolWorker-"}.get(method, "ForkServer")
    assert all(s["process"].startswith(prefix) for s in stalls)
    assert {s["pid"] for s in stalls} <= {p["pid"] for p in report["processes"]}
    # the workers were ended by Pool's terminate(), yet their loops are known
    assert {s["pid"] for s in stalls} <= {lp["pid"] for lp in report["loops"]}
    assert left_behind(tmp_path) == []


def test_no_follow_watches_the_main_process_only(tmp_path: Path) -> None:
    script = write(tmp_path / "pool.py", POOL)
    proc, report = run(tmp_path, "--no-follow", script.name, "spawn")
    assert proc.stdout.strip() == "[0, 1, 2, 3]"
    assert report["stalls"] == []
    assert "processes" not in report
    assert "processes" not in proc.stderr.rsplit("unstall: ", 1)[-1]


def test_a_python_subprocess_and_an_os_fork_child_are_followed(tmp_path: Path) -> None:
    write(
        tmp_path / "child.py",
        """\
        import asyncio, time

        async def main():
            time.sleep(0.15)  # child's line

        asyncio.run(main())
        """,
    )
    script = write(
        tmp_path / "parent.py",
        """\
        import os, subprocess, sys

        subprocess.run([sys.executable, "child.py"], check=True)
        pid = os.fork()
        if pid == 0:
            import runpy
            runpy.run_path("child.py")
            os._exit(0)  # no atexit: the stall was written as it happened
        os.waitpid(pid, 0)
        """,
    )
    proc, report = run(tmp_path, script.name)
    stalls = [s for s in report["stalls"] if s["culprit"]["file"].endswith("child.py")]
    assert all(s["culprit"]["line"] == 4 for s in stalls)
    roles = sorted(s["process"] for s in stalls)
    assert len(stalls) == 2, proc.stderr
    assert roles[0].startswith("fork of pid ")
    assert roles[1] == "python child.py"
    assert len({s["pid"] for s in stalls}) == 2


def test_a_child_killed_by_sigkill_keeps_the_stalls_it_wrote(tmp_path: Path) -> None:
    script = write(
        tmp_path / "killed.py",
        in_a_spawned_child(
            """\
            import asyncio, multiprocessing, os, signal, time

            async def main():
                time.sleep(0.15)  # before the kill

            def task():
                asyncio.run(main())  # when it returns, the loop's stalls are written
                os.kill(os.getpid(), signal.SIGKILL)

            """,
            "exitcode",
        ),
    )
    proc, report = run(tmp_path, script.name)
    assert proc.stdout.strip() == str(-signal.SIGKILL)
    stalls = at_line(report, script, 4)
    assert len(stalls) == 1, proc.stderr
    child = next(p for p in report["processes"] if p["pid"] == stalls[0]["pid"])
    assert child["duration_s"] is None  # it never said it ended
    assert left_behind(tmp_path) == []


def test_a_child_killed_in_the_middle_of_a_stall_leaves_it_ongoing_with_its_line(
    tmp_path: Path,
) -> None:
    script = write(
        tmp_path / "killed.py",
        in_a_spawned_child(
            """\
            import asyncio, multiprocessing, os, signal, time

            async def main():
                time.sleep(0.6)  # the stall the kill cuts short
                os.kill(os.getpid(), signal.SIGKILL)

            def task():
                asyncio.run(main())

            """,
            "exitcode",
        ),
    )
    proc, report = run(tmp_path, script.name)
    assert proc.stdout.strip() == str(-signal.SIGKILL)
    [stall] = at_line(report, script, 4)
    assert stall["ongoing"] is True
    assert 0.1 <= stall["duration_s"] <= 0.6
    assert stall["process"] != "main"
    assert left_behind(tmp_path) == []


def test_unstall_s_own_process_pool_workers_are_not_watched(tmp_path: Path) -> None:
    script = write(
        tmp_path / "offload.py",
        """\
        import asyncio, math
        import unstall

        async def main():
            print(await unstall.to_process(math.factorial, 5))

        if __name__ == "__main__":
            asyncio.run(main())
        """,
    )
    proc, report = run(tmp_path, script.name)
    assert proc.stdout.strip() == "120"
    assert [p["role"] for p in report.get("processes", [{"role": "main"}])] == ["main"]


def test_no_start_up_runs_unstall_s_code_when_unstall_is_not_running(tmp_path: Path) -> None:
    env = {k: v for k, v in child_env().items() if k != "UNSTALL_FOLLOW"}
    code = "import sys; print(sorted(m for m in sys.modules if m.startswith('unstall')))"
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
    site_packages = {Path(p) for p in sys.path if p.endswith("-packages")}
    assert [
        p.name for d in site_packages for p in d.glob("*unstall*.pth") if "editable" not in p.name
    ] == []


@pytest.mark.parametrize("value", ["", "/no/such/run/directory"])
def test_the_start_up_hook_ignores_a_variable_naming_no_run(tmp_path: Path, value: str) -> None:
    # a long-lived grandchild of a finished run, or a variable set by hand
    from unstall._cli.follow import BOOT_DIR

    out = subprocess.run(
        [PY, "-c", "import sys; print('ran', any('follow_boot' in p for p in sys.path))"],
        env=child_env(UNSTALL_FOLLOW=value, PYTHONPATH=BOOT_DIR),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "ran False\n", "")


def test_a_child_keeps_the_program_s_own_sitecustomize_and_sys_path(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    write(own / "sitecustomize.py", "import sys\nsys.own_sitecustomize = True\n")
    write(
        tmp_path / "child.py",
        """\
        import asyncio, os, sys, time

        async def main():
            time.sleep(0.15)  # child's line

        asyncio.run(main())
        print(getattr(sys, "own_sitecustomize", False), [p for p in sys.path if "follow_boot" in p])
        """,
    )
    script = write(
        tmp_path / "parent.py",
        """\
        import os, subprocess, sys

        subprocess.run([sys.executable, "child.py"], check=True)
        print(os.environ["PYTHONPATH"].split(os.pathsep)[1:])
        """,
    )
    proc = subprocess.run(
        [PY, "-m", "unstall", "run", "--json", "r.json", script.name],
        cwd=tmp_path,
        env={**env_for(tmp_path), "PYTHONPATH": str(own)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert proc.stdout.splitlines() == ["True []", f"[{str(own)!r}]"]
    [stall] = at_line(report, tmp_path / "child.py", 4)
    assert stall["process"] == "python child.py"
    assert left_behind(tmp_path) == []


def test_process_pool_executor_workers_are_followed(tmp_path: Path) -> None:
    script = write(
        tmp_path / "executor.py",
        """\
        import asyncio, multiprocessing, time
        from concurrent.futures import ProcessPoolExecutor

        async def job(i):
            time.sleep(0.15)  # the task's blocking line
            return i

        def task(i):
            return asyncio.run(job(i))

        if __name__ == "__main__":
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(2, mp_context=spawn) as pool:
                print(list(pool.map(task, range(3))))
        """,
    )
    proc, report = run(tmp_path, script.name)
    assert proc.stdout.strip() == "[0, 1, 2]"
    stalls = at_line(report, script, 5)
    assert len(stalls) == 3, proc.stderr
    assert all(s["process"].startswith("SpawnProcess-") for s in stalls)
    assert left_behind(tmp_path) == []


def test_a_run_ended_by_os_exit_leaves_a_directory_the_next_run_removes(tmp_path: Path) -> None:
    script = write(tmp_path / "quits.py", "import os\nos._exit(0)\n")
    subprocess.run(
        [PY, "-m", "unstall", "run", script.name],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert len(left_behind(tmp_path)) >= 1  # os._exit runs no exit code: nothing cleans up
    run(tmp_path, write(tmp_path / "clean.py", "pass\n").name)
    assert left_behind(tmp_path) == []
