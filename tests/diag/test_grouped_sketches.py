"""A grouped dump of many tasks reads each task only as far as its group needs and
describes one task a group in full (``TaskSketches`` and ``grouped_view``): its answer
is the grouped view of the whole snapshot, group for group.  A task stuck where an
earlier one was read is read through the collection's memos, as it would be read whole.  Checked on hand-built
sketches, in-process on real tasks of every wait kind (asyncio's loop and uvloop), and
on a real program under ``diag run`` holding more tasks than the agent keeps snapshots
of, where the agent answers the grouped query this way."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from typing import Any, Callable

import pytest

from diag.agent.endpoints import MAX_CACHED_SNAPSHOT_TASKS
from diag.analysis.task_groups import MAX_GROUP_IDS, TaskQuery, grouped_view, sketch_query, task_view
from diag.collect import task_collector, task_origins
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import CollectOptions, TaskSketches, collect_tasks
from diag.model.task_snapshot import Frame, Primitive, Sketch, TaskInfo, TaskSnapshot, Wait
from tests.diag.snapshots import snapshot
from tests.diag.test_streamed_dump import ready
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

QUERIES = (
    TaskQuery(),
    TaskQuery(states=("waiting",)),
    TaskQuery(states=("running", "ready")),
    TaskQuery(min_wait=0.0),
    TaskQuery(min_wait=3600.0),
    TaskQuery(limit=2),
)


def timeless(value: Any) -> Any:
    """``value`` (a to_dict) without what depends on the moment it was read."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if not k.endswith("seconds") and k != "time_left"}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def groups_of(view: TaskSnapshot) -> list[Any]:
    return [timeless(g.to_dict()) for g in view.tasks]


# --- hand-built sketches ---------------------------------------------------------------------------------------------

STACK_A = (Frame("locks.py", 213, "Event.wait"), Frame("app.py", 10, "handler"))
STACK_B = (Frame("tasks.py", 649, "sleep"), Frame("app.py", 20, "ticker"))


def infos() -> list[TaskInfo]:
    shared = Primitive("event", "0x1", "gate", waiters=4)
    on_gate = Wait("event", "Event.wait", shared, seconds=5.0)
    out = [TaskInfo(i, f"h-{i}", "handler", "waiting", STACK_A, on_gate) for i in (1, 2, 3)]
    out.append(TaskInfo(4, "h-4", "handler", "waiting", STACK_A, replace(on_gate, seconds=50.0)))
    out += [TaskInfo(i, f"r-{i}", "handler", "waiting", STACK_A,
                     Wait("event", "Event.wait", Primitive("event", hex(i), "done"), seconds=1.0))
            for i in (5, 6)]
    out += [TaskInfo(7, "tick", "ticker", "waiting", STACK_B, Wait("sleep", "sleep", seconds=0.5, time_left=1.0)),
            TaskInfo(8, "main", "main", "running", (), Wait("running")),
            TaskInfo(9, "a", "ping", "waiting", (), Wait("task", "await task", seconds=9.0, tasks=(10,))),
            TaskInfo(10, "b", "ping", "waiting", (), Wait("task", "await task", seconds=9.0, tasks=(9,)))]
    return out


def sketched(tasks: list[TaskInfo]) -> tuple[list[Sketch], Callable[[Sketch], TaskInfo], list[int]]:
    described: list[int] = []
    by_id = {t.id: t for t in tasks}

    def describe(s: Sketch) -> TaskInfo:
        described.append(s[0])
        return by_id[s[0]]

    return [(t.id, t.state, t.coro, t.stack, t.wait, None) for t in tasks], describe, described


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_grouped_view_of_sketches_is_the_grouped_view_of_the_snapshot(query: TaskQuery) -> None:
    tasks = infos()
    whole = snapshot(*tasks)
    sketches, describe, described = sketched(tasks)
    view = grouped_view(sketches, describe, lambda firsts: (replace(whole, tasks=()), firsts), query)
    expected = task_view(whole, query)
    assert [g.to_dict() for g in view.tasks] == [g.to_dict() for g in expected.tasks]
    assert view.await_cycles == expected.await_cycles == ((9, 10),)
    assert view.notes == expected.notes and view.grouped
    # one task described a group: the first of it
    assert len(described) == len({(g.state, g.coro, g.stack, g.wait.kind, g.wait.detail) for g in
                                  task_view(whole, replace(query, limit=None)).tasks})


