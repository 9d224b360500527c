"""Deliberately leaky endpoints (``/leak/<name>``), the registry of what they leaked, and its release.

Each leak is a classic asyncio failure pattern for diag to find. Leaked tasks are named ``leak:<name>``
and found through ``asyncio.all_tasks()``; the registry keeps only counters and the shared objects the
patterns need, never an awaited future or event, so a leak stays provable by reachability.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import ipaddress
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse, ClientSession, ClientTimeout, TCPConnector, web

from .config import CONFIG
from .httputil import HTTPProblem, error_response, query_float, query_int
from .work import WORK_POOL, acquire_within

LEAK_PREFIX = "leak:"
# Endpoints whose leaks /healthz counts and /admin/release frees (``blocking`` stalls, it does not leak).
LEAK_NAMES = ("blocked-put", "semaphore", "forgotten-task", "orphan-future", "lock", "deadlock", "cache",
              "silent-peer", "dead-consumer", "swallowed-cancel", "upstream-pool")
MAX_BLOCKING_SECONDS = 30.0
MAX_CACHE_ENTRY_KB = 1024  # /leak/cache?kb= makes one entry this big at most, so a few requests leak megabytes
RELEASE_WAIT = 1.0  # how long release waits for cancelled tasks to unwind

# Strong references to fire-and-forget tasks. The loop keeps only weak ones, so a task awaiting an object
# nothing else references could be garbage-collected mid-await; done tasks drop out by themselves.
_BACKGROUND: set[asyncio.Task[Any]] = set()


class CachedResponse:
    """A rendered response body kept for reuse; a class of its own so heap growth shows up by type name."""

    __slots__ = ("key", "body", "created")

    def __init__(self, key: str, body: bytes) -> None:
        self.key = key
        self.body = body
        self.created = time.time()


# The unbounded cache of /leak/cache: keyed by a fresh id per request, so it never hits and never shrinks.
_RESPONSE_CACHE: dict[str, CachedResponse] = {}


@dataclass
class LeakRegistry:
    """Per-app bookkeeping for leaks that are not tasks, plus the shared objects the patterns use."""

    leaked_permits: int = 0
    lock_leaked: bool = False
    shared_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # maxsize=1 and no consumer: the first put fits, every later producer blocks for good.
    undrained_queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    silent_peer: tuple[str, int] = ("127.0.0.1", 0)  # address of the loopback server that never writes
    # The pipelines of /leak/dead-consumer: each keeps its queue and its consumer task, as a service
    # keeps its pipeline objects and workers (so the dead consumer's exception is never logged).
    pipelines: list[tuple[asyncio.Queue[str], asyncio.Task[None]]] = field(default_factory=list)
    releasing: bool = False  # set while /admin/release runs: the swallowing heartbeats give up then


LEAKS = web.AppKey("leaks", LeakRegistry)


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start a named background task and keep it alive until it finishes."""
    task = asyncio.create_task(coro, name=name)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


def leaked_tasks() -> list[asyncio.Task[Any]]:
    """Pending tasks started by leaky endpoints, found by their ``leak:`` name."""
    return [t for t in asyncio.all_tasks() if not t.done() and t.get_name().startswith(LEAK_PREFIX)]


def leak_counts(app: web.Application) -> dict[str, int]:
    """How many things each leaky endpoint has leaked right now."""
    registry = app[LEAKS]
    counts = dict.fromkeys(LEAK_NAMES, 0)
    counts.update(Counter(t.get_name().removeprefix(LEAK_PREFIX) for t in leaked_tasks()))
    counts.update({"semaphore": registry.leaked_permits, "lock": int(registry.lock_leaked),
                   "cache": len(_RESPONSE_CACHE),
                   "upstream-pool": sum(err.response.connection is not None for err in _RECENT_UPSTREAM_ERRORS)})
    return counts


def _cap(request: web.Request, name: str) -> int:
    leak_cap = request.app[CONFIG].leak_cap
    # Cache entries are small and numerous, so the cache gets a proportionally larger allowance.
    return max(leak_cap * 10, 1000) if name == "cache" else leak_cap


