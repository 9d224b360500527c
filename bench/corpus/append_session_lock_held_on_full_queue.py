"""An append-log service whose append path waits on a full queue while holding the lock its flusher needs.

Modelled on wepay/waltz #34: "fix potential deadlock": ``append()`` enqueued requests under
the session lock that ``doAppend()`` (which drains the append queue) and
``resolveAppendRequests()`` also take; when a burst of appends filled the bounded queue,
``append()`` waited for room while holding the lock, so the drain could never run and the
store session deadlocked.  The fix made ``append()`` give the lock up while the queue was
full.

Here ``StoreSession.append`` stamps each record with the next sequence number and enqueues
it under ``StoreSession.lock``, so that queue order is sequence order.
``StoreSession.flush_loop`` drains up to eight records every 50 ms and writes them to the
replica under the same lock, so that the generation cannot change in the middle of a batch.
About 0.5 s in, a bulk import pipelines 60 records over one connection: the handler serving
it fills the 16-slot queue and waits in ``put`` with the lock held, the flusher then waits
for the lock, and the handlers of the two regular producers queue on the lock as well.
Status queries keep being answered.  The fix checks for room under the lock and, when the
queue is full, lets the lock go and tries again after a flush interval.
"""
import asyncio
import signal
from dataclasses import dataclass

QUEUE_SIZE = 16
BATCH_SIZE = 8
FLUSH_INTERVAL = 0.05


@dataclass
class Entry:
    generation: int
    seq: int
    payload: str


class ReplicaLink:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def write(self, generation, entries):
        body = " ".join(f"{e.seq}:{e.payload}" for e in entries)
        self.writer.write(f"WRITE {generation} {body}\n".encode())
        await self.writer.drain()
        reply = await self.reader.readline()
        if reply.strip() != b"OK":
            raise ConnectionError(f"replica refused the batch: {reply!r}")


class StoreSession:
    def __init__(self, link):
        self.link = link
        self.generation = 1
        self.lock = asyncio.Lock()
        self.pending = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.next_seq = 0
        self.committed = 0

    def _stamp(self, payload):
        entry = Entry(self.generation, self.next_seq, payload)
        self.next_seq += 1
        return entry

    async def append(self, payload):
        async with self.lock:
            entry = self._stamp(payload)
            await self.pending.put(entry)
        return entry.seq

    async def flush_loop(self):
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            async with self.lock:
                batch = []
                while len(batch) < BATCH_SIZE and not self.pending.empty():
                    batch.append(self.pending.get_nowait())
                if batch:
                    await self.link.write(self.generation, batch)
                    self.committed = batch[-1].seq + 1


class Replica:
    """The storage node: persists each batch and acknowledges it."""

    def __init__(self):
        self.stored = 0

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                _, _, body = line.decode().partition(" ")
                await asyncio.sleep(0.005)  # fsync
                self.stored += len(body.split()) - 1
                writer.write(b"OK\n")
                await writer.drain()
        finally:
            writer.close()


class AppendServer:
    def __init__(self, session):
        self.session = session

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                command, _, arg = line.decode().strip().partition(" ")
                if command == "APPEND":
                    seq = await self.session.append(arg)
                    writer.write(f"ACK {seq}\n".encode())
                elif command == "STATUS":
                    s = self.session
                    writer.write(f"STATUS gen={s.generation} next={s.next_seq} committed={s.committed} "
                                 f"pending={s.pending.qsize()}\n".encode())
                await writer.drain()
        finally:
            writer.close()


async def producer(port, name):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while True:
        writer.write(f"APPEND {name}-{n}\n".encode())
        await reader.readline()
        n += 1
        await asyncio.sleep(0.1)


async def bulk_import(port, count):
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.writelines(f"APPEND import-{i}\n".encode() for i in range(count))
    await writer.drain()
    for _ in range(count):
        await reader.readline()
    writer.close()


async def status_probe(port, seen):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"STATUS\n")
        seen.append(await reader.readline())
        del seen[:-20]
        await asyncio.sleep(0.3)


async def report(replica, samples):
    while True:
        samples.append(replica.stored)
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    loop = asyncio.get_running_loop()
    replica = Replica()
    replica_server = await asyncio.start_server(replica.handle, "127.0.0.1", 0)
    link = ReplicaLink(*await asyncio.open_connection("127.0.0.1", replica_server.sockets[0].getsockname()[1]))
    session = StoreSession(link)
    server = await asyncio.start_server(AppendServer(session).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    console = await asyncio.open_connection("127.0.0.1", port)  # the operator's idle console session
    seen, samples = [], []
    tasks = [asyncio.create_task(session.flush_loop()), asyncio.create_task(report(replica, samples)),
             asyncio.create_task(producer(port, "orders")), asyncio.create_task(producer(port, "payments")),
             asyncio.create_task(bulk_import(port, 60)), asyncio.create_task(status_probe(port, seen))]
    try:
        await asyncio.sleep(1.5)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        server.close()
        replica_server.close()
        del tasks, console


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
