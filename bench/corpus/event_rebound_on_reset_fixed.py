"""A state cache that resets its "synced" event by binding a new one, stranding the apps already waiting.

Modelled on NodeJSmith/hassette #1495: "refactor!: model app bootstrap and HA state
lifecycle explicitly": the review found that resetting the state proxy assigned a new
``asyncio.Event`` to the attribute; every coroutine already parked in the wait for the
initial state waited on the old object, so it never woke, and the bootstrap awaited it
with no timeout.

Here ``StateCache.reset`` (run when the upstream connection drops) rebinds ``self.synced``
to a fresh Event.  The three apps that started before the drop wait on the old Event; the
resync sets the new one, so apps started later run while the first three wait forever.
The fix clears the existing Event instead.
"""
import asyncio
import signal


class StateCache:
    def __init__(self):
        self.states = {}
        self.synced = asyncio.Event()
        self.generation = 0

    def reset(self):
        self.states = {}
        self.synced.clear()

    async def sync(self, upstream):
        self.generation += 1
        self.states = dict(upstream)
        self.synced.set()

    async def wait_synced(self):
        await self.synced.wait()
        return self.states


class App:
    def __init__(self, name, cache):
        self.name = name
        self.cache = cache
        self.started = False

    async def initialize(self, events):
        states = await self.cache.wait_synced()
        self.started = True
        while True:
            entity, value = await events.get()
            if entity in states:
                states[entity] = value


async def connection(cache, upstream):
    await asyncio.sleep(0.3)       # the first sync is slow; the socket drops before it lands
    cache.reset()
    await asyncio.sleep(0.2)       # reconnected
    await cache.sync(upstream)
    while True:
        await asyncio.sleep(0.5)   # heartbeat
        upstream["sun.sun"] = "above_horizon"


async def main():
    cache = StateCache()
    upstream = {"light.kitchen": "on", "sun.sun": "below_horizon"}
    buses = [asyncio.Queue() for _ in range(5)]
    apps = [App(f"app-{i}", cache) for i in range(5)]
    tasks = [asyncio.create_task(apps[i].initialize(buses[i])) for i in range(3)]
    tasks.append(asyncio.create_task(connection(cache, upstream)))
    await asyncio.sleep(0.8)
    tasks += [asyncio.create_task(apps[i].initialize(buses[i])) for i in range(3, 5)]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