def _ensure_below_cap(request: web.Request, name: str, cost: int = 1) -> None:
    """429 when leaking ``cost`` more things would take ``name`` past its cap."""
    cap = _cap(request, name)
    if leak_counts(request.app)[name] + cost > cap:
        raise HTTPProblem(429, "leak cap reached", leak=name, cap=cap)


async def _accepted(request: web.Request, name: str) -> web.Response:
    await asyncio.sleep(0)  # let freshly spawned tasks reach their first await before counting them
    return web.json_response({"leak": name, "leaked": leak_counts(request.app)[name]}, status=202)


class DownstreamError(Exception):
    """The failure of the simulated downstream call."""


async def flaky_downstream() -> None:
    """A downstream call that always fails, driving handlers into their error path."""
    await asyncio.sleep(0)
    raise DownstreamError("downstream failed")


# 1. Producer blocked on a full queue -----------------------------------------------------------------

async def blocked_put_producer(queue: asyncio.Queue[str], item: str) -> None:
    """Put ``item`` into ``queue``; waits forever once the queue is full and nobody drains it."""
    await queue.put(item)


async def blocked_put_handler(request: web.Request) -> web.Response:
    """GET /leak/blocked-put: producer task blocked on ``put`` into a bounded queue with no consumer.

    Fix (/fixed/blocked-put): the queue has a consumer and the put is bounded by a timeout.
    """
    _ensure_below_cap(request, "blocked-put")
    spawn(blocked_put_producer(request.app[LEAKS].undrained_queue, uuid.uuid4().hex), LEAK_PREFIX + "blocked-put")
    return await _accepted(request, "blocked-put")


# 2. Semaphore permit leaked on an error path -------------------------------------------------------

async def leaky_acquire(request: web.Request) -> None:
    """Take a work-pool permit the way the buggy code does: a bare ``acquire()`` with no matching release."""
    await acquire_within(request.app[WORK_POOL], request.app[CONFIG].pool_wait, "work pool")


async def semaphore_leak_handler(request: web.Request) -> web.Response:
    """GET /leak/semaphore: ``sem.acquire()`` then an early return on error that skips ``sem.release()``.

    Each call keeps one work-pool permit; once all are gone /work/* answers 503.
    Fix (/fixed/semaphore): ``async with`` the semaphore, so the error path releases too.
    """
    _ensure_below_cap(request, "semaphore")
    pool = request.app[WORK_POOL]
    registry = request.app[LEAKS]
    await leaky_acquire(request)
    if registry.leaked_permits >= _cap(request, "semaphore"):  # a concurrent call reached the cap meanwhile
        pool.release()
        raise HTTPProblem(429, "leak cap reached", leak="semaphore", cap=_cap(request, "semaphore"))
    registry.leaked_permits += 1  # counted up front: every exit except the success path below leaks it
    try:
        await flaky_downstream()
    except DownstreamError:
        return error_response(502, "downstream failed")  # returns without pool.release()
    pool.release()
    registry.leaked_permits -= 1
    return web.json_response({"ok": True})


# 3. Forgotten task waiting on an Event nobody sets --------------------------------------------------

async def forgotten_waiter(event: asyncio.Event) -> None:
    """Wait until ``event`` is set; in the leaky handler nobody ever sets it."""
    await event.wait()


async def forgotten_task_handler(request: web.Request) -> web.Response:
    """GET /leak/forgotten-task: fire-and-forget task awaiting a local ``asyncio.Event`` that is never set.

    Fix (/fixed/forgotten-task): the handler sets the event and awaits the task, which also has a timeout.
    """
    _ensure_below_cap(request, "forgotten-task")
    event = asyncio.Event()  # only the waiter's frame will reference it once this handler returns
    spawn(forgotten_waiter(event), LEAK_PREFIX + "forgotten-task")
    return await _accepted(request, "forgotten-task")


# 4. Task awaiting an orphaned future ----------------------------------------------------------------

async def orphan_future_waiter() -> None:
    """Await a future that nothing else references, so nothing can ever resolve it."""
    await asyncio.get_running_loop().create_future()


