"""Stall history, blocked versus starved, on real programs under ``diag run``; the CLI
as a subprocess over loopback.

A loop blocked now and then by ``time.sleep`` (0.4 s) and by a busy loop (0.8 s) is reported
``loop_blocked`` with both sites even when the query lands while it turns.  A loop
pinned to one core with CPU hogs (at SCHED_IDLE, so the hogs always win) is reported
starved, never blocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from diag.collect import task_origins

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import http

BLOCKS_NOW_AND_THEN = """
import asyncio, sys, time

if sys.argv[1:] == ["uvloop"]:
    import uvloop
    uvloop.install()

def sleep_on_the_loop():
    time.sleep(0.4)  # sleeps on the loop

def spin_on_the_loop():
    # 0.8 s of CPU on the loop, however loaded the machine.  A stall is timed from the
    # watchdog's beat, which waits for the GIL this spin holds (and, on a loaded machine,
    # for a CPU): what it sees of the spin starts late, and the spin must still be long
    # enough in what it sees to be the loop's own doing.
    end = time.thread_time() + 0.8
    while time.thread_time() < end: pass

async def blocker():
    while True:
        await asyncio.sleep(0.6)
        sleep_on_the_loop()
        await asyncio.sleep(0.6)
        spin_on_the_loop()

async def main():
    task = asyncio.create_task(blocker(), name="blocker")
    print("loop", type(asyncio.get_running_loop()).__module__, flush=True)
    await task

asyncio.run(main())
"""

TICKS = """
import asyncio

async def ticker():
    n = 0
    while True:
        await asyncio.sleep(0.01)
        n += sum(range(1000))

async def main():
    task = asyncio.create_task(ticker(), name="ticker")
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


#: A CPU hog that ends by itself; ``taskset`` execs it, so killing the Popen kills the hog.
HOG = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"


def loops(url: str) -> list[dict[str, Any]]:
    proc = run_diag("tasks", url, "--format", "json", "--timeout", "10", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data: list[dict[str, Any]] = json.loads(proc.stdout)["loops"]
    return data


def wait_for_history(url: str, enough: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll the loop's history until ``enough`` holds; the deadline is generous, the poll quick."""
    deadline = time.monotonic() + timeout
    while True:
        (loop,) = loops(url)
        if enough(loop):
            return loop
        assert time.monotonic() < deadline, json.dumps(loop, indent=1)
        time.sleep(0.3)


def line_of(source: str, text: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), 1) if text in line)


def site(loop: dict[str, Any], stall: dict[str, Any]) -> str:
    """Innermost function of the stall's most sampled stack outside the loop's poll."""
    stacks = [(loop["stall_stacks"][i], n) for i, n in stall["stacks"]]
    busy = [(st, n) for st, n in stacks if not st["own_wait"]]
    return str(max(busy, key=lambda sn: sn[1])[0]["frames"][0]["function"]) if busy else ""


def sites(loop: dict[str, Any], cause: str) -> set[str]:
    """The sites of the finished stalls of ``cause``."""
    return {site(loop, s) for s in loop["stalls"] if s["cause"] == cause and not s["ongoing"]}


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_intermittent_blocks_are_loop_blocked_even_while_the_loop_turns(kind: str) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    source = BLOCKS_NOW_AND_THEN.replace('sys.argv[1:] == ["uvloop"]', repr(kind == "uvloop"))
    with DiagRun(source) as run:
        # Both sites seen, and the 3 stalls (--stall-repeats) a verdict needs.
        loop = wait_for_history(run.url, lambda lp: {"sleep_on_the_loop", "spin_on_the_loop"} <= sites(lp, "blocked")
                                and sum(s["cause"] == "blocked" and not s["ongoing"] for s in lp["stalls"]) >= 3,
                                timeout=60)
        assert f"loop {kind}" in run.output()
        by_site = {site(loop, s): s for s in loop["stalls"] if s["cause"] == "blocked" and not s["ongoing"]}
        assert by_site["sleep_on_the_loop"]["reason"] == "call"  # off-CPU in the program's call
        assert by_site["spin_on_the_loop"]["reason"] == "cpu"  # on-CPU in the program's code
        assert all(s["seconds"] > 0.25 for s in loop["stalls"] if not s["ongoing"])  # the stall threshold
        for stall in loop["stalls"]:  # every finished stall sampled in the program's code is blocked
            if site(loop, stall).endswith("_on_the_loop") and not stall["ongoing"]:
                assert stall["cause"] == "blocked", stall

        # Ask until an answer lands while the loop turns (it is blocked half of the time).
        saved = Path(tempfile.mkdtemp(prefix="diag-stalls-")) / "sync.json"
        try:
            for _ in range(20):
                proc = run_diag("leaks", run.url, "--no-proof", "--format", "json", "-o", str(saved), timeout=60)
                snap = json.loads(saved.read_text())
                if snap["tasks"]["loops"][0]["stalled_seconds"] == 0:
                    break
            else:
                pytest.fail("every answer landed inside a stall")
        finally:
            shutil.rmtree(saved.parent)
        assert proc.returncode == 1, proc.stderr
        (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "loop_blocked"]
        assert " was blocked " in finding["title"] and "in the last" in finding["title"]
        assert f"app.py:{line_of(source, 'time.sleep(0.4)')} sleep_on_the_loop" in finding["evidence"]
        assert f"app.py:{line_of(source, 'while time.thread_time()')} spin_on_the_loop" in finding["evidence"]
        assert finding["site"][0]["function"] in ("sleep_on_the_loop", "spin_on_the_loop")

        text = run_diag("tasks", run.url, "--format", "text", timeout=60).stdout
        assert re.search(r"; \d+ stalls in the last \d+s: \d+ blocked, longest [\d.]+s at app.py:\d+ "
                         r"(sleep|spin)_on_the_loop", text.splitlines()[2]), text
        metrics = http("GET", run.url + "/debug/diag/metrics")[2].decode()
        counted = [line for line in metrics.splitlines()
                   if line.startswith('diag_loop_stalls_total{cause="blocked",thread="MainThread"}')]
        assert counted and float(counted[0].split()[-1]) >= 2, metrics


