"""``diag attach PID``: programs started without diag, attached to while they run.

Every target here is a plain ``python app.py`` that never imports diag; the CLI runs as a
subprocess as a user would run it.  Targets run the same interpreter as the suite, so the
suite under 3.11, 3.12 and 3.13 covers each; ``LOOPS`` adds uvloop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from diag.attach import importable_paths, inject, inspect, records
from diag.attach.inject import safe_to_borrow
from diag.attach.process import ProcessFacts, PtraceFacts, explain_denial, python_version
from tests.diag.test_leaks_programs import EVERY_VERDICT, names
from tests.diag.test_leaks_programs import report as leaks
from tests.support.cli import assert_one_line_error, diag_env, run_diag
from tests.support.programs import DiagRun
from tests.target.helpers import wait_until

LOOPS = ["asyncio", "uvloop"]
RUN_LOOP = {"asyncio": "asyncio.run(main())", "uvloop": "import uvloop\nuvloop.run(main())"}


class Plain:
    """``python app.py`` with no diag anywhere in its environment; ready once it prints 'ready'."""

    def __init__(self, source: str, python: str = sys.executable) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="diag-plain-")
        self.path = Path(self.dir.name)
        (self.path / "app.py").write_text(textwrap.dedent(source))
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Plain":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIAG_", "PYTHONPATH"))}
        with open(self.path / "out", "wb") as out, open(self.path / "err", "wb") as err:
            self.proc = subprocess.Popen([self.python, "app.py"], cwd=self.path, env=env, stdout=out, stderr=err)
        wait_until(lambda: "ready" in self.stdout() or self.proc.poll() is not None, timeout=30)
        assert self.proc.poll() is None, self.stderr()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stdout(self) -> str:
        return (self.path / "out").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.path / "err").read_text(errors="replace")

    def touch(self, name: str) -> None:
        (self.path / name).write_text("")

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        records.remove_record(self.pid)
        # A killed process cannot remove its agent's socket.
        (records.user_dir(os.geteuid()) / f"{self.pid}.sock").unlink(missing_ok=True)
        self.dir.cleanup()


def attach(pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_diag("attach", str(pid), *args, timeout=60)


def by_kind(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in data["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


# test_leaks_programs' program with every verdict, made to say when it is ready and to
# take a lock in a new task once told to ('go'), after diag came in.
_TAIL = "    del a, b\n    await asyncio.sleep(3600)\n\nasyncio.run(main())\n"
assert EVERY_VERDICT.endswith(_TAIL)
HUNG = "import os\n" + EVERY_VERDICT[:-len(_TAIL)] + """    del a, b
    await asyncio.sleep(0.05)
    print("ready", flush=True)
    while not os.path.exists("go"):
        await asyncio.sleep(0.02)
    keep.append(asyncio.create_task(after_attach(), name="after-attach"))
    await asyncio.sleep(3600)

GATE = asyncio.Event()          # reachable, never set
LATE_LOCK = asyncio.Lock()

async def after_attach():
    async with LATE_LOCK:
        await GATE.wait()

