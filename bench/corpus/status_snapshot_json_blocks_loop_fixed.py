"""A metrics service that serialises its whole table to JSON on the event loop every few seconds.

Modelled on simonw/datasette #37: "Ability to serialize massive JSON without blocking
event loop": a response built from many rows takes long enough to JSON-encode that the
encoding itself blocks the event loop and pauses all other traffic.

Here ``Collector.publish`` writes a snapshot of the readings table (180,000 rows) for a
dashboard every 3 s with one ``json.dumps`` call.  The C encoder holds the interpreter
for the whole call, 0.2-0.8 s depending on the machine, so the loop stalls that long
every few seconds while the sensor feeds and API clients wait; between snapshots it is
idle.  The fix encodes the table in slices and yields to the loop between them.
"""
import asyncio
import json
import random
import signal


class Collector:
    def __init__(self, rows):
        rng = random.Random(3)
        self.rows = [{"id": i, "sensor": "s%d" % (i % 500), "value": rng.random(), "tags": ["raw", "1m"],
                      "ts": 1700000000 + i} for i in range(rows)]
        self.snapshots = []

    async def publish(self):
        while True:
            await asyncio.sleep(3.0)
            parts = []
            for i in range(0, len(self.rows), 5000):
                parts.append(json.dumps(self.rows[i:i + 5000])[1:-1])
                await asyncio.sleep(0)
            data = "[" + ",".join(parts) + "]"
            self.snapshots.append(len(data))
            del self.snapshots[:-5]

    async def feed(self, sensor):
        n = 0
        while True:
            n += 1
            self.rows[n % len(self.rows)]["value"] = n / 1000
            await asyncio.sleep(0.05)


async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def client(port, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        writer.write(b"latest\n")
        await reader.readline()
        latencies.append(loop.time() - started)
        del latencies[:-50]
        await asyncio.sleep(0.1)


async def main():
    collector, latencies = Collector(180_000), []
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(collector.publish())]
    tasks += [asyncio.create_task(collector.feed(s)) for s in ("north", "south")]
    tasks += [asyncio.create_task(client(port, latencies)) for _ in range(2)]
    await asyncio.sleep(3.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
