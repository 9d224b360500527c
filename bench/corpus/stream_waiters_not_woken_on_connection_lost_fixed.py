"""A multiplexing client whose ``connection_lost`` does not wake the streams waiting for data.

Modelled on grpclib #8, "Wake up all coroutines in protocol.Stream after connection was lost"
(fixed with PR #25, "On the client side, handle a server shutdown."): a client reading a server
stream hung in ``Stream.recv`` on ``_ready_event.wait()`` once the server went away, because
``connection_lost`` closed the connection but never set the streams' events.

Mechanism: a telemetry client subscribes three streams over one connection to a server on
127.0.0.1.  The server sends a few updates on each and then closes the connection (a restart).  The
protocol's ``connection_lost`` marks itself closed, but every stream's consumer stays in
``Event.wait`` for data that can no longer arrive.

Fix: ``connection_lost`` gives every open stream a ConnectionError and sets its event, so ``recv``
raises and the consumers end.
"""
import asyncio
import collections
import signal


async def telemetry_server(reader, writer):
    streams = []
    try:
        for _ in range(3):
            streams.append((await reader.readline()).split()[1].decode())
        for seq in range(3):
            for stream_id in streams:
                writer.write(f"{stream_id} reading-{seq}\n".encode())
            await writer.drain()
            await asyncio.sleep(0.05)
    finally:
        writer.close()  # the server restarts and drops its connections


class Stream:
    def __init__(self, stream_id):
        self.stream_id = stream_id
        self._buffer = collections.deque()
        self._ready = asyncio.Event()
        self._error = None

    def feed(self, payload):
        self._buffer.append(payload)
        self._ready.set()

    async def recv(self):
        while not self._buffer:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()


class TelemetryProtocol(asyncio.Protocol):
    def __init__(self):
        self._transport = None
        self._streams = {}
        self._partial = b""
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self._transport = transport

    def open_stream(self, stream_id):
        stream = self._streams[stream_id] = Stream(stream_id)
        self._transport.write(f"SUB {stream_id}\n".encode())
        return stream

    def data_received(self, data):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            stream_id, payload = line.decode().split(" ", 1)
            self._streams[stream_id].feed(payload)

    def connection_lost(self, exc):
        self._transport = None
        for stream in self._streams.values():
            stream._error = ConnectionError("connection lost")
            stream._ready.set()
        self.lost.set_result(exc)


async def consume(stream, readings):
    while True:
        try:
            readings.append((stream.stream_id, await stream.recv()))
        except ConnectionError:
            return


async def report_worker(jobs):
    while True:
        job = await jobs.get()
        try:
            await job()
        finally:
            jobs.task_done()


async def health_check(readings):
    while True:
        await asyncio.sleep(0.5)
        len(readings)


async def main():
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(telemetry_server, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve_forever(), name="telemetry-server")
    _, protocol = await loop.create_connection(TelemetryProtocol, "127.0.0.1", server.sockets[0].getsockname()[1])
    readings, jobs = [], asyncio.Queue()
    consumers = [asyncio.create_task(consume(protocol.open_stream(name), readings), name=f"stream-{name}")
                 for name in ("cpu", "disk", "net")]
    reporters = [asyncio.create_task(report_worker(jobs), name=f"report-{i}") for i in range(2)]
    checker = asyncio.create_task(health_check(readings), name="health")
    await protocol.lost
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (serving, checker, *reporters, *consumers):
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
