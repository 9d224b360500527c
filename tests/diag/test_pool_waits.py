"""Waits behind libraries' awaitables, and a client pool that runs dry, on real objects.

A library whose awaitable hands on a coroutine's ``__await__`` (aiohttp's ``session.get``)
puts a ``coroutine_wrapper`` in the await chain: the dump follows it to the wait behind.
aiohttp's connector is read as a pool: its limit, the connections in use, the requests
waiting, and what holds each connection; its ``ClientTimeout`` is a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from diag.analysis.leak_verdicts import _pool_evidence
from diag.collect import wait_evidence
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import POOL_WAIT, collect_tasks
from diag.render.formatting import wait_reason
from diag.model.task_snapshot import ConnectionPool, PoolLease, Wait


class Request:
    """An awaitable of the kind libraries return: ``await Request(...)`` runs a coroutine."""

    def __init__(self, event: asyncio.Event) -> None:
        self._coro = self._send(event)

    async def _send(self, event: asyncio.Event) -> str:
        await event.wait()
        return "sent"

    def __await__(self) -> Generator[Any, None, str]:
        return self._coro.__await__()


async def test_a_wait_behind_a_librarys_awaitable_is_followed_to_what_it_waits_on() -> None:
    reply = asyncio.Event()

    async def caller() -> str:
        return await Request(reply)

    # two tasks at the same place: the first is walked for its frames, the second reuses its shape
    tasks = [asyncio.create_task(caller(), name=f"caller-{i}") for i in range(2)]
    await asyncio.sleep(0)
    try:
        dumped = {t.name: t for t in collect_tasks().tasks}
        for name in ("caller-0", "caller-1"):
            task = dumped[name]
            assert task.wait.kind == "event" and task.wait.primitive is not None, task.wait
            functions = [f.function for f in task.stack]
            assert functions[:3] == ["Event.wait", "Request._send", "test_a_wait_behind_a_librarys_awaitable_is_followed_to_what_it_waits_on.<locals>.caller"], functions
    finally:
        reply.set()
        assert await asyncio.gather(*tasks) == ["sent", "sent"]


async def _trickle(request: web.Request) -> web.StreamResponse:
    """A large answer, trickled (the client may never read it)."""
    page = web.StreamResponse()
    await page.prepare(request)
    try:
        for _ in range(400):
            await page.write(b"x" * 65536)
            await asyncio.sleep(0.005)
        await page.write_eof()
    except ConnectionError:
        pass
    return page


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", _trickle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def _until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_request_waiting_for_a_free_connection_names_the_pool_and_what_holds_it(upstream: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        kept = [await session.get(upstream) for _ in range(2)]  # neither read nor released
        async def fetch() -> aiohttp.ClientResponse:
            return await session.get(upstream)

        queued = asyncio.create_task(fetch(), name="queued")
        # gather and ensure_future make a task of the library's coroutine-like object itself
        direct = asyncio.ensure_future(session.get(upstream))
        direct.set_name("direct")
        connector = session.connector
        assert connector is not None
        watch = LoopWatch(install_factories=False)
        try:
            def pooled() -> Wait | None:
                watch.sample_waits()
                wait = {t.name: t.wait for t in collect_tasks(watch).tasks}.get("queued")
                return wait if wait is not None and wait.detail == POOL_WAIT and wait.seconds else None

            await _until(lambda: pooled() is not None, "the third request never waited in the pool")
            wait = pooled()
            assert wait is not None and wait.kind == "future" and wait.pool is not None
            await _until(lambda: connector._waiters and sum(map(len, connector._waiters.values())) == 2,
                         "the direct request never queued")
            dumped = {t.name: t for t in collect_tasks(watch).tasks}
            assert dumped["direct"].wait.detail == POOL_WAIT and dumped["direct"].coro == "ClientSession._request"
            assert dumped["direct"].stack[0].function == "BaseConnector._wait_for_available_connection"
            wait = dumped["queued"].wait
            assert wait.pool is not None
            assert (wait.pool.kind, wait.pool.limit, wait.pool.in_use, wait.pool.waiting) == ("TCPConnector", 2, 2, 2)
            assert wait.pool.id == hex(id(connector))
            assert wait.deadline_by == "aiohttp's ClientTimeout" and wait.deadline is not None
            assert 50 < wait.deadline <= 61  # aiohttp rounds its deadlines up to a whole second
            assert f"<TCPConnector {hex(id(connector))} in_use=2/2 waiting=2>" in wait_reason(wait)

            pool = wait_evidence.connection_pool(connector, leases=True)
            assert pool is not None and len(pool.leases) == 2
            for lease in pool.leases:
                assert (lease.holder, lease.request, lease.status) == ("ClientResponse", f"GET {upstream}", 200)
                assert not lease.reading and not lease.body_read
            evidence = _pool_evidence(pool)
            assert len(evidence) == 1 and "2 are held by 2 ClientResponses that no task reads or releases" in evidence[0]

            # a task reading one of them: that connection is busy, not lost
            reader = asyncio.create_task(kept[0].read(), name="reader")
            await _until(lambda: any(lease.reading for lease in wait_evidence.connection_pool(connector, True).leases),
                         "the reading task never showed")
            pool = wait_evidence.connection_pool(connector, leases=True)
            assert sorted(lease.reading for lease in pool.leases) == [False, True]
            assert "1 is held by 1 ClientResponse that no task reads" in _pool_evidence(pool)[0]
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

            for response in kept:  # the connections go back: the queued requests get them
                response.release()
            for later in await asyncio.wait_for(asyncio.gather(queued, direct), 20):
                later.release()
        finally:
            for waiting in (queued, direct):
                waiting.cancel()
            for response in kept:
                response.release()
            await asyncio.gather(queued, direct, return_exceptions=True)


def test_a_pool_is_evidence_only_when_full_and_held_by_what_no_task_reads() -> None:
    unread = PoolLease("ClientResponse", "GET http://upstream/a", 503)
    reading = PoolLease("ClientResponse", "GET http://upstream/b", 200, reading=True)
    in_flight = PoolLease()  # a request still being sent: no response holds it yet
    full = ConnectionPool("TCPConnector", "0x1", limit=3, in_use=3, waiting=5, leases=(unread, reading, in_flight))
    (text,) = _pool_evidence(full)
    assert "in use (3, limit 3)" in text and "1 is held by 1 ClientResponse that no task reads or releases" in text
    assert "(GET http://upstream/a, status 503)" in text and "5 requests wait for one" in text
    one_waiting = ConnectionPool("TCPConnector", "0x1", limit=1, in_use=1, waiting=1, leases=(unread,))
    assert _pool_evidence(one_waiting)[0].endswith("1 request waits for one")
    assert _pool_evidence(ConnectionPool("TCPConnector", "0x1", limit=4, in_use=3, leases=(unread,))) == []
    assert _pool_evidence(ConnectionPool("TCPConnector", "0x1", limit=2, in_use=2, leases=(reading, in_flight))) == []
    per_host = ConnectionPool("TCPConnector", "0x1", limit=100, limit_per_host=2, in_use=2, waiting=1,
                              leases=(unread, unread))
    assert "in use (2, limit 2)" in _pool_evidence(per_host)[0]
    assert _pool_evidence(ConnectionPool("TCPConnector", "0x1", limit=0, in_use=40, leases=(unread,))) == []
    # the wire form keeps it all
    wait = Wait("future", POOL_WAIT, pool=full)
    assert Wait.from_dict(wait.to_dict()) == wait


POOL_PROGRAM = """
import asyncio, os
import aiohttp
from aiohttp import web

