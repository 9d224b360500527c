"""Graceful shutdown: in-flight requests finish, leaks do not hold the process, the exit status is 0."""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.target import TargetServer
from tests.target.helpers import get, healthz, log_records, wait_until

IN_FLIGHT = 50
SHUTDOWN_TIMEOUT = 5.0


def _refuses_connections(server: TargetServer) -> bool:
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
    except OSError:
        return True
    return False


def _messages(server: TargetServer) -> list[str]:
    return [record["message"] for record in log_records(server)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_in_flight_requests_finish(signum: signal.Signals) -> None:
    args = ("--max-concurrency", "64", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    with TargetServer(*args) as server, ThreadPoolExecutor(IN_FLIGHT) as pool:
        assert server.proc is not None
        requests = [pool.submit(get, server, "/work/slow?ms=1500") for _ in range(IN_FLIGHT)]
        wait_until(lambda: healthz(server)["in_flight"] >= IN_FLIGHT + 1)  # + the health check itself
        server.proc.send_signal(signum)
        signalled = time.monotonic()
        wait_until(lambda: _refuses_connections(server), timeout=1.0)  # stopped accepting at once
        results = [future.result(timeout=10) for future in requests]
        assert [(status, body) for status, _, body in results] == [(200, {"waited_ms": 1500})] * IN_FLIGHT
        assert server.proc.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0
        assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT
        messages = _messages(server)  # also proves every line, even one written during teardown, is JSON
        assert "shutting down" in messages and "stopped" in messages


def test_shutdown_with_leaks_present_is_prompt() -> None:
    with TargetServer("--shutdown-timeout", str(SHUTDOWN_TIMEOUT)) as server:
        assert server.proc is not None
        for name in ("blocked-put", "blocked-put", "forgotten-task", "orphan-future", "deadlock", "silent-peer",
                     "cache", "semaphore", "lock", "dead-consumer", "swallowed-cancel", "upstream-pool"):
            get(server, f"/leak/{name}")
        leaked = healthz(server)["leaked"]
        assert all(leaked.values()), leaked
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=SHUTDOWN_TIMEOUT + 5) == 0
        assert time.monotonic() - started < 2.0
        output = server.output()
        assert "Task was destroyed" not in output and "Traceback" not in output
        assert _messages(server)[-1] == "stopped"


def test_shutdown_timeout_bounds_a_stuck_request() -> None:
    with TargetServer("--shutdown-timeout", "0.5") as server, ThreadPoolExecutor(1) as pool:
        assert server.proc is not None
        stuck = pool.submit(get, server, "/work/slow?ms=8000")
        wait_until(lambda: healthz(server)["in_flight"] >= 2)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 3.0  # the deadline, not the request, decided when to stop
        with pytest.raises(OSError):  # the cut-off request gets no response
            stuck.result(timeout=5)
