"""The leaky endpoints really leak, their fixed twins do not, and /admin/release frees everything."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.target import TargetServer
from tests.target.helpers import get, healthz, release, wait_until

POOL_SIZE = 4
LEAK_CAP = 5
POOL_WAIT = 0.3
UPSTREAM_POOL = 3


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    args = ("--max-concurrency", str(POOL_SIZE), "--pool-wait", str(POOL_WAIT), "--leak-cap", str(LEAK_CAP),
            "--upstream-pool", str(UPSTREAM_POOL))
    with TargetServer(*args) as srv:
        yield srv


@pytest.fixture(autouse=True)
def released_after(server: TargetServer) -> Iterator[int]:
    """Yield the idle task count; afterwards free whatever the test leaked so tests stay independent."""
    baseline = healthz(server)["tasks"]
    yield baseline
    release(server)
    health = wait_until(lambda: (h := healthz(server))["tasks"] <= baseline and h)
    assert not any(health["leaked"].values()), health["leaked"]
    assert health["work_pool"]["available"] == POOL_SIZE


@pytest.mark.parametrize(("name", "hits", "leaked"), [
    ("forgotten-task", 3, 3),
    ("orphan-future", 3, 3),
    ("deadlock", 2, 4),  # two workers per call
    ("silent-peer", 3, 3),
    ("blocked-put", 3, 2),  # the first put fits into the queue, later producers block
    ("dead-consumer", 2, 2),  # one blocked producer per pipeline; its consumer died
    ("swallowed-cancel", 2, 4),  # the heartbeat and the stop waiting for it
])
def test_leaked_tasks_stay_pending_until_released(server: TargetServer, released_after: int, name: str,
                                                  hits: int, leaked: int) -> None:
    for _ in range(hits):
        status, _, body = get(server, f"/leak/{name}")
        assert status == 202 and body["leak"] == name
    time.sleep(0.2)  # long enough for any task that could finish on its own to do so
    health = healthz(server)
    assert health["leaked"][name] == leaked
    assert health["tasks"] >= released_after + leaked
    assert release(server)[name] == leaked
    health = wait_until(lambda: (h := healthz(server))["tasks"] <= released_after and h)
    assert health["leaked"][name] == 0


@pytest.mark.parametrize(("name", "allowed"), [("forgotten-task", LEAK_CAP), ("deadlock", LEAK_CAP // 2)])
def test_leak_cap_answers_429_and_leaks_no_more(server: TargetServer, name: str, allowed: int) -> None:
    for _ in range(allowed):
        assert get(server, f"/leak/{name}")[0] == 202
    status, _, body = get(server, f"/leak/{name}")
    assert status == 429 and body["error"] == "leak cap reached"
    assert healthz(server)["leaked"][name] <= LEAK_CAP


def test_semaphore_leak_starves_the_work_pool(server: TargetServer) -> None:
    for _ in range(POOL_SIZE):
        assert get(server, "/leak/semaphore")[::2] == (502, {"error": "downstream failed"})
    health = healthz(server)
    assert health["leaked"]["semaphore"] == POOL_SIZE
    assert health["work_pool"]["available"] == 0
    started = time.monotonic()
    status, headers, body = get(server, "/work/slow?ms=1")
    assert status == 503 and int(headers["retry-after"]) >= 1, body
    assert time.monotonic() - started >= POOL_WAIT  # it queued for a slot before giving up
    assert get(server, "/leak/semaphore")[0] == 503  # nothing left to leak
    assert get(server, "/fixed/semaphore")[0] == 503
    assert release(server)["semaphore"] == POOL_SIZE
    assert healthz(server)["work_pool"]["available"] == POOL_SIZE
    assert get(server, "/work/slow?ms=1")[0] == 200


def test_fixed_semaphore_returns_its_permit(server: TargetServer) -> None:
    for _ in range(POOL_SIZE + 2):
        assert get(server, "/fixed/semaphore")[::2] == (502, {"error": "downstream failed"})
    assert healthz(server)["work_pool"]["available"] == POOL_SIZE


def test_lock_leak_blocks_later_lock_users(server: TargetServer) -> None:
    assert get(server, "/leak/lock")[::2] == (502, {"error": "downstream failed"})
    assert healthz(server)["leaked"]["lock"] == 1
    for path in ("/leak/lock", "/fixed/lock"):
        started = time.monotonic()
        status, headers, _ = get(server, path)
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert time.monotonic() - started >= POOL_WAIT
    assert release(server)["lock"] == 1
    for _ in range(3):  # the fixed twin fails the same way but gives the lock back each time
        assert get(server, "/fixed/lock")[0] == 502
    assert healthz(server)["leaked"]["lock"] == 0


def test_upstream_pool_leak_leaves_later_requests_waiting_for_a_connection(server: TargetServer) -> None:
    upstream_failed = (502, {"error": "upstream failed", "upstream_status": 503})
    for _ in range(UPSTREAM_POOL):
        assert get(server, "/leak/upstream-pool")[::2] == upstream_failed
    assert healthz(server)["leaked"]["upstream-pool"] == UPSTREAM_POOL
    for path in ("/leak/upstream-pool", "/fixed/upstream-pool"):  # every connection is held: both queue
        started = time.monotonic()
        status, headers, body = get(server, path)
        assert (status, body["error"]) == (503, "upstream pool busy") and int(headers["retry-after"]) >= 1
        assert time.monotonic() - started >= POOL_WAIT
    assert healthz(server)["leaked"]["upstream-pool"] == UPSTREAM_POOL
    assert release(server)["upstream-pool"] == UPSTREAM_POOL
    for _ in range(UPSTREAM_POOL + 2):  # the fixed twin fails the same way but gives the connection back
        assert get(server, "/fixed/upstream-pool")[::2] == upstream_failed
    assert healthz(server)["leaked"]["upstream-pool"] == 0


def test_cache_leak_grows_and_fixed_cache_is_bounded(server: TargetServer) -> None:
    for i in range(1, 21):
        status, _, body = get(server, "/leak/cache")
        assert status == 202 and body["leaked"] == i and 1024 <= body["bytes"] <= 4096
    entries = [get(server, "/fixed/cache")[2]["entries"] for _ in range(140)]
    assert max(entries) == 128 and entries[-1] == 128
    assert healthz(server)["leaked"]["cache"] == 20
    assert release(server)["cache"] == 20


def _latency_of_root_during(server: TargetServer, stall_path: str) -> float:
    """How long GET / takes while ``stall_path`` (0.6 s of sleeping) is being served."""
    stall = threading.Thread(target=get, args=(server, stall_path))
    stall.start()
    time.sleep(0.15)  # let the sleep begin
    started = time.monotonic()
    assert get(server, "/")[0] == 200
    latency = time.monotonic() - started
    stall.join(5)
    return latency


def test_blocking_endpoint_stalls_the_loop_and_fixed_does_not(server: TargetServer) -> None:
    assert _latency_of_root_during(server, "/leak/blocking?seconds=0.6") > 0.3
    assert _latency_of_root_during(server, "/fixed/blocking?seconds=0.6") < 0.3
    assert get(server, "/leak/blocking?seconds=0")[::2] == (200, {"slept": 0.0})


@pytest.mark.parametrize("name", ["blocked-put", "semaphore", "forgotten-task", "orphan-future", "lock",
                                  "deadlock", "cache", "blocking", "silent-peer", "dead-consumer",
                                  "swallowed-cancel", "upstream-pool"])
def test_fixed_twins_leak_nothing(server: TargetServer, released_after: int, name: str) -> None:
    expected = 502 if name in ("semaphore", "lock", "upstream-pool") else 200
    for _ in range(3):
        assert get(server, f"/fixed/{name}?seconds=0.01")[0] == expected
    health = wait_until(lambda: (h := healthz(server))["tasks"] <= released_after and h)
    assert not any(health["leaked"].values())
    assert health["work_pool"]["available"] == POOL_SIZE


def test_release_reports_everything_it_freed(server: TargetServer) -> None:
    for name in ("blocked-put", "blocked-put", "forgotten-task", "orphan-future", "deadlock", "cache",
                 "silent-peer", "dead-consumer", "swallowed-cancel"):
        assert get(server, f"/leak/{name}")[0] == 202
    assert get(server, "/leak/upstream-pool")[0] == 502
    get(server, "/leak/semaphore")
    get(server, "/leak/lock")
    released = release(server)
    assert released == {"blocked-put": 1, "semaphore": 1, "forgotten-task": 1, "orphan-future": 1, "lock": 1,
                        "deadlock": 2, "cache": 1, "silent-peer": 1, "dead-consumer": 1, "swallowed-cancel": 2,
                        "upstream-pool": 1}
    assert release(server) == dict.fromkeys(released, 0)  # idempotent
