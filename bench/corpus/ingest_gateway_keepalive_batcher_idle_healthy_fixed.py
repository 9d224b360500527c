"""A healthy, mostly idle ingest gateway: warm keep-alive pool, timed batcher, rate-limited sync.

Modelled on hussein-awala/async-batcher #41, "fix: use remaining time budget instead of full
max_queue_time in batch fill": the batcher's fill loop computed the time left in the batch
window but passed the full ``max_queue_time`` to ``asyncio.wait_for(queue.get(), ...)``, so
a trickle of items could hold a batch open for up to twice the configured window.  That
costs latency, never liveness: the batcher always flushes and goes back to waiting.

Story: an analytics ingest gateway forwards click events upstream.  ``UpstreamPool`` opens
four keep-alive connections to the collector (a server on 127.0.0.1) at start-up; each
``PooledConnection`` has a reader task parked on a stream read that resolves its
pipelined requests, and the pool hands out the most recently used connection, so three of
them sit idle for as long as the service runs (as do their handlers on the collector).
``Batcher.run`` gathers events with ``wait_for(queue.get(), timeout)`` and flushes a batch
when it is full or its window (1.5 s) closes; events arrive in a burst at start-up and then
one every 2.5 s, so at rest the batcher waits out one empty window after another.
``ProfileSync.run`` pushes a backlog of profile updates upstream through a token-bucket
``RateLimiter`` at one request per 2 s, so it spends nearly all its time sleeping in the
limiter.  A stats ticker and main (on its stop event) complete it.

Nothing is stuck, in either file: every long wait (idle stream reads, the batcher's queue
wait, the limiter's sleep) ends or is a legitimate idle state.  The twin applies the fix
from the report (wait only for the remaining window), which changes flush timing only.
"""
import asyncio
import itertools
import signal


class Collector:
    """The upstream service: acknowledges batches and profile updates, keeps connections open."""

    def __init__(self):
        self.events = 0
        self.profiles = 0

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                verb, _, body = line.decode().strip().partition(" ")
                if verb == "BATCH":
                    self.events += len(body.split(","))
                else:
                    self.profiles += 1
                writer.write(f"ACK {verb}\n".encode())
                await writer.drain()
        finally:
            writer.close()


class PooledConnection:
    def __init__(self, name, reader, writer):
        self.name = name
        self.writer = writer
        self.waiting = []
        self.reader_task = asyncio.create_task(self._read_loop(reader), name=f"{name}-reader")

    async def _read_loop(self, reader):
        while line := await reader.readline():
            future = self.waiting.pop(0)
            if not future.done():
                future.set_result(line.decode().strip())

    async def request(self, line):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(f"{line}\n".encode())
        return await future


class UpstreamPool:
    def __init__(self, port, size):
        self.port = port
        self.size = size
        self.idle = []
        self.available = asyncio.Condition()

    async def open(self):
        for n in range(self.size):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.idle.append(PooledConnection(f"upstream-{n}", reader, writer))

    async def request(self, line):
        async with self.available:
            await self.available.wait_for(lambda: self.idle)
            conn = self.idle.pop()  # most recently used first: the rest stay warm and idle
        try:
            return await conn.request(line)
        finally:
            async with self.available:
                self.idle.append(conn)
                self.available.notify()


class Batcher:
    def __init__(self, pool, max_batch_size=8, max_queue_time=1.5):
        self.pool = pool
        self.queue = asyncio.Queue()
        self.max_batch_size = max_batch_size
        self.max_queue_time = max_queue_time
        self.flushed = []

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = []
            deadline = loop.time() + self.max_queue_time
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            if batch:
                await self.pool.request("BATCH " + ",".join(batch))
                self.flushed.append(len(batch))
                del self.flushed[:-20]


class RateLimiter:
    """Token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate, burst):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = None

    async def acquire(self):
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if self.updated is not None:
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class ProfileSync:
    def __init__(self, pool, limiter, backlog):
        self.pool = pool
        self.limiter = limiter
        self.backlog = backlog
        self.synced = 0

    async def run(self):
        for profile_id in self.backlog:
            await self.limiter.acquire()
            await self.pool.request(f"PROFILE {profile_id}")
            self.synced += 1


async def clickstream(batcher):
    for n in range(12):
        batcher.queue.put_nowait(f"click-{n}")
        await asyncio.sleep(0.02)
    for n in itertools.count(12):
        await asyncio.sleep(2.5)
        batcher.queue.put_nowait(f"click-{n}")


async def stats_ticker(batcher, sync, samples):
    while True:
        samples.append((sum(batcher.flushed), sync.synced, batcher.queue.qsize()))
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    loop = asyncio.get_running_loop()
    collector = Collector()
    server = await asyncio.start_server(collector.handle, "127.0.0.1", 0)
    pool = UpstreamPool(server.sockets[0].getsockname()[1], size=4)
    await pool.open()
    batcher = Batcher(pool)
    sync = ProfileSync(pool, RateLimiter(rate=0.5, burst=1), [f"user-{n}" for n in range(500)])
    samples = []
    tasks = [asyncio.create_task(batcher.run(), name="batcher"),
             asyncio.create_task(clickstream(batcher), name="clickstream"),
             asyncio.create_task(sync.run(), name="profile-sync"),
             asyncio.create_task(stats_ticker(batcher, sync, samples), name="stats")]
    await asyncio.sleep(1.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
