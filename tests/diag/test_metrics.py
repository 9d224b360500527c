"""Prometheus metrics: the pure model on hand-built snapshots, the exposition text of both
ports of the real target server, and a real Prometheus server scraping them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast
from dataclasses import replace

import prometheus_client
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from diag.agent.metrics_routes import Scraper
from diag.analysis.leak_verdicts import LeakOptions
from diag.analysis.metrics_model import (
    OTHER, UNNAMED, Family, MetricsInputs, MetricsOptions, metric_families, permits_in_use,
)
from diag.collect.loop_watch import LoopWatch
from diag.render.prometheus import CONTENT_TYPE, exposition_text
from diag.model.sync_snapshot import Holder, PrimitiveState, SyncSnapshot
from diag.model.task_snapshot import LoopInfo, Primitive, TaskSnapshot, Wait
from tests.diag.snapshots import FETCH, POOL, fetchers_and_worker, snapshot, task
from tests.support.prometheus import PrometheusServer, prometheus_binary, scrape_config
from tests.support.target import TargetServer, get_json, http
from tests.target.helpers import wait_until

METRICS = "/debug/diag/metrics"


# -- the pure model ----------------------------------------------------------------------------------

def sync_of(tasks: TaskSnapshot | None, *primitives: PrimitiveState) -> SyncSnapshot:
    tasks = tasks if tasks is not None else fetchers_and_worker()
    return SyncSnapshot(taken_at=1_800_000_000.0, process=tasks.process, tasks=tasks, primitives=primitives,
                        holders_tracked=True)


def families(inputs: MetricsInputs) -> dict[str, Family]:
    return {f.name: f for f in metric_families(inputs)}


def holder(task_id: int, alive: bool = True, state: str = "waiting", held: float = 5.0) -> Holder:
    return Holder(task_id, f"Task-{task_id}", alive, state if alive else "finished", (FETCH,), held)


def test_tasks_are_counted_by_state_and_wait_kind_with_the_longest_wait() -> None:
    running = task(50, state="running", wait=Wait("running"))
    snap = snapshot(*fetchers_and_worker().tasks, running)
    got = families(MetricsInputs(sync_of(snap)))
    tasks = got["diag_tasks"]
    assert tasks.labels == ("state", "wait_kind")
    assert tasks.value(state="waiting", wait_kind="semaphore") == 3
    assert tasks.value(state="waiting", wait_kind="sleep") == 1
    assert tasks.value(state="running", wait_kind="running") == 1
    assert sum(s.value for s in tasks.samples) == 5
    longest = got["diag_task_wait_longest_seconds"]
    assert longest.value(wait_kind="semaphore") == 303.0 + 44  # the longest of the three
    assert longest.value(wait_kind="sleep") == 5.0
    assert longest.value(wait_kind="running") is None  # running tasks do not wait


def test_grouped_task_snapshots_count_every_member() -> None:
    grouped = fetchers_and_worker().with_tasks((replace(task(42), count=500, ids=(42, 43)),), grouped=True)
    assert families(MetricsInputs(sync_of(grouped)))["diag_tasks"].value(state="waiting", wait_kind="semaphore") == 500


def test_permits_in_use_per_kind() -> None:
    lock = PrimitiveState(Primitive("lock", "0x1", "A.lock", locked=True, waiters=2))
    bounded = PrimitiveState(Primitive("bounded_semaphore", "0x2", "pool", value=3, capacity=10, waiters=0))
    plain = PrimitiveState(Primitive("semaphore", "0x3", "sem", value=0, waiters=1), holders=(holder(1), holder(2)))
    event = PrimitiveState(Primitive("event", "0x4", "ev", is_set=False, waiters=4))
    assert [permits_in_use(s) for s in (lock, bounded, plain, event)] == [1, 7, 2, None]


def test_primitives_are_summed_per_label_and_capped() -> None:
    states = [PrimitiveState(Primitive("lock", hex(i), "Conn.lock", locked=True, waiters=1)) for i in range(3)]
    states += [PrimitiveState(Primitive("event", hex(100 + i), f"ev{i}", is_set=False, waiters=i)) for i in range(6)]
    states.append(PrimitiveState(Primitive("event", "0x999", "", is_set=False, waiters=0)))  # idle, anonymous
    states.append(PrimitiveState(Primitive("queue", "0x998", "", size=1, maxsize=1, waiters=10)))  # busy, anonymous
    got = families(MetricsInputs(sync_of(None, *states), options=MetricsOptions(max_primitive_series=4)))
    waiters, permits = got["diag_primitive_waiters"], got["diag_primitive_permits_in_use"]
    assert waiters.value(kind="lock", primitive="Conn.lock") == 3  # three locks, one series
    assert permits.value(kind="lock", primitive="Conn.lock") == 3
    assert waiters.value(kind="event", primitive="ev5") == 5 and waiters.value(kind="event", primitive="ev4") == 4
    assert waiters.value(kind="queue", primitive=UNNAMED) == 10
    # the cap keeps the 4 busiest labels; ev0..ev3 are summed into <other>, the idle anonymous event is dropped
    assert waiters.value(kind="event", primitive=OTHER) == 0 + 1 + 2 + 3
    assert waiters.value(kind="event", primitive="ev3") is None
    assert len(waiters.samples) == 5
    assert got["diag_primitive_series_folded"].samples[0].value == 4
    assert all(dict(s.labels)["kind"] != "event" for s in permits.samples)  # events hold no permits


def test_findings_are_counted_by_kind_without_the_proof() -> None:
    leaked = PrimitiveState(POOL, holders=(holder(7, alive=False),), waiting_tasks=(42, 43, 44))
    blocked = LoopInfo("0x7f00l", 1, "MainThread", True, 0.5, stalled_seconds=2.5)
    snap = sync_of(snapshot(*fetchers_and_worker().tasks, loops=(blocked,)), leaked)
    got = families(MetricsInputs(snap, options=MetricsOptions(leaks=LeakOptions(min_wait=1e9))))
    findings = got["diag_findings"]
    assert {dict(s.labels)["kind"] for s in findings.samples} == {
        "leaked_permit", "deadlock", "stuck_behind", "swallowed_cancel", "orphaned", "loop_blocked", "lost_wakeup",
        "exhausted", "suspect", "loop_starved", "incomplete"}  # proven_leak needs the proof
    assert findings.value(kind="leaked_permit") == 1 and findings.value(kind="loop_blocked") == 1
    assert findings.value(kind="loop_starved") == 0 and findings.value(kind="incomplete") == 0
    assert findings.value(kind="deadlock") == 0 and findings.value(kind="suspect") == 0
    assert got["diag_finding_tasks"].value(kind="leaked_permit") == 3
    assert got["diag_loop_lag_seconds"].value(thread="MainThread") == 0.5
    assert got["diag_loop_stalled_seconds"].value(thread="MainThread") == 2.5


def test_a_failed_collection_still_answers_with_requests_and_the_error_count() -> None:
    got = families(MetricsInputs(None, requests={"2xx": 3, "cancelled": 1}, scrape_errors=2))
    assert set(got) == {"diag_aiohttp_requests_total", "diag_scrape_collect_seconds",
                        "diag_scrape_snapshot_age_seconds", "diag_scrape_errors_total"}
    assert got["diag_scrape_errors_total"].samples[0].value == 2
    requests = got["diag_aiohttp_requests_total"]
    assert requests.value(status_class="2xx") == 3 and requests.value(status_class="5xx") == 0
    assert requests.value(status_class="cancelled") == 1
    assert "diag_aiohttp_requests_total" not in families(MetricsInputs(None))  # no app counts requests


def test_the_exposition_text_parses_back_to_the_same_values() -> None:
    leaked = PrimitiveState(POOL, holders=(holder(7, alive=False),), waiting_tasks=(42, 43, 44))
    model = metric_families(MetricsInputs(sync_of(None, leaked), requests={"2xx": 10, "4xx": 1},
                                          collect_seconds=0.01, snapshot_age=0.2))
    parsed = {f.name: f for f in text_string_to_metric_families(exposition_text(model))}
    assert parsed["diag_aiohttp_requests"].type == "counter"
    assert {s.name for s in parsed["diag_aiohttp_requests"].samples} == {"diag_aiohttp_requests_total"}
    assert parsed["diag_tasks"].type == "gauge"
    for family in model:
        name = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        values = {tuple(sorted(s.labels.items())): s.value for s in parsed[name].samples}
        assert values == {tuple(sorted(s.labels)): s.value for s in family.samples}, name


# -- the scraper, in process -------------------------------------------------------------------------

def test_scrapes_close_together_share_one_collection() -> None:
    scraper = Scraper(None)
    first = {f.name: f for f in scraper.families()}
    second = {f.name: f for f in scraper.families()}
    collected = first["diag_scrape_collect_seconds"].samples[0].value
    assert second["diag_scrape_collect_seconds"].samples[0].value == collected  # the same snapshot
    assert second["diag_scrape_snapshot_age_seconds"].samples[0].value > 0
    assert second["diag_tasks"] is first["diag_tasks"]  # and the same derived families
    assert second["diag_scrape_errors_total"].samples[0].value == 0


async def test_a_scrape_keeps_its_numbers_not_its_snapshot() -> None:
    """Kept for the reuse window, a snapshot of many tasks would be what the program's next
    full collection traverses (a loop stall of 0.6 s at 200,000 tasks): only its families stay."""
    import asyncio
    import gc

    from diag.model.task_snapshot import TaskInfo

    never = asyncio.Event()
    waiting = [asyncio.create_task(never.wait(), name=f"scrape-waiter-{i}") for i in range(300)]
    await asyncio.sleep(0)
    scraper = Scraper(None)
    try:
        got = {f.name: f for f in scraper.families()}
        assert sum(s.value for s in got["diag_tasks"].samples) >= 300
        gc.collect()
        # this scrape's task entries (other tests' snapshots may be alive in a whole run)
        kept = [o for o in gc.get_objects() if type(o) is TaskInfo and o.name.startswith("scrape-waiter-")]
        assert kept == [], f"{len(kept)} snapshot objects outlived the scrape"
        again = {f.name: f for f in scraper.families()}  # reused within the window: the same numbers
        assert again["diag_tasks"] is got["diag_tasks"]
    finally:
        never.set()
        await asyncio.gather(*waiting)


def test_a_collection_that_fails_is_counted_not_raised() -> None:
    scraper = Scraper(cast(LoopWatch, object()))  # a watch without the methods the collector calls
    for expected_errors in (1, 2):
        got = {f.name: f for f in scraper.families()}
        assert "diag_tasks" not in got and "diag_findings" not in got
        assert got["diag_scrape_errors_total"].samples[0].value == expected_errors
        assert got["diag_scrape_collect_seconds"].samples == ()


# -- the aiohttp integration, in process ----------------------------------------------------------------

def test_setup_is_idempotent_and_leaves_the_global_registry_alone() -> None:
    import diag.aiohttp

    before = set(prometheus_client.REGISTRY._names_to_collectors)
    apps = [web.Application(), web.Application()]
    for app in apps:
        diag.aiohttp.setup(app)
        routes, middlewares = len(app.router.routes()), len(app.middlewares)
        diag.aiohttp.setup(app)
        assert (len(app.router.routes()), len(app.middlewares)) == (routes, middlewares)
        assert any(r.resource is not None and r.resource.canonical == "/metrics" for r in app.router.routes())
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before


# -- the real target server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--max-concurrency", "4") as srv:
        yield srv


def agent_url(server: TargetServer) -> str:
    url = get_json(server.url + "/healthz")["diag_agent"]
    assert url, "the target server runs without its agent"
    return str(url)


def scrape(url: str) -> dict[str, prometheus_client.Metric]:
    status, headers, body = http("GET", url)
    assert status == 200, body[:500]
    assert headers["Content-Type"] == CONTENT_TYPE
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(family: prometheus_client.Metric, **labels: str) -> float | None:
    for s in family.samples:
        if s.labels == labels and not s.name.endswith("_created"):
            return float(s.value)
    return None


def test_both_ports_serve_the_same_metrics_of_a_leaking_server(server: TargetServer) -> None:
    assert http("GET", server.url + "/leak/semaphore")[0] == 502
    assert http("GET", server.url + "/leak/deadlock")[0] == 202
    assert http("GET", server.url + "/no-such-page")[0] == 404
    agent = agent_url(server)

    def deadlocked(url: str) -> dict[str, prometheus_client.Metric] | None:
        got = scrape(url)  # the deadlock forms a moment after the answer, and scrapes reuse a snapshot for 1 s
        return got if value(got["diag_findings"], kind="deadlock") == 1 else None

    for url in (server.url + "/metrics", agent + METRICS, server.url + METRICS):
        got = wait_until(lambda: deadlocked(url), timeout=10, interval=0.2)
        assert value(got["diag_findings"], kind="leaked_permit") == 1, url
        assert value(got["diag_tasks"], state="waiting", wait_kind="lock") == 2, url
        # the two deadlocked locks (named after their locals where the Python version lets diag see them)
        lock_permits = [s.value for s in got["diag_primitive_permits_in_use"].samples if s.labels["kind"] == "lock"]
        assert sum(lock_permits) == 2, url
        assert (value(got["diag_loop_lag_seconds"], thread="MainThread") or 0.0) >= 0.0, url
        requests = got["diag_aiohttp_requests"]
        assert (value(requests, status_class="2xx") or 0) >= 2  # /healthz and the deadlock leak
        assert (value(requests, status_class="4xx") or 0) >= 1 and (value(requests, status_class="5xx") or 0) >= 1
        assert value(got["diag_scrape_errors"]) == 0
    # the agent lists the route; scrapes are not counted as the app's requests
    index = get_json(agent + "/debug/diag/")
    assert f"GET {METRICS}" in index["endpoints"]
    before = value(scrape(agent + METRICS)["diag_aiohttp_requests"], status_class="2xx")
    scrape(server.url + "/metrics")
    assert value(scrape(agent + METRICS)["diag_aiohttp_requests"], status_class="2xx") == before


def test_bad_requests_get_a_clear_4xx(server: TargetServer) -> None:
    agent = agent_url(server)
    for url in (agent + METRICS + "?format=json", server.url + "/metrics?x=1", server.url + METRICS + "?x="):
        status, _, body = http("GET", url)
        assert status == 400, (url, status, body[:300])
        assert "no query parameters" in json.loads(body)["error"]
    status, _, body = http("POST", agent + METRICS)
    assert status == 405 and b"Traceback" not in body
    assert http("POST", server.url + "/metrics")[0] == 405


# -- a real Prometheus server -------------------------------------------------------------------------

def test_scrape_config_names_each_target_and_path() -> None:
    text = scrape_config({"app": "127.0.0.1:1/metrics", "agent": "127.0.0.1:2/debug/diag/metrics"}, 1.0)
    assert 'metrics_path: "/debug/diag/metrics"' in text and 'targets: ["127.0.0.1:2"]' in text
    assert "scrape_interval: 1s" in text


def test_prometheus_scrapes_both_ports_of_a_leaking_server() -> None:
    binary = prometheus_binary()
    with TargetServer("--max-concurrency", "4") as srv:
        assert http("GET", srv.url + "/leak/semaphore")[0] == 502
        assert http("GET", srv.url + "/leak/deadlock")[0] == 202
        agent = agent_url(srv).removeprefix("http://")
        targets = {"app": f"127.0.0.1:{srv.port}/metrics", "agent": f"{agent}{METRICS}"}
        with PrometheusServer(binary, targets, interval=1.0) as prom:
            def both(query: str, expected: float) -> dict[str, float] | None:
                seen = {r["metric"].get("job", ""): float(r["value"][1]) for r in prom.query(query)}
                return seen if seen == {"app": expected, "agent": expected} else None

            prom.wait_for(lambda p: both('diag_tasks{state="waiting",wait_kind="lock"}', 2), timeout=30)
            assert prom.wait_for(lambda p: both('diag_findings{kind="leaked_permit"}', 1), timeout=10)
            assert prom.wait_for(lambda p: both('diag_findings{kind="deadlock"}', 1), timeout=10)
            assert prom.wait_for(lambda p: both('up', 1), timeout=10)
            requests = prom.query('diag_aiohttp_requests_total{status_class="5xx"}')
            assert {r["metric"]["job"] for r in requests} == {"app", "agent"}
            assert all(float(r["value"][1]) >= 1 for r in requests)
            assert prom.query('diag_primitive_permits_in_use{kind="semaphore"}')


def test_without_the_binary_ci_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="prometheus binary is not installed"):
        prometheus_binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but the prometheus binary"):
        prometheus_binary()