KEPT = []

async def page(request):
    answer = web.StreamResponse(status=503)
    await answer.prepare(request)
    try:
        for _ in range(256):
            await answer.write(b"x" * 65536)
    except ConnectionError:
        pass
    return answer

async def status(session, url):
    {fetch}

ROUNDS = [0]

async def poll(session, url):
    while True:
        await status(session, url)
        ROUNDS[0] += 1
        if ROUNDS[0] == 30:
            print("30 rounds", flush=True)
        await asyncio.sleep(0.05)

async def main():
    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = "http://127.0.0.1:%d/" % site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        pollers = [asyncio.create_task(poll(session, url), name="poller") for _ in range(3)]
        await asyncio.Event().wait()

if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""
LEAKY = """resp = await session.get(url)
    KEPT.append(resp)  # never read nor released
    return resp.status"""
FIXED = """async with session.get(url) as resp:
        return resp.status"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_run_dry_is_named_in_a_real_process_and_its_fix_is_quiet(loop: str) -> None:
    import json
    import time

    from tests.support.cli import run_diag
    from tests.support.programs import DiagRun

    with DiagRun(POOL_PROGRAM.replace("{fetch}", LEAKY), env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 40
        while True:
            proc = run_diag("leaks", app.url, "--min-wait", "1", "--format", "json")
            report = json.loads(proc.stdout)
            pooled = [f for f in report["findings"] if "ClientResponses that no task reads" in f["evidence"]]
            if pooled or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert pooled, (report, app.output())
        (found,) = pooled
        assert found["kind"] == "suspect" and {t["name"] for t in found["tasks"]} == {"poller"}
        assert "in use (2, limit 2) and 2 are held by 2 ClientResponses" in found["evidence"]
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
        waiting = [t for t in tasks["tasks"] if t["name"] == "poller" and t["wait"]["detail"] == POOL_WAIT]
        assert waiting and waiting[0]["wait"]["pool"]["in_use"] == 2
        assert waiting[0]["stack"][0]["function"] == "BaseConnector._wait_for_available_connection"
        assert [f["function"] for f in waiting[0]["stack"]][-2:] == ["status", "poll"]

    with DiagRun(POOL_PROGRAM.replace("{fetch}", FIXED), env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 40
        while "30 rounds" not in app.output():  # the pollers went round the pool many times
            assert time.monotonic() < deadline, app.output()
            time.sleep(0.1)
        report = json.loads(run_diag("leaks", app.url, "--min-wait", "1", "--format", "json").stdout)
        assert not [f for f in report["findings"] if "ClientResponse" in f["evidence"]], report


SILENT_PROGRAM = """
import asyncio
import aiohttp
from aiohttp import web

