"""A wait that nothing left can end, with no sign of a gone side: no live task whose code
still to run reaches what it waits on, and nothing outside the tasks (a server, an open
connection's protocol, a pending future's callback, a signal handler, a thread) that can.
The same program with each of those able to end it gets no such verdict; a worker waiting
in a loop is not asked.  Real programs under ``diag run``, on asyncio and uvloop."""

from __future__ import annotations

import json
import time

import pytest

from tests.diag.test_leaks_evidence import RUN_ON, by_task, judged_as, leaks
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

ROLLOUT = """
import asyncio, os, signal, threading, time

class Store:
    def __init__(self):
        self.version = 1
        self.changed = asyncio.Event()

    def reload(self):
        self.version += 1
        self.changed.set()      # a pulse: whoever is not waiting yet misses it
        self.changed.clear()

STORE = None

async def rollout(store):
    await asyncio.sleep(0.2)    # the reload lands meanwhile
    await store.changed.wait()  # waits for a second reload

async def worker(store):
    while True:                 # waits for each reload in turn
        await store.changed.wait()

async def ticker(store, beats):
    while True:                 # holds the store, reads only its version
        beats.append(store.version)
        del beats[:-5]
        await asyncio.sleep(0.2)

class Reloader(asyncio.Protocol):
    def __init__(self, store):
        self.store = store

    def data_received(self, data):
        self.store.reload()

async def serve(reader, writer):
    STORE.reload()

def on_usr1():
    STORE.reload()

def poke(loop, store):
    while True:                 # a thread of the program's own, which may act at any time
        time.sleep(0.1)
        if os.environ.get("NEVER"):
            loop.call_soon_threadsafe(store.reload)

async def main():
    global STORE
    store = STORE = Store()
    setter = os.environ["SETTER"]
    loop = asyncio.get_running_loop()
    keep = [asyncio.create_task(ticker(store, []), name="ticker")]
    if setter == "worker":
        keep.append(asyncio.create_task(worker(store), name="rollout"))
    else:
        keep.append(asyncio.create_task(rollout(store), name="rollout"))
    await asyncio.sleep(0.05)
    store.reload()
    if setter == "server":
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
    elif setter == "protocol":
        server = await loop.create_server(lambda: Reloader(store), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        server.close()          # no new connections: the open one's protocol may still reload
    elif setter == "signal":
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    elif setter == "thread":
        threading.Thread(target=poke, args=(loop, None), daemon=True).start()
    # what main does once stopped, chosen now: its code still to run calls that function
    after = (lambda s: s.reload()) if setter == "main" else (lambda s: None)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if setter == "held":
        await stop_then_set(stop, store.changed)
    else:
        held = store.changed    # main holds the event itself, in a local it never reads again
        await stop.wait()
        after(store)
    del keep

async def stop_then_set(stop, event):
    await stop.wait()
    event.set()                 # holds the event in a local it reads once stopped
""" + RUN_ON

SETTERS = ["server", "protocol", "signal", "thread", "main", "held"]


def _rollout_waited(url: str, seconds: float) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = json.loads(run_diag("tasks", url, "--format", "json", "--debug", "2").stdout)["tasks"]
        if any(t["name"] == "rollout" and (t["wait"].get("seconds") or 0) >= seconds for t in tasks):
            return
        time.sleep(0.3)
    raise AssertionError("the rollout task never waited that long")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_wait_nothing_left_can_end_is_orphaned(loop: str) -> None:
    with DiagRun(ROLLOUT, env={"LOOP": loop, "SETTER": "none"}) as app:
        code, data = judged_as(app.url, {"rollout"}, "orphaned")
        (finding,) = by_task(data)["rollout"]
        assert code == 1 and "that nothing left can end" in finding["title"], finding
        assert "was last set" in finding["evidence"] and "nothing outside the tasks can reach it" in finding["evidence"]
        assert "ticker" not in by_task(data)
        (rollout,) = finding["tasks"]
        assert rollout["wait"].get("unreached") is True and rollout["wait"]["users"] == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("setter", SETTERS)
def test_a_wait_something_can_still_end_is_no_verdict(loop: str, setter: str) -> None:
    # A server whose handler names the global store, an open connection whose protocol
    # holds it, a signal handler naming it, a thread busy in the program's code, the main
    # task's code after its stop (through the store, or the event held in a local that code
    # reads): each may yet set the event.
    with DiagRun(ROLLOUT, env={"LOOP": loop, "SETTER": setter}) as app:
        _rollout_waited(app.url, 2.5)
        code, data = leaks(app.url, "--min-wait", "1")
        (finding,) = by_task(data)["rollout"]
        assert finding["kind"] == "suspect", data["findings"]
        (rollout,) = finding["tasks"]
        if setter in ("main", "held"):  # a task may act: nothing outside them is needed
            assert rollout["wait"]["users"], rollout["wait"]
        else:
            assert not rollout["wait"].get("unreached"), rollout["wait"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_worker_waiting_in_a_loop_is_not_asked(loop: str) -> None:
    with DiagRun(ROLLOUT, env={"LOOP": loop, "SETTER": "worker"}) as app:
        _rollout_waited(app.url, 2.5)
        code, data = leaks(app.url, "--min-wait", "1")
        assert "orphaned" not in {f["kind"] for f in data["findings"]}, data["findings"]
        for finding in by_task(data).get("rollout", []):
            assert all(t["wait"].get("users") is None for t in finding["tasks"]), finding
