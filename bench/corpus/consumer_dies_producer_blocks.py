"""An index loader whose parser task dies on one bad record; the reader then blocks on a full queue.

Modelled on apache/maven-indexer #314: "[MINDEXER-188] Ensure that the producer thread
doesn't indefinitely block on the queue": the consumer threads quit early when an
exception occurred, and the producer blocked on ``put`` once the bounded queue was full,
with no chance to recover.

Here ``Loader.parse`` raises on a malformed record and its task ends; ``Loader.read``
keeps putting records into the bounded queue until it is full, then waits in ``put``
forever.  The fix skips (and counts) a malformed record instead of letting the parser die.
"""
import asyncio
import signal


class Malformed(ValueError):
    pass


def decode(raw):
    key, sep, value = raw.partition("=")
    if not sep:
        raise Malformed(raw)
    return key, value


class Loader:
    def __init__(self, records):
        self.records = records
        self.queue = asyncio.Queue(maxsize=8)
        self.index = {}
        self.rejected = 0

    async def read(self):
        for raw in self.records:
            await self.queue.put(raw)
        await self.queue.put(None)

    async def parse(self):
        while (raw := await self.queue.get()) is not None:
            key, value = decode(raw)
            self.index[key] = value
            await asyncio.sleep(0)


async def serve_lookups(requests, loader):
    while True:
        key, reply = await requests.get()
        reply.set_result(loader.index.get(key))


async def gauge(loader, samples):
    while True:
        samples.append(len(loader.index))
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    records = [f"artifact-{i}=1.{i}" for i in range(100)]
    records[20] = "artifact-20 1.20"
    loader = Loader(records)
    requests, samples = asyncio.Queue(), []
    tasks = [asyncio.create_task(loader.read()), asyncio.create_task(loader.parse()),
             asyncio.create_task(serve_lookups(requests, loader)), asyncio.create_task(gauge(loader, samples))]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
