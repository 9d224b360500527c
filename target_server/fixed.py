"""Fixed twins of the leaky endpoints (``/fixed/<name>``): the same work, written so nothing is left behind.

Helper tasks are named ``fixed:<name>`` and always awaited by the handler that starts them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web

from .config import CONFIG
from .httputil import error_response, query_float
from .leaks import (LEAKS, MAX_BLOCKING_SECONDS, UPSTREAM, CachedResponse, DownstreamError, MalformedMessage,
                    flaky_downstream, parse_message, pipeline_producer, render_report, spawn, upstream_pool_slot)
from .work import holding, work_slot

FIXED_PREFIX = "fixed:"
FIXED_CACHE_SIZE = 128
FIXED_WAIT = 1.0  # upper bound on any wait inside a fixed twin
PEER_READ_TIMEOUT = 0.5  # how long the silent-peer reader waits for a line

# /fixed/cache: the same entries as the leaky cache, in an LRU that evicts the oldest past FIXED_CACHE_SIZE.
_BOUNDED_CACHE: OrderedDict[str, CachedResponse] = OrderedDict()

# The fixed producer's queue: same size as the leaky one, but queue_consumer drains it.
DRAINED_QUEUE = web.AppKey("drained_queue", asyncio.Queue)


async def queue_consumer(queue: asyncio.Queue[str]) -> None:
    """Drain ``queue`` for the life of the app, so producers into it never stay blocked."""
    while True:
        await queue.get()
        queue.task_done()


async def bounded_put_producer(queue: asyncio.Queue[str], item: str, timeout: float) -> bool:
    """Put ``item`` into ``queue`` unless that takes longer than ``timeout``; True if it went in."""
    try:
        async with asyncio.timeout(timeout):
            await queue.put(item)
    except TimeoutError:
        return False
    return True


async def fixed_blocked_put_handler(request: web.Request) -> web.Response:
    """GET /fixed/blocked-put: bounded put into a drained queue; the producer is awaited, so it always ends."""
    queue = request.app[DRAINED_QUEUE]
    delivered = await spawn(bounded_put_producer(queue, uuid.uuid4().hex, FIXED_WAIT), FIXED_PREFIX + "blocked-put")
    return web.json_response({"delivered": delivered})


async def fixed_semaphore_handler(request: web.Request) -> web.Response:
    """GET /fixed/semaphore: the same failing call inside ``async with``, so the permit always comes back."""
    async with work_slot(request):
        try:
            await flaky_downstream()
        except DownstreamError:
            return error_response(502, "downstream failed")
    return web.json_response({"ok": True})


async def bounded_waiter(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def fixed_forgotten_task_handler(request: web.Request) -> web.Response:
    """GET /fixed/forgotten-task: the waiter is signalled and awaited, so it ends with the request."""
    event = asyncio.Event()
    waiter = spawn(bounded_waiter(event, FIXED_WAIT), FIXED_PREFIX + "forgotten-task")
    event.set()
    return web.json_response({"woken": await waiter})


def _resolve(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


async def resolved_future_waiter(delay: float) -> str:
    """Await a future that a timer resolves after ``delay`` seconds, with a timeout as a backstop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    loop.call_later(delay, _resolve, future, "resolved")
    async with asyncio.timeout(delay + FIXED_WAIT):
        return await future


async def fixed_orphan_future_handler(request: web.Request) -> web.Response:
    """GET /fixed/orphan-future: the awaited future is resolved by its owner and the task is awaited."""
    result = await spawn(resolved_future_waiter(0.01), FIXED_PREFIX + "orphan-future")
    return web.json_response({"result": result})


async def fixed_lock_handler(request: web.Request) -> web.Response:
    """GET /fixed/lock: the same failing call under ``async with`` the shared lock."""
    async with holding(request.app[LEAKS].shared_lock, request.app[CONFIG].pool_wait, "shared lock"):
        try:
            await flaky_downstream()
        except DownstreamError:
            return error_response(502, "downstream failed")
    return web.json_response({"ok": True})


async def ordered_worker(first: asyncio.Lock, second: asyncio.Lock) -> None:
    """Take ``first`` then ``second``, the order every worker agrees on."""
    async with first:
        await asyncio.sleep(0.01)
        async with second:
            pass


async def fixed_deadlock_handler(request: web.Request) -> web.Response:
    """GET /fixed/deadlock: both workers take lock1 then lock2 and the handler awaits them under a timeout."""
    lock1, lock2 = asyncio.Lock(), asyncio.Lock()
    workers = [spawn(ordered_worker(lock1, lock2), FIXED_PREFIX + "deadlock") for _ in range(2)]
    async with asyncio.timeout(FIXED_WAIT):
        await asyncio.gather(*workers)
    return web.json_response({"finished": len(workers)})


