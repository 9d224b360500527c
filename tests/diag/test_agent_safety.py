"""The agent is safe around the program it serves: its forks, its subprocesses, its
files, its connections.  Each test runs a real program as a subprocess."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import diag.agent
from diag.agent import server as agent_server
from diag.agent.endpoints import Response
from diag.agent_protocol import PREFIX
from diag.cli.run_cmd import BOOTSTRAP_DIR, PACKAGE_PARENT
from tests.diag.test_budgets import agent  # noqa: F401  (the fixture: an agent in this process)
from tests.support.cli import ROOT, assert_one_line_error, diag_env, run_diag
from tests.support.programs import DiagRun
from tests.support.target import free_port

pytestmark = pytest.mark.timeout(120)

# Forks 40 times, each time while the agent is dumping (the GC paused) or profiling
# (yappi running), driven over HTTP by two client threads; each child reports its GC
# setting, yappi's state and how long a call-heavy function takes there.
FORKS_WHILE_PROFILED = """
import asyncio, faulthandler, gc, json, os, select, signal, sys, threading, time, urllib.request
import diag.agent
import yappi

faulthandler.enable()  # a child that hangs is killed with SIGABRT: its stack goes to stderr
faulthandler.dump_traceback_later(85, exit=True)

program_gc = sys.argv[1] == "on"
if not program_gc:
    gc.disable()
agent = diag.agent.start("127.0.0.1:0")
stop = threading.Event()

def client(path, method):
    while not stop.is_set():
        req = urllib.request.Request(f"{agent.url}/debug/diag/{path}", method=method,
                                     data=b"" if method == "POST" else None)
        try:
            urllib.request.urlopen(req, timeout=60).read()
        except Exception:
            pass

def calls():
    def leaf(i):
        return i
    started = time.perf_counter()
    for i in range(20000):
        leaf(i)
    return time.perf_counter() - started

def fastest():
    return min(calls() for _ in range(9))

def wait_for(condition):
    deadline = time.monotonic() + 20
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.0005)
    return condition()

async def park(event):
    await event.wait()

