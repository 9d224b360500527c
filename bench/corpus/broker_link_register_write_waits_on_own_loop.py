"""A sensor gateway whose broker link waits on run_coroutine_threadsafe(...).result() from its own loop.

Modelled on empicano/aiomqtt #174: "Client._on_socket_register_write() may deadlock": the
asyncio wrapper's socket-register-write callback submitted a coroutine to the client's loop
with ``asyncio.run_coroutine_threadsafe`` and waited on ``.result()``.  That is right when
the underlying synchronous client calls it from the executor thread running the connect,
but the client calls it again from the loop itself whenever it queues outgoing data; there
the wait keeps control from returning to the loop, the submitted coroutine never runs, and
the loop is stuck for good.

Here ``SyncBrokerClient`` is the socket-level client and ``BrokerLink`` drives it from
asyncio: ``connect`` runs the client's blocking connect in the default executor, and the
client asks its owner, through ``on_register_write``, to watch the socket for writability
whenever a frame is pending.  The CONNECT frame goes out fine, since that callback runs on
the executor thread.  About 1.2 s in, the first reading a sensor task publishes queues a
frame from the loop's own thread: ``BrokerLink._on_register_write`` waits on the
concurrent future of a coroutine that only this loop could run, and the whole gateway (the
broker connection, the command workers, the status ticker, the broker itself) freezes.
The fix hands ``add_writer`` to the loop with ``call_soon_threadsafe`` and does not wait.
"""
import asyncio
import random
import signal
import socket

GATEWAY_ID = "gw-dock-3"


class SyncBrokerClient:
    """Socket-level client: frames are buffered, and the owner is asked to watch the socket
    for writability while any are pending and to call ``loop_write``/``loop_read``."""

    def __init__(self, client_id):
        self.client_id = client_id
        self.sock = None
        self.on_register_write = None
        self.on_unregister_write = None
        self.on_message = None
        self.on_disconnect = None
        self._out = bytearray()
        self._in = bytearray()

    def connect(self, host, port):
        sock = socket.create_connection((host, port), timeout=5)
        sock.setblocking(False)
        self.sock = sock
        self._send_frame(f"CONNECT {self.client_id} keepalive=30")

    def publish(self, topic, payload):
        self._send_frame(f"PUBLISH {topic} {payload}")

    def _send_frame(self, frame):
        idle = not self._out
        self._out += frame.encode() + b"\n"
        if idle and self.on_register_write is not None:
            self.on_register_write(self.sock)

    def loop_write(self):
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return
        del self._out[:sent]
        if not self._out and self.on_unregister_write is not None:
            self.on_unregister_write(self.sock)

    def loop_read(self):
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        if not data:
            if self.on_disconnect is not None:
                self.on_disconnect(self.sock)
            return
        self._in += data
        while (end := self._in.find(b"\n")) != -1:
            line = self._in[:end].decode()
            del self._in[:end + 1]
            kind, _, body = line.partition(" ")
            if kind == "MESSAGE" and self.on_message is not None:
                topic, _, payload = body.partition(" ")
                self.on_message(topic, payload)


class BrokerLink:
    def __init__(self, client_id):
        self._loop = asyncio.get_running_loop()
        self._client = SyncBrokerClient(client_id)
        self._client.on_register_write = self._on_register_write
        self._client.on_unregister_write = self._on_unregister_write
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self.commands = asyncio.Queue()
        self.published = 0

    def _on_register_write(self, sock):
        # The client's connect runs on an executor thread, so the loop is touched from the loop.
        async def register():
            self._loop.add_writer(sock, self._client.loop_write)
        asyncio.run_coroutine_threadsafe(register(), self._loop).result()

    def _on_unregister_write(self, sock):
        self._loop.remove_writer(sock)

    def _on_message(self, topic, payload):
        self.commands.put_nowait((topic, payload))

    def _on_disconnect(self, sock):
        self._loop.remove_reader(sock)

    async def connect(self, host, port):
        await self._loop.run_in_executor(None, self._client.connect, host, port)
        self._loop.add_reader(self._client.sock, self._client.loop_read)

    async def publish(self, topic, payload):
        self._client.publish(topic, payload)
        self.published += 1


class Broker:
    """The site broker: acknowledges the connect, pushes the gateway its config, stores readings."""

    def __init__(self):
        self.readings = []

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                kind, _, body = line.decode().strip().partition(" ")
                if kind == "CONNECT":
                    client_id = body.split()[0]
                    writer.write(b"CONNACK 0\n")
                    writer.write(f"MESSAGE devices/{client_id}/config interval=2\n".encode())
                elif kind == "PUBLISH":
                    self.readings.append(body)
                    del self.readings[:-100]
                await writer.drain()
        finally:
            writer.close()


async def command_worker(link, applied):
    while True:
        topic, payload = await link.commands.get()
        await asyncio.sleep(0.01)  # apply to the local controller
        applied.append((topic, payload))


async def sample(link, sensor, interval, rng):
    while True:
        await asyncio.sleep(interval)
        await link.publish(f"sensors/{GATEWAY_ID}/{sensor}", f"{rng.uniform(10, 30):.2f}")


async def status_ticker(link, beats):
    while True:
        beats.append(link.published)
        del beats[:-20]
        await asyncio.sleep(0.25)


async def main():
    loop = asyncio.get_running_loop()
    broker = Broker()
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    link = BrokerLink(GATEWAY_ID)
    await link.connect("127.0.0.1", server.sockets[0].getsockname()[1])
    rng = random.Random(4)
    applied, beats = [], []
    tasks = [*(asyncio.create_task(command_worker(link, applied)) for _ in range(2)),
             asyncio.create_task(status_ticker(link, beats)),
             asyncio.create_task(sample(link, "temperature", 1.2, rng)),
             asyncio.create_task(sample(link, "humidity", 1.7, rng)),
             asyncio.create_task(sample(link, "pressure", 2.3, rng))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
