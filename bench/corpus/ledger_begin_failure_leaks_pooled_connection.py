"""A ledger API whose transaction helper loses a pooled connection each time BEGIN fails, until every query waits.

Modelled on CanopyTax/asyncpgsa #101, "Asyncpg connection are not returning to a pool": the
library's transaction context manager acquired a connection from the pool in ``__aenter__`` and
then started the transaction there; when starting it raised (an error from the server, or a
cancellation), Python never called ``__aexit__``, so the connection was never given back.

Mechanism: the ledger service reaches its database (a line-protocol server on 127.0.0.1 standing
in for a Postgres replica that is being promoted after a failover) through an asyncpg-style pool:
three connection holders in an ``asyncio.Queue``, taken with ``get()`` and put back by
``release()``.  ``Transaction.__aenter__`` acquires a holder and sends ``BEGIN``.  For its first
second the server is still leaving recovery and refuses ``BEGIN READ WRITE``; the teller's three
transfers fail with "retry later", and each leaves its holder out of the queue.  When the teller
retries after the promotion, the API handler serving it waits in ``Queue.get`` for a connection
for ever, and so does the balance reporter's next read-only snapshot.  The health checker's PINGs
(answered without the database), the idle database sessions and the metrics ticker carry on.

Fix: give the connection back when starting the transaction fails.
"""
import asyncio
import signal

RECOVERY_SECONDS = 1.0


class DatabaseServer:
    """A replica being promoted: read-write transactions are refused until recovery ends."""

    def __init__(self, promoted_at):
        self.promoted_at = promoted_at
        self.balances = {"alice": 500, "bob": 300, "carol": 900}

    async def handle(self, reader, writer):
        loop = asyncio.get_running_loop()
        while line := await reader.readline():
            statement = line.decode().strip()
            if statement == "BEGIN READ WRITE" and loop.time() < self.promoted_at:
                reply = "ERROR 25006 cannot set transaction read-write mode during recovery"
            elif statement.startswith("SELECT"):
                reply = " ".join(f"{name}={amount}" for name, amount in self.balances.items())
            elif statement.startswith("UPDATE"):
                _, name, delta = statement.split()
                self.balances[name] += int(delta)
                reply = "UPDATE 1"
            else:
                reply = statement.split()[0]
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        writer.close()


class DatabaseError(Exception):
    pass


class PoolConnectionHolder:
    """One slot of the pool; connects on first use and keeps the connection."""

    def __init__(self, port):
        self.port = port
        self.streams = None

    async def execute(self, statement):
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(statement.encode() + b"\n")
        reply = (await reader.readline()).decode().strip()
        if reply.startswith("ERROR"):
            raise DatabaseError(reply)
        return reply


class Pool:
    def __init__(self, port, size):
        self._holders = [PoolConnectionHolder(port) for _ in range(size)]
        self._queue = asyncio.Queue()
        for holder in self._holders:
            self._queue.put_nowait(holder)

    async def acquire(self):
        return await self._queue.get()

    def release(self, holder):
        self._queue.put_nowait(holder)

    def transaction(self, readonly):
        return Transaction(self, readonly)


class Transaction:
    """``async with pool.transaction(readonly) as conn``: a pooled connection inside BEGIN ... COMMIT."""

    def __init__(self, pool, readonly):
        self.pool = pool
        self.readonly = readonly
        self.holder = None

    async def __aenter__(self):
        self.holder = await self.pool.acquire()
        await self.holder.execute("BEGIN READ ONLY" if self.readonly else "BEGIN READ WRITE")
        return self.holder

    async def __aexit__(self, exc_type, exc, tb):
        try:
            await self.holder.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.pool.release(self.holder)


class LedgerApi:
    def __init__(self, pool):
        self.pool = pool

    async def handle(self, reader, writer):
        while line := await reader.readline():
            verb, *args = line.decode().split()
            if verb == "PING":
                reply = "PONG"
            elif verb == "TRANSFER":
                reply = await self.transfer(*args)
            else:
                reply = "ERR unknown command"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        writer.close()

    async def transfer(self, source, target, amount):
        try:
            async with self.pool.transaction(readonly=False) as conn:
                await conn.execute(f"UPDATE {source} -{amount}")
                await conn.execute(f"UPDATE {target} {amount}")
        except DatabaseError as exc:
            return f"RETRY {exc}"
        return "DONE"


async def balance_reporter(pool, snapshots):
    while True:
        async with pool.transaction(readonly=True) as conn:
            snapshots.append(await conn.execute("SELECT name, amount FROM balances"))
        del snapshots[:-20]
        await asyncio.sleep(0.3)


async def teller(port, batch, replies):
    """Sends its transfers; those answered RETRY are sent again a little later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        retry = []
        for source, target, amount in batch:
            writer.write(f"TRANSFER {source} {target} {amount}\n".encode())
            await writer.drain()
            reply = (await reader.readline()).decode().strip()
            replies.append(reply)
            del replies[:-20]
            if reply.startswith("RETRY"):
                retry.append((source, target, amount))
            await asyncio.sleep(0.1)
        batch = retry or [("carol", "alice", 5)]
        await asyncio.sleep(1.2 if retry else 0.5)


async def health_check(port, beats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"PING\n")
        await writer.drain()
        beats.append(await reader.readline())
        del beats[:-10]
        await asyncio.sleep(0.3)


async def metrics(counters, snapshots, replies, beats):
    while True:
        await asyncio.sleep(0.5)
        counters.update(snapshots=len(snapshots), replies=len(replies), beats=len(beats))


async def main():
    loop = asyncio.get_running_loop()
    database = DatabaseServer(promoted_at=loop.time() + RECOVERY_SECONDS)
    db_server = await asyncio.start_server(database.handle, "127.0.0.1", 0)
    pool = Pool(db_server.sockets[0].getsockname()[1], size=3)
    api_server = await asyncio.start_server(LedgerApi(pool).handle, "127.0.0.1", 0)
    port = api_server.sockets[0].getsockname()[1]
    snapshots, replies, beats, counters = [], [], [], {}
    transfers = [("alice", "bob", 20), ("bob", "carol", 15), ("carol", "alice", 40)]
    tasks = [asyncio.create_task(balance_reporter(pool, snapshots)),
             asyncio.create_task(teller(port, transfers, replies)),
             asyncio.create_task(health_check(port, beats)),
             asyncio.create_task(metrics(counters, snapshots, replies, beats))]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        api_server.close()
        db_server.close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
