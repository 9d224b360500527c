"""Several processes: gunicorn workers under one agent directory, several URLs, fork.

Real processes on 127.0.0.1 only: gunicorn with the target server's aiohttp workers
under ``diag run --agent-dir``, two ``python -m target_server``, and small programs
that fork.  Every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from diag.analysis.merge import merge_tasks
from diag.analysis.task_groups import TaskQuery, task_view
from diag.cli.app import main
from diag.model.target_result import Target, TargetResult
from diag.render import many_tasks
from diag.model.task_snapshot import ProcessInfo, TaskSnapshot, Wait
from tests.diag.snapshots import POOL, task
from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.target import TargetServer, free_port, http

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
LEAKS_DRIVEN = 12


def gunicorn_quiet_flags() -> list[str]:
    """Newer gunicorn masters open a control socket in the home directory; not needed here."""
    import gunicorn.config  # type: ignore[import-untyped]

    names = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def agent_files(directory: Path) -> dict[int, dict[str, Any]]:
    out = {}
    for path in directory.glob("*.json"):
        try:
            out[int(path.stem)] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # being replaced right now
    return out


def wait_until(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def process_group(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A command in its own process group; the whole group is killed on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        proc.wait(10)


def drive(url: str, n: int) -> None:
    """``n`` requests at once, each on its own connection, so every worker can take some."""
    statuses: list[int] = []

    def one() -> None:
        statuses.append(http("GET", url, timeout=10)[0])

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert statuses == [202] * n, statuses


def test_gunicorn_workers_share_one_agent_directory(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    port = free_port()
    env = diag_env()
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "diag", "run", "--agent-dir", str(agents), "--",
           GUNICORN, "target_server.gunicorn_app:app", "--worker-class", "aiohttp.GunicornWebWorker",
           "-w", "3", "--bind", f"127.0.0.1:{port}", "--timeout", "120",
           *gunicorn_quiet_flags()]
    log = tmp_path / "gunicorn.log"
    with process_group(cmd, log, env) as master:
        # diag run execs gunicorn: the master keeps the pid; it and 3 workers write a file each.
        files = wait_until("4 agent files", lambda: (f := agent_files(agents)) and len(f) >= 4 and f)
        workers = set(files) - {master.pid}
        assert master.pid in files and len(workers) == 3, (files, log.read_text())
        wait_until("the server", lambda: http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200)
        drive(f"http://127.0.0.1:{port}/leak/forgotten-task", LEAKS_DRIVEN)

        # Totals across processes equal what was driven; the process column covers the workers.
        proc = run_diag("tasks", "--agent-dir", str(agents), "--filter", "forgotten_waiter", "--format", "json")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["schema"] == "diag.many/1" and doc["command"] == "tasks"
        assert doc["answered"] == 4 and doc["failed"] == 0
        assert {t["pid"] for t in doc["targets"]} == set(files)
        assert all(t["status"] == "ok" and t["document"]["schema"] == "diag.tasks/1" for t in doc["targets"])
        per_pid = {t["pid"]: sum(g["count"] for g in t["document"]["tasks"]) for t in doc["targets"]}
        assert sum(per_pid.values()) == LEAKS_DRIVEN and per_pid[master.pid] == 0
        holders = {pid for pid, n in per_pid.items() if n}

        text = run_diag("tasks", "--agent-dir", str(agents), "--filter", "forgotten_waiter", "--format", "text")
        assert text.returncode == 0, text.stderr
        assert f"{LEAKS_DRIVEN} tasks @ Event.wait" in text.stdout, text.stdout
        assert "diag tasks: 4 processes (4 answered, 0 failed)" in text.stdout
        for pid in holders:
            assert f"#   pid {pid}: {per_pid[pid]} task" in text.stdout, text.stdout

        # The verdicts of every worker, each proved in its own process; exit 1 on the leaks.
        leaks = run_diag("leaks", "--agent-dir", str(agents), "--format", "json", "--proof-budget", "5")
        assert leaks.returncode == 1, leaks.stderr
        reports = {t["pid"]: t["document"] for t in json.loads(leaks.stdout)["targets"]}
        proven = {pid: sum(f["task_count"] for f in r["findings"] if f["kind"] == "proven_leak")
                  for pid, r in reports.items()}
        assert proven == per_pid
        sync = run_diag("sync", "--agent-dir", str(agents), "--all", "--format", "text")
        assert sync.returncode == 0 and "diag sync: 4 processes (4 answered, 0 failed)" in sync.stdout
        assert all(f"process {pid} at " in sync.stdout for pid in files)

        # kill -9 a worker: gunicorn starts another, which writes its own file; the dead
        # pid's file stays behind and reads as dead, without a connection attempt.
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        files = wait_until("the replacement worker's file",
                           lambda: (f := agent_files(agents)) and len(set(f) - {master.pid} - workers) == 1 and f)
        replacement = (set(files) - {master.pid} - workers).pop()
        wait_until("the dead worker to be reaped", lambda: not alive(killed))
        after = run_diag("tasks", "--agent-dir", str(agents), "--format", "text")
        assert after.returncode == 0, after.stderr
        assert f"FAILED pid {killed} at {files[killed]['url']}: dead: process {killed} is not running" in after.stdout
        assert f"process {replacement} (python" in after.stdout
        assert after.stderr.splitlines() == [
            f"diag: warning: pid {killed} at {files[killed]['url']}: dead: process {killed} is not running "
            "(stale agent file)"]

        # A stopped worker accepts connections but never answers: timed out on its own
        # deadline while the others render.
        stopped = max(workers)
        os.kill(stopped, signal.SIGSTOP)
        try:
            started = time.monotonic()
            slow = run_diag("tasks", "--agent-dir", str(agents), "--format", "json", "--timeout", "1")
            elapsed = time.monotonic() - started
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert slow.returncode == 0, slow.stderr
        status = {t["pid"]: t["status"] for t in json.loads(slow.stdout)["targets"]}
        assert status[stopped] == "timeout" and status[killed] == "dead"
        assert all(s == "ok" for pid, s in status.items() if pid not in (stopped, killed)), status
        assert elapsed < 6, elapsed
        assert f"pid {stopped} at " in slow.stderr and "timeout: no answer within 1s" in slow.stderr

        # A clean stop removes every live process's file; only the killed worker's stays.
        master.send_signal(signal.SIGTERM)
        master.wait(20)
        assert set(agent_files(agents)) == {killed}, log.read_text()[-2000:]


def test_two_servers_given_as_two_urls() -> None:
    with TargetServer() as a, TargetServer() as b:
        for server, n in ((a, 2), (b, 3)):
            for _ in range(n):
                assert http("GET", server.url + "/leak/forgotten-task")[0] == 202
        proc = run_diag("tasks", a.url, b.url, "--filter", "forgotten_waiter", "--format", "text")
        assert proc.returncode == 0, proc.stderr
        assert "5 tasks @ Event.wait (on 5 distinct events in 2 processes)" in proc.stdout, proc.stdout
        assert f"at {a.url}: " in proc.stdout and f"at {b.url}: " in proc.stdout
        table = run_diag("tasks", a.url, b.url, "--filter", "forgotten_waiter", "--format", "table")
        assert table.returncode == 0 and "Processes" in table.stdout

        # A refused target is one stderr line and one FAILED line; the others still render.
        nobody = f"http://127.0.0.1:{free_port()}"
        partial = run_diag("tasks", a.url, nobody, b.url, "--filter", "forgotten_waiter", "--format", "text")
        assert partial.returncode == 0
        assert f"FAILED {nobody}: refused: connection refused" in partial.stdout
        assert partial.stderr.splitlines() == [f"diag: warning: {nobody}: refused: connection refused "
                                               "(is the process running with the diag agent?)"]
        assert "5 tasks @ Event.wait" in partial.stdout

        leaks = run_diag("leaks", a.url, b.url, "--format", "text")
        assert leaks.returncode == 1 and "2 proven_leak" in leaks.stdout.splitlines()[0], leaks.stdout
        assert "PROVEN_LEAK [pid " in leaks.stdout
        sync = run_diag("sync", a.url, b.url, "--format", "table")
        assert sync.returncode == 0 and "Process" in sync.stdout

    # None answered: exit 3, the reasons on stderr, and the view still says which failed.
    gone = run_diag("tasks", a.url, b.url, "--format", "text")
    assert gone.returncode == 3
    assert gone.stderr.splitlines()[-1] == "diag: error: none of the 2 targets answered"
    assert gone.stdout.count("FAILED ") == 2


FORKS = """
import asyncio, os, sys, time

