"""Collectors read the program's objects and never run its code.

A program subclasses Lock, Semaphore, Event, Queue, Future and Task and writes its own
awaitables, each with traps: ``__class__`` as a property, ``__getattr__``,
``__getattribute__``, ``__eq__``, ``__hash__``, ``__len__``, ``__bool__``, ``__iter__``,
``__repr__`` and the Task methods a dump might call.  On the program's own thread every
trap behaves (the program runs normally); on any other thread (the agent's) a trap
writes its name to a file, then raises or sleeps.  After ``tasks``, ``sync``, ``leaks``,
``objects`` and ``metrics`` the file must be empty, and every answer complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import http

PROGRAM = r'''
import asyncio
import os
import sys
import threading
import time

MAIN = threading.get_ident()
LOG = os.environ["TRAP_LOG"]


def sprung(name):
    """True on a foreign thread, after noting the trap; False on the program's own."""
    if threading.get_ident() == MAIN:
        return False
    with open(LOG, "a") as f:
        f.write(name + "\n")
    return True


def trapped(base):
    """A subclass of ``base`` with every trap; each behaves as ``base`` on the main thread."""
    name = base.__name__

    def __getattribute__(self, attr):
        if sprung(f"{name}.__getattribute__({attr})"):
            raise RuntimeError("trap")
        return base.__getattribute__(self, attr)

    def __getattr__(self, attr):
        if sprung(f"{name}.__getattr__({attr})"):
            time.sleep(0.5)
        raise AttributeError(attr)

    def klass(self):
        if sprung(f"{name}.__class__"):
            raise RuntimeError("trap")
        return cls

    fallbacks = {"__len__": lambda self: 1, "__bool__": lambda self: True, "__iter__": lambda self: iter(())}

    def dunder(dname):
        original = getattr(base, dname, None) or fallbacks[dname]

        def trap(self, *args):
            if sprung(f"{name}.{dname}"):
                raise RuntimeError("trap")
            return original(self, *args)
        return trap

    namespace = {"__getattribute__": __getattribute__, "__getattr__": __getattr__, "__class__": property(klass)}
    for dname in ("__eq__", "__hash__", "__repr__", "__str__", "__len__", "__bool__", "__iter__"):
        namespace[dname] = dunder(dname)
    cls = type(name, (base,), namespace)
    return cls


@trapped
class TrapLock(asyncio.Lock):
    pass


@trapped
class TrapSemaphore(asyncio.Semaphore):
    pass


@trapped
class TrapBounded(asyncio.BoundedSemaphore):
    pass


@trapped
class TrapEvent(asyncio.Event):
    pass


@trapped
class TrapCondition(asyncio.Condition):
    pass


@trapped
class TrapQueue(asyncio.Queue):
    pass


@trapped
class TrapFuture(asyncio.Future):
    pass


TASK_METHODS = ("get_name", "get_coro", "get_loop", "done", "cancelled", "cancelling", "get_stack",
                "print_stack", "result", "exception")


class TrapTask(asyncio.Task):
    pass


for _name in TASK_METHODS:
    def _method(self, *args, _name=_name):
        if sprung(f"TrapTask.{_name}"):
            raise RuntimeError("trap")
        return getattr(asyncio.Task, _name)(self, *args)
    setattr(TrapTask, _name, _method)
TrapTask = trapped(TrapTask)


class TrapIterator:
    """What a custom awaitable's __await__ returns: a future-like iterator full of traps."""

    def __init__(self, fut):
        self.fut = fut

    def __next__(self):
        return self.fut.__await__().__next__()

    def send(self, value):
        return self.fut.__await__().send(value)

    def throw(self, *args):
        return self.fut.__await__().throw(*args)

    def __iter__(self):
        return self


TrapIterator = trapped(TrapIterator)


class TrapAwaitable:
    def __init__(self, fut):
        self.fut = fut

    def __await__(self):
        return TrapIterator(self.fut)


TrapAwaitable = trapped(TrapAwaitable)


async def on_lock(lock):
    async with lock:
        await asyncio.sleep(3600)


async def waits(aw):
    await aw


async def on_condition(cond):
    async with cond:
        await cond.wait()


