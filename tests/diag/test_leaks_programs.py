"""``diag leaks`` on stand-alone programs run under ``diag run`` (they never import diag)."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from tests.support.cli import run_diag
from tests.support.programs import DiagRun

EVERY_VERDICT = """
import asyncio

JOBS = asyncio.Queue()          # reachable: its idle worker is not a leak
LOCK = asyncio.Lock()

async def idle_worker():
    while True:
        await JOBS.get()

async def lonely_worker():
    queue = asyncio.Queue()     # nobody else can ever put into it
    await queue.get()

async def forgets_to_release():
    await LOCK.acquire()        # returns without LOCK.release()

async def needs_lock():
    async with LOCK:
        pass

async def ordered(first, second):
    async with first:
        await asyncio.sleep(0.01)
        async with second:
            pass

async def main():
    keep = [asyncio.create_task(idle_worker(), name="idle-worker"),
            asyncio.create_task(lonely_worker(), name="lonely-worker")]
    await asyncio.create_task(forgets_to_release(), name="forgetful")
    keep.append(asyncio.create_task(needs_lock(), name="needs-lock"))
    a, b = asyncio.Lock(), asyncio.Lock()
    keep += [asyncio.create_task(ordered(a, b), name="ab"), asyncio.create_task(ordered(b, a), name="ba")]
    del a, b
    await asyncio.sleep(3600)

asyncio.run(main())
"""

ONLY_HEALTHY = """
import asyncio

JOBS = asyncio.Queue()

async def idle_worker():
    while True:
        await JOBS.get()

async def ticker():
    while True:
        await asyncio.sleep(0.05)

async def main():
    tasks = [asyncio.create_task(idle_worker(), name="idle-worker"), asyncio.create_task(ticker(), name="ticker")]
    stop = asyncio.Event()
    await stop.wait()

asyncio.run(main())
"""


def report(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_diag("leaks", url, "--format", "json", *args, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def names(finding: dict[str, Any]) -> set[str]:
    return {t["name"] for t in finding["tasks"]}


def test_every_verdict_on_a_program_that_does_not_import_diag() -> None:
    with DiagRun(EVERY_VERDICT) as app:
        time.sleep(1.0)
        code, data = report(app.url, "--min-wait", "0")
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for f in data["findings"]:
            by_kind.setdefault(f["kind"], []).append(f)
        assert code == 1
        proven = set().union(*(names(f) for f in by_kind["proven_leak"]))
        assert proven == {"lonely-worker"}  # ab and ba are proven too: their deadlock says so, once
        (permit,) = by_kind["leaked_permit"]
        assert permit["primitive"]["label"] == "__main__.LOCK"
        assert permit["site"][0]["function"] == "forgets_to_release"
        assert names(permit) == {"needs-lock"}
        (deadlock,) = by_kind["deadlock"]
        assert names(deadlock) == {"ab", "ba"} and "the proof confirms it" in deadlock["evidence"]
        every_named = set().union(*(names(f) for f in data["findings"]))
        assert "idle-worker" not in every_named  # reachable and idle: never reported


def test_a_healthy_program_has_no_findings_at_all() -> None:
    with DiagRun(ONLY_HEALTHY) as app:
        time.sleep(1.5)
        # A loaded CI machine can delay heartbeats (stalls that are starved, or a stall of the
        # program's start-up); the loop verdicts have their own tests (test_loop_health_programs).
        code, data = report(app.url, "--min-wait", "0", "--stall-threshold", "5", "--stall-repeats", "1000",
                            "--fail-on", "proven_leak,leaked_permit,deadlock,loop_blocked,exhausted,suspect")
        assert code == 0 and data["findings"] == [], data["findings"]


def test_fail_on_none_and_bad_kinds() -> None:
    with DiagRun(EVERY_VERDICT) as app:
        time.sleep(0.5)
        assert report(app.url, "--fail-on", "none")[0] == 0
        bad = run_diag("leaks", app.url, "--fail-on", "everything")
        assert bad.returncode == 2 and "unknown finding kind 'everything'" in bad.stderr


THE_OTHER_VERDICTS = """
import asyncio, signal, socket, time

POOL = asyncio.Semaphore(2)
GO = asyncio.Event()            # reachable, never set: the holders are stuck, not leaked
BACKLOG = asyncio.Queue(maxsize=1)
TOLD = asyncio.Event()          # set by SIGUSR1: then the loop blocks

async def holder():
    async with POOL:
        await GO.wait()

async def wants_pool():
    async with POOL:
        pass

async def producer():
    await BACKLOG.put(1)
    await BACKLOG.put(2)        # nobody ever gets: blocks for good

async def silent_peer(sock):
    reader, writer = await asyncio.open_connection(sock=sock)
    await reader.read(1)        # the peer never writes

async def block_when_told():
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, TOLD.set)
    await TOLD.wait()
    time.sleep(20)              # blocks the loop

async def main():
    a, b = socket.socketpair()
    keep = [asyncio.create_task(holder()) for _ in range(2)]
    await asyncio.sleep(0.05)
    keep += [asyncio.create_task(wants_pool(), name="wants-pool"), asyncio.create_task(producer(), name="producer"),
             asyncio.create_task(silent_peer(a), name="reader"), asyncio.create_task(block_when_told())]
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_exhausted_suspects_and_a_blocked_loop_on_a_program_that_does_not_import_diag() -> None:
    with DiagRun(THE_OTHER_VERDICTS) as app:
        time.sleep(1.0)
        code, data = report(app.url, "--min-wait", "0.5", "--held-threshold", "600")
        kinds = {f["kind"] for f in data["findings"]}
        assert "proven_leak" not in kinds, data["findings"]  # everything is still reachable
        (exhausted,) = [f for f in data["findings"] if f["kind"] == "exhausted"]
        assert exhausted["primitive"]["label"] == "__main__.POOL"
        assert "holders are themselves waiting" in exhausted["evidence"] and names(exhausted) == {"wants-pool"}
        suspects = {t["name"]: f["evidence"] for f in data["findings"] if f["kind"] == "suspect" for t in f["tasks"]}
        assert "the peer has sent nothing" in suspects["reader"]
        # reachable, as a module global, but no code of the program left to run names it
        (orphaned,) = [f for f in data["findings"] if f["kind"] == "orphaned"]
        assert code == 1 and names(orphaned) == {"producer"}, data["findings"]
        assert "no task is waiting to get from this queue" in orphaned["evidence"]
        assert "nothing outside the tasks can reach it" in orphaned["evidence"]
        # Blocked when told, not at a fixed time: a loaded machine may start the CLI late.
        os.kill(data["process"]["pid"], signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while True:
            code, data = report(app.url, "--no-proof", "--stall-threshold", "0.5")
            blocked = [f for f in data["findings"] if f["kind"] == "loop_blocked"]
            if blocked or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 1 and blocked and blocked[0]["site"][0]["function"] == "block_when_told"