"""


def hung(loop: str) -> str:
    return HUNG + RUN_LOOP[loop] + "\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_hung_program_gets_the_verdicts_of_diag_run_minus_holders_from_before(loop: str) -> None:
    with DiagRun(hung(loop)) as started_with:
        wait_until(lambda: "ready" in started_with.output(), timeout=30)
        _code, under_run = leaks(started_with.url, "--min-wait", "0")
    with Plain(hung(loop)) as app:
        proc = attach(app.pid)
        assert proc.returncode == 0, proc.stderr
        url = proc.stdout.strip()
        assert url == f"unix:{records.user_dir(os.geteuid()) / f'{app.pid}.sock'}"
        assert oct(os.stat(url[len("unix:"):]).st_mode & 0o777) == "0o600"
        code, late = leaks(f"pid:{app.pid}", "--min-wait", "0")
        assert code == 1
    run_kinds, late_kinds = by_kind(under_run), by_kind(late)
    # The reachability proof needs no history: the same tasks proven, task for task. Under
    # diag run the deadlocked pair is told once, as the deadlock the proof confirms; after a
    # late attach nobody saw them take their locks, so they are proven leaks.
    def proven(kinds: dict[str, list[dict[str, Any]]]) -> set[str]:
        found: set[str] = set().union(*(names(f) for f in kinds.get("proven_leak", [])))
        for f in kinds.get("deadlock", []):
            if "the proof confirms it" in f["evidence"]:
                found |= names(f)
        return found

    assert proven(late_kinds) == proven(run_kinds) == {"lonely-worker", "ab", "ba"}
    assert set().union(*(names(f) for f in late_kinds["proven_leak"])) == {"lonely-worker", "ab", "ba"}
    # What needs to know who took a lock before diag came in is all that is missing.
    assert set(run_kinds) - set(late_kinds) <= {"leaked_permit", "deadlock"}
    assert {"leaked_permit", "deadlock"} <= set(run_kinds)
    assert "idle-worker" not in set().union(*(names(f) for f in late["findings"]))
    assert any(n.startswith("attached to the running process at ") for n in late["notes"]), late["notes"]


@pytest.mark.parametrize("loop", LOOPS)
def test_after_attach_creators_and_holders_are_recorded_and_earlier_ones_said_unknown(loop: str) -> None:
    with Plain(hung(loop)) as app:
        assert attach(app.pid).returncode == 0
        app.touch("go")
        def dump() -> dict[str, Any] | None:
            proc = run_diag("tasks", f"pid:{app.pid}", "--debug", "2", "--format", "json")
            assert proc.returncode == 0, proc.stderr
            data: dict[str, Any] = json.loads(proc.stdout)
            return data if any(t["name"] == "after-attach" for t in data["tasks"]) else None
        data = wait_until(dump, timeout=30)
        tasks = {t["name"]: t for t in data["tasks"]}
        assert tasks["after-attach"]["created_by"] is not None
        assert tasks["after-attach"]["created_by"]["function"] == "main"
        assert tasks["lonely-worker"]["created_by"] is None
        header = run_diag("tasks", f"pid:{app.pid}", "--format", "text").stdout.splitlines()
        assert any(line.startswith("note: attached to the running process at ") for line in header[:6]), header
        sync = json.loads(run_diag("sync", f"pid:{app.pid}", "--format", "json").stdout)
        late_lock = [p for p in sync["primitives"] if p["primitive"]["label"].endswith("LATE_LOCK")]
        assert late_lock and late_lock[0]["holders"], sync["primitives"]


BLOCKED = """
import asyncio, time

async def stuck():
    print("ready", flush=True)
    time.sleep(120)             # blocks the loop

async def main():
    await asyncio.create_task(stuck())

""" + RUN_LOOP["asyncio"] + "\n"


def test_a_loop_blocked_in_time_sleep_is_reported_blocked_after_attach() -> None:
    with Plain(BLOCKED) as app:
        proc = attach(app.pid)
        assert proc.returncode == 0, proc.stderr

        def blocked() -> dict[str, Any] | None:
            _code, data = leaks(f"pid:{app.pid}", "--no-proof", "--stall-threshold", "0.5")
            found = [f for f in data["findings"] if f["kind"] == "loop_blocked"]
            return found[0] if found else None
        finding = wait_until(blocked, timeout=30)
        assert finding["site"][0]["function"] == "stuck"


# A loop hung for good by a synchronous call waiting on a coroutine it scheduled on its own loop.
HUNG_BEFORE = """
import asyncio, time

async def tick():
    while True:
        await asyncio.sleep(0.2)

def fetch_sync(loop):
    async def fetch():
        return 1
    return asyncio.run_coroutine_threadsafe(fetch(), loop).result()   # waits for the loop it blocks

async def main():
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.3)
    print("ready", time.monotonic(), flush=True)
    fetch_sync(asyncio.get_running_loop())

