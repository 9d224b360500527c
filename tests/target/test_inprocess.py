"""Handler logic inside one event loop: what exactly each leaked task is waiting on, and the helpers."""

from __future__ import annotations

import asyncio
import gc
import sys
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from target_server import leaks
from target_server.__main__ import parse_args
from target_server.app import make_app
from target_server.config import Config
from target_server.httputil import HTTPProblem
from target_server.ratelimit import RateLimiter
from target_server.work import WORK_POOL, crunch

if TYPE_CHECKING:
    Client = TestClient[web.Request, web.Application]


@pytest.fixture
def app() -> web.Application:
    return make_app(Config(max_concurrency=2, pool_wait=0.1, leak_cap=5))


@pytest.fixture
async def client(aiohttp_client: Any, app: web.Application) -> Client:
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def leak(client: Client, name: str) -> list[asyncio.Task[Any]]:
    """Hit /leak/<name>, let the spawned tasks settle, return the pending ``leak:<name>`` tasks."""
    before = set(leaks.leaked_tasks())
    response = await client.get(f"/leak/{name}")
    assert response.status == 202, await response.text()
    await asyncio.sleep(0.05)
    return [t for t in leaks.leaked_tasks() if t not in before and t.get_name() == f"leak:{name}"]


def awaited_chain(task: asyncio.Task[Any]) -> list[Any]:
    """The task's coroutine and everything it is awaiting, outermost first."""
    chain: list[Any] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        chain.append(awaitable)
        awaitable = getattr(awaitable, "cr_await", None)
    return chain


def reachable_from(roots: Iterable[object]) -> set[int]:
    """Ids of objects reachable from ``roots`` without passing through a task or another module."""
    own_modules = {name for name in sys.modules if name.split(".")[0] == "target_server"}
    foreign_globals = {id(vars(m)) for name, m in list(sys.modules.items()) if name not in own_modules}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in foreign_globals or isinstance(obj, (asyncio.Task, types.ModuleType)):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return seen


def app_and_module_roots(app: web.Application) -> list[object]:
    return [app, *(vars(m) for name, m in sys.modules.items() if name.split(".")[0] == "target_server")]


async def test_forgotten_task_waits_on_an_event_only_it_can_reach(client: Client, app: web.Application) -> None:
    (task,) = await leak(client, "forgotten-task")
    chain = awaited_chain(task)
    assert chain[0].cr_code.co_name == "forgotten_waiter"
    event = chain[0].cr_frame.f_locals["event"]
    assert isinstance(event, asyncio.Event) and not event.is_set()
    waiter = task._fut_waiter  # noqa: SLF001 - the future the task is blocked on
    assert waiter in event._waiters  # noqa: SLF001
    reachable = reachable_from(app_and_module_roots(app))
    assert id(event) not in reachable and id(waiter) not in reachable
    assert id(app[leaks.LEAKS].shared_lock) in reachable  # the walk does see what the registry holds
    del event, waiter, chain
    await client.post("/admin/release")
    assert task.cancelled()


async def test_orphan_future_is_referenced_only_by_its_task(client: Client, app: web.Application) -> None:
    (task,) = await leak(client, "orphan-future")
    assert task.get_coro().cr_code.co_name == "orphan_future_waiter"
    future = task._fut_waiter  # noqa: SLF001
    assert isinstance(future, asyncio.Future) and not future.done()
    assert id(future) not in reachable_from(app_and_module_roots(app))
    gc.collect()
    assert all(r is task or type(r).__name__ == "FutureIter" for r in gc.get_referrers(future))
    del future
    await client.post("/admin/release")
    assert task.cancelled()


async def test_deadlock_workers_each_wait_on_the_lock_the_other_holds(client: Client) -> None:
    tasks = await leak(client, "deadlock")
    by_name = {t.get_coro().cr_code.co_name: t for t in tasks}
    assert set(by_name) == {"deadlock_worker_a", "deadlock_worker_b"}
    locals_a = by_name["deadlock_worker_a"].get_coro().cr_frame.f_locals
    locals_b = by_name["deadlock_worker_b"].get_coro().cr_frame.f_locals
    assert locals_a["first"] is locals_b["second"] and locals_a["second"] is locals_b["first"]
    for task, frame_locals in ((by_name["deadlock_worker_a"], locals_a), (by_name["deadlock_worker_b"], locals_b)):
        assert frame_locals["first"].locked() and frame_locals["second"].locked()
        assert task._fut_waiter in frame_locals["second"]._waiters  # noqa: SLF001
    locks = [locals_a["first"], locals_a["second"]]
    del locals_a, locals_b
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in tasks)  # still stuck, not just slow
    response = await client.post("/admin/release")
    assert (await response.json())["released"]["deadlock"] == 2
    assert all(t.cancelled() for t in tasks)
    assert not any(lock.locked() for lock in locks)