@pytest.mark.parametrize("seed", range(5))
def test_sketches_in_any_order_give_the_same_groups_and_describe_each_group_s_lowest_id(seed: int) -> None:
    tasks = infos()
    whole = snapshot(*tasks)
    sketches, describe, described = sketched(tasks)
    random.Random(seed).shuffle(sketches)
    view = grouped_view(sketches, describe, lambda firsts: (replace(whole, tasks=()), firsts), TaskQuery())
    assert [g.to_dict() for g in view.tasks] == [g.to_dict() for g in task_view(whole, TaskQuery()).tasks]
    assert described == [1, 7, 8, 9]  # each group's lowest id, described in id order


def test_a_group_keeps_its_lowest_member_ids_in_order() -> None:
    on_gate = Wait("event", "Event.wait", Primitive("event", "0x1", "gate"), seconds=1.0)
    tasks = [TaskInfo(i, "", "handler", "waiting", STACK_A, on_gate) for i in range(1, 2501)]
    sketches, describe, _ = sketched(tasks)
    random.Random(7).shuffle(sketches)
    whole = snapshot(*tasks)
    view = grouped_view(sketches, describe, lambda firsts: (replace(whole, tasks=()), firsts), TaskQuery())
    (group,) = view.tasks
    assert group.count == 2500 and group.id == 1 and group.ids == tuple(range(1, MAX_GROUP_IDS + 1))


def test_a_group_of_members_on_distinct_primitives_says_how_many_and_keeps_the_longest_wait() -> None:
    sketches, describe, described = sketched(infos())
    whole = snapshot(*infos())
    view = grouped_view(sketches, describe, lambda firsts: (replace(whole, tasks=()), firsts), TaskQuery())
    handlers = next(g for g in view.tasks if g.coro == "handler")
    assert handlers.count == 6 and handlers.ids == (1, 2, 3, 4, 5, 6)
    assert handlers.wait.seconds == 50.0
    assert handlers.wait.primitive is None and handlers.wait.detail == "Event.wait (on 3 distinct events)"
    assert described[:1] == [1]


def test_only_a_grouped_query_is_answered_from_sketches() -> None:
    assert sketch_query(TaskQuery())
    assert sketch_query(TaskQuery(states=("waiting",), min_wait=1.0, limit=5))
    assert not sketch_query(TaskQuery(debug=2))
    assert not sketch_query(TaskQuery(pattern="handler"))


# --- real tasks, in-process ------------------------------------------------------------------------------------------

async def _leaf(event: asyncio.Event) -> None:
    await event.wait()


async def _middle(event: asyncio.Event) -> None:
    await _leaf(event)


async def _top(event: asyncio.Event) -> None:
    await _middle(event)


class OwnTask(asyncio.Task):  # type: ignore[type-arg]
    """A Task subclass: read the long way, never through asyncio's fields directly."""


def both(watch: LoopWatch, query: TaskQuery) -> tuple[TaskSnapshot, TaskSnapshot]:
    """The grouped view of the whole snapshot, and the one from sketches (taken from the
    same line, so that the running task's stack is the same in both)."""
    whole = task_view(collect_tasks(watch), query)
    with TaskSketches(watch, CollectOptions()) as sketches:
        return whole, grouped_view(sketches, sketches.describe, sketches.snapshot, query)


