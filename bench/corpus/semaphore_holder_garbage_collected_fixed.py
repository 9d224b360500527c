"""Fire-and-forget fetch tasks that hold semaphore permits and are garbage-collected while pending.

Modelled on CPython gh-91887, "asyncio: Use strong references for free-flying tasks": the event loop
keeps only weak references to tasks, so a task created without keeping a reference, waiting on a
future nothing else refers to, can be collected mid-execution ("Task was destroyed but it is
pending!"); its coroutine is closed at the ``await`` and whatever came after it never runs.

Mechanism: a prefetcher warms a cache from a slow object store (a UDP server on 127.0.0.1) with
``ensure_future`` and no reference kept; at most three fetches run at once (a semaphore).  The
client keeps its pending replies in a WeakValueDictionary so that abandoned requests do not pile
up.  The service collects garbage after each round of housekeeping; the three fetch tasks holding
permits are collected before their replies arrive, their ``release()`` never runs, and the seven
fetches queued on the semaphore wait forever.

Fix: keep every fetch task in a set until it is done, as the asyncio documentation asks.
"""
import asyncio
import gc
import itertools
import signal
import weakref


class ObjectStore(asyncio.DatagramProtocol):
    """A slow upstream: every reply comes a second after its request."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        req_id, key = data.decode().split()
        reply = f"{req_id} {key}:{len(key) * 1024}".encode()
        asyncio.get_running_loop().call_later(1.0, self.transport.sendto, reply, addr)


class StoreClient(asyncio.DatagramProtocol):
    def __init__(self):
        self._ids = itertools.count(1)
        self._waiting = weakref.WeakValueDictionary()  # abandoned requests must not pile up
        self.transport = None
        self.dropped = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        req_id, body = data.decode().split()
        fut = self._waiting.pop(int(req_id), None)
        if fut is None or fut.done():
            self.dropped += 1
            return
        fut.set_result(body)

    async def get(self, key):
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        self.transport.sendto(f"{req_id} {key}".encode())
        return await fut


class Prefetcher:
    def __init__(self, client):
        self._client = client
        self._slots = asyncio.Semaphore(3)
        self.cache = {}
        self._running = set()

    def schedule(self, key):
        task = asyncio.ensure_future(self._fetch(key))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _fetch(self, key):
        await self._slots.acquire()
        body = await self._client.get(key)
        self._slots.release()
        self.cache[key] = body


async def housekeeping(cache, rounds):
    while True:
        await asyncio.sleep(0.25)
        for key in [k for k in cache if k.startswith("tmp/")]:
            del cache[key]
        gc.collect()  # hand decoded buffers back to the allocator
        rounds.append(len(cache))


async def api_worker(requests):
    while True:
        key, reply = await requests.get()
        reply.set_result(key)
        requests.task_done()


async def main():
    loop = asyncio.get_running_loop()
    store, _ = await loop.create_datagram_endpoint(ObjectStore, local_addr=("127.0.0.1", 0))
    _, client = await loop.create_datagram_endpoint(StoreClient, remote_addr=store.get_extra_info("sockname"))
    prefetcher, rounds, requests = Prefetcher(client), [], asyncio.Queue()
    tasks = [asyncio.create_task(housekeeping(prefetcher.cache, rounds), name="housekeeping"),
             *(asyncio.create_task(api_worker(requests), name=f"api-{i}") for i in range(2))]
    for n in range(10):
        prefetcher.schedule(f"thumbs/{n}.jpg")
    while len(prefetcher.cache) < 10 and len(rounds) < 8:
        await asyncio.sleep(0.05)
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
