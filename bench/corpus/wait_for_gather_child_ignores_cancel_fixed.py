"""A health checker whose wait_for over a gather never returns: one probe outlives its cancellation.

Modelled on python/cpython #87555 (bpo-43389): "Cancellation ignored by asyncio.wait_for
can hang application": ``wait_for`` cancels the awaitable on timeout and then waits for
the cancellation to complete, so when the inner code catches the ``CancelledError`` and
keeps waiting, ``wait_for`` waits with it and its timeout never fires.

Here ``HealthChecker.run`` probes three replicas with
``wait_for(gather(*probes), 2.0)``.  ``Replica.probe`` shields the in-flight request and,
when cancelled, waits for its reply anyway so that the connection is not left mid-request.
Replica ``c`` accepted the connection and never answers: on the timeout the gather
cancels its children, ``a`` and ``b`` have finished, ``c``'s probe catches the
cancellation and waits on the reply, and the gather (and ``wait_for`` over it) waits on
``c``.  The replicas' readers and the API server's clients keep running.  The fix lets
the cancellation propagate and drops the connection.
"""
import asyncio
import signal


class Replica:
    def __init__(self, name, port):
        self.name, self.port = name, port
        self.inflight = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.reading = asyncio.create_task(self.read_replies())

    async def read_replies(self):
        while line := await self.reader.readline():
            if self.inflight and not self.inflight.done():
                self.inflight.set_result(line.decode().strip())

    async def probe(self):
        self.inflight = asyncio.get_running_loop().create_future()
        self.writer.write(b"PING\n")
        try:
            return await asyncio.shield(self.inflight)
        except asyncio.CancelledError:
            raise  # a late reply finds no waiter and is dropped by read_replies


class HealthChecker:
    def __init__(self, replicas):
        self.replicas = replicas
        self.status = {}

    async def run(self):
        while True:
            try:
                replies = await asyncio.wait_for(asyncio.gather(*(r.probe() for r in self.replicas)), 2.0)
                self.status = dict(zip((r.name for r in self.replicas), replies))
            except asyncio.TimeoutError:
                self.status = {r.name: "timeout" for r in self.replicas}
            await asyncio.sleep(1.0)


async def replica_server(reader, writer, answers):
    while await reader.readline():
        if answers:
            writer.write(b"PONG\n")
            await writer.drain()


async def client(port, seen):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"status\n")
        seen.append(await reader.readline())
        del seen[:-20]
        await asyncio.sleep(0.2)


async def main():
    replicas = []
    servers = []
    for name, answers in (("a", True), ("b", True), ("c", False)):
        server = await asyncio.start_server(lambda r, w, a=answers: replica_server(r, w, a), "127.0.0.1", 0)
        servers.append(server)
        replicas.append(Replica(name, server.sockets[0].getsockname()[1]))
    for replica in replicas:
        await replica.connect()
    checker = HealthChecker(replicas)

    async def api(reader, writer):
        while await reader.readline():
            writer.write(b"%r\n" % checker.status)
            await writer.drain()

    api_server = await asyncio.start_server(api, "127.0.0.1", 0)
    port = api_server.sockets[0].getsockname()[1]
    seen = []
    tasks = [asyncio.create_task(checker.run())]
    tasks += [asyncio.create_task(client(port, seen)) for _ in range(2)]
    await asyncio.sleep(2.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks, servers


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
