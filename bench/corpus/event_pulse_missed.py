"""A config reload announced with set()-then-clear() that a rollout task misses for good.

Modelled on cocotb #4675: "Fix hang with `Event.wait()`": a set() that landed between
the decision to wait and the await itself woke nobody, and the waiter then blocked until
a next set() that never came.

Here ``ConfigStore.reload`` announces a new version by pulsing ``changed`` (set, then
clear at once).  ``rollout`` records the version it starts from, drains the workers (an
await) and only then waits for the pulse; the reload lands during the drain, so the
rollout waits for a second reload that nobody will trigger.  The fix checks the version
before waiting, so a reload that already happened is seen.
"""
import asyncio
import signal


class ConfigStore:
    def __init__(self):
        self.version = 1
        self.settings = {"pool": 4}
        self.changed = asyncio.Event()

    async def reload(self, settings):
        await asyncio.sleep(0.05)  # read and validate the file
        self.settings = settings
        self.version += 1
        self.changed.set()
        self.changed.clear()


class WorkerPool:
    def __init__(self, size):
        self.jobs = asyncio.Queue()
        self.done = 0
        self.workers = [asyncio.create_task(self.work()) for _ in range(size)]

    async def work(self):
        while True:
            job = await self.jobs.get()
            await asyncio.sleep(job)
            self.done += 1
            self.jobs.task_done()

    async def drain(self):
        await self.jobs.join()


async def rollout(store, pool):
    start = store.version
    await pool.drain()
    await store.changed.wait()
    print("rolled out version", store.version, store.settings, flush=True)


async def ticker(store, beats):
    while True:
        beats.append(store.version)
        del beats[:-10]
        await asyncio.sleep(0.5)


async def main():
    store = ConfigStore()
    pool = WorkerPool(3)
    beats = []
    tick = asyncio.create_task(ticker(store, beats))
    for _ in range(6):
        pool.jobs.put_nowait(0.1)
    task = asyncio.create_task(rollout(store, pool))
    await store.reload({"pool": 8})
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tick, task


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