async def orphan_future_handler(request: web.Request) -> web.Response:
    """GET /leak/orphan-future: a task awaits ``loop.create_future()`` whose result no one will ever set.

    Fix (/fixed/orphan-future): the future has an owner that resolves it, and the wait is bounded.
    """
    _ensure_below_cap(request, "orphan-future")
    spawn(orphan_future_waiter(), LEAK_PREFIX + "orphan-future")
    return await _accepted(request, "orphan-future")


# 5. Lock left held on an error path -----------------------------------------------------------------

async def lock_leak_handler(request: web.Request) -> web.Response:
    """GET /leak/lock: ``lock.acquire()`` on the shared lock, then an error return that skips ``release()``.

    Later /leak/lock and /fixed/lock calls wait for it and answer 503 after ``--pool-wait``.
    Fix (/fixed/lock): ``async with lock``, so the error path releases it.
    """
    _ensure_below_cap(request, "lock")
    registry = request.app[LEAKS]
    await acquire_within(registry.shared_lock, request.app[CONFIG].pool_wait, "shared lock")
    registry.lock_leaked = True  # counted up front: every exit except the success path below leaks it
    try:
        await flaky_downstream()
    except DownstreamError:
        return error_response(502, "downstream failed")  # returns with the lock still held
    registry.shared_lock.release()
    registry.lock_leaked = False
    return web.json_response({"ok": True})


# 6. Two tasks taking two locks in opposite order ----------------------------------------------------

async def deadlock_worker_a(first: asyncio.Lock, second: asyncio.Lock) -> None:
    """Take ``first`` then ``second``; the pause lets worker b take ``second`` meanwhile."""
    async with first:
        await asyncio.sleep(0.01)
        async with second:
            pass


async def deadlock_worker_b(first: asyncio.Lock, second: asyncio.Lock) -> None:
    """Worker a's mirror image; started with the same locks swapped."""
    async with first:
        await asyncio.sleep(0.01)
        async with second:
            pass


async def deadlock_handler(request: web.Request) -> web.Response:
    """GET /leak/deadlock: two tasks take two fresh locks in opposite order and wait on each other forever.

    Fix (/fixed/deadlock): both take the locks in the same order, so both finish.
    """
    _ensure_below_cap(request, "deadlock", cost=2)
    lock1, lock2 = asyncio.Lock(), asyncio.Lock()
    spawn(deadlock_worker_a(lock1, lock2), LEAK_PREFIX + "deadlock")
    spawn(deadlock_worker_b(lock2, lock1), LEAK_PREFIX + "deadlock")
    return await _accepted(request, "deadlock")


# 7. Unbounded cache ---------------------------------------------------------------------------------

def render_report(key: str, size: int | None = None) -> CachedResponse:
    """Stand-in for an expensive rendering: ``size`` bytes, or 1-4 KB when not given."""
    return CachedResponse(key, os.urandom(random.randint(1024, 4096) if size is None else size))


async def cache_leak_handler(request: web.Request) -> web.Response:
    """GET /leak/cache: a module-level dict cache keyed by a per-request id, so it only ever grows.

    ``?kb=N`` makes the entry N KB instead of 1-4 KB, so a leak soak can make memory growth plain.
    Fix (/fixed/cache): a bounded LRU that evicts the oldest entry past 128.
    """
    _ensure_below_cap(request, "cache")
    kb = query_int(request, "kb", 0, low=0, high=MAX_CACHE_ENTRY_KB)
    key = uuid.uuid4().hex
    entry = _RESPONSE_CACHE[key] = render_report(key, kb * 1024 if kb else None)
    return web.json_response({"leak": "cache", "leaked": len(_RESPONSE_CACHE), "bytes": len(entry.body)},
                             status=202)


# 8. Blocking call on the event loop -----------------------------------------------------------------

async def blocking_handler(request: web.Request) -> web.Response:
    """GET /leak/blocking?seconds=: ``time.sleep`` on the event loop, stalling every other request meanwhile.

    Fix (/fixed/blocking): run the blocking call in a thread with ``asyncio.to_thread``.
    """
    seconds = query_float(request, "seconds", 1.0, low=0.0, high=MAX_BLOCKING_SECONDS)
    time.sleep(seconds)
    return web.json_response({"slept": seconds})


