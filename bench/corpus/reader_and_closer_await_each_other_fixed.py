"""A session whose reader waits for ``close()`` while ``close()`` waits for the reader.

Modelled on python/asyncio #444, "Prohibit Tasks to await on themselves." (bpo-27972): since that
fix a task that awaits itself gets a RuntimeError.  The check covers only a task awaiting itself
directly; a task that awaits itself through another task still hangs without a word.

Mechanism: a streaming session's reader task, on a protocol error from the server, starts
``close()`` in its own task and awaits it so that the error is reported only once the session is
shut down.  ``close()`` stops the heartbeat, sends a close frame and then awaits the reader task to
finish.  Each task waits for the other; the consumer of the session's messages, whose end-of-stream
marker ``close()`` would have queued, waits with them.

Fix: the reader starts ``close()`` and returns instead of awaiting it.
"""
import asyncio
import signal


async def feed_server(reader, writer):
    try:
        for seq in range(3):
            writer.write(f"TEXT tick-{seq}\n".encode())
            await asyncio.sleep(0.05)
        writer.write(b"\xff\xfe garbage\n")  # a frame the client cannot parse
        await writer.drain()
        await reader.readline()  # the client's close frame
    finally:
        writer.close()


class ProtocolError(Exception):
    pass


class Session:
    def __init__(self):
        self.messages = asyncio.Queue()
        self._reader = self._writer = None
        self._reader_task = self._heartbeat_task = self._closer = None
        self.closed = False

    async def connect(self, host, port):
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._reader_task = asyncio.create_task(self._read_loop(), name="session-reader")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="session-heartbeat")

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(0.2)
            self._writer.write(b"PING\n")

    async def _read_loop(self):
        while line := await self._reader.readline():
            try:
                kind, payload = line.decode().split(" ", 1)
            except (UnicodeDecodeError, ValueError):
                self._closer = asyncio.create_task(self.close(1002), name="session-close")
                raise ProtocolError("malformed frame") from None
            self.messages.put_nowait(payload.strip())

    async def close(self, code=1000):
        if self.closed:
            return
        self.closed = True
        self._heartbeat_task.cancel()
        self._writer.write(f"CLOSE {code}\n".encode())
        try:
            await self._reader_task
        except ProtocolError:
            pass  # the reader stopped on a bad frame; the session is closing anyway
        self._writer.close()
        self.messages.put_nowait(None)


async def consume_updates(session, seen):
    while (message := await session.messages.get()) is not None:
        seen.append(message)


async def render_worker(jobs):
    while True:
        template, context = await jobs.get()
        try:
            template.format(**context)
        finally:
            jobs.task_done()


async def stats(seen):
    while True:
        await asyncio.sleep(0.5)
        len(seen)


async def main():
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(feed_server, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve_forever(), name="feed-server")
    session = Session()
    await session.connect("127.0.0.1", server.sockets[0].getsockname()[1])
    seen, jobs = [], asyncio.Queue()
    tasks = [asyncio.create_task(consume_updates(session, seen), name="updates"),
             asyncio.create_task(stats(seen), name="stats"),
             *(asyncio.create_task(render_worker(jobs), name=f"render-{i}") for i in range(2))]
    while session._closer is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
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
