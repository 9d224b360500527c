"""Coroutines handed to another loop with ``run_coroutine_threadsafe`` and awaited.

A program that runs a second event loop in a thread of its own (an SDK's worker loop)
hands it coroutines and awaits their futures.  The wait names that loop and the
coroutine's task there (or that the loop has not started it); when that loop is blocked,
its ``loop_blocked`` verdict names the tasks waiting on it, which are then no suspects of
their own.  Real programs under ``diag run``: the main loop on asyncio and uvloop, the
worker loop asyncio's (uvloop's ready queue cannot be read)."""

from __future__ import annotations

import re
import time

import pytest

from tests.diag.test_leaks_evidence import RUN_ON, by_task, dump_until, leaks
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

WORKER_LOOP = """
import asyncio, os, queue, signal, threading

worker_loop = asyncio.new_event_loop()
threading.Thread(target=worker_loop.run_forever, name="agent-worker-loop", daemon=True).start()
chunks = queue.Queue(maxsize=2)
gate = threading.Event()

async def produce():
    for n in range(5):
        await asyncio.sleep(0.05)
        if os.environ["MODE"] == "block":
            chunks.put(n)                     # the reader went away: the third put blocks the loop's thread
    await asyncio.sleep(3600)                # "turn": parked, a timer ends it (an Event nobody can reach would be a leak)

async def slow_answer():
    await asyncio.sleep(3600)                # started on the worker loop before it blocked

async def answer():
    return 42

async def invoke(coro):
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, worker_loop))

async def main():
    first = asyncio.create_task(invoke(slow_answer()), name="slow-caller")
    while not any(t.get_coro().__name__ == "slow_answer" for t in asyncio.all_tasks(worker_loop)):
        await asyncio.sleep(0.01)
    asyncio.run_coroutine_threadsafe(produce(), worker_loop)
    await asyncio.sleep(0.5)                  # the producer has blocked its loop by now (or not, in "turn")
    keep = [first] + [asyncio.create_task(invoke(answer()), name=f"caller-{i}") for i in range(2)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    os._exit(0)                               # the worker loop's thread never ends
""" + RUN_ON

CALLERS = {"slow-caller", "caller-0", "caller-1"}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tasks_waiting_on_a_blocked_worker_loop_are_named_in_its_loop_blocked_verdict(loop: str) -> None:
    with DiagRun(WORKER_LOOP, env={"LOOP": loop, "MODE": "block"}) as app:
        tasks = dump_until(app.url, lambda ts: sum(t["name"] in CALLERS and (t["wait"].get("seconds") or 0) >= 1
                                                   for t in ts) == 3)
        waits = {t["name"]: t["wait"] for t in tasks if t["name"] in CALLERS}
        assert {w["detail"] for w in waits.values()} == {"run_coroutine_threadsafe"}, waits
        assert len({w["remote_loop"] for w in waits.values()}) == 1, waits
        assert waits["slow-caller"]["remote_task"] is not None  # its coroutine runs as a task there
        assert waits["caller-0"]["remote_task"] is None and waits["caller-1"]["remote_task"] is None  # never started
        deadline = time.monotonic() + 60
        while True:
            code, data = leaks(app.url, "--min-wait", "1")
            blocked = [f for f in data["findings"] if f["kind"] == "loop_blocked"]
            named = {t["name"] for f in blocked for t in f["tasks"]}
            if named == CALLERS or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        (finding,) = blocked
        assert named == CALLERS, data["findings"]
        assert "thread agent-worker-loop is running" in finding["evidence"], finding
        assert re.search(r"3 tasks of another loop wait, with no timeout, on coroutines handed to this one with "
                         r"run_coroutine_threadsafe, which it cannot run: ", finding["evidence"]), finding
        assert "slow-caller" not in {name for name, fs in by_task(data).items() if any(f["kind"] == "suspect" for f in fs)}
        assert code == 1
        shown = run_diag("tasks", app.url, "--format", "text").stdout  # grouped: one line for the three
        assert re.search(r"3 tasks @ run_coroutine_threadsafe \(on loop 0x[0-9a-f]+: 1 started, 2 not started\)",
                         shown), shown
        every = run_diag("tasks", app.url, "--format", "text", "--debug", "2").stdout
        assert re.search(r'"slow-caller" \[run_coroutine_threadsafe \(on loop 0x[0-9a-f]+, task \d+\)', every), every
        assert len(re.findall(r'"caller-\d" \[run_coroutine_threadsafe \(on loop 0x[0-9a-f]+, not started\)',
                              every)) == 2, every


def test_a_turning_worker_loop_gives_no_verdict_though_its_callers_wait() -> None:
    with DiagRun(WORKER_LOOP, env={"LOOP": "asyncio", "MODE": "turn"}) as app:
        tasks = dump_until(app.url, lambda ts: any(t["name"] == "slow-caller" and (t["wait"].get("seconds") or 0) >= 1.5
                                                   for t in ts))
        (slow,) = [t for t in tasks if t["name"] == "slow-caller"]
        assert slow["wait"]["remote_task"] is not None, slow
        code, data = leaks(app.url, "--min-wait", "1")
        assert not [f for f in data["findings"] if f["kind"] == "loop_blocked"], data["findings"]
        assert code == 0, data["findings"]