async def main():
    events = [asyncio.Event() for _ in range(3000)]
    tasks = [asyncio.create_task(park(e)) for e in events]
    clients = [threading.Thread(target=client, args=(path, method), daemon=True)
               for path, method in (("tasks?debug=2", "GET"), ("profile?seconds=0.5&clock=cpu&force=1", "POST"))]
    for thread in clients:
        thread.start()
    reports = []
    for i in range(40):
        during = "profile" if i % 2 else "dump"
        if during == "profile":
            caught = wait_for(yappi.is_running)
        else:
            caught = wait_for(lambda: not gc.isenabled()) if program_gc else wait_for(lambda: True)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            report = {"gc": gc.isenabled(), "yappi": bool(yappi.is_running()), "calls": fastest()}
            sys.setprofile(None)  # drops any profile hook this thread still has
            report["unhooked"] = fastest()
            os.write(write, json.dumps(report).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as fh:
            if select.select([fh], [], [], 30)[0]:
                report = json.loads(fh.read())
            else:
                os.kill(pid, signal.SIGABRT)
                report = {"hung": True}
        os.waitpid(pid, 0)
        reports.append({**report, "during": during, "caught": caught})
    stop.set()
    for thread in clients:
        thread.join(60)
    print(json.dumps({"children": reports, "parent_gc": gc.isenabled()}))

if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def run_program(source: str, *args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = diag_env()
    env.pop("DIAG_AGENT", None)
    return subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(source), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.serial
@pytest.mark.parametrize(("program_gc", "loop"), [("on", "asyncio"), ("off", "asyncio"), ("on", "uvloop")])
def test_a_child_forked_mid_dump_or_profile_runs_as_the_program_set_it(program_gc: str, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    proc = run_program(FORKS_WHILE_PROFILED, program_gc, loop)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    children = result["children"]
    assert len(children) == 40
    # The forks really happened mid-profile (and, with the GC on, mid-dump).
    assert all(c["caught"] for c in children), children
    want_gc = program_gc == "on"
    assert [c.get("gc") for c in children] == [want_gc] * 40, (children, proc.stderr[-5000:])
    assert [c.get("yappi") for c in children] == [False] * 40, children
    assert result["parent_gc"] is want_gc
    # No profile hook is left on the child's thread: yappi left hooked makes these calls
    # about twenty times slower. Each child compares its calls with the same calls after it
    # drops any hook itself, moments later in the same process, so a loaded machine slows both.
    ratios = [c["calls"] / c["unhooked"] for c in children]
    assert max(ratios) < 3, [(c["calls"], c["unhooked"]) for c in children]


def test_overlapping_pauses_keep_the_gc_off_until_the_last_ends_then_restore_the_program_setting() -> None:
    from diag.collect import gc_pause

    assert gc.isenabled()
    first, second = gc_pause.paused_gc(), gc_pause.paused_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ends before the other (two agent threads)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled() and gc_pause.pauses_running() == 0
    gc.disable()
    try:
        with gc_pause.paused_gc():
            pass
        assert not gc.isenabled()  # the program's own setting, kept
    finally:
        gc.enable()


# -- files that are not the agent's ----------------------------------------------------------

# Writes a marker when it runs: a refused ``diag run`` must not have started it.
MARKS_THAT_IT_RAN = "import sys; open(sys.argv[1], 'w').write('ran')"


def deployment_env(**extra: str) -> dict[str, str]:
    """The environment of a service deployed with the bootstrap (``diag run --print-env``)."""
    env = {k: v for k, v in diag_env().items() if not k.startswith("DIAG_AGENT")}
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, PACKAGE_PARENT])
    env.update(extra)
    return env


def somebodys_paths(tmp_path: Path) -> dict[str, Path]:
    """Things at a path the agent is told to bind, none of them the agent's."""
    (tmp_path / "precious.txt").write_text("my data\n")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-link").symlink_to(tmp_path / "precious.txt")
    return {"regular file": tmp_path / "precious.txt", "directory": tmp_path / "a-dir",
            "symbolic link": tmp_path / "a-link"}


def test_diag_run_refuses_a_socket_path_that_holds_somebodys_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for what, path in somebodys_paths(tmp_path).items():
        proc = run_diag("run", "--agent", f"unix:{path}", "--", sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker))
        line = assert_one_line_error(proc, 2)
        assert f"refusing unix:{path}: a {what} is there" in line, line
        assert not marker.exists()
    assert (tmp_path / "precious.txt").read_text() == "my data\n"
    assert (tmp_path / "a-dir").is_dir() and (tmp_path / "a-link").is_symlink()


def test_diag_run_refuses_a_socket_another_process_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        inode = os.stat(path).st_ino
        proc = run_diag("run", "--agent", f"unix:{path}", "--", sys.executable, "-c", "pass")
        assert "a process listens on that socket" in assert_one_line_error(proc, 2)
        assert os.stat(path).st_ino == inode


