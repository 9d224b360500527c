"""A cache whose warm-up waits in a TaskGroup for a shard that failed to load and never says so.

Modelled on ipfs/js-ipfs #1598: ""ready" event is not triggered": when starting the
node failed, only the error event fired; code that awaited "ready" blocked forever.

Here ``Cache.warm_up`` waits in a ``TaskGroup`` for every shard's ``wait_ready``.  One
shard's loader hits a corrupt snapshot, logs the error and returns without setting
``ready``, so that child waits forever and the warm-up with it, while the other shards
serve.  The fix records the failure and sets ``ready`` in a ``finally``, so the waiter
wakes and sees the error.
"""
import asyncio
import signal


class Shard:
    def __init__(self, name, snapshot):
        self.name = name
        self.snapshot = snapshot
        self.data = {}
        self.error = None
        self.ready = asyncio.Event()

    async def load(self):
        try:
            await asyncio.sleep(0.05)  # read the snapshot
            if self.snapshot is None:
                raise ValueError(f"{self.name}: corrupt snapshot")
            self.data = dict(self.snapshot)
        except ValueError as exc:
            self.error = exc
        finally:
            self.ready.set()

    async def wait_ready(self):
        await self.ready.wait()
        return self.error


class Cache:
    def __init__(self, shards):
        self.shards = shards
        self.warm = False

    async def warm_up(self):
        loaders = [asyncio.create_task(s.load()) for s in self.shards]
        async with asyncio.TaskGroup() as group:
            for shard in self.shards:
                group.create_task(shard.wait_ready())
        self.warm = True
        print("warm", [s.error for s in self.shards], len(loaders), flush=True)


async def serve(cache, requests, answers):
    while True:
        key = await requests.get()
        answers.append([s.data.get(key) for s in cache.shards])


async def evict(cache):
    while True:
        for shard in cache.shards:
            if len(shard.data) > 1000:
                shard.data.clear()
        await asyncio.sleep(0.5)


async def main():
    shards = [Shard(f"shard-{i}", {f"k{i}": i}) for i in range(3)] + [Shard("shard-3", None)]
    cache = Cache(shards)
    requests, answers = asyncio.Queue(), []
    tasks = [asyncio.create_task(serve(cache, requests, answers)), asyncio.create_task(evict(cache)),
             asyncio.create_task(cache.warm_up())]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
