"""``diag sync`` and ``diag leaks`` against the real target server: each leaky endpoint
gets its verdict, and the fixed twins under load get none (exit 0)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli import run_diag
from tests.support.target import TargetServer, http
from tests.target.helpers import get, healthz, release, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer("--max-concurrency", "4", "--pool-wait", "20", "--request-timeout", "30") as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(server: TargetServer) -> Iterator[None]:
    yield
    release(server)


def leaks(server: TargetServer, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_diag("leaks", server.url, "--format", "json", *args, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def findings(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["kind"] == kind]


def test_semaphore_leak_is_a_leaked_permit_at_its_acquire_site(server: TargetServer) -> None:
    for _ in range(2):
        assert get(server, "/leak/semaphore")[0] == 502
    code, report = leaks(server)
    assert code == 1 and report["schema"] == "diag.leaks/1"
    (finding,) = findings(report, "leaked_permit")
    assert finding["primitive"]["kind"] == "semaphore" and finding["primitive"]["value"] == 2
    assert "2 permits" in finding["title"]
    functions = [f["function"] for f in finding["site"]]
    assert functions[:2] == ["acquire_within", "leaky_acquire"]
    assert finding["site"][1]["file"].endswith("target_server/leaks.py")


def test_lock_leak_is_a_leaked_permit_with_the_waiting_request(server: TargetServer) -> None:
    get(server, "/leak/lock")
    waiter = threading.Thread(target=http, args=("GET", server.url + "/fixed/lock"), kwargs={"timeout": 30})
    waiter.start()

    def lock_finding() -> dict[str, Any] | None:
        found = findings(leaks(server)[1], "leaked_permit")
        return found[0] if found and found[0]["task_count"] == 1 else None
    finding = wait_until(lock_finding, timeout=10, interval=0.3)
    assert finding["primitive"]["kind"] == "lock" and finding["primitive"]["label"] == "LeakRegistry.shared_lock"
    assert [f["function"] for f in finding["site"]][:2] == ["acquire_within", "lock_leak_handler"]
    assert finding["tasks"][0]["wait"]["kind"] == "lock"
    release(server)
    waiter.join(10)


def test_orphaned_future_is_a_proven_leak(server: TargetServer) -> None:
    for _ in range(2):
        get(server, "/leak/orphan-future")
    code, report = leaks(server)
    proven = [f for f in findings(report, "proven_leak") if "orphan_future_waiter" in f["title"]]
    assert code == 1 and len(proven) == 1
    assert proven[0]["task_count"] == 2
    assert {t["coro"] for t in proven[0]["tasks"]} == {"orphan_future_waiter"}
    assert proven[0]["tasks"][0]["wait"]["kind"] == "future"


def test_lock_order_inversion_is_a_deadlock_naming_both_tasks_and_locks(server: TargetServer) -> None:
    get(server, "/leak/deadlock")

    def deadlock() -> list[dict[str, Any]]:
        return findings(leaks(server)[1], "deadlock")
    (finding,) = wait_until(deadlock, timeout=10, interval=0.3)
    assert {t["coro"] for t in finding["tasks"]} == {"deadlock_worker_a", "deadlock_worker_b"}
    assert len({p["id"] for p in finding["primitives"]}) == 2
    assert {p["kind"] for p in finding["primitives"]} == {"lock"}
    assert "lock-order inversion" in finding["title"]


def test_blocked_loop_is_reported_with_its_stack() -> None:
    # A server of its own: the agent remembers stalls for a minute, and the module's shared
    # server must not carry this one into the tests that assert no verdict.
    with TargetServer("--max-concurrency", "4") as server:
        agent = healthz(server)["diag_agent"]
        blocker = threading.Thread(target=http, args=("GET", server.url + "/leak/blocking?seconds=3"),
                                   kwargs={"timeout": 30})
        blocker.start()

        def blocked() -> dict[str, Any] | None:
            proc = run_diag("leaks", agent, "--format", "json", "--stall-threshold", "0.5", "--no-proof")
            found = findings(json.loads(proc.stdout), "loop_blocked")
            return found[0] if found else None
        finding = wait_until(blocked, timeout=10, interval=0.2)
        assert any(f["function"] == "blocking_handler" for f in finding["site"])
        blocker.join(10)


def test_suspects_are_reported_apart_from_proven_leaks(server: TargetServer) -> None:
    for _ in range(3):
        get(server, "/leak/blocked-put")
    wait_until(lambda: healthz(server)["leaked"]["blocked-put"] == 2, timeout=5)
    code, report = leaks(server, "--min-wait", "0")
    suspects = [f for f in findings(report, "suspect") if "blocked_put_producer" in f["title"]]
    assert code == 0  # the queue is reachable: not proven, and suspects do not fail by default
    assert suspects and "no task is waiting to get from this queue" in suspects[0]["evidence"]
    assert not [f for f in findings(report, "proven_leak") if "blocked_put" in f["title"]]


def test_sync_lists_primitives_with_holders_and_waiters(server: TargetServer) -> None:
    get(server, "/leak/deadlock")

    def snapshot() -> dict[str, Any] | None:
        proc = run_diag("sync", server.url, "--format", "json")
        data = json.loads(proc.stdout)
        locks = [p for p in data["primitives"] if p["primitive"]["kind"] == "lock" and p["holders"]
                 and p["waiting_tasks"]]
        return data if len(locks) >= 2 else None
    data = wait_until(snapshot, timeout=10, interval=0.3)
    assert data["schema"] == "diag.sync/1" and data["holders_tracked"] is True
    pool = [p for p in data["primitives"] if p["primitive"]["kind"] == "semaphore"]
    assert pool and pool[0]["primitive"]["label"].endswith("work_pool]")
    text = run_diag("sync", server.url, "--format", "text")
    assert "held by task" in text.stdout and "deadlock_worker_a" in text.stdout


FIXED = ["blocked-put", "semaphore", "forgotten-task", "orphan-future", "lock", "deadlock", "silent-peer", "cache"]


def test_fixed_twins_under_load_have_no_verdict(server: TargetServer) -> None:
    stop = threading.Event()

    def load(path: str) -> None:
        for _ in range(40):  # bounded
            if stop.is_set():
                return
            http("GET", server.url + path, timeout=10)

    threads = [threading.Thread(target=load, args=(f"/fixed/{name}",)) for name in FIXED]
    for t in threads:
        t.start()
    try:
        code, report = leaks(server, "--stall-threshold", "2")
        assert code == 0, [f["title"] for f in report["findings"]]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    code, report = leaks(server, "--stall-threshold", "2")
    assert code == 0, [f["title"] for f in report["findings"]]


def test_forgotten_tasks_are_proven_and_silent_peers_only_suspected(server: TargetServer) -> None:
    for _ in range(2):
        get(server, "/leak/forgotten-task")
        get(server, "/leak/silent-peer")
    wait_until(lambda: healthz(server)["leaked"]["silent-peer"] == 2, timeout=5)

    def proven_now() -> tuple[int, dict[str, Any], list[dict[str, Any]]] | None:
        # The agent answers the same question asked within 0.25 s (ANSWER_REUSE) with the same
        # answer: right after the last test's leaks, that is a snapshot from before these leaks.
        code, report = leaks(server, "--min-wait", "0")
        proven = [f for f in findings(report, "proven_leak") if "forgotten_waiter" in f["title"]]
        return (code, report, proven) if proven else None

    code, report, proven = wait_until(proven_now, timeout=15, interval=0.3)
    assert code == 1 and proven[0]["task_count"] == 2
    # The silent peer's socket is registered with the loop's selector: data could still come.
    assert not [f for f in findings(report, "proven_leak") if "silent_peer" in f["title"]]
    suspects = [f for f in findings(report, "suspect") if "silent_peer_reader" in f["title"]]
    assert suspects and "the peer has sent nothing" in suspects[0]["evidence"]
