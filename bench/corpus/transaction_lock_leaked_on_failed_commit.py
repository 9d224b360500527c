"""An event store whose transaction context manager leaks the write lock when COMMIT fails.

Modelled on powersync-ja/powersync-js #1102: "kysely-driver: write lock leaks when
commit/rollback throws (no finally around releaseTransaction)": the write lock is taken
when a transaction begins and given back only on the success path of commit or
rollback, so one COMMIT that throws leaves it held and every later write waits forever.

Here ``Transaction.__aenter__`` takes ``Store.write_lock`` and ``__aexit__`` commits (or
rolls back) and then releases it.  A WAL checkpoint briefly holds the database, and a
COMMIT that lands during it fails with ``database is locked``; ``__aexit__`` raises
before its ``release()``.  The writer logs the failure and takes its next event, and
from then on the three writers wait on the lock.  Readers, which need no lock, and the
ingest clients keep running.  The fix releases the lock in a ``finally``.
"""
import asyncio
import signal


class BusyError(Exception):
    pass


class Store:
    def __init__(self):
        self.write_lock = asyncio.Lock()
        self.rows, self.pending = [], []
        self.checkpointing = False
        self.failures = []

    async def execute(self, statement, row=None):
        await asyncio.sleep(0.005)
        if statement == "INSERT":
            self.pending.append(row)
        elif statement == "COMMIT":
            if self.checkpointing:
                raise BusyError("database is locked")
            self.rows.extend(self.pending)
            del self.rows[:-1000]
            self.pending.clear()
        elif statement == "ROLLBACK":
            self.pending.clear()

    async def checkpoint(self):
        await asyncio.sleep(0.6)
        self.checkpointing = True
        await asyncio.sleep(0.1)
        self.checkpointing = False


class Transaction:
    def __init__(self, store):
        self.store = store

    async def __aenter__(self):
        await self.store.write_lock.acquire()
        await self.store.execute("BEGIN")
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if exc_type is None:
            await self.store.execute("COMMIT")
        else:
            await self.store.execute("ROLLBACK")
        self.store.write_lock.release()


async def writer(store, events):
    while True:
        event = await events.get()
        try:
            async with Transaction(store) as tx:
                await tx.store.execute("INSERT", event)
                await tx.store.execute("INSERT", {"audit": event["id"]})
        except BusyError as e:
            store.failures.append((event["id"], str(e)))


async def ingest(events, source):
    n = 0
    while True:
        n += 1
        events.put_nowait({"id": f"{source}-{n}", "source": source})
        await asyncio.sleep(0.02)


async def reader(store, seen):
    while True:
        seen.append(len(store.rows))
        del seen[:-10]
        await asyncio.sleep(0.25)


async def main():
    store, events, seen = Store(), asyncio.Queue(), []
    tasks = [asyncio.create_task(writer(store, events)) for _ in range(3)]
    tasks += [asyncio.create_task(ingest(events, s)) for s in ("web", "mobile")]
    tasks += [asyncio.create_task(reader(store, seen)) for _ in range(2)]
    await store.checkpoint()
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
