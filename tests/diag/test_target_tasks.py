"""``diag tasks`` against the real target server: every leak shows up with its wait,
primitive, count and creator; every fixed twin leaves nothing behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.cli import run_diag
from tests.support.programs import DiagRun
from tests.support.target import TargetServer, http
from tests.target.helpers import get, healthz, release, wait_until

LEAK_COROS = {"blocked_put_producer", "forgotten_waiter", "orphan_future_waiter", "deadlock_worker_a",
              "deadlock_worker_b", "silent_peer_reader"}


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--max-concurrency", "4", "--pool-wait", "20", "--request-timeout", "30") as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(server: TargetServer) -> Iterator[None]:
    yield
    release(server)


def dump(target: str, *args: str) -> dict[str, Any]:
    proc = run_diag("tasks", target, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def tasks_of(server: TargetServer, coro: str, count: int) -> list[dict[str, Any]]:
    """The pending tasks running ``coro`` once there are ``count`` of them."""
    def found() -> list[dict[str, Any]]:
        tasks = [t for t in dump(server.url, "--debug", "2")["tasks"] if t["coro"] == coro]
        return tasks if len(tasks) == count else []
    return wait_until(found, timeout=10, interval=0.2)


def in_background(server: TargetServer, path: str) -> threading.Thread:
    thread = threading.Thread(target=http, args=("GET", server.url + path), kwargs={"timeout": 30}, daemon=True)
    thread.start()
    return thread


def assert_created_by_spawn(task: dict[str, Any]) -> None:
    created = task["created_by"]
    assert created["function"] == "spawn"
    assert created["file"].endswith("target_server/leaks.py")
    assert created["task_id"] is not None


def test_blocked_put_shows_producers_on_one_full_queue(server: TargetServer) -> None:
    for _ in range(3):
        assert get(server, "/leak/blocked-put")[0] == 202
    tasks = tasks_of(server, "blocked_put_producer", 2)  # the first put fits in the queue
    for task in tasks:
        assert task["wait"]["kind"] == "queue_put" and task["wait"]["detail"] == "Queue.put"
        prim = task["wait"]["primitive"]
        assert (prim["kind"], prim["size"], prim["maxsize"], prim["putters"]) == ("queue", 1, 1, 2)
        assert_created_by_spawn(task)
    assert len({t["wait"]["primitive"]["id"] for t in tasks}) == 1
    grouped = dump(server.url, "--filter", "blocked_put_producer")["tasks"]
    assert [(g["count"], g["wait"]["kind"]) for g in grouped] == [(2, "queue_put")]


def test_forgotten_tasks_wait_on_events_nobody_sets(server: TargetServer) -> None:
    for _ in range(3):
        get(server, "/leak/forgotten-task")
    tasks = tasks_of(server, "forgotten_waiter", 3)
    assert {(t["wait"]["kind"], t["wait"]["primitive"]["is_set"]) for t in tasks} == {("event", False)}
    assert len({t["wait"]["primitive"]["id"] for t in tasks}) == 3
    grouped = dump(server.url, "--filter", "forgotten_waiter")["tasks"]
    assert len(grouped) == 1 and grouped[0]["count"] == 3
    assert grouped[0]["wait"]["detail"] == "Event.wait (on 3 distinct events)"


def test_orphaned_future(server: TargetServer) -> None:
    for _ in range(2):
        get(server, "/leak/orphan-future")
    for task in tasks_of(server, "orphan_future_waiter", 2):
        assert task["wait"]["kind"] == "future"
        assert task["stack"][0]["function"] == "orphan_future_waiter"
        assert_created_by_spawn(task)


def test_deadlocked_workers_wait_on_each_others_lock(server: TargetServer) -> None:
    get(server, "/leak/deadlock")
    (a,) = tasks_of(server, "deadlock_worker_a", 1)
    (b,) = tasks_of(server, "deadlock_worker_b", 1)
    for task in (a, b):
        assert task["wait"]["kind"] == "lock" and task["wait"]["primitive"]["locked"] is True
    assert a["wait"]["primitive"]["id"] != b["wait"]["primitive"]["id"]
    assert a["created_by"]["task_id"] == b["created_by"]["task_id"]  # one request made both


def test_a_deadlocked_worker_names_its_lock_as_its_own_frame_does(server: TargetServer) -> None:
    """Each worker waits at ``async with second:``; the lock it waits for is ``first`` in the
    other worker, which holds it: the wait says ``second``, the other name is an alias."""
    get(server, "/leak/deadlock")
    tasks_of(server, "deadlock_worker_a", 1)
    tasks_of(server, "deadlock_worker_b", 1)
    text = run_diag("tasks", server.url, "--debug", "2", "--filter", "deadlock_worker", "--format", "text")
    assert text.returncode == 0, text.stderr
    blocks = [b for b in text.stdout.split("\n\n") if "deadlock_worker" in b]
    assert len(blocks) == 2, text.stdout
    for block in blocks:
        assert "[Lock.acquire <second (also: first) 0x" in block and "async with second:" in block, block
    for task in dump(server.url, "--debug", "2", "--filter", "deadlock_worker")["tasks"]:
        wait = task["wait"]
        assert wait["frame_label"] == "second" and "first" in [wait["primitive"]["label"], *wait["primitive"]["aliases"]]


def test_silent_peer_readers_wait_for_bytes(server: TargetServer) -> None:
    for _ in range(2):
        get(server, "/leak/silent-peer")
    for task in tasks_of(server, "silent_peer_reader", 2):
        assert (task["wait"]["kind"], task["wait"]["detail"]) == ("stream_read", "StreamReader.readuntil")


def test_requests_queue_on_the_leaked_lock(server: TargetServer) -> None:
    get(server, "/leak/lock")
    waiter = in_background(server, "/fixed/lock")

    def lock_waiters() -> list[dict[str, Any]]:
        return [t for t in dump(server.url, "--debug", "2")["tasks"]
                if t["wait"]["kind"] == "lock" and any("lock" in f["function"] for f in t["stack"])]
    (task,) = wait_until(lock_waiters, timeout=10, interval=0.2)
    assert task["wait"]["primitive"]["locked"] is True and task["wait"]["primitive"]["waiters"] == 1
    release(server)
    waiter.join(10)


def test_requests_queue_on_the_exhausted_work_pool(server: TargetServer) -> None:
    for _ in range(4):
        assert get(server, "/leak/semaphore")[0] == 502
    assert healthz(server)["work_pool"]["available"] == 0
    waiters = [in_background(server, "/work/slow?ms=10") for _ in range(3)]

    def pool_waiters() -> list[dict[str, Any]]:
        found = [t for t in dump(server.url, "--debug", "2")["tasks"] if t["wait"]["kind"] == "semaphore"]
        return found if len(found) == 3 else []
    tasks = wait_until(pool_waiters, timeout=10, interval=0.2)
    prims = {json.dumps(t["wait"]["primitive"], sort_keys=True) for t in tasks}
    assert len(prims) == 1
    prim = tasks[0]["wait"]["primitive"]
    assert (prim["value"], prim["waiters"]) == (0, 3)
    assert any(f["function"] == "slow_handler" for f in tasks[0]["stack"])
    release(server)
    for w in waiters:
        w.join(10)


def test_blocked_loop_is_reported_by_the_agent_thread_with_the_blocking_frame(server: TargetServer) -> None:
    agent = healthz(server)["diag_agent"]
    assert agent and agent.startswith("http://127.0.0.1:")
    # The CLI's two dumps must both be taken while the loop is blocked. On a loaded machine a
    # CLI process may take several seconds to start, so the stall is found by asking the
    # agent thread directly (no process to start), and then both dumps start at once, each
    # with the rest of the block to start in.
    blocker = in_background(server, "/leak/blocking?seconds=8")

    def stalled() -> bool:
        snap = json.loads(http("GET", agent + "/debug/diag/tasks", timeout=5)[2])
        return any(lp["stalled_seconds"] > 0 for lp in snap["loops"])
    wait_until(stalled, timeout=10, interval=0.05)
    with ThreadPoolExecutor(2) as pool:
        as_json = pool.submit(dump, agent, "--timeout", "5")
        as_text = pool.submit(run_diag, "tasks", agent, "--format", "text")
        snap, text = as_json.result(), as_text.result()
    (loop,) = [lp for lp in snap["loops"] if lp["stalled_seconds"] > 0]
    assert any(f["function"] == "blocking_handler" for f in loop["blocking_stack"])
    assert "STALLED" in text.stdout and "blocking_handler" in text.stdout
    blocker.join(15)


FIXED = ["blocked-put", "semaphore", "forgotten-task", "orphan-future", "lock", "deadlock", "silent-peer", "cache",
         "blocking?seconds=0.1"]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_twins_leave_nothing_pending(server: TargetServer, name: str) -> None:
    before = dump(server.url, "--debug", "2")["total_tasks"]
    for _ in range(3):
        status, _, body = get(server, f"/fixed/{name}")
        assert status in (200, 202, 502), body  # 502: the simulated downstream failure, handled

    def settled() -> dict[str, Any] | None:
        snap = dump(server.url, "--debug", "2")
        return snap if snap["total_tasks"] <= before else None
    snap = wait_until(settled, timeout=10, interval=0.2)
    assert not [t for t in snap["tasks"] if t["coro"] in LEAK_COROS or t["name"].startswith("leak:")]


def test_the_apps_own_port_and_the_agent_agree(server: TargetServer) -> None:
    get(server, "/leak/orphan-future")
    tasks_of(server, "orphan_future_waiter", 1)
    agent = healthz(server)["diag_agent"]
    on_app = {t["id"] for t in dump(server.url, "--debug", "2", "--filter", "orphan")["tasks"]}
    on_agent = {t["id"] for t in dump(agent, "--debug", "2", "--filter", "orphan")["tasks"]}
    assert on_app == on_agent and len(on_app) == 1


ONE_LOCK_TWO_NAMES = """
import asyncio