async def test_blocked_put_producer_waits_on_the_full_queue(client: Client, app: web.Application) -> None:
    assert await leak(client, "blocked-put") == []  # the first item fits
    (task,) = await leak(client, "blocked-put")
    assert task.get_coro().cr_code.co_name == "blocked_put_producer"
    queue = app[leaks.LEAKS].undrained_queue
    assert queue.full() and task._fut_waiter in queue._putters  # noqa: SLF001
    await client.post("/admin/release")
    assert task.cancelled() and queue.empty()


async def test_silent_peer_reader_waits_on_readline(client: Client) -> None:
    (task,) = await leak(client, "silent-peer")
    names = [getattr(a, "cr_code", None) and a.cr_code.co_name for a in awaited_chain(task)]
    assert names[0] == "silent_peer_reader" and "readline" in names
    await asyncio.sleep(0.1)
    assert not task.done()
    await client.post("/admin/release")
    assert task.cancelled()


async def test_semaphore_leak_keeps_permits(client: Client, app: web.Application) -> None:
    pool = app[WORK_POOL]
    assert [(await client.get("/leak/semaphore")).status for _ in range(3)] == [502, 502, 503]
    assert pool.locked() and app[leaks.LEAKS].leaked_permits == 2
    assert (await client.get("/fixed/semaphore")).status == 503
    await client.post("/admin/release")
    assert not pool.locked() and app[leaks.LEAKS].leaked_permits == 0
    assert (await client.get("/fixed/semaphore")).status == 502
    assert not pool.locked()


async def test_fixed_twins_leave_no_tasks(client: Client) -> None:
    for name in ("blocked-put", "forgotten-task", "orphan-future", "deadlock", "silent-peer"):
        response = await client.get(f"/fixed/{name}")
        assert response.status == 200, name
    await asyncio.sleep(0.05)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not {n for n in names if n.startswith("leak:") or n in ("fixed:forgotten-task", "fixed:deadlock")}


async def test_cache_cap(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaks, "_RESPONSE_CACHE", {str(i): leaks.CachedResponse(str(i), b"") for i in range(1000)})
    response = await client.get("/leak/cache")
    assert response.status == 429 and (await response.json())["error"] == "leak cap reached"
    assert len(leaks._RESPONSE_CACHE) == 1000  # noqa: SLF001
    await client.post("/admin/release")
    assert not leaks._RESPONSE_CACHE  # noqa: SLF001


async def test_release_refuses_non_loopback_callers(app: web.Application) -> None:
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("192.0.2.10", 40000)
    request = make_mocked_request("POST", "/admin/release", app=app, transport=transport)
    with pytest.raises(HTTPProblem) as raised:
        await leaks.release_handler(request)
    assert raised.value.status == 403


async def test_release_answers_loopback_callers(client: Client) -> None:
    response = await client.post("/admin/release")
    assert response.status == 200 and set((await response.json())["released"]) == set(leaks.LEAK_NAMES)


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, max_clients=2, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [0, 0, 1]
    assert limiter.check("b") == 0  # independent of a
    now[0] = 0.5
    assert limiter.check("a") == 1  # half a token is not a token; Retry-After rounds up to 1 s
    now[0] = 1.6
    assert limiter.check("a") == 0
    limiter.check("c")  # a third client evicts the least recently used, b
    assert set(limiter.buckets) == {"a", "c"}


def test_rate_limiter_retry_after_rounds_up() -> None:
    limiter = RateLimiter(rate=0.25, burst=1, clock=lambda: 0.0)
    assert limiter.check() == 0 and limiter.check() == 4


def test_crunch_is_deterministic() -> None:
    assert crunch(1000) == crunch(1000) != crunch(1001)


def test_parse_args_defaults_and_flags() -> None:
    assert parse_args([]) == Config()
    config = parse_args(["--port", "0", "--rate", "5", "--burst", "3", "--max-concurrency", "4", "--pool-wait", "0.5",
                         "--request-timeout", "2", "--leak-cap", "7", "--shutdown-timeout", "1", "--no-diag",
                         "--log-level", "debug"])
    assert config == Config(port=0, rate=5.0, burst=3, max_concurrency=4, pool_wait=0.5, request_timeout=2.0,
                            leak_cap=7, shutdown_timeout=1.0, no_diag=True, log_level="DEBUG")


@pytest.mark.parametrize("bad", [["--max-concurrency", "0"], ["--rate", "nan"], ["--burst", "x"],
                                 ["--log-level", "loud"], ["--pool-wait", "-1"]])
def test_parse_args_rejects_bad_values(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(bad)
