"""A sharded metrics store whose checkpoint rendezvous waits forever for a shard that has died.

Modelled on h2oai/datatable #2521: "Fix deadlock in barrier when an exception occurs": some
threads of a parallel region arrived at a barrier while another thread threw an exception
on its way there, so it never arrived and the threads at the barrier waited forever.

Here four ``Shard.run`` tasks each buffer the rows that ``ingest`` routes to them, and every
0.2 s flush their buffer to a segment and meet on an ``asyncio.Barrier(4)``; the party that
gets index 0 commits the new checkpoint generation to the catalog.  About a second in, a
sensor reports a NaN reading, the ``payments`` shard's flush refuses to encode it
(``ValueError``) and its task ends with the exception before reaching the barrier.  The
three other shards wait in ``Barrier.wait`` (on the barrier's Condition) for a fourth party
that will never come, so no checkpoint is ever committed again.  The code already handles
a broken barrier, but nothing breaks it.  Healthy: ``ingest`` keeps appending rows every
20 ms, ``compact_segments`` and ``report_lag`` tick, main waits on its stop event.  The fix
aborts the barrier when a flush fails, so the waiting shards get ``BrokenBarrierError``.
"""
import asyncio
import json
import math
import random
import signal

SHARDS = ("orders", "payments", "sessions", "inventory")
CHECKPOINT_EVERY = 0.2


class Catalog:
    def __init__(self):
        self.generation = 0
        self.committed_at = 0.0
        self.log = []

    async def commit(self, segments):
        await asyncio.sleep(0.01)  # write the manifest
        self.generation += 1
        self.committed_at = asyncio.get_running_loop().time()
        self.log.append((self.generation, segments))
        del self.log[:-20]


class Shard:
    def __init__(self, name, barrier, catalog):
        self.name = name
        self.barrier = barrier
        self.catalog = catalog
        self.buffer = []
        self.segments = []

    async def flush(self):
        rows, self.buffer = self.buffer, []
        encoded = [json.dumps(row, allow_nan=False) for row in rows]
        await asyncio.sleep(0.01)  # write the segment file
        self.segments.append(len(encoded))
        del self.segments[:-50]

    async def run(self):
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            try:
                await self.flush()
            except Exception:
                await self.barrier.abort()  # let the other shards stop waiting for this one
                raise
            try:
                index = await self.barrier.wait()
            except asyncio.BrokenBarrierError:
                self.catalog.log.append((self.catalog.generation, f"{self.name}: checkpoint aborted"))
                return
            if index == 0:
                await self.catalog.commit(self.barrier.parties)


async def ingest(shards, sick_sensor_after):
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    started = loop.time()
    seq = 0
    while True:
        seq += 1
        shard = shards[seq % len(shards)]
        value = rng.gauss(100.0, 15.0)
        if shard.name == "payments" and loop.time() - started > sick_sensor_after:
            value = math.nan  # a terminal's sensor starts reporting garbage
        shard.buffer.append({"seq": seq, "shard": shard.name, "value": value})
        await asyncio.sleep(0.02)


async def compact_segments(shards, stats):
    while True:
        await asyncio.sleep(0.35)
        stats["compactions"] += sum(1 for s in shards if len(s.segments) > 10)


async def report_lag(catalog, lag):
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0.3)
        lag.append(round(loop.time() - catalog.committed_at, 2))
        del lag[:-20]


async def main():
    catalog = Catalog()
    barrier = asyncio.Barrier(len(SHARDS))
    shards = [Shard(name, barrier, catalog) for name in SHARDS]
    stats, lag = {"compactions": 0}, []
    tasks = [asyncio.create_task(shard.run(), name=f"shard-{shard.name}") for shard in shards]
    tasks += [asyncio.create_task(ingest(shards, sick_sensor_after=0.9)),
              asyncio.create_task(compact_segments(shards, stats)),
              asyncio.create_task(report_lag(catalog, lag))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
