"""A lock taken by a function that releases it on every path by which it returns, left by
an exception past that release: its task lives on (a worker's loop caught the error) and
keeps the permit, so the other workers wait for it forever.  The holder is alive, so only
the code of the function that took it tells that nothing will give it back.  A function
that hands the lock to its caller keeps it by design: no verdict.  Real programs under
``diag run``, on asyncio and uvloop."""

from __future__ import annotations

import re
import time

import pytest

from diag.collect import reach
from tests.diag.test_leaks_evidence import RUN_ON, by_task, judged_as, settled
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

pytestmark = pytest.mark.skipif(not reach.reads_bytecode(), reason="the acquiring code is read on 3.11-3.13 only")

STORE = """
import asyncio, os, signal

MODE = os.environ["MODE"]

class Store:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.rows = {}

    async def fetch(self, key):
        await asyncio.sleep(0.05)
        if key == "bad":
            raise ValueError("bad row")
        return key.upper()

    async def update(self, key):
        await self.lock.acquire()
        self.rows[key] = await self.fetch(key)
        self.lock.release()                      # skipped when fetch raises

    async def begin(self, key):                  # takes the lock for its caller, who ends it
        await self.lock.acquire()
        try:
            self.rows[key] = await self.fetch(key)
        except BaseException:
            self.lock.release()
            raise

    async def end(self):
        self.lock.release()

async def worker(store, jobs):
    while True:
        key = await jobs.get()
        try:
            if MODE == "handover":
                await store.begin(key)
                await asyncio.sleep(3600)        # holds it on purpose, ends it later
                await store.end()
            else:
                await store.update(key)
        except ValueError:
            pass                                 # logged and carried on, in a real service

async def main():
    store, jobs = Store(), asyncio.Queue()
    keep = [asyncio.create_task(worker(store, jobs), name=f"worker-{i}") for i in range(3)]
    jobs.put_nowait("bad" if MODE != "handover" else "a")
    await asyncio.sleep(0.2)
    for key in ("b", "c"):
        jobs.put_nowait(key)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON


RELEASE_LINE = next(n for n, text in enumerate(STORE.splitlines(), 1) if text.rstrip().endswith("# skipped when fetch raises"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_lock_whose_taker_left_past_its_release_is_a_leaked_permit_though_its_task_lives(loop: str) -> None:
    with DiagRun(STORE, env={"LOOP": loop, "MODE": "leak"}) as app:
        deadline = time.monotonic() + 60
        while True:  # the verdict comes at once; "stuck for good" once the waits are past their first moments
            code, data = judged_as(app.url, {"worker-1", "worker-2"}, "leaked_permit")
            (finding,) = {f["title"]: f for name in ("worker-1", "worker-2") for f in by_task(data)[name]}.values()
            if "stuck for good" in finding["evidence"] or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert finding["title"].startswith("1 permit of lock Store.lock"), finding
        evidence = finding["evidence"]
        assert "'worker-0' acquired it at " in evidence and "Store.update" in evidence, evidence
        assert (f"is alive, but Store.update, which took it, has ended without releasing it: that function releases "
                f"it itself on every path by which it returns (line {RELEASE_LINE}), so it left by an exception "
                f"past its release") in evidence, evidence
        assert "2 tasks wait for it, and no other holder can release it: they are stuck for good" in evidence
        assert "worker-0" not in by_task(data), data["findings"]  # idle on its queue: no finding of its own
        assert code == 1
        shown = run_diag("sync", app.url, "--format", "text")
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"task \d+ \(waiting; LEAKED: its taker left past its release\) at \S*app\.py:\d+ Store\.update",
                         shown.stdout), shown.stdout


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_lock_handed_to_the_caller_is_held_by_design_and_no_verdict(loop: str) -> None:
    """``begin`` keeps the lock on the way it returns (its caller ends it later): the same
    shape on the holder's stack (the taker has ended, the permit is held), no verdict."""
    with DiagRun(STORE, env={"LOOP": loop, "MODE": "handover"}) as app:
        code, data = settled(app.url, {"worker-1", "worker-2"}, "--min-wait", "1")
        kinds = {f["kind"] for name in ("worker-1", "worker-2") for f in by_task(data).get(name, [])}
        assert kinds == {"suspect"}, data["findings"]
        evidence = " ".join(f["evidence"] for name in ("worker-1", "worker-2") for f in by_task(data)[name])
        assert "the call that acquired it (Store.begin) has returned" in evidence, evidence
        assert "left by an exception" not in evidence
        assert code == 0


def test_only_a_suspended_holder_has_a_chain_to_judge() -> None:
    """A running task shows no more of its chain than the coroutine it is in: it gives no
    answer, so a function it runs now is never taken for one that has ended."""
    import asyncio

    from diag.collect.sync_collector import _chain_frames

    async def main() -> None:
        assert _chain_frames(asyncio.current_task()) is None
        event = asyncio.Event()

        async def inner() -> None:
            await event.wait()

        async def outer() -> None:
            await inner()

        task = asyncio.create_task(outer())
        await asyncio.sleep(0)
        chain = _chain_frames(task)
        assert chain is not None
        assert [code.co_name for code, _ in chain] == ["outer", "inner", "wait"]
        assert all(lasti >= 0 for _, lasti in chain)
        event.set()
        await task

    asyncio.run(main())


def test_an_async_generator_suspended_at_a_yield_holds_its_lock_alive() -> None:
    """An async generator that took a lock and yields between items is off its consumer's
    await chain at each yield, yet alive: its code is never judged.  Nor is a chain that
    goes through an ``asend``, which does not show what it runs."""
    import asyncio

    from diag.collect import holders
    from diag.collect.sync_collector import _chain_frames, _skipped_releases

    async def main() -> None:
        lock, gate = asyncio.Lock(), asyncio.Event()

        async def rows():  # type: ignore[no-untyped-def]
            await lock.acquire()
            for n in range(3):
                yield n
            lock.release()

        async def consume() -> None:
            async for _ in rows():
                await gate.wait()

        async def below() -> None:
            await gate.wait()

        async def through():  # type: ignore[no-untyped-def]
            await below()
            yield 1

        async def drive() -> None:
            async for _ in through():
                pass

        task = asyncio.create_task(consume())
        other = asyncio.create_task(drive())
        await asyncio.sleep(0)
        assert _chain_frames(other) is None  # an asend: the chain is not all there
        live = {task_origins.task_seq(task): task}
        records = holders.records(lock)
        if records:  # (recorded only with holder tracking installed)
            assert _skipped_releases(records, live, lock) == {}
        gate.set()
        await asyncio.gather(task, other)

    from diag.collect import task_origins

    was = holders.installed()
    holders.install()
    try:
        asyncio.run(main())
    finally:
        if not was:
            holders.uninstall()
