"""Plain endpoints, request ids, logging and bad input, against one shared server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

import target_server
from tests.support.target import TargetServer
from tests.target.helpers import find_log, get, healthz, log_records, raw_exchange, request, status_of

HEX_ID = re.compile(r"[0-9a-f]{32}")
LEAK_NAMES = {"blocked-put", "semaphore", "forgotten-task", "orphan-future", "lock", "deadlock", "cache",
              "silent-peer", "dead-consumer", "swallowed-cancel", "upstream-pool"}


@pytest.fixture(scope="module")
def server() -> Iterator[TargetServer]:
    with TargetServer() as srv:
        yield srv


def test_root_answers_ok(server: TargetServer) -> None:
    status, headers, body = get(server, "/")
    assert (status, body) == (200, b"OK")
    assert headers["content-type"].startswith("text/plain")


def test_healthz_reports_state(server: TargetServer) -> None:
    health = healthz(server)
    assert health["version"] == target_server.__version__
    assert health["uptime_seconds"] > 0
    assert health["in_flight"] >= 1  # the health check itself
    assert health["tasks"] >= 2  # at least this handler and the qps reporter
    assert set(health["leaked"]) == LEAK_NAMES and not any(health["leaked"].values())
    assert health["work_pool"] == {"size": 16, "available": 16}


def test_work_cpu_runs_the_hash_chain(server: TargetServer) -> None:
    status, _, first = get(server, "/work/cpu?n=20000")
    assert status == 200 and first["n"] == 20000
    _, _, again = get(server, "/work/cpu?n=20000")
    assert again["digest"] == first["digest"]  # deterministic work, not a sleep
    _, _, default = get(server, "/work/cpu")
    assert default["n"] == 200_000


def test_work_slow_awaits(server: TargetServer) -> None:
    started = time.monotonic()
    status, _, body = get(server, "/work/slow?ms=100")
    assert (status, body) == (200, {"waited_ms": 100})
    assert time.monotonic() - started >= 0.1


def test_unknown_path_is_json_404(server: TargetServer) -> None:
    status, headers, body = get(server, "/no/such/path")
    assert (status, body) == (404, {"error": "not found"})
    assert HEX_ID.fullmatch(headers["x-request-id"])


def test_wrong_method_is_json_405(server: TargetServer) -> None:
    status, headers, body = request(server, "POST", "/healthz")
    assert (status, body) == (405, {"error": "method not allowed"})
    assert "GET" in headers["allow"]
    assert request(server, "GET", "/admin/release")[0] == 405


@pytest.mark.parametrize("path", [
    "/work/cpu?n=abc", "/work/cpu?n=-1", "/work/cpu?n=0", "/work/cpu?n=5000001", "/work/cpu?n=1e3",
    "/work/cpu?n=", "/work/cpu?n=" + "9" * 5000, "/work/slow?ms=-5", "/work/slow?ms=10001", "/work/slow?ms=0x10",
    "/leak/blocking?seconds=nan", "/leak/blocking?seconds=inf", "/leak/blocking?seconds=-1",
    "/leak/blocking?seconds=31", "/fixed/blocking?seconds=abc",
])
def test_bad_query_values_are_400(server: TargetServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 400, body
    assert isinstance(body["error"], str)


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 64_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 64_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
], ids=["huge-header", "huge-url", "many-headers", "garbage", "bad-content-length"])
def test_malformed_requests_get_a_clean_4xx(server: TargetServer, payload: bytes) -> None:
    response = raw_exchange(server, payload)
    assert 400 <= status_of(response) < 500, response[:200]
    assert healthz(server)["in_flight"] == 1  # nothing left hanging


def test_request_id_is_echoed_when_sane(server: TargetServer) -> None:
    for path in ("/", "/no/such/path", "/panic", "/work/cpu?n=abc"):
        _, headers, _ = get(server, path, headers={"X-Request-ID": "abc.DEF-123_x"})
        assert headers["x-request-id"] == "abc.DEF-123_x", path


@pytest.mark.parametrize("incoming", [None, "has space", "a" * 129, "semi;colon", ""])
def test_request_id_is_generated_otherwise(server: TargetServer, incoming: str | None) -> None:
    _, headers, _ = get(server, "/", headers={} if incoming is None else {"X-Request-ID": incoming})
    assert HEX_ID.fullmatch(headers["x-request-id"])


def test_access_log_lines_are_json(server: TargetServer) -> None:
    get(server, "/work/slow?ms=20", headers={"X-Request-ID": "access-log-probe"})
    record = find_log(server, request_id="access-log-probe")
    assert {"timestamp", "level", "request_id", "method", "path", "status", "duration_ms"} <= set(record)
    assert (record["method"], record["path"], record["status"]) == ("GET", "/work/slow", 200)
    assert record["duration_ms"] >= 20
    assert all(isinstance(r, dict) for r in log_records(server))  # every line parses as JSON


def test_panic_is_a_json_500_with_logged_error_id(server: TargetServer) -> None:
    status, headers, body = get(server, "/panic", headers={"X-Request-ID": "panic-probe"})
    assert status == 500
    assert body["error"] == "internal" and HEX_ID.fullmatch(body["error_id"])
    assert headers["x-request-id"] == "panic-probe"
    record = find_log(server, error_id=body["error_id"])
    assert record["level"] == "ERROR" and record["request_id"] == "panic-probe"
    assert "RuntimeError: panic requested" in record["traceback"]
    assert get(server, "/")[0] == 200  # and the server keeps serving


def test_qps_is_logged_every_second(server: TargetServer) -> None:
    record = find_log(server, message="qps")
    assert isinstance(record["qps"], (int, float))