import diag.agent

before = diag.agent.current()
pid = os.fork()
tag = "child" if pid == 0 else "parent"

async def main() -> None:
    async def waiter() -> None:
        await asyncio.Event().wait()
    tasks = [asyncio.create_task(waiter(), name=f"{tag}-{i}") for i in range(3 if pid == 0 else 2)]
    await asyncio.sleep(0.1)
    if pid == 0:  # the child says what it has, once its tasks are waiting
        mine = diag.agent.current()
        with open(sys.argv[1] + ".tmp", "w") as fh:
            fh.write(f"{os.getpid()} {mine.url if mine else None} {before.url if before else None}\\n")
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    await asyncio.sleep(60)

asyncio.run(main())
"""


def start_forking_program(tmp_path: Path, *run_args: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "forks.py"
    script.write_text(textwrap.dedent(FORKS))
    report = tmp_path / "child.txt"
    env = diag_env()
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "diag", "run", *run_args, "--", sys.executable, "-W", "ignore", str(script),
           str(report)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, report


def task_names(url: str) -> tuple[int, set[str]]:
    proc = run_diag("tasks", url, "--debug", "2", "--format", "json", "--filter", "^(child|parent)-")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc["process"]["pid"], {t["name"] for t in doc["tasks"]}


def test_a_forked_child_gets_its_own_agent_with_an_agent_dir(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    proc, report = start_forking_program(tmp_path, "--agent-dir", str(agents))
    try:
        files = wait_until("2 agent files", lambda: (f := agent_files(agents)) and len(f) == 2 and f)
        child_pid, child_url, parent_url = wait_until("the child's report", lambda: report.exists()
                                                      and report.read_text().split())
        assert int(child_pid) in files and files[int(child_pid)]["url"] == child_url != parent_url
        assert files[proc.pid]["url"] == parent_url and files[int(child_pid)]["ppid"] == proc.pid
        assert task_names(child_url) == (int(child_pid), {"child-0", "child-1", "child-2"})
        assert wait_until("the parent's tasks", lambda: task_names(parent_url)[1] == {"parent-0", "parent-1"}
                          and task_names(parent_url)[0] == proc.pid)

        # The child closed its copy of the parent's listening socket: once the parent
        # is gone its address refuses at once instead of hanging in a dead backlog.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        line = assert_one_line_error(run_diag("tasks", parent_url, "--timeout", "5"), 3)
        assert "connection refused" in line
        merged = run_diag("tasks", "--agent-dir", str(agents), "--format", "text", "--filter", "child")
        assert merged.returncode == 0
        assert f"FAILED pid {proc.pid} at {parent_url}: dead:" in merged.stdout
        assert "3 tasks @ Event.wait" in merged.stdout
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def test_without_an_agent_dir_a_forked_child_has_no_agent(tmp_path: Path) -> None:
    addr = tmp_path / "agent.addr"
    proc, report = start_forking_program(tmp_path, "--agent-file", str(addr))
    try:
        child_pid, child_url, parent_url = wait_until("the child's report", lambda: report.exists()
                                                      and report.read_text().split())
        assert child_url == "None" and parent_url == addr.read_text().strip()
        assert task_names(parent_url)[0] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert alive(int(child_pid))
        assert "connection refused" in assert_one_line_error(run_diag("tasks", parent_url, "--timeout", "5"), 3)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    """``main(argv)`` in this process: the exit code, nothing on stdout, one line on stderr."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("diag: error: "), (out, err)
    return err.strip()


