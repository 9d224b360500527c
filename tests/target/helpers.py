"""Helpers for the target-server tests, on top of ``tests/support/target.py``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.support.target import TargetServer, http

T = TypeVar("T")


def request(server: TargetServer, method: str, path: str, *, timeout: float = 10.0,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request to ``server``; the body is decoded as JSON when it is JSON, else left as bytes."""
    status, resp_headers, body = http(method, server.url + path, timeout=timeout, headers=headers)
    lowered = {k.lower(): v for k, v in resp_headers.items()}
    if lowered.get("content-type", "").startswith("application/json"):
        return status, lowered, json.loads(body)
    return status, lowered, body


def get(server: TargetServer, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    return request(server, "GET", path, **kwargs)


def healthz(server: TargetServer) -> dict[str, Any]:
    status, _, body = get(server, "/healthz")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def release(server: TargetServer) -> dict[str, int]:
    status, _, body = request(server, "POST", "/admin/release")
    assert status == 200, body
    return body["released"]  # type: ignore[no-any-return]


def wait_until(check: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(interval)


def raw_exchange(server: TargetServer, payload: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes; a hung connection fails with a socket timeout."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):  # rejected before we finished sending
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # closed with our unread bytes still queued
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw_response: bytes) -> int:
    """Status code from the first line of a raw HTTP response."""
    return int(raw_response.split(b" ", 2)[1])


def log_records(server: TargetServer) -> list[dict[str, Any]]:
    """The server's JSON log lines so far; any line that is not JSON is an error on its own."""
    records = []
    output = server.output()
    for line in output.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"log line is not JSON: {line!r}\n{output[output.index(line):][:3000]}") from None
    return records


def find_log(server: TargetServer, **match: Any) -> dict[str, Any]:
    """Wait for a log record whose fields include ``match`` and return it."""
    def search() -> dict[str, Any] | None:
        for record in log_records(server):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        return None
    return wait_until(search)