"""


def test_a_loop_hung_before_attach_is_blocked_at_the_first_query_with_its_age() -> None:
    # One query right after the attach, no retry: an overdue timer dates the hang's start.
    with Plain(HUNG_BEFORE + RUN_LOOP["asyncio"] + "\n") as app:
        hung_at = float(app.stdout().split()[1])
        wait_until(lambda: time.monotonic() - hung_at >= 2.5, timeout=30)
        proc = attach(app.pid)
        assert proc.returncode == 0, proc.stderr
        code, data = leaks(f"pid:{app.pid}", "--no-proof")
        assert code == 1, data
        (finding,) = by_kind(data)["loop_blocked"]
        seconds = float(finding["title"].split("has not turned for ")[1].rstrip("s"))
        assert seconds >= 2.0, finding["title"]
        assert "when diag began watching it" in finding["evidence"], finding["evidence"]
        assert any(f["function"] == "fetch_sync" for f in finding["site"]), finding["site"]
        # the tick task's wait is timed from the attach: the default --min-wait (10 s) is not reached yet
        assert any(n.startswith("diag has watched this process for") for n in data["notes"]), data["notes"]


def test_a_hung_uvloop_loop_is_timed_from_the_attach_and_says_nothing_of_before() -> None:
    # uvloop's timers are out of reach: the stall counts from the attach, and no age is made up.
    with Plain(HUNG_BEFORE + RUN_LOOP["uvloop"] + "\n") as app:
        hung_at = float(app.stdout().split()[1])
        wait_until(lambda: time.monotonic() - hung_at >= 2.5, timeout=30)
        attached_at = time.monotonic()
        assert attach(app.pid).returncode == 0

        def blocked() -> dict[str, Any] | None:
            _code, data = leaks(f"pid:{app.pid}", "--no-proof")
            found = by_kind(data).get("loop_blocked", [])
            return found[0] if found else None
        finding = wait_until(blocked, timeout=30)
        seconds = float(finding["title"].split("has not turned for ")[1].rstrip("s"))
        assert seconds <= time.monotonic() - attached_at + 0.5, (seconds, finding["title"])
        assert "when diag began watching it" not in finding["evidence"], finding["evidence"]


# Holds the GIL in one C call (ctypes.PyDLL never releases it) until the file 'go' exists.
HOLDS_GIL = """
import ctypes, threading
print("ready", flush=True)
ctypes.PyDLL(None).system(b"while [ ! -e go ]; do sleep 0.02; done{then}")
print("after", sorted(t.name for t in threading.enumerate()), flush=True)
"""


def library_loaded(pid: int) -> bool:
    try:
        return "/diag-attach-" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_main_thread_that_never_releases_the_gil_times_out_and_is_left_as_it_was() -> None:
    with Plain(HOLDS_GIL.format(then="")) as app:
        started = time.monotonic()
        proc = attach(app.pid, "--timeout", "1")
        line = assert_one_line_error(proc, 3)
        assert f"pid {app.pid} did not let diag in within 1s: its main thread keeps the GIL" in line
        assert time.monotonic() - started < 30
        app.touch("go")
        assert app.wait() == 0
        assert app.stdout() == "ready\nafter ['MainThread']\n" and app.stderr() == ""
        assert not (records.user_dir(os.geteuid()) / f"{app.pid}.sock").exists()


def test_a_process_that_exits_during_attach() -> None:
    with Plain(HOLDS_GIL.format(then="; kill -9 $PPID")) as app:
        cli = subprocess.Popen([sys.executable, "-m", "diag", "attach", str(app.pid), "--timeout", "60"],
                               env=diag_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: library_loaded(app.pid), timeout=30)
            app.touch("go")
            out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        line = assert_one_line_error(subprocess.CompletedProcess(cli.args, cli.returncode, out, err), 3)
        assert line == f"diag: error: pid {app.pid} exited during attach"


SERVES = """
import asyncio, os, sys, threading

async def until(name):
    while not os.path.exists(name):
        await asyncio.sleep(0.02)

