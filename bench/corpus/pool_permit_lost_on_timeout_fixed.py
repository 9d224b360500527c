"""A connection pool that loses a slot each time a connect times out, until every request waits.

Modelled on aio-libs/aiohttp #9670: "deadlock with TCPConnector limit after timeout":
the connector's limit was not cancellation safe, so requests cancelled by a timeout
while connecting kept their place in the limit, and once the limit was used up every
later request waited for a slot forever.

Here ``Pool.connect`` takes a permit of the pool's semaphore, opens the connection and
reads the upstream's greeting; it gives the permit back only on ``OSError``.  The
upstream is slow to greet its first four connections, the interactive requests'
``wait_for`` deadline cancels them there, the cancellation skips the release and the
request tasks end: the pool's four permits are gone and every later request waits.  The fix releases on any exception.
"""
import asyncio
import signal


class Pool:
    def __init__(self, port, size):
        self.port = port
        self.slots = asyncio.Semaphore(size)
        self.idle = []

    async def connect(self):
        await self.slots.acquire()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            await reader.readline()  # the greeting
        except BaseException:
            self.slots.release()
            raise
        return reader, writer

    def put_back(self, conn):
        self.idle.append(conn)
        self.slots.release()


class Upstream:
    def __init__(self, slow):
        self.slow = slow

    async def handle(self, reader, writer):
        if self.slow > 0:
            self.slow -= 1
            await asyncio.sleep(60)  # a cold TLS terminator
        writer.write(b"hello\n")
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()


async def request(pool, n, results, deadline=None):
    try:
        reader, writer = await asyncio.wait_for(pool.connect(), deadline)
    except asyncio.TimeoutError:
        results.append(b"timeout")
        return
    writer.write(b"GET %d\n" % n)
    results.append(await reader.readline())
    pool.put_back((reader, writer))


async def clock(ticks):
    while True:
        ticks.append(asyncio.get_running_loop().time())
        del ticks[:-10]
        await asyncio.sleep(0.5)


async def main():
    server = await asyncio.start_server(Upstream(slow=4).handle, "127.0.0.1", 0)
    pool = Pool(server.sockets[0].getsockname()[1], 4)
    results, ticks = [], []
    ticker = asyncio.create_task(clock(ticks))
    requests = [asyncio.create_task(request(pool, n, results, deadline=0.2)) for n in range(4)]
    await asyncio.sleep(0.5)
    requests += [asyncio.create_task(request(pool, n, results)) for n in range(4, 7)]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del ticker, requests


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
