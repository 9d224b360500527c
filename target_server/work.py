"""The shared work pool and the two work endpoints: a CPU hot path and a slow-await path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from aiohttp import web

from .config import CONFIG
from .httputil import HTTPProblem, query_int

# Bounds how many work requests run at once; the leaky /leak/semaphore endpoint drains it.
WORK_POOL = web.AppKey("work_pool", asyncio.Semaphore)

MAX_CPU_ROUNDS = 5_000_000
MAX_SLOW_MS = 10_000


def pool_available(pool: asyncio.Semaphore) -> int:
    """Free permits of the pool, for /healthz (asyncio exposes no public accessor)."""
    return int(pool._value)  # noqa: SLF001 - stable attribute since Python 3.4


async def acquire_within(primitive: asyncio.Semaphore | asyncio.Lock, budget: float, what: str) -> None:
    """Acquire ``primitive`` or give up after ``budget`` seconds with a 503, so waiters never pile up forever."""
    try:
        async with asyncio.timeout(budget):
            await primitive.acquire()
    except TimeoutError:
        raise HTTPProblem(503, f"{what} busy", retry_after=1) from None


@asynccontextmanager
async def holding(primitive: asyncio.Semaphore | asyncio.Lock, budget: float, what: str) -> AsyncIterator[None]:
    """``async with`` form of :func:`acquire_within` that releases on every exit path, errors included."""
    await acquire_within(primitive, budget, what)
    try:
        yield
    finally:
        primitive.release()


def work_slot(request: web.Request) -> AbstractAsyncContextManager[None]:
    """A slot of the app's work pool for the duration of an ``async with`` block."""
    return holding(request.app[WORK_POOL], request.app[CONFIG].pool_wait, "work pool")


def _hash_round(x: int) -> int:
    x = (x * 0x01000193) & 0xFFFFFFFF
    return x ^ (x >> 15)


def _mix(state: int, i: int) -> int:
    return _hash_round(state ^ i)


def crunch(rounds: int) -> int:
    """Pure-Python hashing loop; deliberately runs on the event loop so profilers see a CPU hot path."""
    state = 0x9E3779B9
    for i in range(rounds):
        state = _mix(state, i)
    return state


async def cpu_handler(request: web.Request) -> web.Response:
    """GET /work/cpu?n=: burn CPU for ``n`` hash rounds inside a pool slot."""
    rounds = query_int(request, "n", 200_000, low=1, high=MAX_CPU_ROUNDS)
    async with work_slot(request):
        started = time.perf_counter()
        digest = crunch(rounds)
        elapsed_ms = (time.perf_counter() - started) * 1000
    return web.json_response({"n": rounds, "digest": f"{digest:08x}", "elapsed_ms": round(elapsed_ms, 3)})


async def _simulated_io(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def fetch_remote(ms: int) -> dict[str, int]:
    """Stand-in for a downstream call that takes ``ms`` milliseconds to answer."""
    await _simulated_io(ms / 1000)
    return {"waited_ms": ms}


async def slow_handler(request: web.Request) -> web.Response:
    """GET /work/slow?ms=: await simulated slow I/O inside a pool slot."""
    ms = query_int(request, "ms", 200, low=0, high=MAX_SLOW_MS)
    async with work_slot(request):
        result = await fetch_remote(ms)
    return web.json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/work/cpu", cpu_handler)
    app.router.add_get("/work/slow", slow_handler)
