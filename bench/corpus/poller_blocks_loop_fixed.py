"""A device poller that builds its TLS context on the event loop, stalling it for a moment every second.

Modelled on home-assistant/core #128954: "Detected blocking call to
load_verify_locations in Govee": an integration created its SSL context (reading the CA
bundle from disk) inside the event loop on every poll, a blocking call that stalls
every other task while it runs.

Here ``Poller.poll`` calls ``make_context`` each round, which reads the CA bundle;
on this box the bundle sits on slow storage, so each call blocks for 0.2-0.8 s, and
the loop stalls for that long about once a second while the API server and its clients
wait.  The fix builds the context in a worker thread with ``asyncio.to_thread``.
"""
import asyncio
import random
import signal
import ssl
import time


def make_context(rng):
    time.sleep(rng.uniform(0.2, 0.8))  # reading the CA bundle from slow network storage
    return ssl.create_default_context()


class Poller:
    def __init__(self):
        self.rng = random.Random(7)
        self.readings = []

    async def poll(self):
        while True:
            context = await asyncio.to_thread(make_context, self.rng)
            self.readings.append(context.verify_mode)
            del self.readings[:-10]
            await asyncio.sleep(1.0)


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
        writer.write(b"status\n")
        await reader.readline()
        latencies.append(loop.time() - started)
        del latencies[:-50]
        await asyncio.sleep(0.1)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    poller, latencies = Poller(), []
    tasks = [asyncio.create_task(poller.poll()), asyncio.create_task(client(port, latencies)),
             asyncio.create_task(client(port, latencies))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
