"""Rate limiting (429), the bounded work pool (503) and the per-request timeout (504)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.target import TargetServer
from tests.target.helpers import get, healthz, wait_until


@pytest.fixture(scope="module")
def limited() -> Iterator[TargetServer]:
    """One token per second, two in the bucket."""
    with TargetServer("--rate", "1", "--burst", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def small_pool() -> Iterator[TargetServer]:
    with TargetServer("--max-concurrency", "2", "--pool-wait", "0.2", "--request-timeout", "0.6") as srv:
        yield srv


def _client(name: str) -> dict[str, str]:
    return {"X-Client-ID": f"{name}-{uuid.uuid4().hex}"}  # fresh buckets per test


def test_rate_limit_answers_429_with_retry_after(limited: TargetServer) -> None:
    assert [get(limited, "/")[0] for _ in range(2)] == [200, 200]
    status, headers, body = get(limited, "/")
    assert (status, body) == (429, {"error": "rate limit exceeded"})
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
    assert headers["x-request-id"]
    assert healthz(limited)["status"] == "ok"  # health checks are exempt


def test_each_client_id_has_its_own_bucket(limited: TargetServer) -> None:
    alice, bob = _client("alice"), _client("bob")
    assert [get(limited, "/", headers=alice)[0] for _ in range(3)] == [200, 200, 429]
    assert [get(limited, "/", headers=bob)[0] for _ in range(3)] == [200, 200, 429]


def test_tokens_refill_over_time(limited: TargetServer) -> None:
    carol = _client("carol")
    assert [get(limited, "/", headers=carol)[0] for _ in range(3)] == [200, 200, 429]
    time.sleep(1.1)
    assert get(limited, "/", headers=carol)[0] == 200


def test_full_work_pool_answers_503_after_pool_wait(small_pool: TargetServer) -> None:
    results: list[int] = []
    holders = [threading.Thread(target=lambda: results.append(get(small_pool, "/work/slow?ms=500")[0]))
               for _ in range(2)]
    for holder in holders:
        holder.start()
    wait_until(lambda: healthz(small_pool)["work_pool"]["available"] == 0)
    started = time.monotonic()
    status, headers, body = get(small_pool, "/work/cpu?n=10")
    assert (status, body) == (503, {"error": "work pool busy"})
    assert int(headers["retry-after"]) >= 1
    assert time.monotonic() - started >= 0.2
    for holder in holders:
        holder.join(5)
    assert results == [200, 200]
    assert healthz(small_pool)["work_pool"]["available"] == 2


def test_request_timeout_answers_504_and_frees_the_slot(small_pool: TargetServer) -> None:
    started = time.monotonic()
    status, headers, body = get(small_pool, "/work/slow?ms=2000")
    assert status == 504 and body["error"] == "request timed out"
    assert headers["x-request-id"]
    assert 0.6 <= time.monotonic() - started < 1.5
    assert healthz(small_pool)["work_pool"]["available"] == 2  # the cancelled handler gave its slot back