def test_usage_and_unusable_agent_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "missing TARGET" in one_error_line(capsys, ["tasks"], 2)
    assert "missing TARGET" in one_error_line(capsys, ["leaks", "--format", "json"], 2)
    assert "no such directory" in one_error_line(capsys, ["tasks", "--agent-dir", str(tmp_path / "nope")], 3)
    assert "no agent files" in one_error_line(capsys, ["sync", "--agent-dir", str(tmp_path)], 3)
    url = f"http://127.0.0.1:{free_port()}"
    assert "-o saves one process" in one_error_line(
        capsys, ["tasks", url, url + "/", "-o", str(tmp_path / "x.json")], 2)
    assert "bad target" in one_error_line(capsys, ["tasks", url, "just-a-word"], 2)
    assert "needs an ephemeral agent port" in one_error_line(
        capsys, ["run", "--agent-dir", str(tmp_path), "--agent", "127.0.0.1:9", "--", "true"], 2)
    assert main(["run", "--print-env", "--agent-dir", str(tmp_path / "d")]) == 0
    assert f"export DIAG_AGENT_DIR={tmp_path / 'd'}" in capsys.readouterr().out


def test_merge_sums_groups_across_processes_and_keeps_each_share() -> None:
    one = TaskSnapshot(1.0, ProcessInfo(101), (task(1), task(2)), total_tasks=2)
    two = TaskSnapshot(1.0, ProcessInfo(102), (task(7, wait=Wait("semaphore", "Semaphore.acquire", POOL, 9.0)),),
                       total_tasks=1)
    results = [TargetResult(Target("http://a"), "ok", task_view(one, TaskQuery())),
               TargetResult(Target("http://b", 102), "ok", task_view(two, TaskQuery())),
               TargetResult(Target("http://c", 103, "agent_dir"), "dead", error="gone")]
    view = merge_tasks(results, limit=None)
    assert view.total_tasks == 3 and len(view.groups) == 1
    group = view.groups[0]
    assert group.count == 3 and [(s.process, s.task.count) for s in group.shares] == [("101", 2), ("102", 1)]
    assert group.task.wait.primitive is None and group.task.wait.seconds == 305.0
    assert group.task.wait.detail == "Semaphore.acquire (on 2 distinct semaphores in 2 processes)"


