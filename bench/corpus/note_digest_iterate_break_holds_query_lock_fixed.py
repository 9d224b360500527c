"""A digest job breaks out of a streamed query; the suspended generator keeps the query lock.

Modelled on encode/databases #294, "Using `break` in iterate() loop hangs on acquiring lock":
``Database.iterate()`` is an async generator that takes the connection's query lock and
yields rows from inside it; a caller that breaks out of ``async for row in
db.iterate(...)`` leaves the generator suspended at its ``yield``, still inside
``async with query_lock``, and the next statement on that connection waits for the lock
forever (see also #176, and PEP 525/533: an async generator is only finalized when it is
garbage collected, never by ``break``).

Story: a notes service keeps one connection to its database (a small line-protocol server
on 127.0.0.1).  ``Database.iterate`` streams a result set under the query lock,
``Database.execute`` runs one statement under it.  About 0.5 s in, ``DigestJob`` walks the
notes newest-first, breaks out at the first note older than a day (or after 20 notes),
and then marks the picked notes as digested.  ``recent`` still refers to the suspended
generator, which still holds the lock, so the ``MARK`` statement waits for the lock in the
very task that owns the generator, and the stats writer, which flushes counters to the
database every 0.25 s, queues behind it.

Stuck: ``DigestJob.run`` (waits on the query lock that its own suspended generator holds)
and ``write_stats`` (waits on the same lock).  Healthy: the status endpoint and its probe
(answers from memory every 0.3 s), the heartbeat ticker, the database's handler for the
service's connection (waits on a stream read for the next statement), main on its stop
event.

Fix: the job iterates inside ``contextlib.aclosing(...)``, so leaving the loop closes the
generator: it skips the rest of the result set and releases the lock.
"""
import asyncio
import contextlib
import signal

DAY = 86400


class NoteDatabase:
    """The database server: streams the notes newest-first, stores marks and stats."""

    def __init__(self):
        self.notes = [(1000 - i, i * 3100, f"note-{1000 - i}") for i in range(120)]
        self.marked = set()
        self.stats = []

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                verb, _, arg = line.decode().strip().partition(" ")
                if verb == "SELECT":
                    for note_id, age, text in self.notes:
                        writer.write(f"ROW {note_id} {age} {text}\n".encode())
                    writer.write(b"END\n")
                elif verb == "MARK":
                    self.marked.update(arg.split(","))
                    writer.write(b"OK\n")
                elif verb == "STATS":
                    self.stats.append(arg)
                    del self.stats[:-50]
                    writer.write(b"OK\n")
                else:
                    writer.write(b"ERR\n")
                await writer.drain()
        finally:
            writer.close()


class Database:
    """One connection; the query lock keeps statements from interleaving on it."""

    def __init__(self):
        self._lock = asyncio.Lock()
        self._reader = self._writer = None

    async def connect(self, port):
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)

    async def iterate(self, sql):
        async with self._lock:
            self._writer.write(f"{sql}\n".encode())
            finished = False
            try:
                while (line := await self._reader.readline()) not in (b"END\n", b""):
                    _, note_id, age, text = line.decode().rstrip("\n").split(" ", 3)
                    yield int(note_id), int(age), text
                finished = True
            finally:
                if not finished:  # closed early: skip the rest of the result set
                    while await self._reader.readline() not in (b"END\n", b""):
                        pass

    async def execute(self, sql):
        async with self._lock:
            self._writer.write(f"{sql}\n".encode())
            return (await self._reader.readline()).decode().strip()


class DigestJob:
    def __init__(self, db, limit=20):
        self.db = db
        self.limit = limit
        self.digests = []

    async def collect(self):
        picked = []
        async with contextlib.aclosing(self.db.iterate("SELECT notes ORDER BY age")) as recent:
            async for note_id, age, text in recent:
                if age > DAY or len(picked) == self.limit:
                    break
                picked.append((note_id, text))
        await self.db.execute("MARK " + ",".join(str(note_id) for note_id, _ in picked))
        self.digests.append([text for _, text in picked])

    async def run(self):
        await asyncio.sleep(0.5)
        while True:
            await self.collect()
            await asyncio.sleep(3600)


async def write_stats(db, counters):
    while True:
        await db.execute(f"STATS requests={counters['requests']} digests={counters['digests']}")
        counters["flushes"] += 1
        await asyncio.sleep(0.25)


class StatusEndpoint:
    def __init__(self, counters, job):
        self.counters = counters
        self.job = job

    async def handle(self, reader, writer):
        try:
            while await reader.readline():
                self.counters["requests"] += 1
                self.counters["digests"] = len(self.job.digests)
                writer.write(f"OK requests={self.counters['requests']} flushes={self.counters['flushes']}\n".encode())
                await writer.drain()
        finally:
            writer.close()


async def status_probe(port, seen):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            writer.write(b"GET /status\n")
            seen.append(await reader.readline())
            del seen[:-20]
            await asyncio.sleep(0.3)
    finally:
        writer.close()


async def heartbeat(beats):
    while True:
        beats.append(asyncio.get_running_loop().time())
        del beats[:-20]
        await asyncio.sleep(0.2)


async def main():
    loop = asyncio.get_running_loop()
    database = NoteDatabase()
    db_server = await asyncio.start_server(database.handle, "127.0.0.1", 0)
    db = Database()
    await db.connect(db_server.sockets[0].getsockname()[1])
    counters = {"requests": 0, "digests": 0, "flushes": 0}
    job = DigestJob(db)
    status = await asyncio.start_server(StatusEndpoint(counters, job).handle, "127.0.0.1", 0)
    seen, beats = [], []
    tasks = [asyncio.create_task(job.run(), name="digest"),
             asyncio.create_task(write_stats(db, counters), name="stats-writer"),
             asyncio.create_task(status_probe(status.sockets[0].getsockname()[1], seen), name="status-probe"),
             asyncio.create_task(heartbeat(beats), name="heartbeat")]
    await asyncio.sleep(1.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
