"""A container monitor whose stats pollers treat their own cancellation as "container unavailable", so its TaskGroup never exits.

Modelled on ualex73/monitor_docker #214: "Holding up HA restarts via CancelledError 60s
sleep": each container's polling loop caught ``asyncio.CancelledError`` in a handler that
logged "Container not available anymore ... Retry in 60 seconds" and went round the loop
again (only ``concurrent.futures.CancelledError``, no longer the same class since Python
3.8, broke out), so cancelling a poller did not stop it, and Home Assistant's shutdown,
waiting for it, hung for a minute or until Docker killed the container.

Here ``Monitor.supervise`` runs one session at a time: a ``TaskGroup`` with a stats poller
per container, while the session body follows the engine's event stream.  A second in, the
engine drops the event stream; the body raises ``ConnectionResetError`` and the TaskGroup
cancels the pollers.  Each poller's handler takes the cancellation for an unavailable
container, backs off and polls again, so the TaskGroup waits for them forever, the error
never reaches ``supervise`` and the event stream is never reopened, while the pollers go on
polling and the dashboard goes on serving their stats.  The fix breaks out of the loop on
``asyncio.CancelledError``.
"""
import asyncio
import concurrent.futures
import json
import signal

CONTAINERS = ("web", "db", "cache")
POLL_EVERY = 0.5
RETRY_AFTER = 3.0


class Engine:
    """The container engine's API: per-request stats, and an event stream it drops after a second."""

    def __init__(self):
        self.streams = 0

    async def handle(self, reader, writer):
        try:
            line = (await reader.readline()).decode().split()
            if line[:1] == ["STATS"]:
                await asyncio.sleep(0.02)
                stats = {"name": line[1], "cpu": 0.1 * len(line[1]), "mem": 64 * len(line[1])}
                writer.write(json.dumps(stats).encode() + b"\n")
                await writer.drain()
            elif line[:1] == ["EVENTS"]:
                self.streams += 1
                lifetime = 1.0 if self.streams == 1 else 30.0  # the first stream hits a proxy idle timeout
                loop = asyncio.get_running_loop()
                end = loop.time() + lifetime
                while loop.time() < end:
                    writer.write(b"health_status web healthy\n")
                    await writer.drain()
                    await asyncio.sleep(0.3)
        except (OSError, IndexError):
            pass
        finally:
            writer.close()


class Monitor:
    def __init__(self, port):
        self.port = port
        self.stats = {}
        self.events = []
        self.errors = []
        self.sessions = 0
        self.closed = False

    async def engine_stats(self, name):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"STATS {name}\n".encode())
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("engine closed the stats request")
            return json.loads(line)
        finally:
            writer.close()

    async def poll(self, name):
        while not self.closed:
            try:
                self.stats[name] = await self.engine_stats(name)
                await asyncio.sleep(POLL_EVERY)
            except concurrent.futures.CancelledError:  # the monitor is being stopped
                break
            except (OSError, ValueError, asyncio.CancelledError) as err:
                self.errors.append(f"{name}: container not available anymore ({err!r}), retry in {RETRY_AFTER}s")
                del self.errors[:-20]
                await asyncio.sleep(RETRY_AFTER)

    async def session(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"EVENTS\n")
        self.sessions += 1
        try:
            async with asyncio.TaskGroup() as tg:
                for name in CONTAINERS:
                    tg.create_task(self.poll(name))
                while line := await reader.readline():
                    self.events.append(line.decode().strip())
                    del self.events[:-50]
                raise ConnectionResetError("engine closed the event stream")
        finally:
            writer.close()

    async def supervise(self):
        while not self.closed:
            try:
                await self.session()
            except* OSError as group:
                self.errors.append(f"event stream lost: {group.exceptions!r}, reconnecting")
            await asyncio.sleep(0.5)


async def dashboard(monitor, reader, writer):
    try:
        while await reader.readline():
            writer.write(json.dumps(monitor.stats).encode() + b"\n")
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def dashboard_viewer(port, seen):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"GET /stats\n")
        seen.append(await reader.readline())
        del seen[:-20]
        await asyncio.sleep(0.3)


async def main():
    engine = Engine()
    engine_server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
    monitor = Monitor(engine_server.sockets[0].getsockname()[1])
    dash_server = await asyncio.start_server(lambda r, w: dashboard(monitor, r, w), "127.0.0.1", 0)
    dash_port = dash_server.sockets[0].getsockname()[1]
    seen = []
    tasks = [asyncio.create_task(monitor.supervise())]
    tasks += [asyncio.create_task(dashboard_viewer(dash_port, seen)) for _ in range(2)]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        monitor.closed = True
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
