"""A ``Condition.wait_for`` that notifies wake and send back to waiting.

``wait_for`` re-checks its predicate after every wake-up, so a task idle in it cannot miss
a notify: by itself it is a worker waiting for work.  One woken since it began, its
predicate comparing shared state with a value of the call's own (``self.seq > failed_on``)
and still false, waits for a state the notifies so far have not brought: a retry waiting
for a connection newer than the one it failed on, after a reconnect that reset the count
(grpc/grpc-go #339).  The recorder (``condition_activity``) in a real loop, asyncio and
uvloop; the verdicts on real programs under ``diag run``."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

from diag.collect import condition_activity
from tests.diag.test_leaks_evidence import RUN_ON, by_task, dump_until, leaks, settled
from tests.support.cli import run_diag
from tests.support.programs import DiagRun


def run_loop(main: Any, loop: str) -> None:
    if loop == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.fixture()
def recording() -> Any:
    was = condition_activity.installed()
    condition_activity.install()
    yield
    if not was:
        condition_activity.uninstall()


def wait_for_of(task: asyncio.Task[Any]) -> Any:
    node = task.get_coro()
    while node.cr_code is not asyncio.Condition.wait_for.__code__:
        node = node.cr_await
    return node


# --- the recorder --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_notify_is_recorded_on_the_wait_for_calls_it_woke(recording: None, loop: str) -> None:
    async def main() -> None:
        cond, state = asyncio.Condition(), {"seq": 0}

        async def call(failed_on: int) -> None:
            async with cond:
                await cond.wait_for(lambda: state["seq"] > failed_on)

        high, low = asyncio.create_task(call(5)), asyncio.create_task(call(0))
        await asyncio.sleep(0.01)
        calls = wait_for_of(high), wait_for_of(low)
        assert condition_activity.woken(cond, calls[0]) is None  # not woken yet
        async with cond:
            state["seq"] = 1
            cond.notify_all()
        await low  # its predicate held: it returned
        assert not high.done()
        count, when = condition_activity.woken(cond, calls[0]) or (0, 0.0)
        assert count == 1 and when > 0
        async with cond:
            cond.notify()  # one waiter left: it is woken again, the same call
        await asyncio.sleep(0.01)
        assert (condition_activity.woken(cond, calls[0]) or (0,))[0] == 2
        assert not high.done()
        high.cancel()
        await asyncio.gather(high, return_exceptions=True)

    run_loop(main, loop)


def test_notify_wakes_as_asyncio_s_own_and_records_only_whom_it_woke(recording: None) -> None:
    async def main() -> None:
        cond = asyncio.Condition()
        checks = [0, 0, 0]

        def second_check(n: int) -> bool:  # false on entry, true once woken
            checks[n] += 1
            return checks[n] >= 2

        async def waiter(n: int) -> None:
            async with cond:
                await cond.wait_for(lambda: second_check(n))

        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        calls = [wait_for_of(t) for t in tasks]
        with pytest.raises(RuntimeError, match="un-acquired lock"):
            cond.notify()  # without the lock: asyncio's error, and nothing woken or recorded
        assert all(condition_activity.woken(cond, c) is None for c in calls)
        async with cond:
            assert cond.notify(1) is None  # the first waiter only, as asyncio's own does
        await asyncio.sleep(0.01)
        assert [condition_activity.woken(cond, c) is not None for c in calls] == [True, False, False]
        assert tasks[0].done() and not tasks[1].done()  # its predicate held the second time

        bare = asyncio.create_task(_bare_wait(cond))  # a plain Condition.wait: no wait_for call
        await asyncio.sleep(0.01)
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks, bare)
        assert len(cond.__dict__["_diag_woken"]) == 3  # the two other wait_for calls, the bare wait none

    asyncio.run(main())


async def _bare_wait(cond: asyncio.Condition) -> None:
    async with cond:
        await cond.wait()


def test_a_later_wait_for_of_the_same_task_starts_afresh_and_the_table_stays_bounded(recording: None) -> None:
    async def main() -> None:
        cond, go = asyncio.Condition(), {"n": 0}

        async def twice() -> None:
            for target in (1, 2):
                async with cond:
                    await cond.wait_for(lambda: go["n"] >= target)

        task = asyncio.create_task(twice())
        await asyncio.sleep(0.01)
        first = wait_for_of(task)
        async with cond:
            go["n"] = 1
            cond.notify_all()
        await asyncio.sleep(0.01)
        second = wait_for_of(task)
        assert second is not first
        assert condition_activity.woken(cond, second) is None  # its own call: not woken yet
        async with cond:
            go["n"] = 2
            cond.notify_all()
        await task

        # many short-lived wait_for calls: the ended ones give way
        for _ in range(condition_activity.MAX_RECORDED + 40):
            short = asyncio.create_task(twice())
            go["n"] = 0
            await asyncio.sleep(0)
            go["n"] = 2
            async with cond:
                cond.notify_all()
            await short
        assert len(cond.__dict__["_diag_woken"]) <= condition_activity.MAX_RECORDED

    asyncio.run(main())


def test_uninstall_puts_asyncio_s_own_notify_back() -> None:
    was = condition_activity.installed()
    condition_activity.install()
    assert asyncio.Condition.notify.__wrapped__ is not None  # type: ignore[attr-defined]
    condition_activity.uninstall()
    assert not hasattr(asyncio.Condition.notify, "__wrapped__")
    if was:
        condition_activity.install()


# --- the verdicts on real programs --------------------------------------------------------------------------------

CHANNEL = """
import asyncio, os, signal

MODE = os.environ["MODE"]