def test_a_stale_socket_is_replaced_and_the_agent_removes_its_own_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # an agent killed with -9 leaves this
        dead.bind(str(path))
    source = f"import os, diag.agent; print(os.stat({str(path)!r}).st_ino, diag.agent.current().url)"
    proc = subprocess.run([sys.executable, "-c", source], env=deployment_env(DIAG_AGENT=f"unix:{path}"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == f"unix:{path}"
    assert not path.exists()  # removed at exit: it was the agent's own


def test_a_deployed_service_runs_without_the_agent_when_its_socket_path_is_taken(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for what, path in somebodys_paths(tmp_path).items():
        proc = subprocess.run([sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker)],
                              env=deployment_env(DIAG_AGENT=f"unix:{path}"), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and marker.read_text() == "ran", proc.stderr
        assert proc.stderr.splitlines() == [f"diag agent: not started: refusing unix:{path}: a {what} is there; "
                                            "the agent only replaces a stale socket nobody listens on"]
        marker.unlink()
    assert (tmp_path / "precious.txt").read_text() == "my data\n"


def test_start_in_code_refuses_a_taken_socket_path_like_a_bad_address(tmp_path: Path) -> None:
    path = somebodys_paths(tmp_path)["regular file"]
    source = (f"import diag.agent\nfrom diag.errors import UsageError\ntry:\n"
              f"    diag.agent.start('unix:{path}')\nexcept UsageError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", source], env=diag_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"refusing unix:{path}: a regular file is there")
    assert path.read_text() == "my data\n"


# Plants a link where the agent could write its temporary record, and replaces its
# record by another file before exiting: the agent writes through neither and unlinks
# neither.
AGENT_DIR_NEIGHBOURS = """
import os, sys, diag.agent
agents, precious = sys.argv[1], sys.argv[2]
os.makedirs(agents)
for name in (f".{os.getpid()}.json.tmp", f"{os.getpid()}.json.tmp"):
    os.symlink(precious, os.path.join(agents, name))
diag.agent.start(agent_dir=agents)
record = os.path.join(agents, f"{os.getpid()}.json")
assert os.path.exists(record)
os.replace(record, record + ".mine")
with open(record, "w") as fh:
    fh.write("somebody else's")
print(os.getpid())
"""


def test_the_agent_directory_holds_nothing_of_ours_but_our_own_record(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("my data\n")
    agents = tmp_path / "agents"
    proc = subprocess.run([sys.executable, "-c", AGENT_DIR_NEIGHBOURS, str(agents), str(precious)],
                          env=diag_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pid = proc.stdout.strip()
    assert precious.read_text() == "my data\n"
    assert (agents / f"{pid}.json").read_text() == "somebody else's"
    assert sorted(p.name for p in agents.iterdir()) == sorted(
        [f".{pid}.json.tmp", f"{pid}.json.tmp", f"{pid}.json", f"{pid}.json.mine"])
    assert json.loads((agents / f"{pid}.json.mine").read_text())["pid"] == int(pid)


# -- one agent per process ----------------------------------------------------------------

# Starts three Python subprocesses, which report whether they inherited the agent's
# address and whether they have an agent; then keeps serving.
SPAWNS_PYTHON_CHILDREN = """
import asyncio, json, os, subprocess, sys

CHILD = ("import json, os, diag.agent; a = diag.agent.current(); "
         "print(json.dumps({'pid': os.getpid(), 'env': os.environ.get('DIAG_AGENT'), 'agent': a and a.url}))")

async def main():
    reports = []
    for _ in range(3):
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
        reports.append({**json.loads(child.stdout), "stderr": child.stderr})
    with open("children.tmp", "w") as fh:
        json.dump(reports, fh)
    os.replace("children.tmp", "children.json")
    await asyncio.Event().wait()

asyncio.run(main())
"""


def children_reports(app: DiagRun) -> list[dict[str, object]]:
    report = Path(app.dir.name) / "children.json"
    deadline = time.monotonic() + 60
    while not report.exists():
        assert time.monotonic() < deadline and app.proc is not None and app.proc.poll() is None, app.output()
        time.sleep(0.05)
    return list(json.loads(report.read_text()))


@pytest.mark.parametrize("kind", ["unix", "fixed port"])
def test_python_subprocesses_do_not_take_the_agents_address(kind: str, tmp_path: Path) -> None:
    agent = f"unix:{tmp_path / 'agent.sock'}" if kind == "unix" else f"127.0.0.1:{free_port()}"
    with DiagRun(SPAWNS_PYTHON_CHILDREN, agent=agent) as app:
        inode = os.stat(tmp_path / "agent.sock").st_ino if kind == "unix" else None
        children = children_reports(app)
        assert [(c["env"], c["agent"], c["stderr"]) for c in children] == [(None, None, "")] * 3, children
        if inode is not None:
            assert os.stat(tmp_path / "agent.sock").st_ino == inode
        proc = run_diag("tasks", app.url, "--format", "json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["process"]["pid"] == app.proc.pid  # type: ignore[union-attr]


def test_with_an_agent_dir_each_python_subprocess_has_its_own_agent(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SPAWNS_PYTHON_CHILDREN))
    env = {k: v for k, v in diag_env().items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "diag", "run", "--agent-dir", str(agents), "--",
                             sys.executable, str(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        report = tmp_path / "children.json"
        deadline = time.monotonic() + 60
        while not report.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        children = json.loads(report.read_text())
        urls = {c["agent"] for c in children}
        assert len(urls) == 3 and None not in urls, children
        assert all("diag agent: http://127.0.0.1:" in c["stderr"] for c in children), children
        parent = json.loads((agents / f"{proc.pid}.json").read_text())
        assert parent["url"] not in urls
    finally:
        proc.kill()
        proc.wait(10)


# -- tokens and addresses a person asked for ----------------------------------------------------

def raw_status(url: str, authorization: bytes) -> int:
    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /debug/diag/health HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
                     + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_the_token_is_compared_exactly_as_configured_after_bearer_in_any_case() -> None:
    with DiagRun("import time\ntime.sleep(600)\n", env={"DIAG_AGENT_TOKEN": " padded "}) as app:
        proc = run_diag("tasks", app.url, "--format", "json", env=diag_env(DIAG_AGENT_TOKEN=" padded "))
        assert proc.returncode == 0, proc.stderr
        for header in (b"Bearer  padded ", b"bearer  padded ", b"BEARER  padded "):
            assert raw_status(app.url, header) == 200, header
        for header in (b" padded ", b"padded", b"Bearer padded", b"Bearer  padded", b"Basic  padded ",
                       b"Bearer"):
            assert raw_status(app.url, header) == 401, header


@pytest.mark.parametrize("token", ["caf\u00e9-\u20ac", "two\nlines"])
def test_a_token_that_cannot_travel_in_a_header_is_one_clean_line(token: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = diag_env(DIAG_AGENT_TOKEN=token)
    line = assert_one_line_error(run_diag("run", "--", sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker),
                                          env=env), 2)
    assert "the agent token (DIAG_AGENT_TOKEN) holds" in line and "printable ASCII" in line
    assert token not in line and not marker.exists()
    client = run_diag("tasks", f"http://127.0.0.1:{free_port()}", env=env)
    assert "the agent token (DIAG_AGENT_TOKEN) holds" in assert_one_line_error(client, 2)
    deployed = subprocess.run([sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker)],
                              env=deployment_env(DIAG_AGENT="127.0.0.1:0", DIAG_AGENT_TOKEN=token),
                              capture_output=True, text=True, timeout=60)
    assert deployed.returncode == 0 and marker.exists(), deployed.stderr
    assert len(deployed.stderr.splitlines()) == 1 and "Traceback" not in deployed.stderr
    assert deployed.stderr.startswith("diag agent: not started: the agent token")
    in_code = subprocess.run([sys.executable, "-c", "import diag.agent\nfrom diag.errors import UsageError\n"
                              "try:\n    diag.agent.start()\nexcept UsageError as err:\n    print(err)\n"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert in_code.returncode == 0 and in_code.stdout.startswith("the agent token"), in_code.stderr


def test_diag_run_refuses_a_public_agent_without_a_token_before_starting_the_program(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {k: v for k, v in diag_env().items() if k != "DIAG_AGENT_TOKEN"}
    proc = run_diag("run", "--agent", "0.0.0.0:0", "--", sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker),
                    env=env)
    assert "refusing to bind 0.0.0.0: a non-loopback agent needs DIAG_AGENT_TOKEN" in assert_one_line_error(proc, 2)
    assert not marker.exists()
    # Deployed with the environment, the service still runs, without its agent.
    deployed = subprocess.run([sys.executable, "-c", MARKS_THAT_IT_RAN, str(marker)],
                              env=deployment_env(DIAG_AGENT="0.0.0.0:0"), capture_output=True, text=True,
                              timeout=60)
    assert deployed.returncode == 0 and marker.exists()
    assert deployed.stderr.splitlines() == [
        "diag agent: not started: refusing to bind 0.0.0.0: a non-loopback agent needs DIAG_AGENT_TOKEN"]


# -- connections ---------------------------------------------------------------------------------

def agent_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_slow_clients_are_cut_and_cannot_keep_others_out() -> None:
    with DiagRun("import time\ntime.sleep(600)\n") as app:
        port = agent_port(app.url)
        slow = []
        for _ in range(40):  # more than MAX_CONNECTIONS, each trickling its request head
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /debug/diag/health HTTP/1.1\r\n")
            slow.append(sock)
        opened = time.monotonic()
        try:
            # A new client gets in once the slow ones have waited EVICT_AFTER: each takes
            # the place of the one that has waited longest.
            answered = None
            while time.monotonic() - opened < agent_server.EVICT_AFTER + 5:
                for sock in slow:
                    try:
                        sock.sendall(b"X")
                    except OSError:
                        pass
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                        client.sendall(b"GET /debug/diag/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        status = client.recv(12)
                except OSError:
                    status = b""
                if status.startswith(b"HTTP/1.1 200"):
                    answered = time.monotonic() - opened
                    break
                time.sleep(0.2)
            assert answered is not None, "a client never got in past the slow ones"
            # Every slow connection is cut once its head is late, however it trickles.
            cut_by = opened + agent_server.HEAD_TIMEOUT + 5
            for sock in slow:
                sock.settimeout(max(0.1, cut_by - time.monotonic()))
                try:
                    while sock.recv(4096):  # a 503 for the ones past the cap, then the end
                        pass
                except ConnectionResetError:
                    pass
        finally:
            for sock in slow:
                sock.close()


def test_big_answers_are_built_one_at_a_time_and_sent_within_the_budget(agent: diag.agent.Agent) -> None:
    size = 20 * 1024 * 1024
    built: list[float] = []
    building = [0, 0]  # now, most at once

    def big(query: Any, exclude: Any) -> Response:
        building[0] += 1
        building[1] = max(building)
        time.sleep(0.05)
        body = query["n"].encode().ljust(size, b" ")
        built.append(time.monotonic())
        building[0] -= 1
        return Response(200, body)

    agent.endpoints.add("test-big", big, paced=True)
    port = agent_port(agent.url)
    clients = []
    for n in range(6):  # they ask, then read nothing: the answers pile up in the agent
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET {PREFIX}/test-big?n={n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        clients.append(sock)
    try:
        in_flight = agent_server.MAX_SENDING_BYTES // size
        deadline = time.monotonic() + 20
        while len(built) < in_flight + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Nothing more is built while nobody reads (a pause can only miss a bug, not fake one).
        time.sleep(0.5)
        assert len(built) == in_flight + 1, built
        assert building[1] == 1
        # Reading frees room: every client gets its answer.  All read at once, as separate
        # clients would: one after another, the last would wait its turn for longer than the
        # agent lets an unread answer sit on a busy machine (it cuts a client that slow).
        bodies = [bytearray() for _ in clients]

        def read(sock: socket.socket, into: bytearray) -> None:
            while chunk := sock.recv(1 << 20):
                into += chunk

        readers = [threading.Thread(target=read, args=(sock, body)) for sock, body in zip(clients, bodies)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
        assert all(b.startswith(b"HTTP/1.1 200") and len(b) > size for b in bodies), [
            (bytes(b[:15]), len(b)) for b in bodies]
        assert len(built) == 6 and building[1] == 1
    finally:
        for sock in clients:
            sock.close()
