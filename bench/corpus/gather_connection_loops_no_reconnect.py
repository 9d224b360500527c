"""A station client gathers its connection loops; after the station restarts it never reconnects.

Modelled on norma-core/norma-core #64: "Fix station_py client failing to reconnect after
server restart": ``Client.manage_connection`` used ``asyncio.gather()`` over its
connection loops, which waits for all of them; on a disconnect the write loop and the
response processor stayed parked on their queues' ``get()`` (nothing feeds those queues
once the connection is down), so ``gather()`` never returned and the reconnect code
below it was never reached.

Here ``StationClient.run`` gathers ``read_loop``, ``write_loop`` and
``process_responses``.  The station drops every connection after a second (a restart;
it keeps listening).  ``read_loop`` returns at EOF, the two other loops wait on their
queues, the gather waits for them, and the dashboard waits for telemetry that no longer
comes.  The fix waits with ``FIRST_COMPLETED``, cancels the loops left and reconnects.
"""
import asyncio
import signal

RESTART_EVERY = 1.0


class Station:
    """The telemetry station: streams a reading every 0.1 s to each subscriber, restarts now and then."""

    def __init__(self):
        self.writers = set()
        self.restarts = 0

    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            if (await reader.readline()).startswith(b"SUB"):
                writer.write(b"ACK telemetry\n")
                n = 0
                while not writer.is_closing():
                    n += 1
                    writer.write(b"T %d\n" % n)
                    await writer.drain()
                    await asyncio.sleep(0.1)
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def restart_loop(self):
        while True:
            await asyncio.sleep(RESTART_EVERY)
            self.restarts += 1
            for writer in list(self.writers):
                writer.close()


class StationClient:
    def __init__(self, port):
        self.port = port
        self.c2s = asyncio.Queue()
        self.s2c = asyncio.Queue()
        self.telemetry = asyncio.Queue(maxsize=1000)
        self.connections = 0

    async def run(self):
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.connections += 1
            self.c2s.put_nowait(b"SUB telemetry\n")
            await asyncio.gather(self.read_loop(reader), self.write_loop(writer), self.process_responses())
            writer.close()
            await asyncio.sleep(0.2)  # then reconnect

    async def read_loop(self, reader):
        while line := await reader.readline():
            await self.s2c.put(line)

    async def write_loop(self, writer):
        while True:
            message = await self.c2s.get()
            writer.write(message)
            await writer.drain()

    async def process_responses(self):
        while True:
            kind, _, body = (await self.s2c.get()).strip().partition(b" ")
            if kind == b"T":
                if self.telemetry.full():
                    self.telemetry.get_nowait()
                self.telemetry.put_nowait(int(body))


async def dashboard(client, shown):
    while True:
        shown.append(await client.telemetry.get())
        del shown[:-50]


async def report_worker(jobs, done):
    while True:
        done.append(await jobs.get())


async def metrics(samples, client):
    while True:
        samples.append(client.connections)
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    station = Station()
    server = await asyncio.start_server(station.handle, "127.0.0.1", 0)
    client = StationClient(server.sockets[0].getsockname()[1])
    shown, jobs, done, samples = [], asyncio.Queue(), [], []
    tasks = [asyncio.create_task(station.restart_loop()), asyncio.create_task(client.run()),
             asyncio.create_task(dashboard(client, shown)), asyncio.create_task(report_worker(jobs, done)),
             asyncio.create_task(metrics(samples, client))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
