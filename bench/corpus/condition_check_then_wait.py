"""An echo server whose drain() misses the last connection's exit and waits forever.

Modelled on containerd/ttrpc-rust #227: "Fix hang in wait_all_exit".  The waiter
checked the number of live connections, awaited something else, and only then
registered on the notifier; the last connection's notify fell into that gap and was
lost, so the drain waited for a wake-up that had already happened.

Here ``Server.drain`` checks ``active``, flushes the access log (an await) and then
waits on the ``idle`` condition; the last client leaves during the flush and its
``notify_all`` reaches no waiter.  The fix re-checks the count under the condition's
lock with ``wait_for``, so the check and the wait are one step.
"""
import asyncio
import signal


class Server:
    def __init__(self):
        self.active = 0
        self.idle = asyncio.Condition()
        self.access_log = asyncio.Queue()
        self.flushed = []
        self.listener = None

    async def handle(self, reader, writer):
        self.active += 1
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
                self.access_log.put_nowait(line)
        finally:
            writer.close()
            self.active -= 1
            async with self.idle:
                self.idle.notify_all()

    async def write_access_log(self):
        while True:
            line = await self.access_log.get()
            self.flushed.append(line)

    async def flush_access_log(self):
        while not self.access_log.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # fsync of the log file

    async def drain(self):
        self.listener.close()
        if self.active == 0:
            return
        await self.flush_access_log()
        async with self.idle:
            await self.idle.wait()
        print("drained", flush=True)


async def client(port, lines, linger):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(lines):
        writer.write(b"ping %d\n" % i)
        await writer.drain()
        await reader.readline()
    await asyncio.sleep(linger)
    writer.close()
    await writer.wait_closed()


async def heartbeat(stats):
    while True:
        stats["beats"] += 1
        await asyncio.sleep(0.5)


async def main():
    server = Server()
    server.listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = server.listener.sockets[0].getsockname()[1]
    stats = {"beats": 0}
    background = [asyncio.create_task(server.write_access_log()), asyncio.create_task(heartbeat(stats))]
    conn = asyncio.create_task(client(port, 5, 0.5))
    await asyncio.sleep(0.3)
    drain = asyncio.create_task(server.drain())
    await conn
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del background, drain


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
