"""A healthy websocket-style server that reaps idle connections with a graceful close handshake.

Modelled on python-websockets/websockets #704: "Unexpected results from websockets +
wait_for timeout": closing a connection is not instant; after the close frame the
server waits (up to its close timeout) for the peer to answer, so a cancelled handler
legitimately takes seconds to finish.

Clients connect, subscribe and then sit idle for minutes (a heartbeat every 30 s).  An
idle reaper cancels the handler of the longest-idle connection every 2.5 s; the handler
catches the cancellation, sends a close frame, waits up to 10 s for the client's close
acknowledgement (the client finishes the message it is processing first, about 4.5 s),
and then re-raises.  The client reconnects.  So at any moment one or two handlers are
cancelled and still waiting, each for a bounded time.  There is no bug in either file;
the twin reaps less often and its clients acknowledge sooner.
"""
import asyncio
import signal

REAP_EVERY = 2.5
ACK_AFTER = 4.5


class Server:
    def __init__(self):
        self.connections = {}
        self.closed = 0

    async def handle(self, reader, writer):
        loop = asyncio.get_running_loop()
        self.connections[asyncio.current_task()] = loop.time()
        try:
            while line := await reader.readline():
                self.connections[asyncio.current_task()] = loop.time()
                if line.startswith(b"SUB"):
                    writer.write(b"SUBSCRIBED\n")
                    await writer.drain()
        except asyncio.CancelledError:
            writer.write(b"CLOSE 1001 idle\n")
            try:
                await asyncio.wait_for(reader.readuntil(b"CLOSE-ACK\n"), 10.0)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            self.closed += 1
            raise
        finally:
            self.connections.pop(asyncio.current_task(), None)
            writer.close()

    async def reap_idle(self):
        while True:
            await asyncio.sleep(REAP_EVERY)
            idle = [t for t in self.connections if not t.cancelling()]
            if idle:
                min(idle, key=self.connections.get).cancel()


async def client(port, name):
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SUB %s\n" % name.encode())
        await reader.readline()
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), 30.0)
            except asyncio.TimeoutError:
                writer.write(b"PING\n")
                continue
            if not line or line.startswith(b"CLOSE"):
                break
        if line:
            await asyncio.sleep(ACK_AFTER)  # finish the message being processed, then acknowledge
            writer.write(b"CLOSE-ACK\n")
            await writer.drain()
        writer.close()


async def main():
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(server.reap_idle())]
    tasks += [asyncio.create_task(client(port, f"viewer-{i}")) for i in range(6)]
    await asyncio.sleep(6.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