HOLDS_THE_GIL_FROM_IDLE = """
import asyncio, json, sys, time

if sys.argv[1:] == ["uvloop"]:
    import uvloop
    uvloop.install()

ROWS = [{"id": i, "value": i / 7, "tags": ["a", "b"]} for i in range(20_000)]

def publish():
    end = time.thread_time() + 0.4
    while time.thread_time() < end:   # 0.4 s of CPU, however loaded the machine ...
        json.dumps(ROWS)              # ... in C calls that hold the GIL: no thread can sample

async def publisher():
    while True:
        await asyncio.sleep(1.0)      # idle in its poll in between: no heartbeat is in flight
        publish()

async def main():
    task = asyncio.create_task(publisher(), name="publisher")
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_loop_woken_from_idle_into_calls_holding_the_gil_is_blocked(kind: str) -> None:
    # An idle loop gets no heartbeat, and the watchdog cannot run while the GIL is held:
    # what shows the stall is the watchdog waking late, not for want of a CPU, while the
    # loop's thread ran.  The switch interval, raised past the stall, makes the 0.4 s of
    # json.dumps calls hold the GIL throughout, as one big call would.
    source = HOLDS_THE_GIL_FROM_IDLE.replace('sys.argv[1:] == ["uvloop"]', repr(kind == "uvloop")).replace(
        "import asyncio, json, sys, time", "import asyncio, json, sys, time\nsys.setswitchinterval(5.0)")
    with DiagRun(source) as run:
        loop = wait_for_history(run.url, lambda lp: sum(s["cause"] == "blocked" and not s["ongoing"]
                                                        for s in lp["stalls"]) >= 3, timeout=60)
        blocked = [s for s in loop["stalls"] if s["cause"] == "blocked" and not s["ongoing"]]
        assert all(s["reason"] == "cpu" and s["seconds"] > 0.25 for s in blocked), blocked
        proc = run_diag("leaks", run.url, "--no-proof", "--format", "json", timeout=60)
        assert proc.returncode == 1, proc.stderr
        (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "loop_blocked"]
        assert "the loop thread ran code" in finding["evidence"], finding


ONE_LONG_CALL_FROM_IDLE = """
import asyncio, sys, time

if sys.argv[1:] == ["uvloop"]:
    import uvloop
    uvloop.install()

def calibrated(seconds):
    n = 2_000_000
    took = []
    for _ in range(3):                # the fastest of three: a run slowed by a busy core would make the call short
        started = time.thread_time()
        sum(range(n))
        took.append(time.thread_time() - started)
    return int(n * seconds / max(min(took), 1e-4))

N = calibrated(0.4)
TOTALS = []

def publish():
    return sum(range(N))              # one C call: 0.4 s of CPU holding the GIL throughout

async def publisher():
    while True:
        await asyncio.sleep(1.0)      # idle in its poll in between: no heartbeat is in flight
        TOTALS.append(publish())

