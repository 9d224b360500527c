"""The collector on real asyncio objects, in-process: every wait kind, creators, factories."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from diag.collect import task_origins
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import collect_tasks
from diag.model.task_snapshot import TaskInfo, TaskSnapshot


def by_name(snap: TaskSnapshot, name: str) -> TaskInfo:
    matches = [t for t in snap.tasks if t.name == name]
    assert len(matches) == 1, [t.name for t in snap.tasks]
    return matches[0]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_every_wait_kind_is_classified() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.add_loop(loop)
    sem = asyncio.Semaphore(1)
    bsem = asyncio.BoundedSemaphore(1)
    lock = asyncio.Lock()
    cond = asyncio.Condition()
    event = asyncio.Event()
    getq: asyncio.Queue[int] = asyncio.Queue()
    putq: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    putq.put_nowait(0)
    orphan = loop.create_future()
    release = threading.Event()
    silent_peers: list[asyncio.StreamWriter] = []  # kept: 3.13 closes a dropped writer
    server = await asyncio.start_server(lambda r, w: silent_peers.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await sem.acquire()
    await bsem.acquire()
    await lock.acquire()

    async def with_sem() -> None:
        async with sem:
            pass

    async def cond_wait() -> None:
        async with cond:
            await cond.wait()

    async def read_peer() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reader.readline()
        finally:
            writer.close()

    async def child() -> None:
        await asyncio.sleep(30)

    async def await_task(t: asyncio.Task[None]) -> None:
        await t

    async def gatherer() -> None:
        await asyncio.gather(event.wait(), asyncio.sleep(30))

    inner: list[asyncio.Future[Any]] = []

    async def waiter() -> None:
        inner.append(asyncio.ensure_future(event.wait()))  # asyncio.wait does not cancel it
        await asyncio.wait(inner)

    async def completed() -> None:
        for next_done in asyncio.as_completed([sleeper]):
            await next_done

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(30), name="group-child")

    async def on_future() -> None:
        await orphan

    sleeper = asyncio.create_task(child(), name="sleep")
    specs: dict[str, Any] = {
        "semaphore": with_sem(), "bounded": bsem.acquire(), "lock": lock.acquire(), "condition": cond_wait(),
        "event": event.wait(), "queue_get": getq.get(), "queue_put": putq.put(1), "stream": read_peer(),
        "task": await_task(sleeper), "gather": gatherer(), "wait": waiter(),
        "wait_for": asyncio.wait_for(event.wait(), 30), "group": group(), "future": on_future(),
        "as_completed": completed(),
        "executor": asyncio.to_thread(release.wait, 10),
    }
    tasks = [asyncio.create_task(coro, name=name) for name, coro in specs.items()]
    ready = asyncio.create_task(asyncio.sleep(0), name="ready")
    try:
        await asyncio.sleep(0.2)
        watch.sample_waits()
        ready = asyncio.create_task(asyncio.sleep(0), name="ready")
        snap = collect_tasks(watch)
        kinds = {t.name: (t.wait.kind, t.wait.detail) for t in snap.tasks}
        assert kinds["semaphore"] == ("semaphore", "Semaphore.acquire")
        assert kinds["bounded"] == ("semaphore", "BoundedSemaphore.acquire")
        assert kinds["lock"] == ("lock", "Lock.acquire")
        assert kinds["condition"] == ("condition", "Condition.wait")
        assert kinds["event"] == ("event", "Event.wait")
        assert kinds["queue_get"] == ("queue_get", "Queue.get")
        assert kinds["queue_put"] == ("queue_put", "Queue.put")
        assert kinds["stream"] == ("stream_read", "StreamReader.readuntil")
        assert kinds["task"] == ("task", "await task")
        assert kinds["gather"] == ("gather", "gather")
        assert kinds["wait"] == ("gather", "wait")
        # 3.11 wraps the awaitable in a task (a gather-like wait on it); 3.12+ awaits the
        # coroutine inline under a timeout, so the innermost wait is the Event itself.
        assert kinds["wait_for"] == (("gather", "wait_for") if sys.version_info < (3, 12) else ("event", "Event.wait"))
        assert kinds["group"] == ("gather", "TaskGroup")
        # as_completed waits on a private Queue: what it waits for is the futures given, not
        # a Queue.get (an idle consumer's wait, which no leak check looks at)
        assert kinds["as_completed"] == ("gather", "as_completed")
        if sys.version_info >= (3, 13):  # its iterator keeps the futures still running
            assert by_name(snap, "as_completed").wait.tasks == (task_origins.task_seq(sleeper),)
        assert kinds["future"] == ("future", "Future")
        assert kinds["executor"] == ("executor", "run_in_executor")
        assert kinds["sleep"] == ("sleep", "sleep")
        assert kinds["ready"] == ("ready", "")
        me = asyncio.current_task()
        assert me is not None
        assert [t.state for t in snap.tasks if t.id == task_origins.task_seq(me)] == ["running"]

        # One semaphore is one primitive, with its state and the name the awaiting code uses.
        sem_wait = by_name(snap, "semaphore").wait
        assert sem_wait.primitive is not None
        assert sem_wait.primitive.id == hex(id(sem))
        assert (sem_wait.primitive.value, sem_wait.primitive.waiters, sem_wait.primitive.label) == (0, 1, "sem")
        assert by_name(snap, "queue_put").wait.primitive.maxsize == 1  # type: ignore[union-attr]
        assert by_name(snap, "event").wait.primitive.is_set is False  # type: ignore[union-attr]
        # Awaited tasks are named by id, so the awaited-by graph can be built.
        assert by_name(snap, "task").wait.tasks == (task_origins.task_seq(sleeper),)
        group_child = by_name(snap, "group-child")
        assert by_name(snap, "group").wait.tasks == (group_child.id,)
        sleep_wait = by_name(snap, "sleep").wait
        assert sleep_wait.time_left is not None and 29 < sleep_wait.time_left <= 30
        assert sleep_wait.seconds is not None and sleep_wait.seconds >= 0.0
        # Stacks are innermost first and end in the coroutine that was started.
        assert by_name(snap, "semaphore").stack[-1].function.endswith("with_sem")
        assert by_name(snap, "semaphore").stack[-1].source == "async with sem:"
    finally:
        release.set()
        for t in tasks + [sleeper, ready, *inner]:
            t.cancel()
        await asyncio.gather(*tasks, sleeper, ready, *inner, return_exceptions=True)
        for writer in silent_peers:
            writer.close()
        server.close()
        watch.stop()


async def test_creator_is_recorded_and_chained_with_the_programs_factory() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    def program_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        seen.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(program_factory)
    assert task_origins.install_factory(loop)
    try:
        async def worker() -> None:
            await asyncio.sleep(30)

        async def spawner() -> asyncio.Task[None]:
            return asyncio.create_task(worker(), name="spawned")  # the creating line

        parent = asyncio.create_task(spawner(), name="spawner")
        child = await parent
        snap = collect_tasks(None)
        info = by_name(snap, "spawned")
        assert info.created_by is not None
        assert info.created_by.function.endswith("spawner")
        assert info.created_by.task_id == task_origins.task_seq(parent)
        assert info.created_by.file == __file__
        assert "worker" in seen[-1]  # the program's own factory still ran
        child.cancel()
        await asyncio.gather(child, return_exceptions=True)
    finally:
        task_origins.uninstall_factory(loop)
    assert loop.get_task_factory() is program_factory
    loop.set_task_factory(None)


async def test_heartbeat_reports_a_blocked_loop_with_its_stack() -> None:
    loop = asyncio.get_running_loop()
    watch = LoopWatch(install_factories=False)
    watch.add_loop(loop)
    watch.start()
    result: list[TaskSnapshot] = []
    try:
        await asyncio.sleep(0.3)  # a few beats while healthy

        def dump_later() -> None:
            time.sleep(0.6)
            result.append(collect_tasks(watch))

        thread = threading.Thread(target=dump_later)
        thread.start()
        time.sleep(1.2)  # block the loop on purpose
        thread.join()
        (info,) = result[0].loops
        assert info.stalled_seconds > 0.3
        assert any(f.function.endswith("test_heartbeat_reports_a_blocked_loop_with_its_stack")
                   for f in info.blocking_stack)
        assert info.blocking_stack[0].source == "time.sleep(1.2)  # block the loop on purpose"
    finally:
        watch.stop()


def test_fast_task_info_builds_the_same_object_as_the_constructor() -> None:
    from diag.collect.task_collector import _TASK_INFO_FIELDS, _task_info
    from diag.model.task_snapshot import Wait as W

    values = dict(id=1, name="a", coro="c", state="waiting", stack=(), wait=W("event"), created_by=None,
                  loop="0x1", cancelling=False, count=1, ids=(), main=False, cancel_seconds=None,
                  handling_cancel=False)
    assert set(values) == _TASK_INFO_FIELDS  # every field is filled
    assert _task_info(dict(values)) == TaskInfo(**values)  # type: ignore[arg-type]
    assert hash(_task_info(dict(values))) == hash(TaskInfo(**values))  # type: ignore[arg-type]
    # the fields left at their defaults are read from the class, as the constructor's would be
    required = {k: values[k] for k in ("id", "name", "coro", "state", "stack", "wait", "loop")}
    assert _task_info(dict(required)) == TaskInfo(**values)  # type: ignore[arg-type]
    assert _task_info(dict(required, main=True, cancelling=True)) == TaskInfo(  # type: ignore[arg-type]
        **dict(values, main=True, cancelling=True))


async def test_a_collected_task_stores_only_its_fields_not_at_their_default() -> None:
    from diag.collect.task_collector import _TASK_INFO_FIELDS

    event = asyncio.Event()
    tasks = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.sleep(0)
    try:
        snap = collect_tasks()
        infos = [t for t in snap.tasks if t.coro == "Event.wait"]
        assert len(infos) == 2
        for info in infos:
            stored = set(vars(info))
            assert stored <= _TASK_INFO_FIELDS, stored - _TASK_INFO_FIELDS  # no misspelt field
            assert {"id", "name", "coro", "state", "stack", "wait", "loop"} <= stored
            assert not stored & {"count", "ids", "main", "cancelling", "cancel_seconds", "handling_cancel"}
            assert info.count == 1 and info.ids == () and not info.main and info.cancel_seconds is None
    finally:
        event.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_chain_continues_through_async_context_managers_and_generators() -> None:
    import contextlib

    lock = asyncio.Lock()
    await lock.acquire()

    @contextlib.asynccontextmanager
    async def holding() -> Any:
        async with lock:
            yield

    async def handler() -> None:
        async with holding():
            pass

    async def ticks() -> Any:
        yield await asyncio.sleep(30)

    async def consumer() -> None:
        async for _ in ticks():
            pass

    tasks = [asyncio.create_task(handler(), name="cm"), asyncio.create_task(consumer(), name="agen")]
    await settle()
    try:
        snap = collect_tasks(None)
        cm = by_name(snap, "cm")
        assert cm.wait.kind == "lock"
        functions = [f.function for f in cm.stack]
        assert functions[0] == "Lock.acquire" and functions[-1].endswith("handler")
        assert any(f.endswith("holding") for f in functions)
        agen = by_name(snap, "agen")
        assert agen.wait.kind == "sleep"
        assert [f.function.rsplit(".", 1)[-1] for f in agen.stack] == ["sleep", "ticks", "consumer"]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_primitives_are_named_by_what_holds_them() -> None:
    class Registry:
        def __init__(self) -> None:
            self.shared_lock = asyncio.Lock()

    registry = Registry()
    await registry.shared_lock.acquire()

    async def acquire_within(primitive: asyncio.Lock) -> None:  # a generic helper: its local is "primitive"
        await primitive.acquire()

    async def handler() -> None:
        await acquire_within(registry.shared_lock)

    task = asyncio.create_task(handler(), name="handler")
    await settle()
    try:
        prim = by_name(collect_tasks(None), "handler").wait.primitive
        assert prim is not None and prim.label == "Registry.shared_lock"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_pure_python_tasks_are_seen_too() -> None:
    loop = asyncio.get_running_loop()
    py_task_cls = getattr(asyncio.tasks, "_PyTask")
    event = asyncio.Event()

    async def waiter() -> None:
        await event.wait()

    task = py_task_cls(waiter(), loop=loop, name="pure-python")
    await settle()
    try:
        info = by_name(collect_tasks(None), "pure-python")
        assert (info.wait.kind, info.wait.detail) == ("event", "Event.wait")
        assert info.stack[-1].function.endswith("waiter")
    finally:
        event.set()
        await task


async def test_the_label_cache_forgets_primitives_that_died() -> None:
    # A long-running agent names primitives by what holds them and caches the name; the
    # cache must follow what is alive, not grow with every lock the program ever made.
    import gc

    watch = LoopWatch(install_factories=False)
    watch.add_loop(asyncio.get_running_loop())

    async def hold(lock: asyncio.Lock) -> None:
        async with lock:
            await asyncio.sleep(30)

    try:
        for _ in range(30):
            locks = [asyncio.Lock() for _ in range(20)]
            tasks = [asyncio.create_task(hold(lock)) for lock in locks * 2]  # a holder and a waiter each
            await asyncio.sleep(0.01)
            snap = collect_tasks(watch)
            assert sum(t.wait.kind == "lock" for t in snap.tasks) >= 20
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            del locks, tasks
            gc.collect()
        assert 0 < len(watch.holder_labels) <= 2 * 20 + 64  # 30 x 20 locks were made in all
    finally:
        watch.stop()


async def test_many_waiters_on_several_primitives_each_name_their_own() -> None:
    # After the first task, the others on a primitive are matched through its own queue of
    # waiters; tasks stuck at the same line on different primitives must not be mixed up.
    sems = [asyncio.Semaphore(0) for _ in range(3)]
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(2)]

    async def take(sem: asyncio.Semaphore) -> None:
        await sem.acquire()

    async def get(queue: asyncio.Queue[int]) -> None:
        await queue.get()

    tasks = [asyncio.create_task(take(sems[i % 3]), name=f"sem{i % 3}") for i in range(60)]
    tasks += [asyncio.create_task(get(queues[i % 2]), name=f"queue{i % 2}") for i in range(40)]
    await settle()
    try:
        snap = collect_tasks(None)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    owners: dict[str, set[str]] = {}
    for info in snap.tasks:
        if info.name.startswith(("sem", "queue")):
            assert info.wait.primitive is not None, info
            owners.setdefault(info.name, set()).add(info.wait.primitive.id)
    expected = {f"sem{i}": {hex(id(sems[i]))} for i in range(3)}
    expected.update({f"queue{i}": {hex(id(queues[i]))} for i in range(2)})
    assert owners == expected


@pytest.mark.parametrize("rereads", [3, 0])
async def test_a_holder_made_while_the_sync_collection_runs_is_alive_not_ended(monkeypatch: Any, rereads: int) -> None:
    # The collection reads the tasks, then the primitives' holders, while the program runs
    # on: a task made in between that takes a permit must not read as one that ended
    # without releasing it (a false leaked_permit on a healthy program).
    from diag.collect import holders, sync_collector

    if not holders.installed():
        holders.install()
    lock = asyncio.Lock()
    took = threading.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def newcomer() -> None:
        async with lock:
            took.set()
            await release.wait()

    started: list[asyncio.Task[None]] = []
    find = sync_collector.find_primitives

    def find_after_a_new_holder() -> Any:  # runs once the tasks have been read
        loop.call_soon_threadsafe(lambda: started.append(loop.create_task(newcomer(), name="newcomer")))
        assert took.wait(10)
        return find()

    monkeypatch.setattr(sync_collector, "find_primitives", find_after_a_new_holder)
    monkeypatch.setattr(sync_collector, "MAX_TASK_REREADS", rereads)
    snap = await asyncio.to_thread(sync_collector.collect_sync, None)
    state = next(s for s in snap.primitives if s.primitive.id == hex(id(lock)))
    (holder,) = state.holders
    assert holder.task_alive and holder.task_state != "finished", holder
    # read again, it is named; with no reading left, it is still alive, unnamed
    assert holder.task_name == ("newcomer" if rereads else None), holder
    release.set()
    await started[0]


async def test_a_coroutine_waiting_inside_its_own_loop_is_told_from_a_one_shot_wait() -> None:
    from diag.collect.sync_collector import _waits_in_a_loop

    gate = asyncio.Event()

    async def worker() -> None:
        while True:
            await gate.wait()
            gate.clear()

    async def reader(items: "asyncio.Queue[int]") -> None:
        for _ in range(10):
            await items.get()

    async def one_shot() -> None:
        await gate.wait()

    async def after_a_loop() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await gate.wait()

    lock = asyncio.Lock()

    async def guarded() -> None:
        try:
            async with lock:
                await gate.wait()
        except ValueError:
            pass
        finally:
            gate.clear()

    queue: asyncio.Queue[int] = asyncio.Queue()
    tasks = {name: asyncio.create_task(coro) for name, coro in
             (("worker", worker()), ("reader", reader(queue)), ("one_shot", one_shot()), ("after", after_a_loop()),
                              ("guarded", guarded()))}
    await asyncio.sleep(0.05)
    try:
        looping = {name: _waits_in_a_loop(t.get_coro()) for name, t in tasks.items()}
        assert looping == {"worker": True, "reader": True, "one_shot": False, "after": False, "guarded": False}, looping
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def test_a_streamed_dump_leaves_out_the_tasks_that_ended_before_their_slice() -> None:
    # Tasks are described a slice at a time while the loop runs: those that end meanwhile
    # are left out and counted in a note, asyncio's own tasks and a subclass's alike.
    from diag.collect.task_collector import CollectOptions, TaskStream

    class OwnTask(asyncio.Task):  # type: ignore[type-arg]
        pass

    async def parked(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> tuple[list[tuple[TaskInfo, ...]], TaskSnapshot, set[int], set[int]]:
        loop = asyncio.get_running_loop()
        stay, go = asyncio.Event(), asyncio.Event()
        kept = [asyncio.create_task(parked(stay), name=f"kept-{i}") for i in range(1500)]
        ending = [asyncio.create_task(parked(go)) if i % 2 else OwnTask(parked(go), loop=loop) for i in range(1500)]
        await asyncio.sleep(0)
        stream = TaskStream(None, CollectOptions(budget=60.0), slice_size=500)
        slices = stream.slices()
        got = [next(slices)]
        go.set()
        await asyncio.gather(*ending)
        got += list(slices)
        snap = stream.snapshot()
        stay.set()
        await asyncio.gather(*kept)
        return got, snap, {task_origins.task_seq(t) for t in kept}, {task_origins.task_seq(t) for t in ending}

    got, snap, kept_ids, ending_ids = asyncio.run(main())
    described = {info.id for part in got for info in part}
    assert kept_ids <= described and not (ending_ids & described)
    assert "1500 of them ended before their slice was described, and are left out" in snap.notes, snap.notes
