"""Application assembly: middlewares, health and demo endpoints, background tasks."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

import diag.agent
import diag.aiohttp

from . import __version__, fixed, leaks, work
from .config import CONFIG, Config
from .httputil import HTTPProblem, error_response
from .logs import fields
from .ratelimit import ANONYMOUS, RateLimiter
from .work import WORK_POOL, pool_available

log = logging.getLogger("target_server")
access_log = logging.getLogger("target_server.access")

# Each request runs in its own task and so its own context: the id is visible to everything it calls.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Health checks, metrics scrapes and the operator's release button must work even while clients are
# being throttled.
RATE_LIMIT_EXEMPT = frozenset({"/healthz", "/metrics", "/admin/release"})
DIAG_PREFIX = "/debug/diag"


@dataclass
class ServerState:
    """Live counters of the running server."""

    started: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    requests_since_report: int = 0


STATE = web.AppKey("state", ServerState)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: assign the request id, count in-flight requests, write one JSON access-log line."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    REQUEST_ID.set(request_id)
    state = request.app[STATE]
    state.in_flight += 1
    state.requests_since_report += 1
    started = time.perf_counter()
    status = 499  # what gets logged if the handler is cancelled, e.g. the server stops mid-request
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        state.in_flight -= 1
        access_log.info("request", extra=fields(
            request_id=request_id, method=request.method, path=request.path, status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3), remote=request.remote))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON response; an unexpected exception becomes a 500 with a logged error id."""
    try:
        return await handler(request)
    except HTTPProblem as problem:
        return problem.response()
    except web.HTTPException as exc:  # aiohttp's own: 404 unknown path, 405 wrong method, ...
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return error_response(exc.status, (exc.reason or "error").lower(), headers=kept)
    except Exception:
        error_id = uuid.uuid4().hex
        log.exception("unhandled exception", extra=fields(
            error_id=error_id, request_id=REQUEST_ID.get(), method=request.method, path=request.path))
        return error_response(500, "internal", error_id=error_id)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 once the caller's token bucket is empty: per ``X-Client-ID``, else the shared anonymous bucket."""
    if request.path not in RATE_LIMIT_EXEMPT and not request.path.startswith(DIAG_PREFIX):
        client = request.headers.get("X-Client-ID", ANONYMOUS)[:128]
        wait = request.app[RATE_LIMITER].check(client)
        if wait:
            raise HTTPProblem(429, "rate limit exceeded", retry_after=wait)
    return await handler(request)


@web.middleware
async def timeout_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """504 when the handler outlives ``--request-timeout``; the handler is cancelled, so its slots are freed."""
    seconds = request.app[CONFIG].request_timeout
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await handler(request)
    except TimeoutError:
        if not deadline.expired():  # raised by the handler itself, not our deadline: a genuine 500
            raise
        raise HTTPProblem(504, "request timed out", timeout_seconds=seconds) from None


async def root_handler(request: web.Request) -> web.Response:
    """GET /: the plain liveness answer of the original server."""
    return web.Response(text="OK")


async def healthz_handler(request: web.Request) -> web.Response:
    """GET /healthz: uptime, load, live task count and what the leaky endpoints are holding."""
    app = request.app
    state = app[STATE]
    return web.json_response({
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - state.started, 3),
        "in_flight": state.in_flight,
        "tasks": len(asyncio.all_tasks()),
        "leaked": leaks.leak_counts(app),
        "work_pool": {"size": app[CONFIG].max_concurrency, "available": pool_available(app[WORK_POOL])},
        "diag_agent": agent.url if (agent := diag.agent.current()) is not None else None,
    })


async def panic_handler(request: web.Request) -> web.Response:
    """GET /panic: raise on purpose, to exercise the recovery middleware."""
    raise RuntimeError("panic requested via /panic")


async def report_qps(app: web.Application) -> None:
    """Log the request rate once a second, like the ticker goroutine of the Go original."""
    state = app[STATE]
    last = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        count, state.requests_since_report = state.requests_since_report, 0
        log.info("qps", extra=fields(qps=round(count / (now - last), 1), in_flight=state.in_flight))
        last = now


async def qps_reporter(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run :func:`report_qps` for the life of the app."""
    task = asyncio.create_task(report_qps(app), name="qps-reporter")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def log_shutdown(app: web.Application) -> None:
    log.info("shutting down", extra=fields(in_flight=app[STATE].in_flight))


def make_app(config: Config) -> web.Application:
    """Build the application; nothing runs until it is started."""
    app = web.Application(middlewares=[access_middleware, error_middleware, rate_limit_middleware,
                                       timeout_middleware])
    app[CONFIG] = config
    app[STATE] = ServerState()
    app[RATE_LIMITER] = RateLimiter(config.rate, config.burst)
    app[WORK_POOL] = asyncio.Semaphore(config.max_concurrency)
    app[leaks.LEAKS] = leaks.LeakRegistry()
    app.router.add_get("/", root_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/panic", panic_handler)
    work.add_routes(app)
    leaks.add_routes(app)
    fixed.add_routes(app)
    if not config.no_diag:
        diag.aiohttp.setup(app, prefix=DIAG_PREFIX)
    # The upstream's context is entered before the leaks' one, so it is left after their release.
    app.cleanup_ctx.extend([qps_reporter, leaks.upstream_lifecycle, leaks.leak_lifecycle, fixed.queue_lifecycle])
    app.on_shutdown.append(log_shutdown)
    return app
