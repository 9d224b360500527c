"""A websocket pub/sub service where most subscribers wait, for a long time, on quiet topics.

Modelled on massive-com/client-python #293, "Subscriptions are not changed until a message from
existing subscription is received": a subscriber to an illiquid instrument may see no message for
minutes, and its client sits in ``recv()`` all that time; that long wait is the service working as
designed, not a hang.

Shape: an aiohttp server on 127.0.0.1 fans messages out to websocket subscribers through one queue
and one pump task per subscriber; twenty clients subscribe, five to a busy ``prices`` topic that a
publisher feeds every 0.3 s and fifteen to an ``alerts`` topic that stays silent.  Each client has a
supervisor waiting for its connection to close, and a small database pool parks its idle
connections on an Event.  Nothing here is stuck: every waiter is woken by a message, a close, or a
checkout that may come at any time.

Variant (the twin): the clients read with ``receive(timeout=1.0)`` and loop, so that a change of
subscription is applied even while a topic is silent, as the issue proposes.
"""
import asyncio
import signal

import aiohttp
from aiohttp import web


class Hub:
    def __init__(self):
        self.topics = {}

    def subscribe(self, topic):
        queue = asyncio.Queue(maxsize=100)
        self.topics.setdefault(topic, set()).add(queue)
        return queue

    def unsubscribe(self, topic, queue):
        self.topics.get(topic, set()).discard(queue)

    def publish(self, topic, message):
        for queue in self.topics.get(topic, ()):
            if not queue.full():
                queue.put_nowait(message)


async def pump(queue, ws):
    while True:
        await ws.send_str(await queue.get())


async def ws_handler(request):
    hub = request.app["hub"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    topic = request.query["topic"]
    queue = hub.subscribe(topic)
    sender = asyncio.create_task(pump(queue, ws), name=f"pump-{topic}")
    try:
        async for _ in ws:
            pass  # subscribers do not talk back
    finally:
        sender.cancel()
        hub.unsubscribe(topic, queue)
    return ws


class ConnectionPool:
    """Idle connections park on an Event until someone checks one out."""

    def __init__(self, size):
        self.idle = [asyncio.Event() for _ in range(size)]
        self.keepers = [asyncio.create_task(self._keep(event), name="db-conn") for event in self.idle]

    def checkout(self):
        for event in self.idle:
            if not event.is_set():
                event.set()
                return event
        raise RuntimeError("pool exhausted")

    async def _keep(self, checked_out):
        while True:
            await checked_out.wait()
            checked_out.clear()


async def publisher(hub):
    tick = 0
    while True:
        await asyncio.sleep(0.3)
        tick += 1
        hub.publish("prices", f"EURUSD {1.08 + tick / 10000:.5f}")


class Subscriber:
    def __init__(self, session, url, topic):
        self.session, self.url, self.topic = session, url, topic
        self.closed = asyncio.Event()
        self.received = 0

    async def listen(self):
        async with self.session.ws_connect(f"{self.url}?topic={self.topic}") as ws:
            async for msg in ws:
                self.received += 1
        self.closed.set()

    async def supervise(self):
        await self.closed.wait()


async def main():
    loop = asyncio.get_running_loop()
    app = web.Application()
    app["hub"] = Hub()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    pool = ConnectionPool(4)
    session = aiohttp.ClientSession()
    subscribers = [Subscriber(session, f"http://127.0.0.1:{port}/ws", "prices" if i < 5 else "alerts")
                   for i in range(20)]
    tasks = [*(asyncio.create_task(s.listen(), name=f"sub-{s.topic}") for s in subscribers),
             *(asyncio.create_task(s.supervise(), name=f"supervise-{s.topic}") for s in subscribers),
             asyncio.create_task(publisher(app["hub"]), name="publisher")]
    while sum(len(qs) for qs in app["hub"].topics.values()) < 20 or not all(s.received for s in subscribers[:5]):
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (*tasks, *pool.keepers):
            task.cancel()
        await session.close()
        await runner.cleanup()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
