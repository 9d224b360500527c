"""A live-log hub that writes to each viewer in turn and waits for its drain, so one stalled viewer stops the feed.

Modelled on ShlomiPorush/mailcow-logs-viewer #143: "A slow live-log client delays
updates for other viewers": live-log broadcasts awaited each WebSocket in turn without a
timeout, so a stalled client held up delivery to the healthy viewers and the polling
worker behind it.

Here ``Hub.pump`` takes log lines from a bounded queue and, for each viewer, writes the
line and awaits ``drain()``.  One viewer (a frozen browser tab: its socket is open but
nothing reads it) lets its buffers fill; the transport pauses writing and ``drain()``
never returns.  The two healthy viewers starve on their reads, and ``tail_log`` blocks
on the full queue.  The fix bounds each viewer's drain and drops a viewer that misses it.
"""
import asyncio
import signal
import socket


class Hub:
    def __init__(self):
        self.viewers = set()
        self.lines = asyncio.Queue(maxsize=64)

    async def accept(self, reader, writer):
        self.viewers.add(writer)
        await reader.read()  # viewers only listen; EOF when they leave
        self.viewers.discard(writer)

    async def send(self, writer, data):
        writer.write(data)
        await writer.drain()

    async def pump(self):
        while True:
            data = await self.lines.get()
            for writer in list(self.viewers):
                await self.send(writer, data)


async def tail_log(hub):
    n = 0
    while True:
        n += 1
        await hub.lines.put(b"%08d postfix/smtpd: connect from mail.example.net %s\n" % (n, b"x" * 4000))
        if n % 64 == 0:
            await asyncio.sleep(0.001)


async def viewer(port, received):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while line := await reader.readline():
        received.append(len(line))
        del received[:-100]


async def main():
    hub = Hub()
    server = await asyncio.start_server(hub.accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    frozen = socket.socket()
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frozen.connect(("127.0.0.1", port))  # a browser tab that stopped reading
    received = []
    tasks = [asyncio.create_task(viewer(port, received)) for _ in range(2)]
    await asyncio.sleep(0.2)
    tasks += [asyncio.create_task(hub.pump()), asyncio.create_task(tail_log(hub))]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    frozen.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
