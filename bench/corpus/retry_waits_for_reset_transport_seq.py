"""Calls that failed with the connection wait for a newer transport, but the reconnect resets the sequence number.

Modelled on grpc/grpc-go #339: "Client: Pending requests wait forever after connection
failure": a call that failed on a broken transport waited for a transport with a higher
sequence number before retrying, but ``transportSeq`` was reset on each reconnect, so the
new transport never counted as newer and the call waited forever although the
connection was back up.

Here ``Channel.call`` remembers the sequence number of the transport its request failed
on and waits on ``Channel.changed`` (``Condition.wait_for``) for ``seq`` to pass it.
``Channel.maintain`` resets ``seq`` to 0 at the start of every reconnect and counts the
new transport as 1.  The server restarts a second in (and every 20 s after), while two report exports are in
flight: both fail on transport 1 and wait for a transport newer than 1, which never
comes; new calls (the quote poller) start from 0 and work.  The fix keeps ``seq``
counting up across reconnects.
"""
import asyncio
import itertools
import signal


class Transport:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.pending = {}
        self.ids = itertools.count(1)
        self.closed = asyncio.Event()
        self.receiver = asyncio.create_task(self.receive())

    async def receive(self):
        try:
            while line := await self.reader.readline():
                rid, _, body = line.decode().strip().partition(" ")
                fut = self.pending.pop(int(rid), None)
                if fut is not None and not fut.done():
                    fut.set_result(body)
        except OSError:
            pass
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("transport closed"))
        self.pending.clear()
        self.closed.set()

    async def request(self, method):
        if self.closed.is_set():
            raise ConnectionResetError("transport closed")
        rid = next(self.ids)
        fut = self.pending[rid] = asyncio.get_running_loop().create_future()
        self.writer.write(f"{rid} {method}\n".encode())
        return await fut


class Channel:
    def __init__(self, port):
        self.port = port
        self.seq = 0
        self.transport = None
        self.changed = asyncio.Condition()

    async def maintain(self):
        while True:
            self.seq = 0  # counts this reconnect's transports, so a new one is "1" again
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            async with self.changed:
                self.seq += 1
                self.transport = Transport(reader, writer)
                self.changed.notify_all()
            await self.transport.closed.wait()
            writer.close()

    async def call(self, method):
        failed_on = 0
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: self.transport is not None and self.seq > failed_on)
                transport, seq = self.transport, self.seq
            try:
                return await transport.request(method)
            except ConnectionResetError:
                failed_on = seq  # retry on a newer transport


class Server:
    def __init__(self):
        self.writers = set()

    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                rid, _, method = line.decode().strip().partition(" ")
                asyncio.create_task(self.answer(writer, rid, method))
        except OSError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def answer(self, writer, rid, method):
        await asyncio.sleep(1.5 if method.startswith("EXPORT") else 0.02)
        if not writer.is_closing():
            writer.write(f"{rid} {method.lower()}-ok\n".encode())

    async def restart_loop(self, first, every):
        await asyncio.sleep(first)
        while True:
            for writer in list(self.writers):
                writer.close()
            await asyncio.sleep(every)


async def export_report(channel, name, done):
    while True:
        done.append(await channel.call(f"EXPORT {name}"))
        del done[:-10]
        await asyncio.sleep(0.5)


async def poll_quotes(channel, quotes):
    while True:
        quotes.append(await channel.call("QUOTE eur"))
        del quotes[:-20]
        await asyncio.sleep(0.3)


async def main():
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    channel = Channel(listener.sockets[0].getsockname()[1])
    done, quotes = [], []
    tasks = [asyncio.create_task(channel.maintain()), asyncio.create_task(server.restart_loop(1.0, 20.0))]
    await asyncio.sleep(0.2)
    tasks += [asyncio.create_task(export_report(channel, name, done)) for name in ("daily", "audit")]
    tasks.append(asyncio.create_task(poll_quotes(channel, quotes)))
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
