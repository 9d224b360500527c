"""A push-notification gateway whose connection pool keeps its lock after a caller's send timeout.

Modelled on Fatal1ty/aioapns #42: "Deadlock following timeout": the caller wrapped
``send_notification`` in ``asyncio.wait_for``; the first timeout struck while the pool was
opening a new connection to APNs with its lock taken, the ``CancelledError`` went past the
code that released the lock, and from then on every request waited for that lock endlessly.

Here ``PushPool.acquire`` takes the pool lock with ``await self._lock.acquire()``, opens a
connection for a topic it has not seen yet and releases the lock on success or on
``ConnectionError``.  Order pushes for the phone app flow through two ``Dispatcher.deliver``
workers on a connection opened at start-up.  About a second in, the marketing campaign sends
its first push for the watch app under a 0.5 s ``wait_for``; the push service is slow to
finish that handshake, the timeout cancels the send inside ``create_connection``, and the
lock is never released.  Both workers then wait on the lock forever while orders pile up in
the outbox.  The fix holds the lock with ``async with``, so a cancelled connect releases it.
"""
import asyncio
import signal

APP = "com.example.shop"
WATCH = "com.example.shop.watchkit"
SEND_TIMEOUT = 0.5


class PushService:
    """The remote push service: a handshake per connection, then one answer per push."""

    def __init__(self):
        self.delivered = 0

    async def handle(self, reader, writer):
        try:
            hello = (await reader.readline()).decode().split()
            if hello[1:] == [WATCH]:
                await asyncio.sleep(3.0)  # this topic's certificate check stalls
            writer.write(b"SETTINGS max_streams=100\n")
            await writer.drain()
            while line := await reader.readline():
                self.delivered += 1
                await asyncio.sleep(0.01)
                writer.write(b"200 %d\n" % self.delivered)
                await writer.drain()
        except (OSError, IndexError):
            pass
        finally:
            writer.close()


class Connection:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.io = asyncio.Lock()

    async def push(self, token, payload):
        async with self.io:
            self.writer.write(f"PUSH {token} {payload}\n".encode())
            answer = await self.reader.readline()
        if not answer:
            raise ConnectionError("push service closed the connection")
        return answer.decode().strip()


class PushPool:
    def __init__(self, port):
        self.port = port
        self._lock = asyncio.Lock()
        self.connections = {}

    async def create_connection(self, topic):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"HELLO {topic}\n".encode())
            if not (await reader.readline()).startswith(b"SETTINGS"):
                raise ConnectionError("handshake failed")
        except BaseException:
            writer.close()
            raise
        return Connection(reader, writer)

    async def acquire(self, topic):
        async with self._lock:
            conn = self.connections.get(topic)
            if conn is None:
                conn = await self.create_connection(topic)
                self.connections[topic] = conn
        return conn

    async def send_notification(self, topic, token, payload):
        conn = await self.acquire(topic)
        return await conn.push(token, payload)


class Dispatcher:
    def __init__(self, pool):
        self.pool = pool
        self.outbox = asyncio.Queue()
        self.sent = 0

    async def deliver(self):
        while True:
            token, payload = await self.outbox.get()
            await self.pool.send_notification(APP, token, payload)
            self.sent += 1


async def take_orders(dispatcher):
    order = 0
    while True:
        order += 1
        dispatcher.outbox.put_nowait((f"device{order % 7}", f"order-{order}-confirmed"))
        await asyncio.sleep(0.15)


async def run_campaign(pool, results):
    await asyncio.sleep(1.0)
    while True:
        try:
            results.append(await asyncio.wait_for(
                pool.send_notification(WATCH, "watch1", "spring-sale"), SEND_TIMEOUT))
        except asyncio.TimeoutError:
            results.append("campaign push timed out")
        await asyncio.sleep(30.0)


async def feedback_worker(feedback, invalid):
    while True:
        invalid.add(await feedback.get())


async def main():
    service = PushService()
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    pool = PushPool(server.sockets[0].getsockname()[1])
    await pool.acquire(APP)
    dispatcher = Dispatcher(pool)
    feedback, invalid, results = asyncio.Queue(), set(), []
    tasks = [asyncio.create_task(dispatcher.deliver()) for _ in range(2)]
    tasks += [asyncio.create_task(take_orders(dispatcher)), asyncio.create_task(run_campaign(pool, results)),
              asyncio.create_task(feedback_worker(feedback, invalid))]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