async def main():
    task = asyncio.create_task(publisher(), name="publisher")
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_stall_no_sample_could_see_names_the_call_it_ended_in(kind: str) -> None:
    # No thread can sample during one long C call holding the GIL.  With the C accelerator
    # the loop thread reads its own stack as the call returns (a pending call the watchdog
    # asked for as it woke): the function that made the call, every time.  Without it, the
    # watchdog reads the stack as it gets the GIL, which is that function only when the OS
    # hands the GIL to the watchdog first.
    # On a busy machine the loop thread may also wait for a CPU around the call, with the
    # GIL released, and a sample can get into that part of a stall: such a stall was seen
    # by a sample and is not the case here.  Its stalls no sample saw are.
    source = ONE_LONG_CALL_FROM_IDLE.replace('sys.argv[1:] == ["uvloop"]', repr(kind == "uvloop"))

    # Under heavy load most such stalls go unreported (a watchdog that waited for a CPU
    # itself has nothing to tell), and the history keeps 60 s: unseen stalls are gathered
    # over the polls, each with the frame it was read as ending in, until there are three.
    unseen: dict[float, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    def gathered(lp: dict[str, Any]) -> bool:
        for s in lp["stalls"]:
            if s["cause"] == "blocked" and not s["ongoing"] and s["samples"] == 0:
                frame = lp["stall_stacks"][s["stacks"][0][0]]["frames"][0] if s["stacks"] else None
                unseen.setdefault(s["started_at"], (s, frame))
        return len(unseen) >= 3

    with DiagRun(source) as run:
        loop = wait_for_history(run.url, gathered, timeout=180)
        blocked = [s for s, _ in unseen.values()]
        ended = [f for _, f in unseen.values() if f is not None]
        call = line_of(source, "return sum(range(N))")
        read_as_ended = [(f["function"], f["line"]) for f in ended]
        if task_origins.accelerated():
            assert read_as_ended == [("publish", call)] * len(blocked), (blocked, loop["stall_stacks"])
        else:
            assert read_as_ended.count(("publish", call)) >= 2, (blocked, loop["stall_stacks"])
        proc = run_diag("leaks", run.url, "--no-proof", "--format", "json", timeout=60)
        assert proc.returncode == 1, proc.stderr
        (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "loop_blocked"]
        assert "publish (read as the stall ended: one call held the GIL throughout" in finding["evidence"], finding
        lines = run_diag("tasks", run.url, timeout=60).stdout
        assert "publish (as it ended)" in lines, lines


def _idle_priority(pid: int, idle: bool = True) -> None:
    """Every thread of ``pid`` to SCHED_IDLE (it runs only when its core has nothing else to
    run), or back to the normal policy."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setscheduler(int(tid), policy, os.sched_param(0))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
        except PermissionError:
            if idle:
                raise  # (leaving SCHED_IDLE may need privileges an unprivileged run lacks)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("taskset") is None or not hasattr(os, "SCHED_IDLE")
                    or not os.path.exists("/proc/self/schedstat"), reason="needs Linux, taskset and schedstat")
def test_a_loop_given_no_cpu_is_starved_not_blocked() -> None:
    cpu = str(max(os.sched_getaffinity(0)))
    hogs: list[subprocess.Popen[bytes]] = []
    with DiagRun(TICKS) as run:
        pid = json.loads(run_diag("tasks", run.url, "--format", "json", timeout=60).stdout)["process"]["pid"]
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True)
        _idle_priority(pid)  # the hogs always win the core
        try:
            for _ in range(4):
                hogs.append(subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c", HOG]))
                try:  # a niced hog leaves a SCHED_IDLE thread more of the core: undo a `nice pytest`
                    os.setpriority(os.PRIO_PROCESS, hogs[-1].pid, 0)
                except OSError:
                    pass
            loop = wait_for_history(run.url, lambda lp: any(not s["ongoing"] for s in lp["stalls"]), timeout=80)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait(10)
        # What follows asks about the stalls kept: the target gets its share of the CPU back,
        # or on a loaded machine (other test workers) its agent might not answer in time.
        _idle_priority(pid, idle=False)
        done = [s for s in loop["stalls"] if not s["ongoing"]]
        assert all(s["cause"] == "starved" for s in done), done
        # diag: the loop waited for the GIL that this test's own dumps held while they, too, were starved
        assert {s["reason"] for s in done} <= {"runqueue", "throttled", "diag"}, done
        assert all(s["runqueue_seconds"] > 0.5 * s["seconds"] for s in done if s["reason"] == "runqueue"), done
        assert loop["starved_total"] >= len(done)

        proc = run_diag("leaks", run.url, "--no-proof", "--format", "json", "--stall-repeats", "1", timeout=60)
        assert proc.stdout, (proc.returncode, proc.stderr)
        findings = json.loads(proc.stdout)["findings"]
        # loop_starved is not in the default --fail-on
        assert proc.returncode == 0, (proc.stderr, [(f["kind"], f["title"], f["evidence"]) for f in findings])
        assert [f["kind"] for f in findings] == ["loop_starved"], findings
        assert "waiting for a CPU" in findings[0]["evidence"]
        text = run_diag("tasks", run.url, "--format", "text", timeout=60).stdout
        # the reasons, sorted: a stall of the agent's own dump on a loaded machine adds "diag"
        reasons = re.search(r" starved \(([^)]*)\)", text.splitlines()[2])
        assert reasons is not None and "runqueue" in reasons.group(1).split(", "), text



TWO_BLOCKS = """
import asyncio, sys, time

if sys.argv[1:] == ["uvloop"]:
    import uvloop
    uvloop.install()

def sleep_on_the_loop():
    time.sleep(0.35)  # sleeps on the loop

async def blocker():
    for _ in range(2):                     # twice, then never again
        await asyncio.sleep(0.5)
        sleep_on_the_loop()

async def main():
    task = asyncio.create_task(blocker(), name="blocker")
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_two_stalls_of_a_third_of_a_second_are_loop_blocked(kind: str) -> None:
    # Below every other threshold (one stall of a second, three in the window): two stalls,
    # one of a fifth of --stall-threshold or more, are a pattern; fail on by default.
    source = TWO_BLOCKS.replace('sys.argv[1:] == ["uvloop"]', repr(kind == "uvloop"))
    with DiagRun(source) as run:
        loop = wait_for_history(run.url, lambda lp: sum(s["cause"] == "blocked" and not s["ongoing"]
                                                        for s in lp["stalls"]) >= 2, timeout=60)
        blocked = [s for s in loop["stalls"] if s["cause"] == "blocked"]
        assert len(blocked) == 2 and max(s["seconds"] for s in blocked) >= 0.2, loop["stalls"]
        proc = run_diag("leaks", run.url, "--format", "json", "--no-proof", timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "loop_blocked"]
        assert finding["title"].startswith("event loop ") and "was blocked 2 times" in finding["title"], finding
        assert "sleep_on_the_loop" in finding["evidence"], finding
        # a caller who tolerates more (a threshold five times as long) gets no verdict
        proc = run_diag("leaks", run.url, "--format", "json", "--no-proof", "--stall-threshold", "5", timeout=60)
        assert proc.returncode == 0 and not json.loads(proc.stdout)["findings"], proc.stdout


SEEDS_AT_START = """
import asyncio, signal, sys, time

if sys.argv[1:] == ["uvloop"]:
    import uvloop
    uvloop.install()

def seed_history():
    time.sleep(1.3)  # start-up work on the loop, before its first await

def rebuild_index():
    time.sleep(1.3)  # the same work once the program serves

async def main():
    seed_history()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, rebuild_index)
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_stall_of_the_start_up_is_shown_but_one_after_it_is_loop_blocked(kind: str) -> None:
    # Loading before serving blocks the loop once as it starts: a healthy program, no
    # verdict; the same call once the loop has gone idle (here on a signal) is one.
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    source = SEEDS_AT_START.replace('sys.argv[1:] == ["uvloop"]', repr(kind == "uvloop"))
    with DiagRun(source) as run:
        loop = wait_for_history(run.url, lambda lp: any(not s["ongoing"] for s in lp["stalls"]), timeout=60)
        (seed,) = [s for s in loop["stalls"] if not s["ongoing"]]
        assert seed["at_start"] and seed["seconds"] >= 1.0 and site(loop, seed) == "seed_history", loop["stalls"]
        proc = run_diag("leaks", run.url, "--format", "json", "--no-proof", timeout=60)
        assert proc.returncode == 0 and not json.loads(proc.stdout)["findings"], proc.stdout + proc.stderr
        text = run_diag("tasks", run.url, "--format", "text", timeout=60).stdout
        assert re.search(r"1 at start-up \(no verdict\), 1\.\ds at app.py:\d+ seed_history", text.splitlines()[2]), text

        tasks = run_diag("tasks", run.url, "--format", "json", timeout=60)
        os.kill(json.loads(tasks.stdout)["process"]["pid"], signal.SIGUSR1)
        loop = wait_for_history(run.url, lambda lp: sum(not s["ongoing"] for s in lp["stalls"]) >= 2, timeout=60)
        later = [s for s in loop["stalls"] if not s["ongoing"] and not s["at_start"]]
        assert len(later) == 1 and site(loop, later[0]) == "rebuild_index", loop["stalls"]
        proc = run_diag("leaks", run.url, "--format", "json", "--no-proof", timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["kind"] == "loop_blocked"]
        assert "was blocked 1 time" in finding["title"], finding
        assert "rebuild_index" in finding["evidence"] and "seed_history" not in finding["evidence"], finding
