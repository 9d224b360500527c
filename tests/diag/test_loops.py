"""The agent under the loops programs really run: their own task factories, uvloop,
several loops in several threads, and loops (and the interpreter) shutting down while
a dump is being taken.  Each program runs under ``diag run``; dumps go through the CLI.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import http


def wait_for_line(run: DiagRun, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.output():
        assert time.monotonic() < deadline, f"no {text!r} in:\n{run.output()}"
        assert run.proc is not None and run.proc.poll() is None, run.output()
        time.sleep(0.05)


def dump(run: DiagRun) -> dict[str, Any]:
    proc = run_diag("tasks", run.url, "--debug", "2", "--format", "json", "--timeout", "10", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def by_name(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in snap["tasks"]}


FACTORIES = r'''
import asyncio

made_by = []


def before(loop, coro, **kwargs):
    made_by.append("before")
    task = asyncio.Task(coro, loop=loop, **kwargs)
    task.factory = "before"
    return task


def after(loop, coro, **kwargs):
    made_by.append("after")
    task = asyncio.Task(coro, loop=loop, **kwargs)
    task.factory = "after"
    return task


async def park(event):
    await event.wait()


async def main():
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(park(event), name="under-the-first-factory")
    loop.set_task_factory(after)  # replaces whatever is installed now, diag's wrapper included
    right_away = asyncio.create_task(park(event), name="right-after-the-swap")
    await asyncio.sleep(0.6)  # the agent re-chains its wrapper in front of the new factory
    later = asyncio.create_task(park(event), name="after-the-swap")
    await asyncio.sleep(0)
    print("factories", first.factory, right_away.factory, later.factory, flush=True)
    print("ready", flush=True)
    await asyncio.sleep(3600)


loop = asyncio.new_event_loop()
loop.set_task_factory(before)  # set before the loop runs, so before the agent sees it
loop.run_until_complete(main())
'''


def test_program_task_factories_before_and_after_the_agent() -> None:
    with DiagRun(FACTORIES) as run:
        wait_for_line(run, "ready")
        assert "factories before after after" in run.output()  # the program's factories always ran
        tasks = by_name(dump(run))
        for name in ("under-the-first-factory", "right-after-the-swap", "after-the-swap"):
            assert tasks[name]["wait"]["kind"] == "event", tasks[name]
        # diag's record survives both: chained in front of the factory set before it saw the
        # loop, and re-chained in front of the one that replaced it.
        assert tasks["under-the-first-factory"]["created_by"]["function"] == "main"
        assert tasks["after-the-swap"]["created_by"]["function"] == "main"
        assert "Traceback" not in run.output()


UVLOOP = r'''
import asyncio
import uvloop


async def park(event):
    await event.wait()


async def nap():
    await asyncio.sleep(3600)


async def main():
    event = asyncio.Event()
    tasks = [asyncio.create_task(park(event), name=f"uv-park-{i}") for i in range(3)]
    tasks.append(asyncio.create_task(nap(), name="uv-nap"))
    print("loop", type(asyncio.get_running_loop()).__module__, flush=True)
    print("ready", flush=True)
    await asyncio.sleep(3600)


uvloop.run(main())
'''


def test_uvloop() -> None:
    pytest.importorskip("uvloop")
    with DiagRun(UVLOOP) as run:
        wait_for_line(run, "ready")
        assert "loop uvloop" in run.output()
        # uvloop sets the running loop through asyncio's package namespace: the agent sees
        # the loop start (heartbeats reach it) before anyone asks for a dump.
        time.sleep(0.3)
        health = json.loads(http("GET", run.url + "/debug/diag/health")[2])
        assert [lp["running"] for lp in health["loops"]] == [True], health
        assert health["loops"][0]["lag_seconds"] is not None and health["loops"][0]["stalled_seconds"] == 0.0
        tasks = by_name(dump(run))
        assert all(tasks[f"uv-park-{i}"]["wait"]["kind"] == "event" for i in range(3)), tasks
        assert tasks["uv-nap"]["wait"]["kind"] == "sleep"
        assert tasks["uv-park-0"]["stack"][-1]["function"] == "park"
        assert tasks["uv-park-0"]["created_by"]["function"] == "main"  # diag's factory runs on uvloop too
        assert "Traceback" not in run.output()


THREADS = r'''
import asyncio
import threading


async def park(event):
    await event.wait()


async def worker(i, started):
    event = asyncio.Event()
    tasks = [asyncio.create_task(park(event), name=f"t{i}-{j}") for j in range(2)]
    started.release()
    await asyncio.sleep(3600)


started = threading.Semaphore(0)
threads = [threading.Thread(target=asyncio.run, args=(worker(i, started),), name=f"loop-thread-{i}", daemon=True)
           for i in range(3)]
for t in threads:
    t.start()
for _ in threads:
    started.acquire()
print("ready", flush=True)
threading.Event().wait()
'''


def test_several_loops_in_several_threads() -> None:
    with DiagRun(THREADS) as run:
        wait_for_line(run, "ready")
        time.sleep(0.3)  # a heartbeat on each loop names its thread
        snap = dump(run)
        loops = {lp["id"]: lp for lp in snap["loops"]}
        assert len(loops) == 3 and all(lp["running"] for lp in loops.values()), loops
        tasks = by_name(snap)
        for i in range(3):
            mine = [tasks[f"t{i}-{j}"] for j in range(2)]
            assert {t["loop"] for t in mine} == {mine[0]["loop"]}
            assert loops[mine[0]["loop"]]["thread_name"] == f"loop-thread-{i}"
            assert all(t["wait"]["kind"] == "event" for t in mine)
        text = run_diag("tasks", run.url, "--format", "text", "--timeout", "10").stdout
        assert all(f"on thread loop-thread-{i}" in text for i in range(3)), text


SHUTDOWN = r'''
import asyncio
import sys


async def park(event):
    await event.wait()


async def main():
    event = asyncio.Event()
    lock = asyncio.Lock()
    await lock.acquire()
    tasks = [asyncio.create_task(park(event)) for _ in range(5000)]
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    for task in tasks:
        task.cancel()


asyncio.run(main())
print("loop closed", flush=True)
'''


@pytest.mark.parametrize("ending", ["exit code", "normal exit"])
def test_loop_and_interpreter_shut_down_while_dumps_run(ending: str) -> None:
    source = SHUTDOWN.replace("sys.argv[1]", "1.5")
    if ending == "exit code":
        source += "sys.exit(7)\n"
    expected = 7 if ending == "exit code" else 0
    with DiagRun(source) as run:
        wait_for_line(run, "ready")
        stop = threading.Event()
        errors: list[str] = []

        def hammer(endpoint: str) -> None:
            while not stop.is_set():
                try:
                    status, _, body = http("GET", f"{run.url}/debug/diag/{endpoint}", timeout=5)
                    if status >= 500 and status != 503:
                        errors.append(f"{endpoint}: {status} {body[:200]!r}")
                except OSError:
                    pass  # the process is going away
                except Exception as err:  # http.client's errors on a half-closed socket
                    if "Traceback" in str(err):
                        errors.append(str(err))

        clients = [threading.Thread(target=hammer, args=(e,), daemon=True) for e in ("tasks", "sync", "tasks?debug=2")]
        for c in clients:
            c.start()
        assert run.proc is not None
        try:
            code = run.proc.wait(20)
        finally:
            stop.set()
            for c in clients:
                c.join(10)
        out = run.output()
        assert code == expected, out
        assert "loop closed" in out
        assert "Traceback" not in out and "Exception" not in out and "Fatal" not in out, out
        assert not errors, errors


EXIT_MID_DUMP = r'''
import asyncio
import os
import sys
import threading
import time


async def park(event):
    await event.wait()


async def main():
    event = asyncio.Event()
    tasks = [asyncio.create_task(park(event)) for _ in range(5000)]
    print("ready", flush=True)
    # Leave while the agent is walking the tasks: the watchdog says when a dump runs.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(t.name == "diag-agent-request" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.001)
    print("leaving", flush=True)
    sys.exit(5)


asyncio.run(main())
'''


def test_interpreter_exits_with_a_dump_in_flight() -> None:
    with DiagRun(EXIT_MID_DUMP) as run:
        wait_for_line(run, "ready")
        result: list[Any] = []

        def ask() -> None:
            try:
                result.append(http("GET", run.url + "/debug/diag/tasks?debug=2", timeout=20))
            except Exception as err:
                result.append(err)

        client = threading.Thread(target=ask, daemon=True)
        client.start()
        assert run.proc is not None
        code = run.proc.wait(30)
        client.join(25)
        out = run.output()
        assert "leaving" in out
        assert code == 5, out
        assert "Traceback" not in out and "Fatal" not in out and "Exception" not in out, out

