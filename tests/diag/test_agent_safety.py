"""The agent is safe around the program it serves: its forks, its subprocesses, its
files, its connections.  Each test runs a real program as a subprocess."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.cli import ROOT, diag_env

pytestmark = pytest.mark.timeout(120)

# Forks 40 times, each time while the agent is dumping (the GC paused) or profiling
# (yappi running), driven over HTTP by two client threads; each child reports its GC
# setting, yappi's state and how long a call-heavy function takes there.
FORKS_WHILE_PROFILED = """
import asyncio, gc, json, os, sys, threading, time, urllib.request
import diag.agent
import yappi

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
    return min(calls() for _ in range(5))

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
    baseline = fastest()
    clients = [threading.Thread(target=client, args=(path, method), daemon=True)
               for path, method in (("tasks?debug=2", "GET"), ("profile?seconds=0.5&clock=cpu", "POST"))]
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
            os.write(write, json.dumps(report).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as fh:
            report = json.loads(fh.read())
        os.waitpid(pid, 0)
        reports.append({**report, "during": during, "caught": caught})
    stop.set()
    for thread in clients:
        thread.join(60)
    print(json.dumps({"baseline": baseline, "children": reports, "parent_gc": gc.isenabled()}))

asyncio.run(main())
"""


def run_program(source: str, *args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    env = diag_env()
    env.pop("DIAG_AGENT", None)
    return subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(source), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("program_gc", ["on", "off"])
def test_a_child_forked_mid_dump_or_profile_runs_as_the_program_set_it(program_gc: str) -> None:
    proc = run_program(FORKS_WHILE_PROFILED, program_gc)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    children = result["children"]
    assert len(children) == 40
    # The forks really happened mid-profile (and, with the GC on, mid-dump).
    assert all(c["caught"] for c in children), children
    want_gc = program_gc == "on"
    assert [c["gc"] for c in children] == [want_gc] * 40, children
    assert [c["yappi"] for c in children] == [False] * 40, children
    assert result["parent_gc"] is want_gc
    # No leftover profiler slows the child's calls (yappi left running makes them several
    # times slower); the best of 5 runs against the parent's best before any profile.
    slowest = max(c["calls"] for c in children)
    assert slowest < 3 * result["baseline"], (slowest, result["baseline"])


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