async def main():
    loop = asyncio.get_running_loop()
    keep = []
    lock, sem, bounded = TrapLock(), TrapSemaphore(1), TrapBounded(1)
    event, cond, queue, full = TrapEvent(), TrapCondition(), TrapQueue(), TrapQueue(1)
    full.put_nowait(1)
    fut = TrapFuture()
    keep += [lock, sem, bounded, event, cond, queue, full, fut]

    def spawn(coro, name):
        task = TrapTask(coro, loop=loop, name=name)
        keep.append(task)
        return task

    spawn(on_lock(lock), "holder")
    spawn(on_lock(lock), "lock-waiter")
    spawn(on_lock(sem), "sem-holder")
    spawn(on_lock(sem), "sem-waiter")
    spawn(on_lock(bounded), "bounded-holder")
    spawn(on_lock(bounded), "bounded-waiter")
    spawn(waits(event.wait()), "event-waiter")
    spawn(on_condition(cond), "cond-waiter")
    spawn(waits(queue.get()), "queue-getter")
    spawn(waits(full.put(2)), "queue-putter")
    spawn(waits(fut), "future-waiter")
    spawn(waits(TrapAwaitable(loop.create_future())), "awaitable-waiter")
    inner = spawn(waits(loop.create_future()), "inner")
    spawn(waits(inner), "task-waiter")
    spawn(waits(asyncio.gather(inner, spawn(waits(event.wait()), "gathered"))), "gather-waiter")
    def canary():  # proves the traps spring off the main thread
        try:
            repr(lock)
        except RuntimeError:
            pass
    thread = threading.Thread(target=canary)
    thread.start()
    thread.join()
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.sleep(3600)


if os.environ.get("TRAP_LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
'''

TASK_NAMES = {"holder", "lock-waiter", "sem-holder", "sem-waiter", "bounded-holder", "bounded-waiter",
              "event-waiter", "cond-waiter", "queue-getter", "queue-putter", "future-waiter",
              "awaitable-waiter", "inner", "task-waiter", "gathered", "gather-waiter"}


@pytest.fixture(scope="module", params=["asyncio", "uvloop", "python-paths"])
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DiagRun, Path]]:
    """The program on asyncio's loop, on uvloop, and with diag's pure-Python paths."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    log = tmp_path_factory.mktemp("traps") / "sprung.log"
    log.write_text("")
    env = {"TRAP_LOG": str(log), "TRAP_LOOP": request.param}
    if request.param == "python-paths":
        env["DIAG_ORIGINS"] = "python"
    with DiagRun(PROGRAM, env=env) as run:
        deadline = time.monotonic() + 20
        while "ready" not in run.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" in run.output(), run.output()
        assert sprung(log) == ["TrapLock.__repr__"]
        log.write_text("")
        yield run, log
        assert run.proc is not None and run.proc.poll() is None, run.output()


def sprung(log: Path) -> list[str]:
    return sorted(set(log.read_text().split()))


def diag_json(*args: str) -> dict:  # type: ignore[type-arg]
    proc = run_diag(*args, "--format", "json", "--timeout", "20", timeout=90)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_tasks_runs_no_trap(program: tuple[DiagRun, Path]) -> None:
    run, log = program
    snap = diag_json("tasks", run.url, "--debug", "2")
    by_name = {t["name"]: t for t in snap["tasks"]}
    assert TASK_NAMES <= set(by_name), sorted(by_name)
    assert by_name["lock-waiter"]["wait"]["kind"] == "lock"
    assert by_name["sem-waiter"]["wait"]["kind"] == "semaphore"
    assert by_name["sem-waiter"]["wait"]["primitive"]["value"] == 0
    assert by_name["bounded-waiter"]["wait"]["detail"] == "BoundedSemaphore.acquire"
    assert by_name["event-waiter"]["wait"]["kind"] == "event"
    assert by_name["event-waiter"]["wait"]["primitive"]["is_set"] is False
    assert by_name["queue-getter"]["wait"]["kind"] == "queue_get"
    assert by_name["queue-putter"]["wait"]["primitive"]["size"] == 1
    assert by_name["task-waiter"]["wait"]["kind"] == "task"
    assert by_name["gather-waiter"]["wait"]["kind"] == "gather"
    assert len(by_name["gather-waiter"]["wait"]["tasks"]) == 2
    assert sprung(log) == []


@pytest.mark.parametrize("args", [("sync",), ("leaks",), ("leaks", "--proof"), ("objects",),
                                  ("objects", "--type", "TrapLock", "--backrefs"),
                                  ("objects", "--type", "TrapTask", "--backrefs")])
def test_other_commands_run_no_trap(program: tuple[DiagRun, Path], args: tuple[str, ...]) -> None:
    run, log = program
    proc = run_diag(args[0], run.url, *args[1:], "--timeout", "20", timeout=90)
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert sprung(log) == []


def test_metrics_runs_no_trap(program: tuple[DiagRun, Path]) -> None:
    run, log = program
    status, _, body = http("GET", run.url + "/debug/diag/metrics", timeout=30)
    assert status == 200, body[:300]
    assert b"diag_tasks" in body
    assert sprung(log) == []


def test_sync_lists_every_primitive(program: tuple[DiagRun, Path]) -> None:
    run, log = program
    snap = diag_json("sync", run.url)
    kinds = sorted(p["primitive"]["kind"] for p in snap["primitives"])
    assert kinds.count("lock") >= 2 and "semaphore" in kinds and "bounded_semaphore" in kinds, kinds
    assert "event" in kinds and kinds.count("queue") >= 2 and "condition" in kinds, kinds
    assert sprung(log) == []
