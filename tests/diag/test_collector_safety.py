"""One bad object costs one entry, never a command; deep chains keep their real wait.

In-process collections (the collector is what runs on the agent's thread) on real
tasks: a 600-deep await chain ends on ``Event.wait`` and the dump says so, with the
outermost and innermost frames and a note of those left out, by the C chain reader and
by the Python walk alike; a task that cannot be described is still listed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import pytest

from diag.collect import task_collector
from diag.collect.task_collector import KEEP_OUTER, CollectOptions, collect_tasks
from tests.support.cli import run_diag
from tests.support.programs import DiagRun


async def nested(depth: int, event: asyncio.Event) -> None:
    if depth:
        await nested(depth - 1, event)
    else:
        await event.wait()


def only(snap: Any, name: str) -> Any:
    found = [t for t in snap.tasks if t.name == name]
    assert len(found) == 1, [t.name for t in snap.tasks]
    return found[0]


@pytest.mark.parametrize("c_reader", [True, False])
async def test_a_deep_chain_keeps_its_real_wait(c_reader: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if c_reader and task_collector._c_await_chain is None:
        pytest.skip("diag._origins is not built here")
    if not c_reader:
        monkeypatch.setattr(task_collector, "_c_await_chain", None)
    event = asyncio.Event()
    task = asyncio.create_task(nested(600, event), name="deep")
    shallow = asyncio.create_task(nested(3, event), name="shallow")
    for _ in range(3):
        await asyncio.sleep(0)
    try:
        snap = collect_tasks(None, CollectOptions(max_frames=64))
    finally:
        event.set()
        await asyncio.gather(task, shallow)
    deep = only(snap, "deep")
    assert deep.wait.kind == "event" and deep.wait.detail == "Event.wait"
    assert deep.wait.primitive is not None and deep.wait.primitive.label == "event"
    stack = deep.stack  # innermost first
    assert len(stack) == 65
    assert stack[0].function == "Event.wait"
    marker = stack[64 - KEEP_OUTER]
    # 601 frames of nested() and Event.wait: 64 kept
    assert marker.function == "... 538 frames elided ...", marker
    assert all(f.function == "nested" for f in stack[1:64 - KEEP_OUTER] + stack[65 - KEEP_OUTER:])
    assert only(snap, "shallow").stack[0].function == "Event.wait"
    assert not any("elided" in f.function for f in only(snap, "shallow").stack)


async def test_a_local_is_named_and_the_frame_keeps_no_dict_of_its_locals() -> None:
    event = asyncio.Event()

    async def with_a_dict_local(gate: asyncio.Event) -> None:
        headers = {"kept": "by the program"}
        await gate.wait()
        assert headers

    task = asyncio.create_task(with_a_dict_local(event), name="dict-local")
    await asyncio.sleep(0)
    try:
        snap = collect_tasks(None)
        coro = task.get_coro()
        leftovers = [r for r in gc.get_referents(coro) if type(r) is dict and "kept" not in r]
    finally:
        event.set()
        await task
    assert only(snap, "dict-local").wait.primitive.label == "gate"  # type: ignore[union-attr]
    assert all(d == {} for d in leftovers), leftovers  # 3.11/3.12: f_locals emptied; 3.13: none


async def test_a_task_that_cannot_be_read_is_listed_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    event = asyncio.Event()
    tasks = [asyncio.create_task(nested(2, event), name=f"t{n}") for n in range(6)]
    await asyncio.sleep(0)
    describe = task_collector._Walker.task_info

    def fails_on_one(self: Any, task: asyncio.Task[Any], running: bool) -> Any:
        if task.get_name() == "t3":
            raise RuntimeError("unreadable")
        return describe(self, task, running)

    monkeypatch.setattr(task_collector._Walker, "task_info", fails_on_one)
    try:
        snap = collect_tasks(None)
    finally:
        event.set()
        await asyncio.gather(*tasks)
    names = sorted(t.name for t in snap.tasks if t.name.startswith("t"))
    assert names == [f"t{n}" for n in range(6)]
    bad = only(snap, "t3")
    assert (bad.wait.kind, bad.wait.detail) == ("unknown", "unreadable (RuntimeError)")
    assert bad.coro == "nested" and bad.stack == ()
    assert only(snap, "t2").wait.kind == "event"


# -- a dump leaves no references behind, and never collects for the program ------------------

HOLDER = r'''
import asyncio
import gc
import os
import threading
import time


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class Big:
    def __init__(self):
        self.data = bytearray(50_000_000)
        self.data[::4096] = b"x" * len(self.data[::4096])  # touch every page

    def __del__(self):
        print("freed on", threading.current_thread().name, flush=True)


async def holder(go):
    buf = Big()
    lock = asyncio.Lock()
    async with lock:
        print("holding", round(rss_mb()), flush=True)
        await go.wait()
    del buf
    print("deleted", round(rss_mb()), flush=True)


async def main():
    go = asyncio.Event()
    task = asyncio.create_task(holder(go), name="holder")
    while not os.path.exists("go"):
        await asyncio.sleep(0.02)
    go.set()
    await task
    await asyncio.sleep(3600)


asyncio.run(main())
'''


def wait_for_line(run: Any, prefix: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in run.output().splitlines():
            if line.startswith(prefix):
                return str(line)
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line:\n{run.output()}")


def test_a_dump_keeps_no_local_alive() -> None:
    with DiagRun(HOLDER) as run:
        holding = int(wait_for_line(run, "holding").split()[1])
        proc = run_diag("tasks", run.url, "--debug", "2", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        waiting = [t for t in json.loads(proc.stdout)["tasks"] if t["name"] == "holder"]
        assert waiting and waiting[0]["wait"]["kind"] == "event"
        (Path(run.dir.name) / "go").write_text("")
        deleted = int(wait_for_line(run, "deleted").split()[1])
        lines = run.output().splitlines()
        # freed by the program's own `del`, on its thread, before it printed "deleted"
        assert "freed on MainThread" in lines, lines
        assert lines.index("freed on MainThread") < lines.index(f"deleted {deleted}"), lines
        assert deleted < holding - 40, (holding, deleted)


GC_OFF = r'''
import asyncio
import gc
import threading

gc.disable()
FINALISED = {}


class Leaf:
    def __init__(self):
        self.me = self  # a cycle: only a collection frees it

    def __del__(self):
        name = threading.current_thread().name
        FINALISED[name] = FINALISED.get(name, 0) + 1


class Kept:
    pass


KEEP = [Kept()]


async def main():
    for _ in range(800):
        Leaf()
    print("ready", flush=True)
    while True:
        await asyncio.sleep(0.05)
        print("finalised", sorted(FINALISED.items()), flush=True)


asyncio.run(main())
'''


def test_backrefs_never_collect_in_a_program_that_turned_the_gc_off() -> None:
    with DiagRun(GC_OFF) as run:
        wait_for_line(run, "ready")
        proc = run_diag("objects", run.url, "--type", "Kept", "--backrefs", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        chain = json.loads(proc.stdout)["snapshots"][-1]["backrefs"]
        assert chain["found"] is True, chain
        assert [link["label"] for link in chain["chain"][:2]] == ["__main__", "__main__.__dict__"]
        assert chain["chain"][-1]["type"] == "__main__.Kept"
        count = run.output().count("finalised")
        deadline = time.monotonic() + 10
        while run.output().count("finalised") < count + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        last = [line for line in run.output().splitlines() if line.startswith("finalised")][-1]
        assert last == "finalised []", last