class Channel:
    def __init__(self):
        self.seq = 0
        self.changed = asyncio.Condition()

    async def reconnect(self):
        async with self.changed:
            self.seq = 1 if MODE in ("reset", "deadline") else self.seq + 1   # the bug: counts from 1 again
            self.changed.notify_all()

    async def call(self, failed_on):
        async with self.changed:
            if MODE == "deadline":
                async with asyncio.timeout(3600):
                    await self.changed.wait_for(lambda: self.seq > failed_on)
            else:
                await self.changed.wait_for(lambda: self.seq > failed_on)
        return self.seq

async def retry(channel):
    while True:
        await channel.call(1)                  # failed on transport 1: waits for a newer one
        await asyncio.sleep(0.2)

async def poll(channel, seen):
    while True:
        seen.append(await channel.call(0))
        del seen[:-5]
        await asyncio.sleep(0.1)

async def maintain(channel):
    await channel.reconnect()
    while True:
        await asyncio.sleep(0.3)
        await channel.reconnect()          # the connection comes back again and again

async def main():
    channel, seen = Channel(), []
    keep = [asyncio.create_task(maintain(channel), name="maintain"),
            asyncio.create_task(poll(channel, seen), name="poll")]
    await asyncio.sleep(0.05)
    keep += [asyncio.create_task(retry(channel), name=f"retry-{i}") for i in range(2)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON

WORKERS = """
import asyncio, signal

class Jobs:
    def __init__(self):
        self.items = []
        self.ready = asyncio.Condition()

    async def put(self, item):
        async with self.ready:
            self.items.append(item)
            self.ready.notify_all()            # every worker wakes; one gets the item

    async def get(self):
        async with self.ready:
            await self.ready.wait_for(lambda: self.items)
            return self.items.pop()

async def worker(jobs):
    while True:
        await jobs.get()
        await asyncio.sleep(0.01)

async def feed(jobs):
    while True:
        await asyncio.sleep(0.4)
        await jobs.put("job")

async def main():
    jobs = Jobs()
    keep = [asyncio.create_task(worker(jobs), name=f"worker-{i}") for i in range(6)]
    keep.append(asyncio.create_task(feed(jobs), name="feed"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON


def woken_long(names: set[str]) -> Any:
    """Every task of ``names`` waits in a wait_for woken since it began, for a second at least."""
    def ready(tasks: list[dict[str, Any]]) -> bool:
        waits = {t["name"]: t["wait"] for t in tasks if t["name"] in names}
        return len(waits) == len(names) and all(w.get("woken") and (w.get("seconds") or 0) >= 1.5
                                                 for w in waits.values())
    return ready


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_retry_woken_and_sent_back_by_every_reconnect_is_a_suspect_naming_its_own_value(loop: str) -> None:
    with DiagRun(CHANNEL, env={"LOOP": loop, "MODE": "reset"}) as app:
        tasks = dump_until(app.url, woken_long({"retry-0", "retry-1"}))
        waits = {t["name"]: t["wait"] for t in tasks}
        for name in ("retry-0", "retry-1"):
            wait = waits[name]
            assert wait["kind"] == "condition" and wait["woken"] >= 1, wait
            assert wait["predicate_own"] == ["failed_on"], wait
            assert "failed_on=1, self.seq=1" in wait["predicate"], wait
        code, data = settled(app.url, {"retry-0", "retry-1"}, "--min-wait", "1")
        found = by_task(data)
        (finding,) = {f["title"]: f for name in ("retry-0", "retry-1") for f in found[name]}.values()
        assert finding["kind"] == "suspect", finding
        assert "a notify has woken this wait_for " in finding["evidence"], finding
        assert ("it went back to waiting: its predicate, which compares with failed_on of the waiting call's own, "
                "is still false") in finding["evidence"], finding
        assert "poll" not in found and "maintain" not in found, data["findings"]
        assert code == 0  # evidence, not proof: a later notify could bring seq past 1
        shown = run_diag("tasks", app.url, "--format", "text")
        assert re.search(r"failed_on=1, self\.seq=1; woken (once|twice|\d+ times), still false, the last \S+ ago\)",
                         shown.stdout), shown.stdout


def test_a_retry_woken_and_sent_back_under_a_timeout_has_an_end_and_no_finding() -> None:
    with DiagRun(CHANNEL, env={"LOOP": "asyncio", "MODE": "deadline"}) as app:
        tasks = dump_until(app.url, woken_long({"retry-0", "retry-1"}))
        assert all(t["wait"]["deadline"] is not None for t in tasks if t["name"].startswith("retry")), tasks
        code, data = leaks(app.url, "--min-wait", "1")
        assert data["findings"] == [], data["findings"]
        assert code == 0


def test_idle_workers_woken_by_every_put_that_another_takes_are_not_suspects() -> None:
    """A predicate on shared state alone (``self.items``): a worker woken for a job another
    one took waits for work, as on ``Queue.get``."""
    with DiagRun(WORKERS, env={"LOOP": os.environ.get("LOOP", "asyncio")}) as app:
        names = {f"worker-{i}" for i in range(6)}
        tasks = dump_until(app.url, lambda tasks: sum(1 for t in tasks if t["name"] in names
                                                        and t["wait"].get("woken")
                                                        and (t["wait"].get("seconds") or 0) >= 1.0) >= 2)
        woken = [t for t in tasks if t["name"] in names and t["wait"].get("woken")]
        assert len(woken) >= 2, tasks
        assert all(not t["wait"].get("predicate_own") for t in woken), woken
        code, data = leaks(app.url, "--min-wait", "1")
        assert not set(by_task(data)) & names, data["findings"]
        assert code == 0