async def fixed_cache_handler(request: web.Request) -> web.Response:
    """GET /fixed/cache: the same entries in an LRU bounded to FIXED_CACHE_SIZE."""
    key = uuid.uuid4().hex
    entry = _BOUNDED_CACHE[key] = render_report(key)
    while len(_BOUNDED_CACHE) > FIXED_CACHE_SIZE:
        _BOUNDED_CACHE.popitem(last=False)
    return web.json_response({"entries": len(_BOUNDED_CACHE), "bytes": len(entry.body)})


async def fixed_blocking_handler(request: web.Request) -> web.Response:
    """GET /fixed/blocking?seconds=: the same sleep in a worker thread; the loop keeps serving."""
    seconds = query_float(request, "seconds", 1.0, low=0.0, high=MAX_BLOCKING_SECONDS)
    await asyncio.to_thread(time.sleep, seconds)
    return web.json_response({"slept": seconds})


async def bounded_peer_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              timeout: float) -> bytes | None:
    """Read a line within ``timeout`` seconds (None if none came), then close the connection."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.readline()
    except TimeoutError:
        return None
    finally:
        writer.close()


async def fixed_silent_peer_handler(request: web.Request) -> web.Response:
    """GET /fixed/silent-peer: the same read, bounded to PEER_READ_TIMEOUT and awaited by the handler."""
    reader, writer = await asyncio.open_connection(*request.app[LEAKS].silent_peer)
    line = await spawn(bounded_peer_reader(reader, writer, PEER_READ_TIMEOUT), FIXED_PREFIX + "silent-peer")
    return web.json_response({"timed_out": line is None})


async def tolerant_consumer(queue: asyncio.Queue[str], count: int) -> int:
    """Take ``count`` messages off ``queue``; a malformed one is counted and skipped, not fatal."""
    bad = 0
    for _ in range(count):
        try:
            parse_message(await queue.get())
        except MalformedMessage:
            bad += 1
        finally:
            queue.task_done()
    return bad


async def fixed_dead_consumer_handler(request: web.Request) -> web.Response:
    """GET /fixed/dead-consumer: the same pipeline, with a consumer that survives a bad message."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    consumer = spawn(tolerant_consumer(queue, 3), FIXED_PREFIX + "dead-consumer")
    async with asyncio.timeout(FIXED_WAIT):
        await spawn(pipeline_producer(queue, 3), FIXED_PREFIX + "dead-consumer")
        bad = await consumer
    return web.json_response({"delivered": 3, "malformed": bad})


async def fixed_heartbeat() -> None:
    """The heartbeat with the fix: a failed ping is survived, a cancel is not."""
    while True:
        try:
            await asyncio.sleep(3600)
        except Exception:
            continue


async def fixed_swallowed_cancel_handler(request: web.Request) -> web.Response:
    """GET /fixed/swallowed-cancel: the same stop, which now ends because the cancel is let through."""
    beat = spawn(fixed_heartbeat(), FIXED_PREFIX + "swallowed-cancel")
    await asyncio.sleep(0)
    beat.cancel()
    async with asyncio.timeout(FIXED_WAIT):
        await asyncio.gather(beat, return_exceptions=True)
    return web.json_response({"stopped": beat.cancelled()})


async def fixed_upstream_pool_handler(request: web.Request) -> web.Response:
    """GET /fixed/upstream-pool: the same call with the response under ``async with``, so the error path
    releases it too and its slot in the pool comes free (the connection is closed: its body was not read)."""
    upstream = request.app[UPSTREAM]
    async with upstream_pool_slot(), upstream.session.get(upstream.url) as resp:
        if resp.status != 200:
            return error_response(502, "upstream failed", upstream_status=resp.status)
        await resp.read()
    return web.json_response({"ok": True})


async def queue_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: create the drained queue and run its consumer for the life of the app."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    app[DRAINED_QUEUE] = queue
    consumer = asyncio.create_task(queue_consumer(queue), name=FIXED_PREFIX + "queue-consumer")
    yield
    consumer.cancel()
    await asyncio.wait([consumer], timeout=FIXED_WAIT)


def add_routes(app: web.Application) -> None:
    for path, handler in (
        ("/fixed/blocked-put", fixed_blocked_put_handler),
        ("/fixed/semaphore", fixed_semaphore_handler),
        ("/fixed/forgotten-task", fixed_forgotten_task_handler),
        ("/fixed/orphan-future", fixed_orphan_future_handler),
        ("/fixed/lock", fixed_lock_handler),
        ("/fixed/deadlock", fixed_deadlock_handler),
        ("/fixed/cache", fixed_cache_handler),
        ("/fixed/blocking", fixed_blocking_handler),
        ("/fixed/silent-peer", fixed_silent_peer_handler),
        ("/fixed/dead-consumer", fixed_dead_consumer_handler),
        ("/fixed/swallowed-cancel", fixed_swallowed_cancel_handler),
        ("/fixed/upstream-pool", fixed_upstream_pool_handler),
    ):
        app.router.add_get(path, handler)
