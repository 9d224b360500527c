"""A job worker whose websocket to the dispatcher goes silent after a balancer failover, and it never notices.

Modelled on livekit/agents #3178: "Use heartbeat param for websocket connection": the worker
opened its websocket to the server without aiohttp's ``heartbeat``, so when the connection
became unresponsive (nothing closed, nothing arrived) the worker could not tell, and waited
on it indefinitely; the fix passes ``heartbeat`` to ``ws_connect``.

Here ``AgentWorker`` keeps one websocket to the dispatch service (an aiohttp server) through a
TCP balancer, all on 127.0.0.1.  ``AgentWorker.run`` reads replies in an ``async for`` loop and
resolves the future of each request by id; two ``claim_jobs`` loops and ``refresh_config``
send requests and await those futures; ``report_load`` sends a status frame every 0.25 s that
needs no answer.  About 0.8 s in the balancer fails over and silently forgets established
flows: it closes its side to the dispatcher (whose handler ends) but keeps the worker's socket
open and discards what the worker sends.  Nothing ever arrives again, nothing is closed, and
without a heartbeat the receive loop waits forever in ``ws.receive``; the three requesters
wait forever on futures only that loop would resolve (or fail, when it ends).  Healthy:
``report_load`` keeps sending into the void, the balancer's pump reading those frames, the
dispatcher's ``publish_jobs`` ticker, ``watch_flows``, main waiting on its stop event.  The
fix passes ``heartbeat=0.3``: the missing pong ends the receive loop within about half a
second, the pending requests fail with ``ConnectionError`` and the worker reconnects.
"""
import asyncio
import itertools
import json
import signal

import aiohttp
from aiohttp import web


class Dispatcher:
    """The dispatch service: hands out queued jobs and the worker config over a websocket."""

    def __init__(self):
        self.jobs = asyncio.Queue()
        self.loads = {}
        self.config_version = 1

    async def handle(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            if req["type"] == "status":
                self.loads[req["worker"]] = req["load"]
                continue
            if req["type"] == "claim":
                job = None if self.jobs.empty() else self.jobs.get_nowait()
                await ws.send_json({"id": req["id"], "job": job})
            elif req["type"] == "config":
                await ws.send_json({"id": req["id"], "version": self.config_version, "max_jobs": 2})
        return ws

    async def publish_jobs(self):
        for n in itertools.count(1):
            if self.jobs.qsize() < 20:
                self.jobs.put_nowait({"job": n, "room": f"room-{n % 5}"})
            await asyncio.sleep(0.05)


class Balancer:
    """A TCP balancer in front of the dispatcher.  A failover forgets every established flow
    without telling either end: the worker's packets are dropped from then on."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.flows = []
        self.pumps = set()

    async def handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        flow = {"forgotten": False, "client": writer, "upstream": up_writer, "dropped_bytes": 0}
        self.flows.append(flow)
        for task in (self.pump(reader, up_writer, flow), self.pump(up_reader, writer, flow)):
            task = asyncio.create_task(task)
            self.pumps.add(task)
            task.add_done_callback(self.pumps.discard)

    async def pump(self, reader, writer, flow):
        try:
            while data := await reader.read(65536):
                if flow["forgotten"]:
                    flow["dropped_bytes"] += len(data)  # no state for this flow: dropped
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        if not flow["forgotten"]:
            writer.close()

    def failover(self):
        for flow in self.flows:
            flow["forgotten"] = True
            flow["upstream"].close()


class AgentWorker:
    def __init__(self, session, url, name):
        self.session = session
        self.url = url
        self.name = name
        self.ws = None
        self.connected = asyncio.Event()
        self.pending = {}
        self.ids = itertools.count(1)
        self.running = 0
        self.errors = []

    async def run(self):
        while True:
            try:
                async with self.session.ws_connect(self.url) as ws:
                    self.ws = ws
                    self.connected.set()
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            reply = json.loads(msg.data)
                            waiter = self.pending.pop(reply["id"], None)
                            if waiter is not None and not waiter.done():
                                waiter.set_result(reply)
                    self.errors.append(f"websocket closed: {ws.exception()!r}")
            except aiohttp.ClientError as exc:
                self.errors.append(f"connect failed: {exc!r}")
            finally:
                self.connected.clear()
                self.ws = None
                for waiter in self.pending.values():
                    if not waiter.done():
                        waiter.set_exception(ConnectionError("dispatcher connection lost"))
                self.pending.clear()
            await asyncio.sleep(0.2)  # back off, then reconnect

    async def request(self, kind, **body):
        await self.connected.wait()
        rid = next(self.ids)
        waiter = asyncio.get_running_loop().create_future()
        self.pending[rid] = waiter
        await self.ws.send_json({"id": rid, "type": kind, **body})
        return await waiter

    async def report_load(self):
        while True:
            await asyncio.sleep(0.25)
            ws = self.ws
            if ws is not None and not ws.closed:
                await ws.send_json({"type": "status", "worker": self.name, "load": self.running / 2})


async def claim_jobs(worker, done):
    while True:
        try:
            reply = await worker.request("claim", worker=worker.name)
        except ConnectionError as exc:
            worker.errors.append(f"claim failed: {exc}")
            await asyncio.sleep(0.1)
            continue
        if reply["job"] is None:
            await asyncio.sleep(0.1)
            continue
        worker.running += 1
        await asyncio.sleep(0.08)  # run the job
        worker.running -= 1
        done.append(reply["job"]["job"])
        del done[:-100]


async def refresh_config(worker, config):
    while True:
        try:
            config.update(await worker.request("config"))
        except ConnectionError as exc:
            worker.errors.append(f"config refresh failed: {exc}")
        await asyncio.sleep(0.3)


async def watch_flows(balancer, failover_at, stats):
    await asyncio.sleep(failover_at)
    balancer.failover()  # the standby takes over, with an empty flow table
    while True:
        await asyncio.sleep(0.5)
        stats["flows"] = len(balancer.flows)
        stats["dropped_bytes"] = sum(flow["dropped_bytes"] for flow in balancer.flows)


async def main():
    dispatcher = Dispatcher()
    app = web.Application()
    app.router.add_get("/agent", dispatcher.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_port = runner.addresses[0][1]
    balancer = Balancer(upstream_port)
    front = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
    url = "http://127.0.0.1:%d/agent" % front.sockets[0].getsockname()[1]
    session = aiohttp.ClientSession()
    worker = AgentWorker(session, url, "agent-1")
    done, config, stats = [], {}, {}
    tasks = [asyncio.create_task(dispatcher.publish_jobs()), asyncio.create_task(worker.run()),
             asyncio.create_task(worker.report_load()), asyncio.create_task(refresh_config(worker, config)),
             asyncio.create_task(watch_flows(balancer, 0.8, stats))]
    tasks += [asyncio.create_task(claim_jobs(worker, done)) for _ in range(2)]
    try:
        await asyncio.sleep(1.6)
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await session.close()
        front.close()
        await runner.cleanup()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
