"""A camera hub that looks up a device id with run_coroutine_threadsafe(...).result() from its own loop.

Modelled on python/cpython #121075: "run_coroutine_threadsafe document can not be
reproduced": the documented pattern ``asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)``
was called from a coroutine running on ``loop`` itself; ``result()`` blocked the loop's
thread, so the submitted coroutine could not run until the timeout expired, and the call
always ended in ``TimeoutError``.

Here ``CameraHub.device_id_for`` was written for the vendor SDK's callback thread: it submits
``Registry.lookup`` to the hub's loop and waits up to 0.4 s for the answer, which is right
from that thread.  The doorbell path, added later, is a coroutine: ``EventRouter.listen``
reads ring events from the doorbell gateway (about one a second) and ``handle_ring`` calls
the same helper on the loop's thread.  Each ring freezes the loop for the full 0.4 s inside
``concurrent.futures.Future.result``, then falls back to the raw serial; meanwhile the
sensor poller, the SDK's motion events, the notifier and the gateway all stall.  No task is
stuck.  The fix awaits the submitted future with ``asyncio.wrap_future`` instead.
"""
import asyncio
import random
import signal
import threading
from concurrent.futures import CancelledError

LOOKUP_TIMEOUT = 0.4


class Registry:
    def __init__(self):
        self.devices = {f"SN-{n:04d}": f"device-{n}" for n in range(1, 9)}
        self.lookups = 0

    async def lookup(self, serial):
        await asyncio.sleep(0.01)  # the registry lives in the hub's storage layer
        self.lookups += 1
        return self.devices.get(serial, serial)


class CameraHub:
    def __init__(self, loop, registry):
        self.loop = loop
        self.registry = registry
        self.notifications = asyncio.Queue()
        self.fallbacks = 0

    def device_id_for(self, serial):
        """Blocking lookup for code running outside the event loop (the SDK's thread)."""
        future = asyncio.run_coroutine_threadsafe(self.registry.lookup(serial), self.loop)
        return future.result(timeout=LOOKUP_TIMEOUT)

    def on_motion(self, serial):
        """Called by the vendor SDK on its own thread."""
        try:
            device_id = self.device_id_for(serial)
        except TimeoutError:
            device_id = serial
        self.loop.call_soon_threadsafe(self.notifications.put_nowait, ("motion", device_id))


def vendor_sdk(hub, stop):
    rng = random.Random(3)
    while not stop.wait(rng.uniform(0.2, 0.5)):
        try:
            hub.on_motion(f"SN-{rng.randint(1, 8):04d}")
        except (CancelledError, RuntimeError):  # the hub's loop is shutting down
            return


class EventRouter:
    def __init__(self, hub):
        self.hub = hub
        self.rings = 0

    async def handle_ring(self, serial):
        try:
            device_id = self.hub.device_id_for(serial)
        except TimeoutError:
            self.hub.fallbacks += 1
            device_id = serial
        self.rings += 1
        await self.hub.notifications.put(("ring", device_id))

    async def listen(self, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SUBSCRIBE rings\n")
        while line := await reader.readline():
            kind, serial = line.decode().split()
            if kind == "ring":
                await self.handle_ring(serial)
            writer.write(b"ACK\n")


class DoorbellGateway:
    """The doorbell gateway: pushes a ring event to each subscriber every 0.7-1.2 s."""

    async def handle(self, reader, writer):
        rng = random.Random(5)
        await reader.readline()
        try:
            await asyncio.sleep(0.4)
            while True:
                writer.write(f"ring SN-{rng.randint(1, 8):04d}\n".encode())
                await writer.drain()
                await asyncio.sleep(rng.uniform(0.7, 1.2))
        except OSError:
            pass
        finally:
            writer.close()


async def notifier(hub, sent):
    while True:
        kind, device_id = await hub.notifications.get()
        await asyncio.sleep(0.005)  # push to the phone app
        sent.append((kind, device_id))
        del sent[:-50]


async def poll_sensors(readings):
    rng = random.Random(9)
    while True:
        readings.append(round(rng.uniform(18.0, 24.0), 1))
        del readings[:-100]
        await asyncio.sleep(0.1)


async def main():
    loop = asyncio.get_running_loop()
    hub = CameraHub(loop, Registry())
    gateway = DoorbellGateway()
    server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
    router = EventRouter(hub)
    sent, readings = [], []
    sdk_stop = threading.Event()
    sdk = threading.Thread(target=vendor_sdk, args=(hub, sdk_stop), name="vendor-sdk", daemon=True)
    sdk.start()
    tasks = [asyncio.create_task(router.listen(server.sockets[0].getsockname()[1])),
             asyncio.create_task(notifier(hub, sent)), asyncio.create_task(poll_sensors(readings))]
    try:
        await asyncio.sleep(1.5)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        sdk_stop.set()
        server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
