"""A full dump of more tasks than ``STREAM_TASKS`` is collected as it is sent, a slice at
a time: every task is there, in creation order, described as a smaller dump describes it;
the limit, the state and wait filters and the await cycles work as on a smaller dump; a
limit met early stops the walk.  A real program under ``diag run``, the CLI as a
subprocess over loopback, on asyncio's loop and uvloop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from diag.agent.endpoints import STREAM_TASKS
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

N = STREAM_TASKS + 5_000

PROGRAM = """
import asyncio, os, sys

N = int(sys.argv[1])
gate = asyncio.Event()

async def leaf():
    await gate.wait()

async def middle():
    await leaf()

async def worker():
    await middle()

async def ping(other):
    await other[0]

async def main():
    workers = [asyncio.create_task(worker(), name=f"worker-{i}") for i in range(N)]
    a_box, b_box = [None], [None]
    a = asyncio.create_task(ping(b_box), name="ping-a")
    b = asyncio.create_task(ping(a_box), name="ping-b")
    a_box[0], b_box[0] = a, b
    await asyncio.sleep(0)
    print("ready", flush=True)
    await asyncio.Event().wait()

if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def dump(url: str, *args: str) -> dict[str, Any]:
    proc = run_diag("tasks", url, "--debug", "2", "--format", "json", "--timeout", "60", *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def ready(app: DiagRun) -> None:
    import time

    deadline = time.monotonic() + 60
    while "ready" not in app.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ready" in app.output(), app.output()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_task_of_a_big_full_dump_is_sent(loop: str) -> None:
    with DiagRun(PROGRAM, args=(str(N),), env={"LOOP": loop}) as app:
        ready(app)
        doc = dump(app.url, "--limit", str(N + 100))
        small = dump(app.url, "--limit", "5")
        waiting = dump(app.url, "--limit", str(N + 100), "--state", "waiting", "--filter", "ping")
        grouped = json.loads(run_diag("tasks", app.url, "--format", "json", "--timeout", "60", timeout=120).stdout)
    tasks = doc["tasks"]
    assert doc["total_tasks"] == len(tasks) == N + 3  # the workers, the two pings, the main task
    assert any(n.startswith("streamed: ") for n in doc["notes"]), doc["notes"]
    ids = [t["id"] for t in tasks]
    assert ids == sorted(ids)
    workers = [t for t in tasks if t["name"].startswith("worker-")]
    assert len(workers) == N
    (group,) = [g for g in grouped["tasks"] if g["coro"] == "worker"]  # the whole snapshot's description
    assert group["count"] == N
    for t in (workers[0], workers[-1]):
        assert t["coro"] == "worker"
        assert t["wait"]["kind"] == "event" and t["wait"]["primitive"]["label"] == "__main__.gate"
        assert t["wait"]["primitive"] == group["wait"]["primitive"]
        assert t["stack"] == group["stack"]
        assert [f["function"] for f in t["stack"]][:4] == ["Event.wait", "leaf", "middle", "worker"]
    # the two pings await each other: a cycle found across the slices
    pings = {t["name"]: t["id"] for t in tasks if t["name"].startswith("ping-")}
    assert sorted(map(sorted, doc["await_cycles"])) == [sorted(pings.values())]

    # a limit met in the first slice: the rest are counted, not described
    assert [t["id"] for t in small["tasks"]] == ids[:5]
    assert small["total_tasks"] == N + 3
    assert f"showing 5 of {N + 3} tasks (--limit)" in small["notes"]

    # filters as on any dump (the regex in the client, the state in the agent)
    assert sorted(t["name"] for t in waiting["tasks"]) == ["ping-a", "ping-b"]


APP = """
import asyncio, sys
from aiohttp import web
import diag.aiohttp

N = int(sys.argv[1])

async def main():
    gate = asyncio.Event()
    tasks = [asyncio.create_task(gate.wait()) for _ in range(N)]
    app = web.Application()
    diag.aiohttp.setup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("port", site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_big_dump_served_on_the_programs_own_loop_is_not_streamed() -> None:
    # diag.aiohttp answers on the app's loop, joining the answer there: a walk of every
    # task slice by slice would hold that loop for as long as it takes
    import time

    from tests.support.target import http

    with DiagRun(APP, args=(str(N),)) as app:
        deadline = time.monotonic() + 60
        while "port" not in app.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = app.output().split("port ")[1].split()[0]
        status, _, body = http("GET", f"http://127.0.0.1:{port}/debug/diag/tasks?debug=2&wire=2&limit={N + 100}",
                               timeout=60)
        assert status == 200, body[:300]
        doc = json.loads(body)
        streamed = dump(app.url, "--limit", str(N + 100))  # the agent's own port: streamed
    assert not [n for n in doc["notes"] if n.startswith("streamed: ")], doc["notes"]
    assert [n for n in streamed["notes"] if n.startswith("streamed: ")], streamed["notes"]
    assert doc["total_tasks"] == streamed["total_tasks"]


def test_a_client_that_leaves_mid_stream_does_not_keep_the_dump_lock() -> None:
    # one streamed dump at a time: the lock is held while it is sent, and given back when
    # the client goes away halfway, or every later dump would wait and get 503 busy
    import socket
    import urllib.parse

    with DiagRun(PROGRAM, args=(str(N),)) as app:
        ready(app)
        parts = urllib.parse.urlsplit(app.url)
        for _ in range(3):
            with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
                sock.sendall(f"GET /debug/diag/tasks?debug=2&wire=2&limit={N + 100} HTTP/1.1\r\n"
                             f"Host: {parts.netloc}\r\n\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            # closed after the first piece: the agent finds out on its next write
        doc = dump(app.url, "--limit", "5")  # a lock still held: 503 busy after 10 s, exit 3
        assert doc["total_tasks"] == N + 3