async def never(request):
    await asyncio.sleep(3600)  # an upstream that never answers

async def main():
    app = web.Application()
    app.router.add_get("/", never)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = "http://127.0.0.1:%d/" % site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(timeout={timeout}) as session:
        async def fetch():
            async with session.get(url) as resp:
                return await resp.text()
        asyncio.create_task(fetch(), name="fetch")
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("timeout", ["aiohttp.ClientTimeout(total=None)", "aiohttp.ClientTimeout(total=300)"])
def test_a_request_never_answered_is_a_suspect_unless_a_timeout_ends_it(timeout: str) -> None:
    import json
    import time

    from tests.support.cli import run_diag
    from tests.support.programs import DiagRun

    with DiagRun(SILENT_PROGRAM.replace("{timeout}", timeout)) as app:
        deadline = time.monotonic() + 30
        while True:  # until the request has waited past --min-wait for its answer
            tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
            fetch = [t for t in tasks["tasks"] if t["name"] == "fetch"]
            if fetch and (fetch[0]["wait"]["seconds"] or 0) > 1.5:
                break
            assert time.monotonic() < deadline, (tasks, app.output())
            time.sleep(0.2)
        assert "ClientResponse.start" in [f["function"] for f in fetch[0]["stack"]]
        report = json.loads(run_diag("leaks", app.url, "--min-wait", "1", "--format", "json").stdout)
        about = [f for f in report["findings"] if "fetch" in {t["name"] for t in f["tasks"]}]
        if "None" in timeout:
            (found,) = about
            assert found["kind"] == "suspect"
            assert "the server has not answered this HTTP request for" in found["evidence"]
            assert "nothing can end the wait on its own" in found["evidence"]
        else:  # aiohttp's total timeout ends it: not a suspect
            assert about == [], about
            assert fetch[0]["wait"]["deadline_by"] == "aiohttp's ClientTimeout"