# 9. Read from a peer that never answers -------------------------------------------------------------

async def silent_peer_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Read a line from a peer that never writes; with no timeout this waits forever."""
    try:
        return await reader.readline()
    finally:
        writer.close()  # reached only when /admin/release or shutdown cancels the read


async def silent_peer_handler(request: web.Request) -> web.Response:
    """GET /leak/silent-peer: a task awaits ``reader.readline()`` on a connection whose peer never writes.

    Fix (/fixed/silent-peer): the read runs under ``asyncio.timeout`` and the connection is closed after.
    """
    _ensure_below_cap(request, "silent-peer")
    reader, writer = await asyncio.open_connection(*request.app[LEAKS].silent_peer)
    try:
        _ensure_below_cap(request, "silent-peer")  # a concurrent call may have reached the cap meanwhile
    except HTTPProblem:
        writer.close()
        raise
    spawn(silent_peer_reader(reader, writer), LEAK_PREFIX + "silent-peer")
    return await _accepted(request, "silent-peer")


# 10. A consumer that dies, and the producer that waits for it forever --------------------------------

class MalformedMessage(ValueError):
    """A message the consumer cannot parse."""


def parse_message(item: str) -> str:
    """Stand-in for real parsing: the pipeline's first message is malformed."""
    if item.startswith("bad:"):
        raise MalformedMessage(f"cannot parse {item[:12]!r}")
    return item


async def pipeline_consumer(queue: asyncio.Queue[str]) -> None:
    """Take messages off ``queue`` and handle them; one malformed message kills it."""
    while True:
        parse_message(await queue.get())
        queue.task_done()


async def pipeline_producer(queue: asyncio.Queue[str], count: int) -> None:
    """Feed ``count`` messages into the bounded ``queue``; once its consumer is gone, the second put
    past the queue's size blocks for good."""
    for i in range(count):
        await queue.put(f"bad:{i}" if i == 0 else f"msg:{i}")


async def dead_consumer_handler(request: web.Request) -> web.Response:
    """GET /leak/dead-consumer: a pipeline whose consumer dies on a malformed message; its producer
    then blocks on the full queue, which the pipeline still holds (so nothing proves it lost).

    Fix (/fixed/dead-consumer): the consumer handles a bad message and goes on.
    """
    _ensure_below_cap(request, "dead-consumer")
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    consumer = asyncio.create_task(pipeline_consumer(queue), name="pipeline:consumer")
    request.app[LEAKS].pipelines.append((queue, consumer))
    spawn(pipeline_producer(queue, 3), LEAK_PREFIX + "dead-consumer")
    await asyncio.sleep(0.01)  # let the consumer meet its malformed message
    return await _accepted(request, "dead-consumer")


# 11. A heartbeat that swallows its cancellation, and the graceful stop that waits for it ------------