def test_merged_text_and_table_name_each_process_and_each_failure() -> None:
    one = TaskSnapshot(1.0, ProcessInfo(101, python="3.11.7"), (task(1), task(2)), total_tasks=2)
    two = TaskSnapshot(1.0, ProcessInfo(102, python="3.11.7"), (task(7),), total_tasks=1)
    dead = TargetResult(Target("http://c", 103, "agent_dir"), "dead", error="process 103 is not running")
    grouped = [TargetResult(Target("http://a"), "ok", task_view(one, TaskQuery())),
               TargetResult(Target("http://b"), "ok", task_view(two, TaskQuery())), dead]
    out = io.StringIO()
    many_tasks.render_text(merge_tasks(grouped, limit=None), out, cwd="/srv")
    text = out.getvalue()
    assert text.startswith("diag tasks: 3 processes (2 answered, 1 failed), 3 pending tasks, 3 matching in 1 group\n")
    assert "FAILED pid 103 at http://c: dead: process 103 is not running\n" in text
    assert "\n3 tasks @ Semaphore.acquire (on 2 distinct semaphores in 2 processes), waiting up to 5m10s" in text
    assert "#   pid 101: 2 tasks @ Semaphore.acquire <Client.pool 0x7f00a0 value=0 waiters=3>, created by " \
           "handler in task 17 at app/handlers.py:88; task ids: 1, 2\n" in text

    every = [TargetResult(Target("http://a"), "ok", task_view(one, TaskQuery(debug=2))),
             TargetResult(Target("http://b"), "ok", task_view(two, TaskQuery(debug=2))), dead]
    out = io.StringIO()
    many_tasks.render_text(merge_tasks(every, limit=None), out, cwd="/srv")
    # every task listed matches: said once, not "3 matching in 3 shown"
    assert out.getvalue().startswith("diag tasks: 3 processes (2 answered, 1 failed), 3 pending tasks, 3 matching\n")
    out = io.StringIO()
    many_tasks.render_text(merge_tasks(every, limit=2), out, cwd="/srv")
    assert '\npid 101 task 1 "Task-1" [Semaphore.acquire <Client.pool' in out.getvalue()
    assert "pid 102 task 7" not in out.getvalue() and "note: showing 2 of 3 tasks (--limit)" in out.getvalue()

    console = Console(file=io.StringIO(), width=200, no_color=True)
    many_tasks.render_table(merge_tasks(grouped, limit=None), console, cwd="/srv")
    table = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Processes" in table and "101:2 102:1" in table and "FAILED pid 103" in table
