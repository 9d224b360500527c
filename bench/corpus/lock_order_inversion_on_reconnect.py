"""A multiplexed connection whose request path and reconnect path take two locks in opposite order.

Modelled on python-hyper/hyper #275, "Possible deadlock with HTTP20Connection":
``HTTP20Connection.connect()`` held ``_lock`` and then took ``_write_lock`` to send the preamble,
while ``request()`` held ``_write_lock`` and then took ``_lock`` to open a stream, so the two could
deadlock.

Mechanism: three fetchers share one HTTP/2-style connection to a server on 127.0.0.1.  The server
sends GOAWAY after a few requests; the reconnect task takes ``_lock``, fails the requests in flight,
backs off, reconnects and then wants ``_write_lock`` for the preface.  Meanwhile a fetcher retrying
its request took ``_write_lock`` and waits for ``_lock``: each holds what the other needs, the other
fetchers queue on ``_write_lock``, and the server waits for a preface that never comes.

Fix: ``request()`` takes ``_lock`` before ``_write_lock``, the order the reconnect path uses.
"""
import asyncio
import signal


async def h2_server(reader, writer):
    answered = 0
    try:
        while line := await reader.readline():
            kind, stream_id, path = line.decode().split()
            if kind != "HEADERS":
                continue
            writer.write(f"DATA {stream_id} {path}:ok\n".encode())
            answered += 1
            if answered == 6 and not h2_server.restarted:
                h2_server.restarted = True
                writer.write(b"GOAWAY 0 -\n")
                await writer.drain()
                return
            await writer.drain()
    finally:
        writer.close()


h2_server.restarted = False


class H2Connection:
    def __init__(self, host, port):
        self._address = (host, port)
        self._lock = asyncio.Lock()        # connection state: socket, stream ids
        self._write_lock = asyncio.Lock()  # frames written whole and in order
        self._streams = {}
        self._next_stream_id = 1
        self._reader = self._writer = None
        self._reader_task = self._reconnect_task = None
        self.reconnects = 0

    async def connect(self):
        self._reader, self._writer = await asyncio.open_connection(*self._address)
        self._writer.write(b"PREFACE 0 -\n")
        self._reader_task = asyncio.create_task(self._read_loop(self._reader), name="h2-reader")

    async def _read_loop(self, reader):
        while line := await reader.readline():
            kind, stream_id, payload = line.decode().split()
            if kind == "GOAWAY":
                self._reconnect_task = asyncio.create_task(self._reconnect(), name="h2-reconnect")
                return
            fut = self._streams.pop(int(stream_id), None)
            if fut is not None and not fut.done():
                fut.set_result(payload)

    async def _reconnect(self):
        async with self._lock:
            for fut in self._streams.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("GOAWAY received"))
            self._streams.clear()
            self._writer.close()
            await asyncio.sleep(0.2)  # back off before reconnecting
            self._reader, self._writer = await asyncio.open_connection(*self._address)
            async with self._write_lock:
                self._writer.write(b"PREFACE 0 -\n")
                await self._writer.drain()
            self._reader_task = asyncio.create_task(self._read_loop(self._reader), name="h2-reader")
            self.reconnects += 1

    async def request(self, path):
        async with self._write_lock:
            async with self._lock:
                stream_id = self._next_stream_id
                self._next_stream_id += 2
                fut = self._streams[stream_id] = asyncio.get_running_loop().create_future()
                self._writer.write(f"HEADERS {stream_id} {path}\n".encode())
                await self._writer.drain()
        return await fut


async def fetch_loop(conn, path, results):
    while True:
        try:
            results.append(await conn.request(path))
        except ConnectionError:
            await asyncio.sleep(0.05)
            continue
        await asyncio.sleep(0.1)


async def metrics(results):
    while True:
        await asyncio.sleep(0.5)
        len(results)


async def main():
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(h2_server, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve_forever(), name="h2-server")
    conn = H2Connection("127.0.0.1", server.sockets[0].getsockname()[1])
    await conn.connect()
    results = []
    tasks = [*(asyncio.create_task(fetch_loop(conn, path, results), name=f"fetch-{path}")
               for path in ("/quotes", "/news", "/rates")),
             asyncio.create_task(metrics(results), name="metrics")]
    while conn._reconnect_task is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (serving, *tasks):
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
