"""A wallet-balance service whose session-cache lock is taken by an executor thread for a request that already timed out.

Modelled on ethereum/web3.py #2693 (the repository now lives at ApeWorX/web3.py):
"`web3._utils.request.async_lock` sometimes incorrectly handles the cancellation of the task
it is running in": ``async_lock`` took a ``threading.Lock`` with ``await
loop.run_in_executor(pool, lock.acquire)`` and only then entered its ``try/finally``; when
the awaiting task was cancelled, the executor thread went on and acquired the lock for a
caller that was gone, nobody ever released it, and every later use of the lock hung.

Here ``SessionCache.get_session`` guards its per-endpoint sessions with such a lock.  About
0.8 s in, ``index_archive`` opens a session to the slow archive node and holds the lock for
1.2 s; meanwhile the readiness probe asks for the mainnet session under a 0.4 s
``wait_for``, times out and is cancelled while its thread is still blocked in
``lock.acquire``.  When the archive session is ready that thread takes the lock and returns
into a cancelled future: the lock is never released.  From then on the two
``watch_balance`` pollers and ``index_archive`` each wait on an executor job blocked in
``lock.acquire`` forever.  The fix shields the acquire and, if the caller is cancelled,
releases the lock as soon as the orphaned acquire completes.
"""
import asyncio
import concurrent.futures
import json
import os
import signal
import threading
from contextlib import asynccontextmanager

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="session-lock")


@asynccontextmanager
async def async_lock(lock):
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_pool, lock.acquire)
    try:
        yield
    finally:
        lock.release()


class Node:
    """A JSON-RPC node on 127.0.0.1; the archive node takes a while to accept a session."""

    def __init__(self, handshake_delay):
        self.handshake_delay = handshake_delay
        self.height = 19_000_000

    async def handle(self, reader, writer):
        try:
            await asyncio.sleep(self.handshake_delay)
            writer.write(b'{"jsonrpc": "2.0", "result": "ready"}\n')
            while line := await reader.readline():
                request = json.loads(line)
                self.height += 1
                result = {"eth_blockNumber": self.height, "eth_getBalance": 10**18 + self.height}
                writer.write(json.dumps({"id": request["id"], "result": result[request["method"]]}).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            writer.close()


class Session:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.next_id = 0
        self.io = asyncio.Lock()

    async def call(self, method, *params):
        async with self.io:
            self.next_id += 1
            self.writer.write(json.dumps({"id": self.next_id, "method": method, "params": params}).encode() + b"\n")
            return json.loads(await self.reader.readline())["result"]


class SessionCache:
    _lock = threading.Lock()  # shared by every provider in the process

    def __init__(self, ports):
        self.ports = ports
        self.sessions = {}

    async def get_session(self, endpoint):
        async with async_lock(self._lock):
            session = self.sessions.get(endpoint)
            if session is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.ports[endpoint])
                await reader.readline()
                session = self.sessions[endpoint] = Session(reader, writer)
            return session


async def watch_balance(cache, address, balances):
    while True:
        session = await cache.get_session("mainnet")
        balances[address] = await session.call("eth_getBalance", address)
        await asyncio.sleep(0.3)


async def index_archive(cache, progress):
    await asyncio.sleep(0.8)
    while True:
        session = await cache.get_session("archive")
        progress.append(await session.call("eth_blockNumber"))
        del progress[:-20]
        await asyncio.sleep(0.5)


async def readiness_probe(cache, status):
    await asyncio.sleep(1.0)
    while True:
        try:
            session = await asyncio.wait_for(cache.get_session("mainnet"), 0.4)
            status["ready"] = bool(await session.call("eth_blockNumber"))
        except asyncio.TimeoutError:
            status["ready"] = False
        await asyncio.sleep(5.0)


async def notify_worker(alerts, sent):
    while True:
        sent.append(await alerts.get())


async def main():
    mainnet, archive = Node(0.0), Node(1.2)
    servers = [await asyncio.start_server(node.handle, "127.0.0.1", 0) for node in (mainnet, archive)]
    cache = SessionCache({name: s.sockets[0].getsockname()[1] for name, s in zip(("mainnet", "archive"), servers)})
    await cache.get_session("mainnet")
    balances, progress, status, alerts, sent = {}, [], {}, asyncio.Queue(), []
    tasks = [asyncio.create_task(watch_balance(cache, f"0x{n:040x}", balances)) for n in (1, 2)]
    tasks += [asyncio.create_task(index_archive(cache, progress)), asyncio.create_task(readiness_probe(cache, status)),
              asyncio.create_task(notify_worker(alerts, sent))]
    await asyncio.sleep(3.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        _pool.shutdown(wait=False, cancel_futures=True)
        del tasks
        os._exit(0)  # a provider thread stuck in a blocking call must not hold up the exit


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