async def main():
    path = list(sys.path)
    lock, pool = asyncio.Lock(), asyncio.Semaphore(2)
    await lock.acquire()        # taken before diag comes in, given back while it is there
    await pool.acquire()
    print("ready", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    await until("go")
    lock.release()
    pool.release()
    async with lock, pool:
        print("released", flush=True)
    await until("end")
    # After detach: no diag thread, no task factory, sys.path as it was.
    print("done", sorted(t.name for t in threading.enumerate()), asyncio.get_running_loop().get_task_factory(),
          sys.path == path, flush=True)
    sys.exit(7)

"""


@pytest.mark.parametrize("loop", LOOPS)
def test_attach_twice_detach_attach_again_and_the_program_never_notices(loop: str) -> None:
    with Plain(SERVES + RUN_LOOP[loop] + "\n") as app:
        first = attach(app.pid)
        assert first.returncode == 0 and "attached in" in first.stderr, first.stderr
        app.touch("go")
        wait_until(lambda: "released" in app.stdout(), timeout=30)
        again = attach(app.pid)
        assert again.returncode == 0 and again.stdout == first.stdout and "already attached" in again.stderr
        assert run_diag("tasks", f"pid:{app.pid}").returncode == 0
        url = first.stdout.strip()
        gone = run_diag("detach", str(app.pid))
        assert gone.returncode == 0 and "agent stopped" in gone.stderr, gone.stderr
        assert_one_line_error(run_diag("tasks", url), 3)
        assert "no agent was running" in run_diag("detach", str(app.pid)).stderr
        back = attach(app.pid)
        assert back.returncode == 0 and "attached in" in back.stderr, back.stderr
        assert run_diag("tasks", f"pid:{app.pid}").returncode == 0
        assert run_diag("detach", str(app.pid)).returncode == 0
        app.touch("end")
        assert app.wait() == 7
        assert app.stdout() == "ready\nreleased\ndone ['MainThread'] None True\n"
        assert app.stderr() == "to stderr\n"


def test_attaching_to_a_program_run_under_diag_run_reuses_its_agent() -> None:
    with DiagRun(SERVES + RUN_LOOP["asyncio"] + "\n") as app:
        assert app.proc is not None
        try:
            proc = attach(app.proc.pid)
            assert proc.returncode == 0 and proc.stdout.strip() == app.url, (proc.stdout, proc.stderr)
            assert "already attached" in proc.stderr
            data = json.loads(run_diag("tasks", f"pid:{app.proc.pid}", "--format", "json").stdout)
            assert not any(n.startswith("attached to the running process") for n in data["notes"])
        finally:
            records.remove_record(app.proc.pid)


def test_agent_and_agent_file_options(tmp_path: Path) -> None:
    with Plain(SERVES + RUN_LOOP["asyncio"] + "\n") as app:
        where = tmp_path / "agent.addr"
        proc = attach(app.pid, "--agent", "127.0.0.1:0", "--agent-file", str(where))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("http://127.0.0.1:") and where.read_text() == proc.stdout
        assert run_diag("tasks", proc.stdout.strip()).returncode == 0
        assert run_diag("detach", str(app.pid)).returncode == 0


def test_refusals_are_one_line_with_exit_3(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert assert_one_line_error(attach(dead.pid), 3) == f"diag: error: no such process: {dead.pid}"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        line = assert_one_line_error(attach(sleeper.pid), 3)
        assert line == f"diag: error: pid {sleeper.pid} is not a Python process ({os.path.realpath('/bin/sleep')})"
        assert_one_line_error(run_diag("tasks", f"pid:{sleeper.pid}"), 3)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert_one_line_error(run_diag("attach", "nope"), 2)
    assert_one_line_error(run_diag("tasks", "pid:nope"), 2)


# What sys.remote_exec (3.14+) does, done by the program itself: run a script file in
# its main thread, in __main__'s namespace, at a point of its own choosing.
RUNS_SCRIPTS = """
import asyncio, os, sys

async def main():
    print("ready", flush=True)
    while not os.path.exists("script"):
        await asyncio.sleep(0.02)
    with open("script") as fh:
        path = fh.read()
    with open(path) as fh:
        code = compile(fh.read(), path, "exec")
    names = set(vars(sys.modules["__main__"]))
    exec(code, vars(sys.modules["__main__"]))
    print("new names:", sorted(set(vars(sys.modules["__main__"])) - names), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_the_remote_exec_script_starts_the_agent_and_leaves_main_alone() -> None:
    with Plain(RUNS_SCRIPTS) as app:
        facts, _version = inspect(app.pid)
        order = {"action": "attach", "address": records.default_address(app.pid, facts.uid),
                 "paths": importable_paths()}
        staged = inject.stage(order, facts.uid)
        try:
            (app.path / "script").write_text(str(inject.remote_script(staged)))
            answer = inject.await_result(app.pid, staged, 30, lambda: True)
        finally:
            staged.remove()
        assert answer["url"] == order["address"] and answer["reused"] is False
        assert wait_until(lambda: "new names:" in app.stdout(), timeout=30)
        assert "new names: []\n" in app.stdout()
        assert run_diag("tasks", answer["url"]).returncode == 0
        assert run_diag("detach", str(app.pid)).returncode == 0


def other_python() -> str | None:
    """A bare CPython 3.11-3.13 of another minor version than the suite's, if one is installed."""
    for minor in (11, 12, 13):
        if minor == sys.version_info[1]:
            continue
        found = sorted(Path("/root/.pyenv/versions").glob(f"3.{minor}.*/bin/python"))
        if found:
            return str(found[-1])
    return None


@pytest.mark.skipif(other_python() is None, reason="no other CPython 3.11-3.13 here")
def test_a_target_on_another_python_version_runs_the_pure_python_paths() -> None:
    python = other_python()
    assert python is not None
    with Plain(hung("asyncio"), python=python) as app:
        proc = attach(app.pid)
        assert proc.returncode == 0, proc.stderr
        assert f"diag: note: pid {app.pid} runs Python 3." in proc.stderr and "--mode sample" in proc.stderr
        _code, data = leaks(f"pid:{app.pid}", "--min-wait", "0")
        proven = set().union(*(names(f) for f in by_kind(data)["proven_leak"]))
        assert proven == {"lonely-worker", "ab", "ba"}
        sampled = run_diag("profile", f"pid:{app.pid}", "--mode", "sample", "--seconds", "0.5")
        assert sampled.returncode == 0, sampled.stderr
        refused = run_diag("profile", f"pid:{app.pid}", "--mode", "yappi", "--seconds", "0.5")
        assert refused.returncode == 3 and "Traceback" not in refused.stderr
        assert "yappi is not installed for this process's Python" in refused.stderr.splitlines()[-1]


OLD_PYTHON = "/root/.pyenv/versions/3.10.13/bin/python"


@pytest.mark.skipif(not os.path.exists(OLD_PYTHON), reason="no Python 3.10 here")
def test_an_interpreter_diag_does_not_support_is_refused_by_name() -> None:
    with Plain("import time\nprint('ready', flush=True)\ntime.sleep(60)\n", python=OLD_PYTHON) as app:
        line = assert_one_line_error(attach(app.pid), 3)
        assert line == f"diag: error: pid {app.pid} runs Python 3.10: diag attaches to CPython 3.11, 3.12 and 3.13"


# -- pure parts: hand-built facts ---------------------------------------------------------

def facts(exe: str, *maps: str) -> ProcessFacts:
    return ProcessFacts(1, exe, maps, 0, 1, "S")


def test_python_version_from_the_executable_libpython_or_extension_tags() -> None:
    assert python_version(facts("/usr/bin/python3.12")) == (3, 12)
    assert python_version(facts("/usr/bin/uwsgi", "/usr/lib/libpython3.11.so.1.0")) == (3, 11)
    assert python_version(facts("/opt/py/bin/python", "/x/_asyncio.cpython-313-x86_64-linux-gnu.so")) == (3, 13)
    assert python_version(facts("/usr/bin/sleep", "/usr/lib/libc.so.6")) is None


DENIALS = [
    (PtraceFacts(1000, 1001, 0, False, False), "another user's process (uid 1001); run diag attach as that user"),
    (PtraceFacts(1000, 1000, 1, False, False), "kernel.yama.ptrace_scope is 1 (only a parent may ptrace its child); "
                                               "run diag attach as root"),
    (PtraceFacts(1000, 1000, 2, False, False), "kernel.yama.ptrace_scope is 2 (only CAP_SYS_PTRACE may ptrace); "
                                               "run diag attach as root"),
    (PtraceFacts(0, 1000, 3, True, False), "kernel.yama.ptrace_scope is 3"),
    (PtraceFacts(0, 0, 0, False, True), "this container lacks CAP_SYS_PTRACE; start it with --cap-add SYS_PTRACE "
                                        "(or run diag attach from the host)"),
    (PtraceFacts(0, 0, None, True, False), "a seccomp or security-module policy"),
]


@pytest.mark.parametrize("ptrace, says", DENIALS)
def test_each_ptrace_denial_says_which_rule(ptrace: PtraceFacts, says: str) -> None:
    line = explain_denial(42, ptrace)
    assert line.startswith("cannot attach to pid 42: permission denied: ") and says in line


@pytest.mark.parametrize("ptrace, says", DENIALS)
def test_a_ptrace_denial_during_detach_speaks_of_detaching(ptrace: PtraceFacts, says: str) -> None:
    line = explain_denial(42, ptrace, "detach")
    assert line.startswith("cannot detach from pid 42: permission denied: ")
    assert says.replace("diag attach", "diag detach") in line and "attach" not in line


def test_diag_detach_refused_by_ptrace_says_detach(monkeypatch: pytest.MonkeyPatch) -> None:
    from diag import attach as attaching
    hidden = ProcessFacts(42, "", (), 1001, 7, "S")  # what /proc shows of a process ptrace rules hide
    monkeypatch.setattr(attaching, "read_facts", lambda pid: hidden)
    monkeypatch.setattr(attaching, "read_ptrace_facts", lambda uid: PtraceFacts(1000, uid, 1, False, False))
    with pytest.raises(inject.PtraceDenied) as refused:
        attaching.detach(42)
    assert str(refused.value) == ("cannot detach from pid 42: permission denied: it is another user's process "
                                  "(uid 1001); run diag detach as that user or as root")
    with pytest.raises(inject.PtraceDenied) as refused:
        attaching.attach(42)
    assert str(refused.value).startswith("cannot attach to pid 42: permission denied: ")


LIBC = [(0x7F0000000000, 0x7F0000100000)]


@pytest.mark.parametrize("where, safe", [
    ("232 0x3 0x7ffd 0x1 0x0 0x0 0x0 0x7ffd0 0x7f0000000100", True),   # epoll_wait: holds no lock
    ("202 0x3 0x7ffd 0x1 0x0 0x0 0x0 0x7ffd0 0x7f0000000100", True),   # futex: waiting for the GIL
    ("12 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffd0 0x7f0000000100", False),      # brk: malloc growing the heap
    ("9 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffd0 0x7f0000000100", False),       # mmap
    ("-1 0x7ffd0 0x7f0000000100", False),                              # in the C library's code
    ("-1 0x7ffd0 0x55d000001000", True),                               # in the interpreter's code
    ("running", False),
    ("", False),
])
def test_the_borrowed_thread_must_be_outside_malloc_and_the_loader(where: str, safe: bool) -> None:
    assert safe_to_borrow(where, LIBC, "x86_64") is safe


def test_inspect_refuses_this_interpreter_only_when_unsupported() -> None:
    _facts, version = inspect(os.getpid())
    assert version == sys.version_info[:2]


# -- the accelerator's version gate --------------------------------------------------------

GATE = """
import sys
sys.version_info = (3, 15, 0, "final", 0)     # an interpreter newer than any diag was built for
import asyncio, json
from diag.collect import holders, task_origins
from diag.collect.task_collector import collect_tasks

async def main():
    lock = asyncio.Lock()
    async with lock:
        snap = collect_tasks()
    print(json.dumps({"accelerated": task_origins.accelerated(), "holders_c": holders._fast is not None,
                      "notes": list(snap.notes)}))

asyncio.run(main())
"""


def test_an_unknown_interpreter_version_runs_the_pure_python_paths_and_says_so_once() -> None:
    proc = subprocess.run([sys.executable, "-c", GATE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["accelerated"] is False and out["holders_c"] is False
    gate = [n for n in out["notes"] if "C accelerator" in n]
    assert gate == ["Python 3.15 is not one diag's C accelerator was built and tested for (3.11 to 3.13): "
                    "task ids, creators and holders are kept by the pure-Python path"]