async def heartbeat(registry: LeakRegistry) -> None:
    """Ping every few seconds; catches *every* error so a failed ping never kills it, the
    ``CancelledError`` of a stop included (until the app itself releases its leaks)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except BaseException:  # the bug: CancelledError is swallowed too
            if registry.releasing:
                raise


async def graceful_stop(task: asyncio.Task[None]) -> None:
    """Stop ``task`` the usual way: cancel it, then wait for it to end."""
    task.cancel()
    await task


async def swallowed_cancel_handler(request: web.Request) -> web.Response:
    """GET /leak/swallowed-cancel: a heartbeat task swallows the cancel meant to stop it, so the
    stop that awaits it waits forever.

    Fix (/fixed/swallowed-cancel): the heartbeat catches ``Exception``, not ``BaseException``, so
    the cancel ends it.
    """
    _ensure_below_cap(request, "swallowed-cancel", cost=2)
    beat = spawn(heartbeat(request.app[LEAKS]), LEAK_PREFIX + "swallowed-cancel")
    await asyncio.sleep(0)  # the heartbeat reaches its sleep
    spawn(graceful_stop(beat), LEAK_PREFIX + "swallowed-cancel")
    return await _accepted(request, "swallowed-cancel")


# 12. Error responses never released: the client pool runs dry ---------------------------------------

@dataclass(frozen=True)
class Upstream:
    """The shared client of /leak/upstream-pool and its twin, and the URL of the upstream it calls."""

    session: ClientSession
    url: str


UPSTREAM = web.AppKey("upstream", Upstream)
UPSTREAM_PAGE_CHUNK = b"<p>upstream unavailable: down for maintenance</p>\n" * 1300  # about 64 KB
UPSTREAM_PAGE_CHUNKS = 256  # a 16 MB error page: far more than the client buffers, so it must be read or released


class UpstreamError(Exception):
    """An upstream answer other than 200; like many such errors it keeps the response, for whoever handles it."""

    def __init__(self, response: ClientResponse) -> None:
        super().__init__(f"upstream answered {response.status}")
        self.response = response


# The last upstream errors, kept for a status page. Each keeps its response, and so the connection under it.
_RECENT_UPSTREAM_ERRORS: list[UpstreamError] = []


async def status_page_handler(request: web.Request) -> web.StreamResponse:
    """The upstream's one endpoint: 503 with a 16 MB error page, streamed in chunks."""
    page = web.StreamResponse(status=503, headers={"Content-Type": "text/html"})
    page.content_length = len(UPSTREAM_PAGE_CHUNK) * UPSTREAM_PAGE_CHUNKS
    await page.prepare(request)
    try:
        for _ in range(UPSTREAM_PAGE_CHUNKS):
            await page.write(UPSTREAM_PAGE_CHUNK)  # waits while the client reads nothing
        await page.write_eof()
    except ConnectionError:
        pass  # the client released the response unread, which closes the connection
    return page


@asynccontextmanager
async def upstream_pool_slot() -> AsyncIterator[None]:
    """A request to the upstream that found no free connection within ``--pool-wait`` answers 503."""
    try:
        yield
    except TimeoutError:  # aiohttp's ClientTimeout(connect=...) covers the wait for a pooled connection
        raise HTTPProblem(503, "upstream pool busy", retry_after=1) from None


async def fetch_status(upstream: Upstream) -> bytes:
    """Ask the upstream for its status; an error status is raised before the body is read, and the
    response is neither read nor released on that path, so it keeps its pooled connection."""
    resp = await upstream.session.get(upstream.url)
    if resp.status != 200:
        raise UpstreamError(resp)  # the bug: ``resp`` is not released on this path
    async with resp:
        return await resp.read()


async def upstream_pool_handler(request: web.Request) -> web.Response:
    """GET /leak/upstream-pool: a call through the shared client (a ``TCPConnector`` of ``--upstream-pool``
    connections) to an upstream that answers 503 with a large page; the error keeps the unreleased
    response, and the handler keeps the error. Once every connection is held, later calls wait in the
    connector for ``--pool-wait``, then answer 503.

    Fix (/fixed/upstream-pool): the response is taken with ``async with``, so every exit releases it.
    """
    _ensure_below_cap(request, "upstream-pool")
    try:
        async with upstream_pool_slot():
            await fetch_status(request.app[UPSTREAM])
    except UpstreamError as err:
        _RECENT_UPSTREAM_ERRORS.append(err)
        return error_response(502, "upstream failed", upstream_status=err.response.status)
    return web.json_response({"ok": True})


async def upstream_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: serve the upstream on a loopback port of its own and open the shared client to it."""
    config = app[CONFIG]
    upstream = web.Application()
    upstream.router.add_get("/status", status_page_handler)
    runner = web.AppRunner(upstream, access_log=None, handle_signals=False, shutdown_timeout=RELEASE_WAIT)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    session = ClientSession(connector=TCPConnector(limit=config.upstream_pool),
                            timeout=ClientTimeout(total=None, connect=config.pool_wait))
    app[UPSTREAM] = Upstream(session, f"http://{host}:{port}/status")
    yield
    await session.close()
    await runner.cleanup()


async def _hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Server side of the silent peer: never write, close once the client hangs up."""
    try:
        await reader.read()  # returns at EOF, i.e. when the reading side closes its end
    finally:
        writer.close()


