"""The compact form ``diag.tasks/2``: what it holds reads back as the same snapshot, and
whatever else it holds is refused in one line."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from diag.errors import TargetError
from diag.model.task_snapshot import (
    ChildPipe, ChildProcess, CreatedBy, DeadTask, FinishedChild, Frame, Primitive, TaskInfo, TaskSnapshot, ThreadInfo, Wait,
)
from diag.model.task_wire import WIRE_SCHEMA, decode, encode, expand
from tests.diag.snapshots import ACQUIRE, FETCH, SLEEP, WORKER, fetchers_and_worker, snapshot, task


def _varied() -> TaskSnapshot:
    child = ChildProcess(77, "sort", "S", "pipe_write", True, (ChildPipe("stdout", 65536, True),))
    waits = [
        Wait("sleep", "sleep", seconds=1.5, time_left=math.inf),
        Wait("future", "Future", seconds=2.0, deadline=3.25, deadline_by="asyncio.timeout", deadline_known=True,
             owner="Client._pending, transport closed", owner_closed=True, future_id="0x1", owner_ids=("0x2",),
             owner_tasks=(8, 9)),
        Wait("future", "Future", seconds=9.0, deadline=None, deadline_by="", deadline_known=True),
        Wait("task", "await other", seconds=None, tasks=(3, 4), created_at=FETCH),
        Wait("gather", "gather", seconds=3.0, tasks=(5, 6, 7),
             finished=(FinishedChild(5, "Client.read_loop", "returned"), FinishedChild(6, "x", "raised OSError"))),
        Wait("stream_read", "read", seconds=0.25, stream_side="server"),
        Wait("executor", "run_in_executor", child=child, frame_label="pool"),
        Wait("lock", "Lock.acquire", Primitive("lock", "0x9", "first", locked=True, waiters=2, aliases=("second",)),
             seconds=4.0),
    ]
    tasks = [task(n, wait=w) for n, w in enumerate(waits, start=1)]
    tasks.append(TaskInfo(20, "main", "main", "running", (), Wait("running"), None, "0x7f00l", main=True))
    tasks.append(TaskInfo(21, "grp", "Worker.run", "ready", (SLEEP, WORKER), Wait("ready"),
                          CreatedBy(None, None, "/a.py", 3, "f"), "0x7f00l", cancelling=True, count=3,
                          ids=(21, 22, 23), cancel_seconds=0.5))
    tasks.append(task(30, stack=(Frame("/x/ü.py", 1, "f", "é = 1"), ACQUIRE)))
    base = snapshot(*tasks)
    dead = DeadTask(5, "gone", "c", "exception", 1.0, "ValueError: x", (FETCH,), None, ("0x9",))
    thread = ThreadInfo(8, "T", (ACQUIRE,), True, "pool", "0x1", "0x7f00l")
    return TaskSnapshot(base.taken_at, base.process, base.tasks, base.loops, total_tasks=40, grouped=False,
                        wait_clock=base.wait_clock, notes=("a note",), collect_seconds=0.5, await_cycles=((1, 2),),
                        dead_tasks=(dead,), threads=(thread,), destroyed_seen=True,
                        totals=(("running", 1), ("waiting", 30)))


def _wire(snap: TaskSnapshot) -> Any:
    return json.loads(json.dumps(encode(snap)))


@pytest.mark.parametrize("make", [_varied, fetchers_and_worker, lambda: snapshot()])
def test_a_snapshot_reads_back_the_same(make: Any) -> None:
    snap = make()
    doc = _wire(snap)
    assert doc["schema"] == WIRE_SCHEMA
    assert decode(doc) == snap
    assert TaskSnapshot.from_dict(doc) == snap
    assert TaskSnapshot.from_json(json.dumps(encode(snap))) == snap


@pytest.mark.parametrize("make", [_varied, fetchers_and_worker])
def test_expanded_it_is_the_version_1_document(make: Any) -> None:
    snap = make()
    assert json.loads(json.dumps(expand(_wire(snap)))) == json.loads(snap.to_json())


def test_what_tasks_share_is_sent_once() -> None:
    tasks = [task(n) for n in range(1, 1001)]
    doc = _wire(snapshot(*tasks))
    assert len(doc["stacks"]) == 1 and len(doc["frames"]) == 2 and len(doc["waits"]) == 1
    assert doc["strings"].count(ACQUIRE.file) == 1
    assert len(json.dumps(doc)) < len(snapshot(*tasks).to_json()) / 5


def test_tasks_sharing_a_wait_keep_what_else_is_their_own() -> None:
    # The rows of tasks stuck together are made from the last such task's indexes, which
    # holds only while the stack, creator, coroutine, state and loop are the same objects
    # or values: each differing in one of them reads back as it was.
    shared = Wait("event", "Event.wait", Primitive("event", "0x5", "ready"), seconds=7.0)
    other_creator = CreatedBy(3, "parent", "/b.py", 9, "g")
    base = task(1, wait=shared)
    variants = [
        task(0, wait=shared, stack=(SLEEP, WORKER)), task(0, wait=shared, created=other_creator),
        task(0, wait=shared, created=None), task(0, wait=shared, coro="Worker.run"),
        task(0, wait=shared, state="ready"),
        TaskInfo(0, "", base.coro, base.state, base.stack, shared, base.created_by, "0x7f99l"),
    ]
    tasks = [base]
    for variant in variants:  # each right after a task the same in all but one thing
        tasks += [replace(variant, id=len(tasks) + 1, name=f"Task-{len(tasks) + 1}"),
                  replace(base, id=len(tasks) + 2, name=f"Task-{len(tasks) + 2}")]
    snap = snapshot(*tasks)
    doc = _wire(snap)
    assert decode(doc) == snap
    assert len(doc["waits"]) == 1
    assert all(row[2:8] == doc["tasks"][0][2:8] for row in doc["tasks"][2::2])


def test_version_1_still_reads() -> None:
    snap = _varied()
    assert TaskSnapshot.from_json(snap.to_json()) == snap


def _broken(change: Any) -> Any:
    doc = _wire(fetchers_and_worker())
    change(doc)
    return doc


@pytest.mark.parametrize("change", [
    lambda d: d["tasks"][0].__setitem__(4, 99),
    lambda d: d["tasks"][0].__setitem__(4, -1),
    lambda d: d["tasks"][0].__setitem__(2, "x"),
    lambda d: d["tasks"][0].__setitem__(8, "NaN"),
    lambda d: d["tasks"].__setitem__(0, [1, 2]),
    lambda d: d["frames"].__setitem__(0, [500, 1, 0, 0]),
    lambda d: d.__setitem__("stacks", {"a": 1}),
    lambda d: d.__setitem__("task_fields", ["id"]),
    lambda d: d.__setitem__("strings", None) or d.__setitem__("frames", [[0, 1, 0, 0]]),
])
def test_a_damaged_document_is_one_error(change: Any) -> None:
    doc = _broken(change)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        decode(doc)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        expand(doc)


def test_newer_majors_are_refused() -> None:
    doc = _wire(fetchers_and_worker())
    doc["schema"] = "diag.tasks/3"
    with pytest.raises(TargetError, match="newer than this diag understands"):
        TaskSnapshot.from_dict(doc)


@pytest.mark.parametrize("slice_size", [1, 2, 1000])
@pytest.mark.parametrize("make", [_varied, lambda: snapshot()])
def test_the_streamed_pieces_make_the_same_document(make: Any, slice_size: int) -> None:
    from diag.model.task_wire import stream

    snap = make()
    pieces = list(stream(snap, slice_size))
    assert len(pieces) >= 2 + (len(snap.tasks) - 1) // slice_size
    assert json.loads(b"".join(pieces)) == _wire(snap)


def sliced_parts(text: bytes, loads: Any = json.loads) -> list[tuple[str, Any]]:
    """A sliced document split as its layout says (a line each: the first, each slice, the
    last), each part parsed by ``loads``: what a reader working as the answer comes is handed."""
    from diag.model.task_wire import SLICES_OPEN

    first, *middle, last = text.split(b"\n")
    assert first.endswith(SLICES_OPEN.encode()) and last.startswith(b"]")
    after = last[1:].lstrip()
    parts = [("head", loads(first + b"]}"))]
    parts += [("slice", loads(line[1:] if line.startswith(b",") else line)) for line in middle]
    parts.append(("tail", loads(b"{" + (after[1:] if after.startswith(b",") else after))))
    return parts


@pytest.mark.parametrize("slice_size", [1, 2, 1000])
@pytest.mark.parametrize("make", [_varied, fetchers_and_worker, lambda: snapshot()])
def test_sliced_it_is_one_document_that_joins_into_the_plain_one(make: Any, slice_size: int) -> None:
    from diag.model.task_wire import joined, stream

    snap = make()
    text = b"".join(stream(snap, slice_size, sliced=True))
    doc = json.loads(text)  # one JSON document, whoever reads it
    assert doc["schema"] == WIRE_SCHEMA and len(doc["slices"]) == -(-len(snap.tasks) // slice_size)
    assert joined(doc) == {**_wire(snap)}
    assert decode(doc) == snap and TaskSnapshot.from_dict(doc) == snap
    parts = sliced_parts(text)
    assert [kind for kind, _ in parts] == ["head"] + ["slice"] * len(doc["slices"]) + ["tail"]
    assert parts[0][1]["taken_at"] == snap.taken_at and parts[0][1]["process"] == snap.process.to_dict()
    # each slice holds the entries it is the first to use, and no others
    seen: set[int] = set()
    for _, part in parts[1:-1]:
        new = set(range(len(seen), len(seen) + len(part.get("stacks", []))))
        used = {row[4] for row in part["tasks"]}
        assert new <= used and used <= seen | new
        seen |= new


def test_sliced_the_tables_come_once() -> None:
    from diag.model.task_wire import stream

    snap = snapshot(*[task(n) for n in range(1, 5001)])
    parts = sliced_parts(b"".join(stream(snap, 2000, sliced=True)))
    slices = [part for kind, part in parts if kind == "slice"]
    assert [len(s["tasks"]) for s in slices] == [2000, 2000, 1000]
    assert "stacks" in slices[0] and all(set(s) == {"tasks"} for s in slices[1:])


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("slices", 5),
    lambda d: d["slices"].__setitem__(0, [1]),
    lambda d: d["slices"][1]["tasks"][0].__setitem__(4, 99),
    lambda d: d["slices"][0].__setitem__("stacks", None),
])
def test_a_damaged_sliced_document_is_one_error(change: Any) -> None:
    from diag.model.task_wire import stream

    doc = json.loads(b"".join(stream(fetchers_and_worker(), 2, sliced=True)))
    change(doc)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        decode(doc)
    with pytest.raises(TargetError, match="malformed diag task snapshot"):
        expand(doc)
