"""A wake-up lost across threads: a future set from another thread without
``call_soon_threadsafe`` queues the waiter's wake-up, but the loop sleeps on in its
selector.  Under ``diag run`` the program must hang as it does without diag (the agent's
heartbeat must not wake an idle loop and hide the bug), and ``diag leaks`` must say
``lost_wakeup``, naming the task that was never woken; the fixed twin must stay quiet.
Real programs over loopback, the CLI as a subprocess."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, LeakOptions, leak_report
from diag.model.sync_snapshot import SyncSnapshot
from diag.model.task_snapshot import Frame, LoopInfo, Unwoken, Wait
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

from .snapshots import snapshot, task

PROGRAM = """
import asyncio, os, sys, threading, time

SAFE = sys.argv[1:] == ["safe"]

async def poll(fut):
    return await fut

def device(loop, fut):
    time.sleep(0.3)
    if SAFE:
        loop.call_soon_threadsafe(fut.set_result, "reading")   # the fix
    else:
        fut.set_result("reading")                              # the bug: not the loop's thread

async def main():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    waiter = asyncio.create_task(poll(fut), name="poll")
    threading.Thread(target=device, args=(loop, fut), daemon=True).start()
    await waiter
    print("woken", flush=True)
    await asyncio.Event().wait()

if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def wait_for_woken(app: DiagRun) -> None:
    deadline = time.monotonic() + 30
    while "woken" not in app.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "woken" in app.output(), app.output()


def leaks(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_diag("leaks", url, "--format", "json", *args, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_future_set_from_another_thread_is_a_lost_wakeup_and_the_program_still_hangs(loop: str) -> None:
    with DiagRun(PROGRAM, env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 30
        while True:
            code, data = leaks(app.url)
            found = [f for f in data["findings"] if f["kind"] == "lost_wakeup"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found, data["findings"]
        (finding,) = found
        assert code == 1  # in the default --fail-on
        assert [t["name"] for t in finding["tasks"]] == ["poll"]
        assert "has slept" in finding["title"] and finding["title"].endswith("ready: a wake-up was lost")
        assert "wakes task" in finding["evidence"] and "(poll)" in finding["evidence"]
        assert "loop.call_soon_threadsafe" in finding["evidence"]
        # the agent did not wake the loop: the program hangs as it would without diag
        first = float(finding["title"].split("has slept ")[1].split("s ")[0])
        while True:
            _, later = leaks(app.url)
            (again,) = [f for f in later["findings"] if f["kind"] == "lost_wakeup"]
            slept = float(again["title"].split("has slept ")[1].split("s ")[0])
            if slept >= first + 1.0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert slept >= first + 1.0, (first, slept)
        assert "woken" not in app.output()
        text = run_diag("tasks", app.url).stdout
        assert "with 1 callback ready (a lost wake-up: diag leaks)" in text and "ASLEEP" in text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_fixed_twin_wakes_and_has_no_lost_wakeup(loop: str) -> None:
    with DiagRun(PROGRAM, args=("safe",), env={"LOOP": loop}) as app:
        wait_for_woken(app)
        # idle from now on, asleep in its poll with nothing ready: nothing to say
        time_idle = time.monotonic()
        while time.monotonic() - time_idle < 1.0:  # idle for a while: an episode would be recorded by now
            code, data = leaks(app.url, "--fail-on", "lost_wakeup")
            assert code == 0 and not [f for f in data["findings"] if f["kind"] == "lost_wakeup"], data
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json").stdout)
        (loop,) = tasks["loops"]
        assert loop["unwoken"] == [] and loop["unwoken_total"] == 0


T = 1_800_000_000.0  # the hand-built snapshots' time
POLL = Frame("/srv/app/device.py", 12, "poll", "return await fut")


def _with_loop(*episodes: Unwoken) -> SyncSnapshot:
    poll = task(5, coro="poll", stack=(POLL,), wait=Wait("future", "Future", seconds=4.0))
    loop = LoopInfo("0x7f01", 1, "MainThread", True, 0.0, stall_window=60.0, unwoken=episodes,
                    unwoken_total=len(episodes))
    tasks = snapshot(poll, loops=(loop,))
    return SyncSnapshot(tasks.taken_at, tasks.process, tasks, (), holders_tracked=True)


def test_past_episodes_in_the_window_are_a_verdict_and_old_ones_are_not() -> None:
    options = LeakOptions(min_wait=1.0)
    late = Unwoken(T - 40, 0.8, False, ("wakes task 5 (poll)",), (5,))
    report = leak_report(_with_loop(late, Unwoken(T - 30, 1.5, False, ("wakes task 5 (poll)",), (5,))), options)
    (finding,) = [f for f in report.findings if f.kind == "lost_wakeup"]
    assert finding.title.endswith("slept with callbacks ready 2 times in the last 60s, longest 1.5s: wake-ups "
                                  "were lost")
    assert [t.id for t in finding.tasks] == [5] and report.fails(DEFAULT_FAIL_ON)
    old = leak_report(_with_loop(Unwoken(T - 100, 1.0, False, ("wakes task 5 (poll)",), (5,))), options)
    assert "lost_wakeup" not in {f.kind for f in old.findings}


# The fixed program, but the thread that calls call_soon_threadsafe waits 1.5 s between
# queueing its callback and waking the loop, as one kept from the CPU would.
SLOW_WAKER = PROGRAM.replace("""    fut = loop.create_future()
""", """    write = loop._write_to_self
    def kept_from_the_cpu():
        time.sleep(1.5)
        write()
    loop._write_to_self = kept_from_the_cpu
    fut = loop.create_future()
""", 1)
assert SLOW_WAKER != PROGRAM


def test_a_wake_up_on_its_way_is_not_a_lost_one() -> None:
    # On a loaded machine the thread calling call_soon_threadsafe can be kept from the CPU
    # between queueing its callback and writing to the loop's wake-up pipe: the loop sleeps
    # with a callback ready, but the wake-up is coming.
    with DiagRun(SLOW_WAKER, args=("safe",)) as app:
        wait_for_woken(app)
        code, data = leaks(app.url)
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json").stdout)
    assert code == 0, data["findings"]
    assert not [f for f in data["findings"] if f["kind"] == "lost_wakeup"]
    (loop,) = tasks["loops"]
    assert loop["unwoken"] == [] and loop["unwoken_total"] == 0
