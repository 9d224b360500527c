"""A rolling restart of a session gateway whose drain never ends: idle keep-alive connections are never closed.

Modelled on python/cpython #113538: "Cannot cleanly shut down an asyncio based server":
once ``Server.wait_closed()`` really waited for every connection handler to return (fixed
in 3.12 and backported to 3.11), a handler sitting in ``await reader.read(...)`` for a client
that had nothing more to send never returned, so the server's shutdown hung; the ways out
discussed were a timeout on the handler's read or closing the idle clients' transports.

Here the gateway keeps its own count of open connections and an "all closed" event (the
semantics of ``wait_closed()``, kept by hand so that every Python version behaves alike).
About 0.8 s in, a deploy starts a new listener generation, points the registry at it and
drains the old one: it stops accepting and waits for the old generation's connections to
end.  A connection that carries a request during the drain is answered with ``close``, but
the API tier's pooled keep-alive connections to the old listener carry no more requests
(new requests go to the new port), so their handlers wait in ``readline`` forever and so
does the drain.  The fix closes the connections that are idle between requests when the
drain starts.
"""
import asyncio
import signal


class Gateway:
    """One generation of the session gateway's listener."""

    def __init__(self, generation, sessions):
        self.generation = generation
        self.sessions = sessions
        self.server = None
        self.draining = False
        self.open = 0
        self.idle = set()  # writers of connections waiting for their next request
        self.all_closed = asyncio.Event()
        self.all_closed.set()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        self.open += 1
        self.all_closed.clear()
        try:
            while not self.draining:
                self.idle.add(writer)
                line = await reader.readline()
                self.idle.discard(writer)
                if not line:
                    break
                verb, _, key = line.decode().strip().partition(" ")
                await asyncio.sleep(0.005)  # the session store
                if verb == "TOUCH":
                    self.sessions[key] = self.sessions.get(key, 0) + 1
                reply = f"OK {self.generation} {self.sessions.get(key, 0)}"
                writer.write((reply + (" close" if self.draining else "") + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.idle.discard(writer)
            writer.close()
            self.open -= 1
            if self.open == 0:
                self.all_closed.set()

    async def drain(self):
        self.draining = True
        self.server.close()
        for writer in list(self.idle):
            writer.close()
        await self.all_closed.wait()


class SessionClient:
    """The API tier's client: keep-alive connections pooled per gateway port."""

    def __init__(self, registry):
        self.registry = registry
        self.pools = {}

    async def request(self, line):
        port = self.registry["gateway"]
        pool = self.pools.setdefault(port, [])
        reader, writer = pool.pop() if pool else await asyncio.open_connection("127.0.0.1", port)
        writer.write(line.encode() + b"\n")
        reply = (await reader.readline()).decode()
        if reply.endswith(" close\n") or not reply:
            writer.close()
        else:
            pool.append((reader, writer))
        return reply.strip()


async def api_worker(client, user, replies):
    while True:
        try:
            replies.append(await client.request(f"TOUCH {user}"))
        except ConnectionError:
            replies.append("retry")
        del replies[:-50]
        await asyncio.sleep(0.1)


async def expire_sessions(sessions):
    while True:
        await asyncio.sleep(0.5)
        for key in [k for k, hits in sessions.items() if hits > 10_000]:
            del sessions[key]


async def rolling_restart(registry, gateways, sessions, log):
    old = gateways[-1]
    fresh = Gateway(old.generation + 1, sessions)
    registry["gateway"] = await fresh.start()
    gateways.append(fresh)
    log.append(f"generation {fresh.generation} listening on {registry['gateway']}")
    await old.drain()
    log.append(f"generation {old.generation} drained")
    gateways.remove(old)


async def main():
    sessions, registry, log = {}, {}, []
    gateways = [Gateway(1, sessions)]
    registry["gateway"] = await gateways[0].start()
    client = SessionClient(registry)
    replies = []
    tasks = [asyncio.create_task(api_worker(client, user, replies)) for user in ("alice", "bob")]
    tasks.append(asyncio.create_task(expire_sessions(sessions)))
    await asyncio.sleep(0.8)
    tasks.append(asyncio.create_task(rolling_restart(registry, gateways, sessions, log)))
    await asyncio.sleep(1.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for gateway in gateways:
        gateway.server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
