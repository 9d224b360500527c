"""A pool kept in an ``asyncio.Queue`` that loses its items (CanopyTax/asyncpgsa #101: a
transaction's ``__aenter__`` takes a connection, then fails, so no ``__aexit__`` gives it
back).  The tasks waiting in ``get()`` look like idle workers; what tells them apart is
that the pool's own list keeps every connection and nothing else refers to any.  Real
programs under ``diag run``, on asyncio and uvloop; the rule on hand-built snapshots."""

from __future__ import annotations

import json
import time

import pytest

from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, LeakOptions, leak_report
from diag.model.sync_snapshot import PrimitiveState, SyncSnapshot
from diag.model.task_snapshot import Frame, Primitive, TaskInfo, Wait
from tests.diag.snapshots import snapshot, task
from tests.diag.test_leaks_evidence import RUN_ON, by_task, dump_until, leaks
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

POOL = """
import asyncio, os, signal

MODE = os.environ["MODE"]
FAIL = [MODE != "busy"]

class Conn:
    def __init__(self, n):
        self.n = n

    async def begin(self):
        await asyncio.sleep(0.01)
        if FAIL[0]:
            raise OSError("cannot begin a read-write transaction during recovery")

class Pool:
    def __init__(self, size):
        self._all = [Conn(n) for n in range(size)]
        self._free = asyncio.Queue()
        for conn in self._all:
            self._free.put_nowait(conn)

    async def acquire(self):
        return await self._free.get()

    def release(self, conn):
        self._free.put_nowait(conn)

class Transaction:
    def __init__(self, pool):
        self.pool, self.conn = pool, None

    async def __aenter__(self):
        self.conn = await self.pool.acquire()
        if MODE == "fixed":
            try:
                await self.conn.begin()
            except BaseException:
                self.pool.release(self.conn)
                raise
        else:
            await self.conn.begin()            # the bug: a failed BEGIN keeps the connection
        return self.conn

    async def __aexit__(self, *exc):
        self.pool.release(self.conn)

async def transfer(pool):
    try:
        async with Transaction(pool):
            pass
    except OSError:
        pass                                   # "retry later"

async def report(pool):
    while True:
        async with Transaction(pool):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)

async def export(pool):
    async with Transaction(pool):
        await asyncio.sleep(3600)              # holds its connection while it streams

async def main():
    pool = Pool(3)
    keep = []
    if MODE == "busy":                         # every connection in use by a task that holds it
        keep += [asyncio.create_task(export(pool), name=f"export-{i}") for i in range(3)]
    else:
        await asyncio.gather(*(transfer(pool) for _ in range(3)))
        FAIL[0] = False
    await asyncio.sleep(0.05)
    keep += [asyncio.create_task(report(pool), name=f"report-{i}") for i in range(2)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON

REPORTS = {"report-0", "report-1"}


def waited(names: set[str], seconds: float):  # type: ignore[no-untyped-def]
    return lambda tasks: sum(t["name"] in names and t["wait"]["kind"] == "queue_get"
                             and (t["wait"].get("seconds") or 0) >= seconds for t in tasks) == len(names)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_whose_connections_all_left_its_queue_with_nothing_holding_them_orphans_its_waiters(loop: str) -> None:
    with DiagRun(POOL, env={"LOOP": loop, "MODE": "leak"}) as app:
        dump_until(app.url, waited(REPORTS, 1.5))
        deadline = time.monotonic() + 60
        while True:
            code, data = leaks(app.url, "--min-wait", "1")
            found = by_task(data)
            kinds = {f["kind"] for name in REPORTS for f in found.get(name, [])}
            if kinds == {"orphaned"} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert kinds == {"orphaned"}, data["findings"]
        evidence = found["report-0"][0]["evidence"]
        assert ("is empty, and all 3 Conn its keeper keeps in Pool._all are out of it with nothing else referring to "
                "any of them: taken with get() and never put back") in evidence, evidence
        assert code == 1
        sync = json.loads(run_diag("sync", app.url, "--format", "json").stdout)
        (queue,) = [p for p in sync["primitives"] if p["primitive"]["label"] == "Pool._free"]
        assert queue["lost"] == {"where": "Pool._all", "type": "Conn", "kept": 3, "unheld": 3}, queue


def test_a_pool_whose_connections_are_all_in_use_by_tasks_that_hold_them_has_idle_waiters() -> None:
    with DiagRun(POOL, env={"LOOP": "asyncio", "MODE": "busy"}) as app:
        dump_until(app.url, waited(REPORTS, 1.5))
        code, data = leaks(app.url, "--min-wait", "1")
        assert not set(by_task(data)) & REPORTS, data["findings"]
        sync = json.loads(run_diag("sync", app.url, "--format", "json").stdout)
        (queue,) = [p for p in sync["primitives"] if p["primitive"]["label"] == "Pool._free"]
        assert queue["lost"] == {"where": "Pool._all", "type": "Conn", "kept": 3, "unheld": 0}, queue
        assert code == 0


# --- the rule ------------------------------------------------------------------------------------------------------

QUEUE = Primitive("queue", "0xq", "Pool._free", waiters=2, size=0, maxsize=0, getters=2)
GET = (Frame("/usr/lib/python3.11/asyncio/queues.py", 158, "Queue.get", "await getter"),
       Frame("/srv/app/pool.py", 20, "Pool.acquire", "return await self._free.get()"))


def _getter(tid: int) -> TaskInfo:
    return task(tid, coro="report", stack=GET,
                wait=Wait("queue_get", "Queue.get", QUEUE, 30.0, deadline_known=True, users=()))


@pytest.mark.parametrize(("lost", "kind", "words"), [
    (("Pool._all", "Conn", 3, 3), "orphaned", "and all 3 Conn its keeper keeps in Pool._all are out of it"),
    (("Pool._all", "Conn", 3, 2), "suspect", "and 2 of the 3 Conn its keeper keeps in Pool._all are out of it"),
    (("Pool._all", "Conn", 3, 0), None, ""),
    (None, None, ""),
])
def test_an_empty_pool_queue_is_judged_by_what_its_keeper_keeps(lost: tuple[str, str, int, int] | None,
                                                                  kind: str | None, words: str) -> None:
    tasks = snapshot(_getter(1), _getter(2))
    state = PrimitiveState(QUEUE, waiting_tasks=(1, 2), lost=lost)
    report = leak_report(SyncSnapshot(tasks.taken_at, tasks.process, tasks, (state,)), LeakOptions(min_wait=5.0))
    assert {f.kind for f in report.findings} == ({kind} if kind else set()), report.findings
    if kind:
        assert words in report.findings[0].evidence, report.findings[0].evidence
        assert report.fails(DEFAULT_FAIL_ON) == (kind == "orphaned")
    back = PrimitiveState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back == state