# Release and lifecycle ------------------------------------------------------------------------------

async def release_leaks(app: web.Application) -> dict[str, int]:
    """Free everything leaked so far and return how much of it there was, per endpoint."""
    registry = app[LEAKS]
    released = leak_counts(app)
    tasks = leaked_tasks()
    registry.releasing = True
    for task in tasks:
        task.cancel()
    if tasks:
        # Cancelled deadlock workers leave their ``async with`` blocks, so each releases the lock it held.
        await asyncio.wait(tasks, timeout=RELEASE_WAIT)
    registry.releasing = False
    for _queue, consumer in registry.pipelines:
        if consumer.done() and not consumer.cancelled():
            consumer.exception()  # seen by the release, so asyncio does not log it when it is freed
        else:
            consumer.cancel()
    registry.pipelines.clear()
    # The one put that fitted left its item behind; empty the queue so the next leak behaves the same.
    while not registry.undrained_queue.empty():
        registry.undrained_queue.get_nowait()
    pool = app[WORK_POOL]
    for _ in range(registry.leaked_permits):
        pool.release()
    registry.leaked_permits = 0
    if registry.lock_leaked:
        registry.shared_lock.release()
        registry.lock_leaked = False
    _RESPONSE_CACHE.clear()
    for err in _RECENT_UPSTREAM_ERRORS:
        err.response.release()  # unread, so its connection is closed rather than reused
    _RECENT_UPSTREAM_ERRORS.clear()
    return released


def return_free_memory() -> None:
    """Ask the C allocator to hand free heap pages back to the OS; glibc only, a no-op elsewhere.

    Big buffers freed in the middle of glibc's heap stay in the process (free, and reused by later
    allocations) until something trims the heap, so RSS alone would not show that a release worked.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


async def release_handler(request: web.Request) -> web.Response:
    """POST /admin/release: cancel leaked tasks, return leaked permits and the lock, clear the cache.

    Loopback callers only: it changes server state and has no other authentication.
    """
    if not _is_loopback(request.remote):
        raise HTTPProblem(403, "loopback only")
    released = await release_leaks(request.app)
    # Collect now, so that whatever the release freed, cycles included, is back before the answer:
    # soaks and tests read the process's memory right after releasing.
    gc.collect()
    return_free_memory()
    return web.json_response({"released": released})


async def leak_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the silent peer; on shutdown free all leaks so none can hold up the exit."""
    registry = app[LEAKS]
    peer_tasks: set[asyncio.Task[None]] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_hold_open(reader, writer), name="silent-peer:connection")
        peer_tasks.add(task)
        task.add_done_callback(peer_tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    registry.silent_peer = server.sockets[0].getsockname()[:2]
    yield
    await release_leaks(app)
    server.close()
    for task in peer_tasks:
        task.cancel()
    if peer_tasks:
        await asyncio.wait(peer_tasks, timeout=RELEASE_WAIT)
    with suppress(TimeoutError):
        # On 3.12+ wait_closed also waits for the accepted connections, which the cancels above closed.
        async with asyncio.timeout(RELEASE_WAIT):
            await server.wait_closed()


def add_routes(app: web.Application) -> None:
    for path, handler in (
        ("/leak/blocked-put", blocked_put_handler),
        ("/leak/semaphore", semaphore_leak_handler),
        ("/leak/forgotten-task", forgotten_task_handler),
        ("/leak/orphan-future", orphan_future_handler),
        ("/leak/lock", lock_leak_handler),
        ("/leak/deadlock", deadlock_handler),
        ("/leak/cache", cache_leak_handler),
        ("/leak/blocking", blocking_handler),
        ("/leak/silent-peer", silent_peer_handler),
        ("/leak/dead-consumer", dead_consumer_handler),
        ("/leak/swallowed-cancel", swallowed_cancel_handler),
        ("/leak/upstream-pool", upstream_pool_handler),
    ):
        app.router.add_get(path, handler)
    app.router.add_post("/admin/release", release_handler)