async def keep(first: asyncio.Lock, started: asyncio.Event) -> None:
    async with first:
        started.set()
        await asyncio.sleep(3600)

async def take(second: asyncio.Lock) -> None:
    async with second:
        pass

async def main() -> None:
    lock, started, forever = asyncio.Lock(), asyncio.Event(), asyncio.Event()
    keeper = asyncio.create_task(keep(lock, started), name="keeper")
    await started.wait()
    taker = asyncio.create_task(take(lock), name="taker")
    await forever.wait()  # keeps both tasks (and so the lock) alive

asyncio.run(main())
"""


def test_a_lock_is_named_as_the_waiting_frame_names_it_with_the_holders_name_as_an_alias() -> None:
    with DiagRun(ONE_LOCK_TWO_NAMES) as app:
        def waiting() -> dict[str, Any] | None:
            found = [t for t in dump(app.url, "--debug", "2")["tasks"] if t["name"] == "taker"]
            return found[0] if found and found[0]["wait"]["kind"] == "lock" else None
        taker = wait_until(waiting, timeout=10, interval=0.1)
        assert taker["wait"]["frame_label"] == "second"
        prim = taker["wait"]["primitive"]
        assert prim["label"] == "second" and prim["aliases"] == ["first"]
        text = run_diag("tasks", app.url, "--debug", "2", "--filter", "taker", "--format", "text")
        assert '"taker" [Lock.acquire <second (also: first) 0x' in text.stdout, text.stdout
        sync = run_diag("sync", app.url, "--format", "text")
        assert "lock second (also: first) 0x" in sync.stdout, sync.stdout
