"""Each agent endpoint keeps to a time and a size budget, says when it cut its answer,
and a client that goes away mid-request leaves nothing running.

The agent runs in this process with its budgets lowered (they are module constants);
the tasks it dumps run on an event loop in a thread of this process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import diag.agent
from diag.agent import endpoints as api
from diag.agent import server as agent_server
from diag.analysis.task_groups import TaskQuery
from diag.errors import TargetError
from diag.sources.source import AgentSource
from tests.support.target import http

pytestmark = pytest.mark.timeout(60)


def diag_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("diag-") and t.is_alive()]


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class LoopWithTasks:
    """An event loop in a thread with ``count`` tasks, each waiting on its own Event."""

    def __init__(self, count: int, name_size: int = 20, busy: bool = False) -> None:
        self.count = count
        self.name_size = name_size
        self.busy = busy
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="budget-loop", daemon=True)

    async def _park(self, event: asyncio.Event) -> None:
        await event.wait()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        tasks = [asyncio.create_task(self._park(asyncio.Event()), name=f"t{i:05d}".ljust(self.name_size, "x"))
                 for i in range(self.count)]
        if self.busy:  # keep the loop thread in stacks of many depths, for a profile with many stacks
            tasks.append(asyncio.create_task(self._churn(self.stop)))
        self.ready.set()
        await self.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _churn(self, stop: asyncio.Event) -> None:
        def descend(depth: int) -> int:
            return descend(depth - 1) + 1 if depth else sum(range(2000))

        n = 0
        while not stop.is_set():
            descend(n % 60)
            n += 1
            await asyncio.sleep(0)

    def _run(self) -> None:
        self.loop.run_until_complete(self._main())
        self.loop.close()

    def __enter__(self) -> "LoopWithTasks":
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)


@pytest.fixture
def agent() -> Iterator[diag.agent.Agent]:
    running = diag.agent.start("127.0.0.1:0")
    try:
        yield running
    finally:
        diag.agent.stop()
        wait_until(lambda: not diag_threads(), timeout=15)


def get(agent: diag.agent.Agent, path: str, method: str = "GET", timeout: float = 30) -> tuple[int, bytes]:
    status, _, body = http(method, f"{agent.url}/debug/diag/{path}", timeout=timeout,
                           data=b"" if method == "POST" else None)
    return status, body


@pytest.mark.parametrize(("path", "method", "entries"), [
    ("tasks?debug=2", "GET", lambda d: d["tasks"]),
    ("sync", "GET", lambda d: d["primitives"]),
    ("objects?budget=1", "GET", lambda d: d["types"]),
])
def test_big_answers_are_cut_and_say_so(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch, path: str,
                                        method: str, entries: Callable[[dict[str, Any]], list[Any]]) -> None:
    with LoopWithTasks(400, name_size=150):
        status, whole = get(agent, path, method)
        assert status == 200
        full = json.loads(whole)
        assert full["truncated"] is False and not any(n.startswith("cut:") for n in full["notes"])
        budget = len(whole) // 3
        monkeypatch.setattr(api, "MAX_RESPONSE_BYTES", budget)
        time.sleep(api.SNAPSHOT_REUSE)
        status, body = get(agent, path, method)
    assert status == 200 and len(body) <= budget, (len(body), budget)
    cut = json.loads(body)
    assert cut["truncated"] is True
    note = next(n for n in cut["notes"] if n.startswith("cut:"))
    assert f"under {budget} bytes" in note
    assert 0 < len(entries(cut)) < len(entries(full))


@pytest.mark.skipif(sys.version_info < (3, 12), reason=(
    "yappi 1.7.6 on 3.11 (profile_threads, set from another thread) crashed this process with a "
    "segfault in the profiled loop thread, deep in a recursion, in CI and in 1 of 8 local runs; "
    "3.12 and later start it with PyEval_SetProfileAllThreads"))
def test_profile_answer_is_cut_and_says_so(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopWithTasks(50, busy=True):
        status, whole = get(agent, "profile?seconds=0.3&mode=yappi&force=1", "POST")
        assert status == 200, whole
        full = json.loads(whole)
        assert len(full["functions"]) > 10, full["functions"]
        # The next profile differs in size (on a loaded machine, by more than half): the
        # budget is what the first would take with 3 of its functions, a few of which any
        # profile of this loop has.
        few = dict(full, functions=full["functions"][:3],
                   edges=[e for e in full["edges"] if e["caller"] < 3 and e["callee"] < 3])
        budget = len(json.dumps(few)) + 256
        assert budget < len(whole) // 2
        monkeypatch.setattr(api, "MAX_RESPONSE_BYTES", budget)
        status, body = get(agent, "profile?seconds=0.3&mode=yappi&force=1", "POST")
    assert status == 200 and len(body) <= budget, body[:300]
    data = json.loads(body)
    assert data["truncated"] is True and any(n.startswith("cut:") for n in data["notes"])
    kept = len(data["functions"])
    assert 0 < kept < len(full["functions"])
    assert all(e["caller"] < kept and e["callee"] < kept for e in data["edges"])  # no edge to a dropped function


def test_an_answer_that_cannot_fit_is_an_error(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_RESPONSE_BYTES", 50)
    status, body = get(agent, "tasks")
    assert status == 507
    assert "budget of 50" in json.loads(body)["error"]


def test_task_walk_stops_at_its_time_budget(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "COLLECT_BUDGET", 0.0)
    with LoopWithTasks(1000):
        for path in ("tasks?debug=2", "sync"):
            status, body = get(agent, path)
            assert status == 200
            data = json.loads(body)
            snap = data if path.startswith("tasks") else data["tasks"]
            note = next(n for n in snap["notes"] if n.startswith("cut:"))
            assert "budget of 0s" in note and "of 10" in note  # described 256 of 1001+ tasks
            assert snap["total_tasks"] >= 1000 > len(snap["tasks"])
            time.sleep(api.SNAPSHOT_REUSE)


def connect(agent: diag.agent.Agent) -> socket.socket:
    url = urllib.parse.urlsplit(agent.url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


@pytest.mark.parametrize("mode", ["sample", "yappi"])
def test_client_that_leaves_mid_profile_frees_everything(agent: diag.agent.Agent, mode: str) -> None:
    with LoopWithTasks(10):
        sock = connect(agent)
        sock.sendall(f"POST /debug/diag/profile?seconds=1&mode={mode}&force=1 HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        assert wait_until(lambda: json.loads(get(agent, "profile/status")[1])["busy"], timeout=5)
        sock.close()  # gone before the answer
        started = time.monotonic()
        status, body = get(agent, "health", timeout=5)  # answered while the profile still runs
        assert status == 200 and time.monotonic() - started < 1.0
        status_now = wait_until(lambda: (s := json.loads(get(agent, "profile/status")[1]))["busy"] is False and s,
                                timeout=10)
    assert status_now and status_now["yappi_running"] is False and status_now["sampler_running"] is False
    assert wait_until(lambda: "diag-agent-request" not in diag_threads() and "diag-sampler" not in diag_threads())


def test_client_that_leaves_mid_dump(agent: diag.agent.Agent) -> None:
    with LoopWithTasks(3000):
        for path in ("tasks?debug=2", "sync?proof=1&budget=2", "objects?budget=1"):
            sock = connect(agent)
            sock.sendall(f"GET /debug/diag/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.close()
            status, _ = get(agent, "tasks")
            assert status == 200
    assert wait_until(lambda: "diag-agent-request" not in diag_threads())


def test_idle_connections_are_dropped(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_server._Handler, "timeout", 0.3)
    sock = connect(agent)
    sock.sendall(b"GET /debug/diag/health HTTP/1.1\r\n")  # half a request, then silence
    started = time.monotonic()
    assert sock.recv(100) == b""  # the agent hung up
    assert time.monotonic() - started < 5
    sock.close()


def test_connections_beyond_the_cap_get_503(agent: diag.agent.Agent) -> None:
    idle = [connect(agent) for _ in range(agent_server.MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # each idle connection holds a request thread
        status, body = get(agent, "health", timeout=5)
        assert status == 503 and "too many connections" in json.loads(body)["error"]
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: get(agent, "health", timeout=5)[0] == 200, timeout=10)


def test_many_clients_dumping_at_once_are_paced_not_refused(agent: diag.agent.Agent) -> None:
    # 25 clients ask at the same instant: all get their dump (none refused, none failed),
    # spaced out by the pacer, so together they take at least 24 gaps.
    clients = 25
    barrier = threading.Barrier(clients)
    statuses: list[int] = []

    def client() -> None:
        barrier.wait()
        statuses.append(get(agent, "tasks", timeout=30)[0])

    with LoopWithTasks(10):
        threads = [threading.Thread(target=client) for _ in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
    assert statuses == [200] * clients
    assert took >= (clients - 1) / agent_server.PACED_ANSWERS_PER_SECOND * 0.95


def test_the_pacer_refuses_a_turn_too_far_off() -> None:
    pacer = agent_server._Pacer(per_second=10, max_wait=0.25)
    barrier = threading.Barrier(4)
    turns: list[bool] = []

    def ask() -> None:
        barrier.wait()
        turns.append(pacer.wait())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # At once: turns now, +0.1 s and +0.2 s are taken; the fourth (+0.3 s) is past max_wait.
    assert sorted(turns) == [False, True, True, True]
    time.sleep(0.3)
    assert pacer.wait() is True  # the queue has moved on


def test_paced_endpoints_answer_503_with_retry_after_past_the_wait(agent: diag.agent.Agent,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.server._server, "pacer", agent_server._Pacer(per_second=0.5, max_wait=0.1))
    assert get(agent, "tasks", timeout=5)[0] == 200  # takes the only turn for two seconds
    status, headers, body = http("GET", f"{agent.url}/debug/diag/tasks", timeout=5)
    assert status == 503 and headers.get("Retry-After") == "1"
    assert "at most" in json.loads(body)["error"]
    assert get(agent, "health", timeout=5)[0] == 200  # unpaced routes still answer at once


def test_the_cli_waits_its_turn_at_a_busy_agent_within_its_timeout(agent: diag.agent.Agent,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # One dump every two seconds: a client that comes just after another gets 503 at first,
    # and is answered once the agent's next turn comes, within its --timeout.
    monkeypatch.setattr(agent.server._server, "pacer", agent_server._Pacer(per_second=0.5, max_wait=0.1))
    assert get(agent, "tasks", timeout=5)[0] == 200
    started = time.monotonic()
    snap = AgentSource(agent.url, timeout=10).tasks(TaskQuery())
    assert snap.tasks is not None and time.monotonic() - started > 0.5  # it did wait for the turn
    # A --timeout too short for the next turn: the busy answer, saying it waited.
    assert wait_until(lambda: get(agent, "tasks", timeout=5)[0] == 200)
    message = _error_of(agent.url, timeout=1)
    assert re.fullmatch(r".*HTTP 503: busy: .* \(still busy after waiting \d+\.\ds for a turn\)", message), message
    # the refused requests' threads end before the agent is stopped: none outlives the test
    assert wait_until(lambda: "diag-agent-request" not in diag_threads())


def _error_of(url: str, timeout: float) -> str:
    """The message of the TargetError a task dump from ``url`` raises ("" if none): caught
    here, so that no traceback holds the test's frame (and with it the agent) in a cycle
    that a later test's collection would find."""
    try:
        AgentSource(url, timeout=timeout).tasks(TaskQuery())
    except TargetError as err:
        return str(err)
    return ""


