"""/leak/upstream-pool as diag sees it: the CLI, run as a subprocess against a real server, names the
responses that hold the pool's connections; on the fixed twin, under more load than the pool has
connections, it says nothing of the kind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.support.cli import run_diag
from tests.support.target import TargetServer, get_json
from tests.target.helpers import get, healthz, release, wait_until

UPSTREAM_POOL = 4
MIN_WAIT = 0.5  # how long a wait must be before diag calls it a suspect, in these tests
UNREAD = "ClientResponses that no task reads or releases"


@pytest.fixture
def server() -> Iterator[TargetServer]:
    # A request waits in the pool for a minute, so the waits diag sees are the leak's, not the timeout's.
    with TargetServer("--upstream-pool", str(UPSTREAM_POOL), "--pool-wait", "60", "--request-timeout", "120") as srv:
        yield srv


def _pool_waits(server: TargetServer) -> int:
    """How many tasks the agent's dump shows waiting for a connection of the client's pool."""
    dump = get_json(server.url + "/debug/diag/tasks?limit=1000")
    return sum(1 for task in dump["tasks"]
               if "TCPConnector" in str(((task.get("wait") or {}).get("pool") or {}).get("kind", "")))


def _background_get(server: TargetServer, path: str) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(get(server, path, timeout=90)[0]), daemon=True)
    thread.start()
    return thread, statuses


def test_diag_leaks_names_the_unread_responses_that_drain_the_pool(server: TargetServer) -> None:
    for _ in range(UPSTREAM_POOL):
        assert get(server, "/leak/upstream-pool")[0] == 502
    waiter, statuses = _background_get(server, "/fixed/upstream-pool")

    def pool_wait_seen() -> str:
        proc = run_diag("tasks", server.url, "--format", "text")
        return proc.stdout if f"in_use={UPSTREAM_POOL}/{UPSTREAM_POOL} waiting=1>" in proc.stdout else ""
    tasks = wait_until(pool_wait_seen, timeout=15, interval=0.2)
    assert "connection pool <TCPConnector " in tasks

    def suspect_seen() -> str:
        proc = run_diag("leaks", server.url, "--format", "text", "--min-wait", str(MIN_WAIT), "--fail-on", "suspect")
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout if proc.returncode == 1 else ""
    report = wait_until(suspect_seen, timeout=15, interval=0.2)
    assert "SUSPECT: 1 task of RequestHandler._handle_request" in report and "on connection pool" in report
    assert f"is in use ({UPSTREAM_POOL}, limit {UPSTREAM_POOL}) and {UPSTREAM_POOL} are held by " \
           f"{UPSTREAM_POOL} {UNREAD} (GET http://127.0.0.1:" in report
    assert "/status, status 503)" in report
    assert "fixed_upstream_pool_handler" in report  # the waiting request's own frames
    assert not statuses  # still waiting
    assert release(server)["upstream-pool"] == UPSTREAM_POOL
    waiter.join(10)  # a connection came free: the waiting request goes through and releases its response
    assert statuses == [502]
    assert healthz(server)["leaked"]["upstream-pool"] == 0


def test_fixed_twin_under_load_gives_no_pool_finding(server: TargetServer) -> None:
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        while not stop.is_set():
            statuses.append(get(server, "/fixed/upstream-pool", timeout=30)[0])

    clients = [threading.Thread(target=load, daemon=True) for _ in range(UPSTREAM_POOL + 2)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: len(statuses) >= 50, timeout=30)
        # The premise: the pool is full at times, with requests queued for a connection.  The
        # agent's own dump is sampled (a CLI subprocess a sample took seconds on a loaded
        # machine, and caught the queue too seldom).
        wait_until(lambda: _pool_waits(server), timeout=60, interval=0.02)
        proc = run_diag("leaks", server.url, "--format", "text", "--min-wait", str(MIN_WAIT), "--fail-on", "suspect")
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert UNREAD not in proc.stdout and "connection pool" not in proc.stdout
    assert set(statuses) == {502}
    assert healthz(server)["leaked"]["upstream-pool"] == 0
