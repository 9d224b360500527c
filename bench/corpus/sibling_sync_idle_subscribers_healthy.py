"""A network digital-twin controller whose subscribers and appliers wait a long time for changes, by design.

Modelled on srieger1/digsinet #23: "Timeout on realnet waiting for task": the controller's
loop for the real network gave up (logged an error and exited) when no message arrived
on its topic within the sync interval; the reporter noted that a quiet period on that
topic is normal and should not be treated as a failure.

Here nothing is wrong in either file.  The controller subscribes one consumer per
network to the in-process broker (127.0.0.1): the 'realnet' topic carries a change only
when an operator announces a reconfiguration of the physical network on the admin port
(nobody does during a run), 'sibling-security' every 25 s, 'sibling-ci' every 0.6 s.  Each ``SiblingApplier.run`` waits on the topology
cache's ``asyncio.Condition`` for its network for a newer version, so two of them wait for
the whole run.  Three gNMI pollers share a rate limiter that admits one request per
0.5 s (0.4 s in the twin): a poller sleeps in ``RateLimiter.acquire`` while holding its
lock and the others queue on the lock, all briefly.  The twin differs only in that rate.
"""
import asyncio
import collections
import itertools
import json
import signal
import time

GNMI_RATE = 2.0  # requests per second across all pollers


class Broker:
    """A small pub/sub broker: 'SUB topic' and 'PUB topic payload', one line each."""

    def __init__(self):
        self.topics = collections.defaultdict(set)

    async def handle(self, reader, writer):
        outbox = asyncio.Queue()
        pump = asyncio.create_task(self.pump(outbox, writer))
        try:
            while line := await reader.readline():
                verb, topic, *payload = line.decode().rstrip("\n").split(" ", 2)
                if verb == "SUB":
                    self.topics[topic].add(outbox)
                elif verb == "PUB":
                    for subscriber in self.topics[topic]:
                        subscriber.put_nowait(f"{topic} {payload[0]}\n")
        finally:
            for subscribers in self.topics.values():
                subscribers.discard(outbox)
            pump.cancel()
            writer.close()

    async def pump(self, outbox, writer):
        while True:
            writer.write((await outbox.get()).encode())
            await writer.drain()


class TopologyCache:
    def __init__(self):
        self.versions = collections.Counter()
        self.nodes = collections.defaultdict(dict)
        self.changed = collections.defaultdict(asyncio.Condition)  # one per network

    async def apply(self, network, diff):
        async with self.changed[network]:
            self.nodes[network].update(diff)
            self.versions[network] += 1
            self.changed[network].notify_all()


class SiblingController:
    def __init__(self, port, cache):
        self.port, self.cache = port, cache
        self.received = collections.Counter()

    async def consume(self, network):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"SUB {network}\n".encode())
        await writer.drain()
        while line := await reader.readline():  # a quiet topic is normal: no deadline here
            _, payload = line.decode().split(" ", 1)
            self.received[network] += 1
            await self.cache.apply(network, json.loads(payload))


class SiblingApplier:
    """Pushes each new topology version of one network to its sibling's containerlab."""

    def __init__(self, network, cache, applied):
        self.network, self.cache, self.applied = network, cache, applied

    async def run(self):
        seen = 0
        changed = self.cache.changed[self.network]
        while True:
            async with changed:
                await changed.wait_for(lambda: self.cache.versions[self.network] > seen)
                seen = self.cache.versions[self.network]
            await asyncio.sleep(0.02)  # render and push the config
            self.applied.append((self.network, seen))
            del self.applied[:-50]


class RateLimiter:
    def __init__(self, rate):
        self.interval = 1.0 / rate
        self.next_slot = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self):
        async with self.lock:
            delay = self.next_slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.next_slot = max(self.next_slot, time.monotonic()) + self.interval


async def gnmi_poller(device, limiter, samples):
    for n in itertools.count():
        await limiter.acquire()
        await asyncio.sleep(0.01)  # the Get request itself
        samples.append((device, n))
        del samples[:-100]
        await asyncio.sleep(0.5)


async def topology_publisher(port, network, interval):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in itertools.count(1):
        await asyncio.sleep(interval)
        diff = {f"leaf{n % 4}": {"mtu": 9000 - n % 3, "generation": n}}
        writer.write(f"PUB {network} {json.dumps(diff)}\n".encode())
        await writer.drain()


class AdminApi:
    """Operators announce a change of the physical network here ('RECONFIGURE {json diff}')."""

    def __init__(self, port):
        self.port = port

    async def handle(self, reader, writer):
        _, broker = await asyncio.open_connection("127.0.0.1", self.port)
        while line := await reader.readline():
            _, diff = line.decode().split(" ", 1)
            broker.write(f"PUB realnet {diff.strip()}\n".encode())
            await broker.drain()
            writer.write(b"published\n")
        broker.close()
        writer.close()


async def main():
    loop = asyncio.get_running_loop()
    broker = Broker()
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    admin = await asyncio.start_server(AdminApi(port).handle, "127.0.0.1", 0)
    cache = TopologyCache()
    controller = SiblingController(port, cache)
    limiter = RateLimiter(GNMI_RATE)
    applied, samples = [], []
    networks = ("realnet", "sibling-security", "sibling-ci")
    tasks = [asyncio.create_task(controller.consume(network)) for network in networks]
    tasks += [asyncio.create_task(SiblingApplier(network, cache, applied).run()) for network in networks]
    tasks += [asyncio.create_task(gnmi_poller(device, limiter, samples)) for device in ("spine1", "spine2", "leaf1")]
    await asyncio.sleep(0.1)
    tasks += [asyncio.create_task(topology_publisher(port, "sibling-ci", 0.6)),
              asyncio.create_task(topology_publisher(port, "sibling-security", 25.0))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        admin.close()
        server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
