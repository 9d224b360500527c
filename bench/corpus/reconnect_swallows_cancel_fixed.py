"""A broker client whose reconnect loop catches BaseException, so it cannot be cancelled.

Modelled on Yakifo/amqtt #29: "Permit connect() and reconnect() coroutines to be
cancelled": the plain ``except BaseException`` around each connection attempt also
matched ``asyncio.CancelledError``, so cancelling a reconnecting client only started
the next attempt.

Here the broker is down, ``Client.reconnect`` retries with a back-off and treats
every exception as a failed attempt.  A credential rotation closes the client:
it cancels the reconnect task and awaits it, and waits forever while the loop goes
on retrying.  The fix re-raises ``CancelledError`` before the catch-all.
"""
import asyncio
import signal


class Client:
    def __init__(self, port):
        self.port = port
        self.attempts = 0
        self.connection = None
        self.reconnecting = None

    async def connect_once(self):
        self.attempts += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.connection = (reader, writer)

    async def reconnect(self):
        delay = 0.05
        while self.connection is None:
            try:
                await asyncio.sleep(delay)
                await self.connect_once()
            except asyncio.CancelledError:
                raise
            except BaseException:
                delay = min(delay * 2, 0.4)

    def start(self):
        self.reconnecting = asyncio.create_task(self.reconnect())

    async def close(self):
        if self.reconnecting is not None:
            self.reconnecting.cancel()
            try:
                await self.reconnecting
            except asyncio.CancelledError:
                pass
        print("client closed", flush=True)


async def rotate_credentials(client):
    await asyncio.sleep(0.5)
    await client.close()


async def metrics(counters):
    while True:
        counters["ticks"] += 1
        await asyncio.sleep(0.5)


async def consume(inbox, seen):
    while True:
        seen.append(await inbox.get())


def closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    client = Client(closed_port())
    counters = {"ticks": 0}
    inbox, seen = asyncio.Queue(), []
    background = [asyncio.create_task(metrics(counters)), asyncio.create_task(consume(inbox, seen))]
    client.start()
    rotation = asyncio.create_task(rotate_credentials(client))
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del background, rotation


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
