"""A catalogue mirror running flat out against a slow, flaky upstream: long waits everywhere, none of them a hang.

Modelled on DARMA-tasking/vt #500: "Implement non-heuristic-based termination hang
detection": the runtime's heuristic hang detector, run on a slow, oversubscribed machine,
made the developers believe a bug existed that did not: work was only progressing slowly.

Eight ``Mirror.worker`` tasks take item ids from a small bounded queue that ``Mirror.feed``
keeps full (it waits in ``put``).  The upstream allows two requests at a time
(``Mirror.limit``, a semaphore that is almost always exhausted, each holder waiting
0.8-1.8 s on its response while up to six workers queue for a permit), answers 503 to about
a third of them, and the workers back off exponentially (up to 3 s) before retrying.
Fetched items go through a four-slot queue to ``Mirror.index``, which takes them in
batches of 8 and spends 4 s on each bulk commit, during which the workers wait in ``put``.
The upstream's handlers wait on their keep-alive connections meanwhile.  There is no bug
in either file; the twin allows three requests at a time against a faster, less flaky
upstream and commits smaller batches faster.
"""
import asyncio
import random
import signal


class FlakyUpstream:
    def __init__(self, seed, slow, fail_rate):
        self.rng = random.Random(seed)
        self.slow, self.fail_rate = slow, fail_rate
        self.served = 0

    async def handle(self, reader, writer):
        while line := await reader.readline():
            item = int(line.split()[1])
            if self.rng.random() < self.fail_rate:
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))
                writer.write(b"503 busy\n")
            else:
                await asyncio.sleep(self.rng.uniform(*self.slow))
                writer.write(b"200 item-%d\n" % item)
                self.served += 1
            await writer.drain()
        writer.close()


class Mirror:
    def __init__(self, port, limit, batch, commit_seconds):
        self.port = port
        self.limit = asyncio.Semaphore(limit)
        self.todo = asyncio.Queue(maxsize=4)
        self.done = asyncio.Queue(maxsize=4)
        self.batch, self.commit_seconds = batch, commit_seconds
        self.stats = {"fetched": 0, "retries": 0, "given_up": 0, "committed": 0}

    async def feed(self):
        n = 0
        while True:
            n += 1
            await self.todo.put(n % 10_000)

    async def fetch(self, reader, writer, item):
        async with self.limit:
            writer.write(b"GET %d\n" % item)
            async with asyncio.timeout(5.0):
                status, _, body = (await reader.readline()).decode().partition(" ")
        return status, body.strip()

    async def worker(self, seed):
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        while True:
            item = await self.todo.get()
            for attempt in range(6):
                status, body = await self.fetch(reader, writer, item)
                if status == "200":
                    await self.done.put((item, body))
                    self.stats["fetched"] += 1
                    break
                self.stats["retries"] += 1
                await asyncio.sleep(min(0.4 * 2 ** attempt, 3.0) * rng.uniform(0.5, 1.0))
            else:
                self.stats["given_up"] += 1

    async def index(self):
        while True:
            rows = [await self.done.get()]
            while len(rows) < self.batch:
                rows.append(await self.done.get())
            await asyncio.sleep(self.commit_seconds)  # one bulk commit to the search index
            self.stats["committed"] += len(rows)


async def progress(mirror, samples):
    while True:
        await asyncio.sleep(4.0)
        samples.append(dict(mirror.stats))
        del samples[:-10]


async def main():
    upstream = FlakyUpstream(seed=5, slow=(0.4, 1.0), fail_rate=0.2)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    mirror = Mirror(server.sockets[0].getsockname()[1], limit=3, batch=6, commit_seconds=2.5)
    samples = []
    tasks = [asyncio.create_task(mirror.feed()), asyncio.create_task(mirror.index()),
             asyncio.create_task(progress(mirror, samples))]
    tasks += [asyncio.create_task(mirror.worker(seed)) for seed in range(8)]
    await asyncio.sleep(3.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
