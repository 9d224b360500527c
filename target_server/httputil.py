"""JSON error responses and strict query-parameter parsing shared by all handlers."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web


def error_response(status: int, error: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None,
                   **details: Any) -> web.Response:
    """A JSON error body ``{"error": ..., **details}`` with an optional integer ``Retry-After``."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(max(1, retry_after))
    return web.json_response({"error": error, **details}, status=status, headers=all_headers)


class HTTPProblem(Exception):
    """Raised anywhere in a handler to answer with a JSON error; the error middleware renders it."""

    def __init__(self, status: int, error: str, *, retry_after: int | None = None, **details: Any) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self.details = details

    def response(self) -> web.Response:
        return error_response(self.status, self.error, retry_after=self.retry_after, **self.details)


def _raw(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return None if value is None else value.strip()


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    """Query parameter ``name`` as an int in [low, high]; anything else is a 400, never a 500."""
    raw = _raw(request, name)
    if raw is None:
        return default
    # Length check first: int() on a megabyte of digits is slow and the answer is "too large" anyway.
    if len(raw) > 20:
        raise HTTPProblem(400, f"{name} must be an integer between {low} and {high}")
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be an integer between {low} and {high}") from None
    if not low <= value <= high:
        raise HTTPProblem(400, f"{name} must be an integer between {low} and {high}")
    return value


def query_float(request: web.Request, name: str, default: float, *, low: float, high: float) -> float:
    """Query parameter ``name`` as a finite float in [low, high]; anything else is a 400."""
    raw = _raw(request, name)
    if raw is None:
        return default
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    # NaN fails both comparisons, so it lands here together with out-of-range values.
    if not low <= value <= high:
        raise HTTPProblem(400, f"{name} must be a number between {low:g} and {high:g}")
    return value
