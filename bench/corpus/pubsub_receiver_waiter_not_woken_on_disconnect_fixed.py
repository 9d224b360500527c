"""An order-events relay whose multiplexed pub/sub receiver is never told that its connection died.

Modelled on aio-libs-abandoned/aioredis-py #354: "PubSub hangs on disconnect": after the
subscriber connection was killed on the server (``CLIENT KILL``), the connection's reader
closed its channels, but a consumer blocked in the multi-channel receiver's ``get()``
(``mpsc.Receiver``) kept waiting, because closing a channel did not wake the receiver.

Here ``PubSubConnection`` reads a Redis-like line protocol from a loopback broker and
routes published messages to ``Channel`` objects, which feed one ``Receiver``: the
receiver keeps the pending (channel, message) pairs and a single waiter future that
``get()`` awaits while nothing is pending.  About a second in, the broker drops the
subscriber connection (its output buffer limit for slow clients).  The reader hits EOF
and closes every channel, but ``Channel.close`` only marks the channel inactive:
``relay_events``, which would stop on ``None`` once no channel is active, waits on the
receiver's waiter future forever.  Meanwhile the command connection keeps polling
counters every 0.3 s, the broker's publisher keeps ticking, and the push worker idles
on ``Queue.get`` for relayed events.  The fix has a closing channel wake the receiver.
"""
import asyncio
import collections
import itertools
import signal


class Broker:
    """A tiny Redis-like broker: GET/INCR commands, SUBSCRIBE, and a publisher of order events."""

    def __init__(self, kill_subscribers_after):
        self.kill_after = kill_subscribers_after
        self.counters = collections.Counter()
        self.subscribers = collections.defaultdict(set)  # channel -> writers

    async def publisher(self):
        for n in itertools.count(1):
            await asyncio.sleep(0.15)
            channel = ("orders.created", "orders.paid")[n % 2]
            self.counters[channel] += 1
            for writer in list(self.subscribers[channel]):
                if not writer.is_closing():
                    writer.write(f"message {channel} order-{n}\n".encode())

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                cmd, *args = line.decode().split()
                if cmd == "SUBSCRIBE":
                    for channel in args:
                        self.subscribers[channel].add(writer)
                        writer.write(f"subscribe {channel} {len(self.subscribers[channel])}\n".encode())
                    # this client reads slowly: the broker drops it once its output buffer limit is hit
                    asyncio.get_running_loop().call_later(self.kill_after, writer.close)
                elif cmd == "GET":
                    writer.write(f"{self.counters[args[0]]}\n".encode())
                else:
                    writer.write(b"-ERR unknown command\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            for subs in self.subscribers.values():
                subs.discard(writer)
            writer.close()


class Receiver:
    """Multi-producer single-consumer receiver over several channels."""

    def __init__(self):
        self.pending = collections.deque()
        self.channels = []
        self.waiter = None

    def channel(self, name):
        ch = Channel(name, self)
        self.channels.append(ch)
        return ch

    @property
    def is_active(self):
        return any(ch.is_active for ch in self.channels) or bool(self.pending)

    def _wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _put(self, channel, message):
        self.pending.append((channel.name, message))
        self._wake()

    async def get(self):
        while not self.pending:
            if not self.is_active:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.pending.popleft()


class Channel:
    def __init__(self, name, receiver):
        self.name = name
        self.receiver = receiver
        self.is_active = True

    def put_nowait(self, message):
        if self.is_active:
            self.receiver._put(self, message)

    def close(self):
        self.is_active = False
        self.receiver._wake()  # a get() waiting on this channel must see that it closed


class PubSubConnection:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.channels = {}
        self.closed = asyncio.get_running_loop().create_future()
        self.reader_task = asyncio.create_task(self._read_loop())

    async def subscribe(self, *channels):
        for ch in channels:
            self.channels[ch.name] = ch
        self.writer.write(("SUBSCRIBE " + " ".join(self.channels) + "\n").encode())
        await self.writer.drain()

    async def _read_loop(self):
        try:
            while line := await self.reader.readline():
                kind, name, payload = line.decode().split(maxsplit=2)
                if kind == "message" and name in self.channels:
                    self.channels[name].put_nowait(payload.strip())
        except (ConnectionError, ValueError):
            pass
        finally:
            for ch in self.channels.values():
                ch.close()
            self.writer.close()
            self.closed.set_result(None)


async def relay_events(receiver, outbox, stats):
    while True:
        item = await receiver.get()
        if item is None:
            stats["relay"] = "stopped: no active channel"
            return
        stats["relayed"] += 1
        outbox.put_nowait(item)


async def push_worker(outbox, pushed):
    while True:
        channel, message = await outbox.get()
        pushed.append(f"{channel}:{message}")
        del pushed[:-50]


async def poll_counters(port, stats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        for channel in ("orders.created", "orders.paid"):
            writer.write(f"GET {channel}\n".encode())
            stats[channel] = int(await reader.readline())
        await asyncio.sleep(0.3)


async def main():
    broker = Broker(kill_subscribers_after=1.0)
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = asyncio.create_task(broker.publisher())
    stats, pushed, outbox = collections.Counter(), [], asyncio.Queue()
    receiver = Receiver()
    conn = PubSubConnection(*await asyncio.open_connection("127.0.0.1", port))
    await conn.subscribe(receiver.channel("orders.created"), receiver.channel("orders.paid"))
    tasks = [asyncio.create_task(relay_events(receiver, outbox, stats)),
             asyncio.create_task(push_worker(outbox, pushed)),
             asyncio.create_task(poll_counters(port, stats))]
    await conn.closed
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    publisher.cancel()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