async def every_kind() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.add_loop(loop)
    gate, lock, sem = asyncio.Event(), asyncio.Lock(), asyncio.Semaphore(0)
    cond = asyncio.Condition()
    queue: asyncio.Queue[int] = asyncio.Queue()
    joined: asyncio.Queue[int] = asyncio.Queue()
    joined.put_nowait(1)
    state = {"n": 0}
    await lock.acquire()

    async def holder() -> None:
        async with lock:
            pass

    async def on_cond(n: int) -> None:
        async with cond:
            await cond.wait_for(lambda: state["n"] > n)

    async def parent() -> None:
        await asyncio.gather(*(_top(gate) for _ in range(3)))

    async def awaits(task: asyncio.Task[None]) -> None:
        await task

    made = [asyncio.create_task(_top(gate), name=f"gate-{i}") for i in range(40)]
    made += [asyncio.create_task(_top(asyncio.Event()), name=f"own-{i}") for i in range(10)]
    made += [asyncio.create_task(holder()) for _ in range(5)]
    made += [asyncio.create_task(sem.acquire()) for _ in range(5)]
    made += [asyncio.create_task(queue.get()) for _ in range(5)]
    made += [asyncio.create_task(joined.join()) for _ in range(2)]
    made += [asyncio.create_task(on_cond(i)) for i in range(4)]
    made += [asyncio.create_task(asyncio.sleep(3600)) for _ in range(3)]
    made += [asyncio.create_task(parent())]
    made += [OwnTask(_top(gate), loop=loop) for _ in range(3)]
    made += [asyncio.create_task(awaits(made[0])) for _ in range(2)]
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        watch.sample_waits()
        # tasks that came after the sample wait on the same Event with another start
        made += [asyncio.create_task(_top(gate), name=f"late-{i}") for i in range(20)]
        cancelled = asyncio.create_task(_top(gate))
        made.append(cancelled)
        for _ in range(5):
            await asyncio.sleep(0)
        cancelled.cancel()  # pending, its cancellation not yet delivered
        for query in QUERIES:
            whole, view = both(watch, query)
            assert groups_of(view) == groups_of(whole), query
            assert view.await_cycles == whole.await_cycles
            assert view.total_tasks == whole.total_tasks == len(made) + 1 + 3  # this task, gather's three children
            assert [n for n in view.notes if not n.startswith("deadlines")] == list(whole.notes)
        _, view = both(watch, TaskQuery())
        tops = [g for g in view.tasks if g.coro == "_top" and g.wait.kind == "event"]
        assert sum(g.count for g in tops) == 40 + 10 + 3 + 20 + 1 + 3  # gather's three children run _top too
        # a full collection reads tasks through the same memos: each task as read whole
        # (this task, running, left out: its line differs from one collection to the next)
        me = asyncio.current_task()
        others = CollectOptions(exclude=frozenset({id(me)}))
        run = task_collector._Collection(watch, others)
        memo = [timeless(t.to_dict()) for t in run.describe(run.all_tasks)]
        run = task_collector._Collection(watch, others)
        run.walker.memo_ok = False
        assert memo == [timeless(t.to_dict()) for t in run.describe(run.all_tasks)] and len(memo) == len(made) + 3
        running = [g for g in view.tasks if g.state == "running"]
        assert me is not None and len(running) == 1 and running[0].ids == (task_origins.task_seq(me),)
    finally:
        gate.set()
        state["n"] = 99
        lock.release()
        for t in made:
            t.cancel()
        await asyncio.gather(*made, return_exceptions=True)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sketched_groups_match_the_whole_snapshot_on_real_tasks(loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(every_kind())
    else:
        asyncio.run(every_kind())


# --- the agent, under diag run ---------------------------------------------------------------------------------------

N = MAX_CACHED_SNAPSHOT_TASKS + 2_000

PROGRAM = """
import asyncio, os, sys

N = int(sys.argv[1])

async def leaf(event):
    await event.wait()

async def worker(event):
    await leaf(event)

async def main():
    gate, lock = asyncio.Event(), asyncio.Lock()
    await lock.acquire()
    tasks = [asyncio.create_task(worker(gate), name=f"worker-{i}") for i in range(N)]
    tasks += [asyncio.create_task(worker(asyncio.Event()), name=f"own-{i}") for i in range(50)]
    tasks += [asyncio.create_task(lock.acquire(), name=f"locker-{i}") for i in range(7)]
    tasks += [asyncio.create_task(asyncio.sleep(3600), name=f"sleeper-{i}") for i in range(3)]
    await asyncio.sleep(0)
    print("ready", flush=True)
    await asyncio.Event().wait()

if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def cli_json(url: str, *args: str) -> dict[str, Any]:
    proc = run_diag("tasks", url, "--format", "json", "--timeout", "60", *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def sampled(url: str) -> dict[str, Any]:
    """The grouped dump, once the agent's sampler has seen the waits: a wait it has not seen
    yet is 0 s old, and its deadline is not looked for (on a busy machine the first pass
    over 12,000 tasks takes a while)."""
    import time

    deadline = time.monotonic() + 120
    while True:
        doc = cli_json(url)
        seen = all("deadline" in g["wait"] for g in doc["tasks"] if g["wait"]["kind"] in ("event", "lock"))
        if seen or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_agent_answers_a_big_grouped_dump_as_the_grouping_of_the_full_one(loop: str) -> None:
    with DiagRun(PROGRAM, args=(str(N),), env={"LOOP": loop}) as app:
        ready(app)
        grouped = sampled(app.url)
        full = cli_json(app.url, "--debug", "2", "--limit", str(N + 1000))
        waiting = cli_json(app.url, "--state", "waiting")
    snap = TaskSnapshot.from_dict(full)
    expected = task_view(snap, TaskQuery())
    got = TaskSnapshot.from_dict(grouped)
    assert grouped["total_tasks"] == full["total_tasks"] == N + 60 + 1
    assert groups_of(got) == groups_of(expected)
    counts = {g.coro: g.count for g in got.tasks}
    assert counts["worker"] == N + 50 and counts["Lock.acquire"] == 7 and counts["sleep"] == 3
    workers = next(g for g in got.tasks if g.coro == "worker")
    assert workers.wait.detail == "Event.wait (on 51 distinct events)"
    assert workers.ids[:3] == tuple(t.id for t in snap.tasks if t.coro == "worker")[:3]
    assert {g["state"] for g in waiting["tasks"]} == {"waiting"}
    assert sum(g["count"] for g in waiting["tasks"]) == N + 61  # the main task waits too


def test_a_big_collection_is_put_in_id_order_a_bucket_at_a_time() -> None:
    # past _ONE_SORT tasks, ids are spread over buckets (so the loop can run between slices)
    n = task_collector._ONE_SORT + 20_000
    seqs = random.Random(3).sample(range(5, 4 * n), n)
    tasks = [object() for _ in range(n)]
    run = task_collector._Collection.__new__(task_collector._Collection)
    run.seqs, run.all_tasks = list(seqs), list(tasks)  # type: ignore[arg-type]
    run.sort_by_seq()
    assert run.seqs == sorted(seqs)
    by_seq = dict(zip(seqs, tasks))
    assert all(by_seq[s] is t for s, t in zip(run.seqs, run.all_tasks))


# --- very many tasks -------------------------------------------------------------------------------------------------

HELD = asyncio.Event()  # held by this module: the heap scan names it by its module global


def relabelled(pending: int) -> tuple[str, bool]:
    """The label a dump of ``pending`` tasks gives ``HELD``, and whether it skipped the heap scan."""
    walker = task_collector._Walker(None, CollectOptions(), 0.0)
    walker.by_seq = dict.fromkeys(range(pending))  # type: ignore[arg-type]
    prim = task_collector.describe_primitive(HELD, "gate")
    assert prim is not None
    walker.primitives[id(HELD)] = prim
    walker.primitive_objects[id(HELD)] = HELD
    walker.relabel_by_holders()
    label = walker.primitives[id(HELD)]
    assert label is not None
    return label.label, walker.holder_scan_skipped


def test_with_very_many_tasks_primitives_keep_the_waiting_code_s_name_and_the_heap_is_not_scanned() -> None:
    # the scan is one C call over the whole heap: past this many tasks it would stop the loop too long
    assert relabelled(1000) == (f"{__name__}.HELD", False)
    assert relabelled(task_collector.MAX_HOLDER_SCAN_TASKS + 1) == ("gate", True)


async def out_of_budget() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.add_loop(loop)
    gate = asyncio.Event()
    made = [asyncio.create_task(_top(gate)) for _ in range(600)]
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        watch.sample_waits()
        spent = CollectOptions(budget=0.0)  # over budget from the start: the walk stops at its first check
        whole = collect_tasks(watch, spent)
        with TaskSketches(watch, spent) as sketches:
            view = grouped_view(sketches, sketches.describe, sketches.snapshot, TaskQuery())
        for snap, described in ((whole, len(whole.tasks)), (view, sum(g.count for g in view.tasks))):
            assert described == 256 and snap.total_tasks == 601
            assert any(n.startswith("cut: the dump stopped after its budget of 0s; described 256 of 601 tasks")
                       for n in snap.notes), snap.notes
    finally:
        gate.set()
        await asyncio.gather(*made)


def test_a_walk_over_its_budget_stops_and_says_how_far_it_got() -> None:
    asyncio.run(out_of_budget())
