"""Objects that fight back: the dump never runs the target's own code on them.

A stand-alone program (run under ``diag run``) holds objects whose ``__repr__``,
``__str__``, ``__eq__``, ``__hash__``, ``__len__``, ``__getattribute__`` and
``__class__`` raise, sleep for an hour, or return ten megabytes, as task names,
coroutine locals (one named ``self``), holders of primitives (an attribute, a dict
key) and results of futures and finished tasks.  ``diag tasks``, ``sync``, ``leaks``
and ``objects`` still answer quickly, with bounded output, and the program lives on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import get_json

PROGRAM = r'''
import asyncio
import sys
import time

HUGE = 10_000_000


class Hostile:
    """Every dunder a dump might call raises, hangs for an hour, or returns 10 MB."""

    def __init__(self, mode):
        object.__setattr__(self, "mode", mode)

    def _act(self, huge):
        mode = object.__getattribute__(self, "mode")
        if mode == "raise":
            raise RuntimeError("hostile object")
        if mode == "hang":
            time.sleep(3600)
        return huge

    def __repr__(self):
        return Hostile._act(self, "r" * HUGE)

    def __str__(self):
        return Hostile._act(self, "s" * HUGE)

    def __format__(self, spec):
        return Hostile._act(self, "f" * HUGE)

    def __eq__(self, other):
        return Hostile._act(self, True)

    def __hash__(self):
        return Hostile._act(self, 7)

    def __len__(self):
        return Hostile._act(self, HUGE)

    def __bool__(self):
        return Hostile._act(self, True)

    def __getattribute__(self, name):
        return Hostile._act(self, None)

    @property
    def __class__(self):
        return Hostile._act(self, Hostile)


class HostileKey(Hostile):
    """Usable as a dict key (one per dict: equal hashes would call __eq__)."""

    def __hash__(self):
        return 42


class HostileName(str):
    """A task name: str() of it is itself; everything else a dump could call is hostile."""

    def __str__(self):
        return self

    def __repr__(self):
        time.sleep(3600)

    def __len__(self):
        time.sleep(3600)

    def __getitem__(self, item):
        time.sleep(3600)

    def __format__(self, spec):
        time.sleep(3600)

    def __eq__(self, other):
        time.sleep(3600)

    __hash__ = str.__hash__


class Holder(Hostile):
    pass


REGISTRY = {}
KEEP = []


async def wait_on(prim, bad):
    self = bad  # a coroutine local named self, as a method's would be
    other = Hostile("hang")
    async with prim:
        await asyncio.sleep(3600)


async def wait_through_registry(bad):
    self = bad
    await next(iter(REGISTRY.values())).acquire()  # the primitive is no local of this frame


async def wait_event(event, bad):
    local = bad
    await event.wait()


async def wait_future(fut, bad):
    local = bad
    await fut


async def returns(value):
    return value


async def main():
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(1)
    event = asyncio.Event()
    holder = Holder("hang")
    object.__setattr__(holder, "guarded", lock)  # the lock is an attribute of a hostile object
    REGISTRY[HostileKey("hang")] = sem  # and the semaphore a value under a hostile key
    await lock.acquire()
    await sem.acquire()
    loop = asyncio.get_running_loop()
    for mode in ("raise", "hang", "huge"):
        KEEP.append(asyncio.create_task(wait_on(lock, Hostile(mode)), name=HostileName(f"hostile-{mode}")))
        KEEP.append(asyncio.create_task(wait_through_registry(Hostile(mode)), name=mode[0] * HUGE))
        KEEP.append(asyncio.create_task(wait_event(event, Hostile(mode))))
        fut = loop.create_future()
        fut.set_result(Hostile(mode))
        KEEP.append(fut)
        KEEP.append(asyncio.create_task(returns(Hostile(mode))))
    KEEP.append(holder)
    pending = loop.create_future()
    KEEP.append(asyncio.create_task(wait_future(pending, Hostile("hang")), name="on-a-plain-future"))
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
'''

#: Bigger than any honest dump of this program, far smaller than one hostile string.
MAX_OUTPUT = 1_000_000


@pytest.fixture(scope="module")
def program() -> Iterator[DiagRun]:
    with DiagRun(PROGRAM) as run:
        deadline = time.monotonic() + 20
        while "ready" not in run.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" in run.output(), run.output()
        yield run
        assert run.proc is not None and run.proc.poll() is None, run.output()  # still alive
        assert "Traceback" not in run.output() and "Exception" not in run.output(), run.output()


def diag_quickly(*args: str, budget: float = 20.0) -> tuple[int, str]:
    started = time.monotonic()
    proc = run_diag(*args, "--timeout", "10", timeout=60)
    took = time.monotonic() - started
    assert took < budget, (args, took)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout) < MAX_OUTPUT, (args, len(proc.stdout))
    return proc.returncode, proc.stdout if proc.returncode in (0, 1) else proc.stderr


def test_tasks_answers_with_clipped_names(program: DiagRun) -> None:
    code, out = diag_quickly("tasks", program.url, "--debug", "2", "--format", "json")
    assert code == 0, out
    snap = json.loads(out)
    names = [t["name"] for t in snap["tasks"]]
    assert {"hostile-raise", "hostile-hang", "hostile-huge"} <= set(names), names
    assert all(len(n) <= 200 for n in names)
    assert sum(1 for n in names if n.endswith("...")) == 3  # the 10 MB names, cut
    by_name = {t["name"]: t for t in snap["tasks"]}
    assert by_name["hostile-hang"]["wait"]["kind"] in ("lock", "sleep")
    waits = [t["wait"]["kind"] for t in snap["tasks"]]
    assert waits.count("semaphore") == 3 and waits.count("event") == 3, waits
    code, text = diag_quickly("tasks", program.url, "--debug", "2", "--format", "text")
    assert code == 0 and "hostile-" in text


def test_sync_names_primitives_without_asking_their_holders(program: DiagRun) -> None:
    code, out = diag_quickly("sync", program.url, "--format", "json")
    assert code == 0, out
    snap = json.loads(out)
    held = [p for p in snap["primitives"] if p["holders"]]
    kinds = sorted(p["primitive"]["kind"] for p in held)
    assert kinds == ["lock", "semaphore"], kinds
    labels = {p["primitive"]["kind"]: p["primitive"]["label"] for p in held}
    assert labels["lock"] == "Holder.guarded", labels
    assert all(len(p["primitive"]["label"]) <= 300 for p in snap["primitives"])


def test_leaks_runs_the_proof_over_hostile_objects(program: DiagRun) -> None:
    code, out = diag_quickly("leaks", program.url, "--format", "json", "--proof-budget", "5", budget=30)
    assert code in (0, 1), out
    report = json.loads(out)
    assert isinstance(report, dict)


def test_objects_backrefs_through_hostile_objects(program: DiagRun) -> None:
    code, out = diag_quickly("objects", program.url, "--type", "Hostile", "--backrefs", "--budget", "3",
                             "--format", "json", budget=30)
    assert code == 0, out
    series = json.loads(out)
    assert any(t["name"].endswith("Hostile") for t in series["snapshots"][-1]["types"])
    code, out = diag_quickly("objects", program.url, "--type", "HostileKey", "--backrefs", "--budget", "3",
                             "--format", "text", budget=30)
    assert code == 0, out


def test_the_agent_still_answers_afterwards(program: DiagRun) -> None:
    health = get_json(program.url + "/debug/diag/health", timeout=5)
    assert health["loops"] and health["loops"][0]["running"] is True