def test_identical_requests_share_one_answer_within_the_reuse_window(agent: diag.agent.Agent) -> None:
    with LoopWithTasks(10):
        first = get(agent, "sync")[1]
        second = get(agent, "sync")[1]
        assert first == second  # same answer: same taken_at
        other = get(agent, "sync?proof=0")[1]  # another query is another answer
        assert json.loads(other)["taken_at"] != json.loads(first)["taken_at"]
        time.sleep(api.ANSWER_REUSE + 0.05)
        assert json.loads(get(agent, "sync")[1])["taken_at"] != json.loads(first)["taken_at"]


def test_stale_answers_and_snapshots_are_dropped_without_another_request(agent: diag.agent.Agent,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Kept until the next request, a big dump would hold its memory for as long as nobody asks.
    with LoopWithTasks(2000):
        # Kept for an hour first, so that a loaded machine's pause cannot drop them before
        # they are seen; then made stale, with no request after.
        monkeypatch.setattr(api, "SNAPSHOT_REUSE", 3600.0)
        monkeypatch.setattr(api, "ANSWER_REUSE", 3600.0)
        assert get(agent, "tasks?debug=2&limit=5000")[0] == 200
        assert agent.endpoints._last is not None and agent.endpoints._answers
        monkeypatch.setattr(api, "SNAPSHOT_REUSE", 0.25)
        monkeypatch.setattr(api, "ANSWER_REUSE", 0.25)
        assert wait_until(lambda: agent.endpoints._last is None and not agent.endpoints._answers, timeout=5)


def _answer_in_cycles(garbage: list[Any]) -> list[str]:
    """What of an answer's making a collection found unreachable: its text (whole, or
    as the pieces it was joined from) or the agent's functions that made it."""
    found = []
    for obj in garbage:
        if type(obj) is bytes and len(obj) > 64 * 1024:
            found.append(f"{len(obj)} bytes")
        elif type(obj) is list and obj and type(obj[0]) is bytes:
            found.append(f"a list of {len(obj)} bytes pieces, {sum(len(b) for b in obj if type(b) is bytes)} bytes")
        elif callable(obj) and str(getattr(obj, "__module__", "")).startswith("diag.agent"):
            found.append(f"{getattr(obj, '__qualname__', type(obj).__name__)} of {obj.__module__}")
    return found


def _earlier_agents(agent: diag.agent.Agent) -> list[Any]:
    """Agents other than ``agent``, and their endpoints, still in memory."""
    kinds = (type(agent), type(agent.endpoints))
    return [obj for obj in gc.get_objects() if type(obj) in kinds and obj is not agent and obj is not agent.endpoints]


@pytest.mark.parametrize("path", ["tasks?debug=2&limit=9000", "tasks?debug=2&limit=9001&wire=2", "sync"])
def test_an_answer_is_freed_once_sent_not_at_the_next_collection(agent: diag.agent.Agent, path: str) -> None:
    # A large program's cyclic GC runs seldom (and is paused while dumps are taken): an
    # answer kept alive by a reference cycle stays in the program's memory until then.
    # An encoder calling itself through its closure did that to every answer: 65 MB a
    # dump, piling up, at 60,000 tasks.
    with LoopWithTasks(3 * api.ENCODE_SLICE + 1):
        was_enabled = gc.isenabled()
        gc.collect()
        # An earlier test's agent still in memory is cyclic garbage (or kept by something
        # else of that test), freed by whichever collection comes first: one that ran while
        # this agent's sampler held that test's dead tasks in a local list left it to the
        # collection below, and its route functions were counted as this answer's.  Held
        # here, none can be freed while this answer is measured.
        earlier = _earlier_agents(agent)
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            status, body = get(agent, path)
            assert status == 200 and len(body) > 3 * api.ENCODE_SLICE * 20
            # the agent drops its short-lived cache of answers and snapshots by itself
            assert wait_until(lambda: agent.endpoints._last is None and not agent.endpoints._answers, timeout=5)
            gc.collect()
            found = _answer_in_cycles(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            del earlier
            if was_enabled:
                gc.enable()
        assert found == []


@pytest.mark.parametrize("size", [0, 1, api.ENCODE_SLICE, api.ENCODE_SLICE + 1, 3 * api.ENCODE_SLICE + 7])
def test_sliced_json_encoding_is_byte_for_byte_json_dumps(size: int) -> None:
    doc = {"schema": "diag.tasks/1", "tasks": [{"id": i, "name": f"t{i}", "stack": [{"line": i}]} for i in range(size)],
           "notes": ["x" * 3], "nested": {"big": list(range(size)), "deeper": {"rows": [[i] for i in range(size)]}},
           "truncated": False}
    body, size = api.encode(doc)
    assert body == json.dumps(doc).encode() and size == len(body)
    # Past a limit it stops early and says it would not fit, with a size estimate over it.
    limit = len(body) // 2
    cut, estimate = api.encode(doc, limit)
    assert cut is None and estimate > limit
    assert api.encode(doc, len(body)) == (body, len(body))


def test_rows_are_made_a_slice_at_a_time_and_encode_as_the_whole_list() -> None:
    """A /1 dump's task entries are made as they are encoded: never all at once."""
    alive: list[int] = []
    made = [0]

    class Entry(dict):  # type: ignore[type-arg]
        def __del__(self) -> None:
            made[0] -= 1

    def convert(i: int) -> dict[str, Any]:
        made[0] += 1
        alive.append(made[0])
        return Entry(id=i, name=f"t{i}")

    count = 3 * api.ENCODE_SLICE + 7
    body, size = api.encode({"schema": "diag.tasks/1", "tasks": api.Rows(range(count), convert)})
    assert body == json.dumps({"schema": "diag.tasks/1",
                               "tasks": [{"id": i, "name": f"t{i}"} for i in range(count)]}).encode()
    assert size == len(body) and len(alive) == count
    assert max(alive) <= api.ENCODE_SLICE  # no more than one slice's entries existed at once


def test_long_lists_are_encoded_in_slices_at_any_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync answer keeps its tasks one level down: they must be sliced too, or one
    json.dumps call holds the GIL for the whole list."""
    calls: list[int] = []
    dumps = json.dumps

    def counted(value: Any, *args: Any, **kwargs: Any) -> str:
        calls.append(len(value) if type(value) is list else 0)
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(api.json, "dumps", counted)
    doc = {"schema": "diag.sync/1", "tasks": {"tasks": [{"id": i} for i in range(3 * api.ENCODE_SLICE)]}}
    body, _ = api.encode(doc)
    monkeypatch.setattr(api.json, "dumps", dumps)
    assert body == json.dumps(doc).encode()
    assert max(calls) <= api.ENCODE_SLICE  # no call saw the whole list


def test_a_dump_is_built_and_freed_with_the_gc_paused(agent: diag.agent.Agent,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A collection during a big dump walks every object the dump made while holding the
    # GIL: the target's loop stops for as long.  None may run from the collection to the
    # JSON, and a snapshot this big is not kept, so none is owed afterwards either.
    seen: list[bool] = []
    encode = api.encode

    def watched(doc: Any, limit: int | None = None) -> tuple[bytes | None, int]:
        seen.append(gc.isenabled())
        return encode(doc, limit)

    monkeypatch.setattr(api, "encode", watched)
    with LoopWithTasks(api.MAX_CACHED_SNAPSHOT_TASKS + 2000):
        status, body = get(agent, f"tasks?debug=2&limit={api.MAX_CACHED_SNAPSHOT_TASKS + 5000}")
        assert status == 200 and len(json.loads(body)["tasks"]) > api.MAX_CACHED_SNAPSHOT_TASKS
        assert seen and not any(seen) and gc.isenabled()
        assert agent.endpoints._last is None  # too big to keep for reuse
        seen.clear()
        assert get(agent, "sync")[0] == 200
        assert seen and not any(seen) and gc.isenabled()


async def test_without_an_agent_the_aiohttp_routes_drop_stale_answers_too() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    import diag.aiohttp as integration

    if diag.agent.current() is not None:
        pytest.skip("an agent runs in this process")
    app = web.Application()
    integration.setup(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/debug/diag/tasks")
        assert resp.status == 200
        assert integration._fallback._answers
        await asyncio.sleep(api.ANSWER_REUSE + 0.3)
        assert not integration._fallback._answers and integration._fallback._last is None


def test_the_proof_budget_bounds_both_runs_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof that finds something runs again to confirm it; the second run gets what the
    first left of the budget (CPU time), so the two never use more than the budget."""
    from diag.collect import reachability
    from diag.model.sync_snapshot import Reachability

    budgets: list[float] = []

    def run(exclude: frozenset[int], budget: float, wall_deadline: float) -> reachability._Run:
        budgets.append(budget)
        # a busy machine: the run took twice its CPU time on the wall clock
        return reachability._Run(Reachability(True, unreachable=(7,), blocked=1, seconds=1.5 * budget),
                                 {7: 1}, 0.75 * budget, {}, ())

    monkeypatch.setattr(reachability, "_prove", run)
    result = reachability.prove(budget=2.0)
    assert budgets == [2.0, 0.5] and result.unreachable == (7,)

    budgets.clear()
    monkeypatch.setattr(reachability, "_prove", lambda exclude, budget, wall_deadline: reachability._Run(
        budgets.append(budget) or Reachability(True, unreachable=(7,), blocked=1, seconds=budget), {7: 1}, budget,
        {}, ()))
    result = reachability.prove(budget=1.0)
    assert budgets == [1.0] and result.unreachable == () and not result.complete
    assert "nothing is reported as proven" in result.note


def test_a_task_whose_loop_never_ran_between_the_two_runs_is_not_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop thread caught mid-turn may hold a task's wake-up only on its evaluation stack;
    the second run confirms nothing about it until that thread has run."""
    from diag.collect import reachability
    from diag.model.sync_snapshot import Reachability

    mark = (1, None, None, 0, 0)
    monkeypatch.setattr(reachability, "_prove", lambda exclude, budget, wall_deadline: reachability._Run(
        Reachability(True, unreachable=(7, 8), blocked=2, seconds=0.01), {7: 1, 8: 2}, 0.01, {7: mark}, ()))
    monkeypatch.setattr(reachability, "RECHECK_PATIENCE", 0.2)
    monkeypatch.setattr(reachability, "_moved", lambda m: False)  # its thread got no CPU
    result = reachability.prove(budget=1.0)
    assert result.unreachable == (8,)  # task 8's loop was asleep in its poll: a still state
    assert "1 blocked task is not reported as proven: its loop's thread, caught mid-turn, got no CPU" in result.note
    monkeypatch.setattr(reachability, "_moved", lambda m: True)
    assert reachability.prove(budget=1.0).unreachable == (7, 8)


def test_a_run_during_which_the_program_ran_is_tried_again_and_never_proves_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread of the program that got the GIL in the middle of the marking may have
    moved what wakes a task from a list not yet read to one already read: such a run is
    tried again, and if every try is disturbed nothing is reported as proven."""
    from diag.collect import reachability
    from diag.model.sync_snapshot import Reachability

    tries: list[float] = []

    def runs(disturbed: int) -> Any:
        def run(exclude: frozenset[int], budget: float, wall_deadline: float) -> reachability._Run:
            tries.append(budget)
            ran = ("MainThread",) if len(tries) <= disturbed else ()
            return reachability._Run(Reachability(True, unreachable=(7,), blocked=1, seconds=0.01),
                                     {7: 1}, 0.01, {}, ran)
        return run

    monkeypatch.setattr(reachability, "_prove", runs(disturbed=1))
    result = reachability.prove(budget=1.0)
    # the first run was disturbed: tried again; the confirming run was not
    assert tries == pytest.approx([1.0, 0.99, 0.98]) and result.unreachable == (7,) and result.complete

    tries.clear()
    monkeypatch.setattr(reachability, "_prove", runs(disturbed=99))
    result = reachability.prove(budget=1.0)
    assert len(tries) == reachability.MAX_TRIES and result.unreachable == () and not result.complete
    assert result.note == ("the program ran while the proof marked (MainThread), in each of 3 tries: "
                           "nothing is reported as proven")


def test_a_thread_that_ran_is_told_from_one_that_waited_throughout() -> None:
    """A thread that ran Python code, even back to the same line, is in a new frame or at
    a new instruction; one blocked all along is where it was."""
    from diag.collect import reachability

    go, went = threading.Event(), threading.Event()
    rounds = []

    def work() -> None:
        while len(rounds) < 2:
            go.wait()          # blocked here, between rounds
            go.clear()
            rounds.append(1)
            went.set()

    worker = threading.Thread(target=work, name="worker", daemon=True)
    worker.start()
    while worker.ident not in sys._current_frames() or sys._current_frames()[worker.ident].f_code.co_name != "wait":
        went.wait(0.01)
    me = frozenset({threading.get_ident()})
    before = reachability._positions(sys._current_frames(), me)
    assert worker.ident in before
    went.wait(0.05)            # nothing woke it
    assert "worker" not in reachability._ran_since(before, me)
    go.set()
    assert went.wait(30)       # one round, and back to the same line
    while sys._current_frames()[worker.ident].f_code.co_name != "wait":
        went.wait(0.01)
    assert "worker" in reachability._ran_since(before, me)
    go.set()
    worker.join(30)


def test_a_task_that_stepped_shows_in_the_waits_read_before() -> None:
    """uvloop runs its loop in C, where no frame shows it ran: its tasks' waits do."""
    from diag.collect import reachability
    from diag.collect.safe_read import future_field

    async def main() -> None:
        gate = asyncio.Event()

        async def waiter() -> None:
            await gate.wait()
            await asyncio.sleep(3600)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        states = [(task, future_field(task, "_fut_waiter"), False)]
        assert not reachability._stepped(states)
        gate.set()
        assert reachability._stepped(states)        # its future is done: about to step
        await asyncio.sleep(0)
        assert reachability._stepped(states)        # it waits on another future now
        task.cancel()

    asyncio.run(main())


_CPU_BOUND: list[bool] = []


def test_a_proof_in_a_program_with_a_cpu_bound_thread_completes() -> None:
    """A thread that runs Python code without pause was waiting for the GIL when the
    proof lengthened the switch interval: once its short wait ran out it took the GIL in
    the middle of the proof, which then waited the long interval to get it back and was
    cut short (on 3.13, saying the machine was busy).  The proof lets the GIL go once
    before it begins, which ends such waits."""
    from diag.collect import reachability

    def spin() -> None:
        n = 0
        while not _CPU_BOUND:
            n += 1

    spinner = threading.Thread(target=spin, name="spinner", daemon=True)
    spinner.start()
    try:
        for _ in range(5):
            result = reachability.prove()
            assert result.complete, result.note
    finally:
        _CPU_BOUND.append(True)
        spinner.join(30)
    _CPU_BOUND.clear()


_HEAP: list[list[object]] = []


def test_a_proof_stops_at_its_cpu_budget_or_on_the_wall_clock_of_a_busy_machine() -> None:
    """The budget is the proof's CPU time; a machine too busy to give it that stops it at
    the wall-clock limit, and the note says which."""
    import time

    from diag.collect import reachability

    global _HEAP
    _HEAP = [[] for _ in range(300_000)]  # a heap to mark, reached from a module's globals
    cut, _, used, _, _ = reachability._prove(frozenset(), 0.001)
    assert not cut.complete and used >= 0.001 and "0.001s of CPU time" in cut.note, cut
    past, _, _, _, _ = reachability._prove(frozenset(), 30.0, time.monotonic() - 1)
    assert not past.complete and "(the machine is busy)" in past.note, past
    whole, _, _, _, _ = reachability._prove(frozenset(), 30.0)
    assert whole.complete and whole.objects_marked > 300_000, whole
    assert reachability.wall_limit(0.5) == 1.5 and reachability.wall_limit(10) == 20
    _HEAP = []


def test_a_cut_sync_answer_makes_an_incomplete_verdict_and_keeps_the_totals(
        agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts on part of the tasks never say "clean", and top's counts stay totals."""
    from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, leak_report
    from diag.analysis.top_summary import summarize
    from diag.model.sync_snapshot import SyncSnapshot
    from diag.model.top_sample import MetricsSample, TopSample

    with LoopWithTasks(400, name_size=150):
        status, whole = get(agent, "sync")
        assert status == 200
        full = SyncSnapshot.from_dict(json.loads(whole))
        assert "incomplete" not in {f.kind for f in leak_report(full).findings}  # the whole answer: judged whole
        monkeypatch.setattr(api, "MAX_RESPONSE_BYTES", len(whole) // 3)
        time.sleep(api.SNAPSHOT_REUSE)
        status, body = get(agent, "sync")
    assert status == 200
    cut = SyncSnapshot.from_dict(json.loads(body))
    assert len(cut.tasks.tasks) < cut.tasks.total_tasks == full.tasks.total_tasks
    report = leak_report(cut)
    (incomplete,) = [f for f in report.findings if f.kind == "incomplete"]
    assert f"of {full.tasks.total_tasks:,} pending tasks" in incomplete.title and report.fails(DEFAULT_FAIL_ON)
    summary = summarize("agent", TopSample(1.0, 1.0, cut, MetricsSample(1.0, None)))
    assert summary.total_tasks == full.tasks.total_tasks == sum(n for _, n in summary.states)


def test_a_compact_dump_is_streamed_whole_whatever_the_budget(agent: diag.agent.Agent,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """wire=2 answers are sent as they are encoded (chunked), so the answer budget that
    cuts a diag.tasks/1 answer does not apply: every task is there."""
    with LoopWithTasks(400, name_size=150):
        monkeypatch.setattr(api, "MAX_RESPONSE_BYTES", 1000)
        status, head, body = http("GET", f"{agent.url}/debug/diag/tasks?debug=2&limit=100000&wire=2", timeout=30)
    assert status == 200, body[:300]
    assert head.get("Transfer-Encoding") == "chunked" and "Content-Length" not in head
    doc = json.loads(body)
    assert doc["schema"] == "diag.tasks/2" and len(body) > 1000
    assert sum(row[1].startswith("t0") for row in doc["tasks"]) == 400
    assert not any(n.startswith("cut:") for n in doc["notes"])


def test_a_stream_that_fails_midway_is_seen_cut(agent: diag.agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer the agent cannot finish ends without its last chunk: the client sees it
    cut short, never a document that merely looks complete; the agent keeps serving."""
    import http.client

    from diag.model import task_wire

    def failing(snapshot: Any, slice_size: int = 2000, sliced: bool = False) -> Any:
        yield b'{"schema": "diag.tasks/2", "tasks": ['
        raise RuntimeError("encoding failed")

    monkeypatch.setattr(task_wire, "stream", failing)
    with LoopWithTasks(10):
        host, port = agent.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/debug/diag/tasks?debug=2&wire=2")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        conn.close()
        monkeypatch.undo()
        status, body = get(agent, "tasks?debug=2&wire=2")
    assert status == 200 and json.loads(body)["schema"] == "diag.tasks/2"


def test_a_streamed_dump_gives_the_gc_back_whatever_the_client_does(agent: diag.agent.Agent) -> None:
    """The GC is paused while a streamed dump is made and sent; a client that reads it all,
    one that hangs up after the headers, and a HEAD all leave it as the program had it."""
    import http.client

    from diag.collect import gc_pause

    with LoopWithTasks(3000):
        host, port = agent.url.removeprefix("http://").rsplit(":", 1)
        for method, read in (("GET", True), ("GET", False), ("HEAD", False)):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(method, "/debug/diag/tasks?debug=2&wire=2&limit=100000")
            resp = conn.getresponse()
            assert resp.status == 200
            # a HEAD gets the head a GET gets: a streamed answer has no length to state
            assert (resp.getheader("Transfer-Encoding"), resp.getheader("Content-Length")) == ("chunked", None)
            if read:
                assert len(json.loads(resp.read())["tasks"]) > 3000
            if method == "HEAD":  # and the connection goes on with the next request
                assert resp.read() == b""
                conn.request("GET", "/debug/diag/")
                assert conn.getresponse().status == 200
            conn.close()
            assert wait_until(lambda: gc_pause.pauses_running() == 0 and gc.isenabled()), method


async def test_on_the_programs_loop_all_of_an_answer_is_the_agents_own_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """diag.aiohttp answers on the program's loop thread: the whole answer (analysis and
    encoding around the collections too) is marked as the agent's own work, so that a stall
    it causes there is the agent's (a busy machine stretches those parts most)."""
    import threading
    import time
    import types

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    import diag.aiohttp as integration
    from diag.collect.loop_watch import LoopWatch

    watch = LoopWatch(install_factories=False)
    endpoints = api.Endpoints(watch)
    seen: list[float] = []

    def handler(query: dict[str, str], exclude: frozenset[int]) -> api.Response:
        now = time.monotonic()
        seen.append(watch._own_overlap(now - 0.01, now, threading.get_ident()))
        return api.Response(200, b"{}")

    endpoints.add("own-probe", handler)
    monkeypatch.setattr(integration, "current", lambda: types.SimpleNamespace(watch=watch, endpoints=endpoints))
    app = web.Application()
    integration.setup(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/debug/diag/own-probe")
        assert resp.status == 200
    assert len(seen) == 1 and seen[0] > 0  # the loop thread was in the agent's own work
    later = time.monotonic() + 1.0  # a span still open would reach into any later window
    assert watch._own_overlap(later, later + 1.0, threading.get_ident()) == 0  # and is no longer
