"""A wallet's server client whose ``connection_lost`` fails pending requests but leaves its subscription queues silent.

Modelled on coinkite/connectrum #15: "Signal to queue waiters that no more events will be
happening": the Electrum client hands every subscription an ``asyncio.Queue``; when the
connection breaks, its lost-connection handler drops the protocol and stops the keep-alive,
but nothing tells the queues, so a caller blocked on one waits for events that can never come.

Here ``StratumClient`` is an ``asyncio.Protocol`` that routes responses to per-request futures
and server notifications to per-subscription queues.  The wallet follows the chain tip and two
addresses over the primary server, and fetches a transaction that the server is slow to
send.  A second after connecting, the primary server dies.  ``connection_lost`` fails the
pending transaction request (that caller logs the error and returns) but leaves the three
subscription queues as they are: their consumers, which would stop on a ``ConnectionError``
put in the queue, wait in ``Queue.get`` forever.  Meanwhile the wallet polls fee estimates
from a backup server every half second and follows the backup's chain tip, whose blocks
come seconds apart.  The fix puts the connection error into every subscription queue.
"""
import asyncio
import collections
import itertools
import json
import signal

ADDRESSES = ("8b01df4e368ea28f8dc0423bcf7a4923", "e5a7d6c2b7f0a64f1b2dc1dc83e31ff0")


class StratumServer:
    """An Electrum-style server: answers requests, pushes new headers and address statuses."""

    def __init__(self, header_every, crash_after=None):
        self.header_every = header_every
        self.crash_after = crash_after
        self.height = 840_000

    @staticmethod
    def send(writer, msg):
        if not writer.is_closing():
            writer.write(json.dumps(msg).encode() + b"\n")

    async def push_headers(self, writer):
        while not writer.is_closing():
            await asyncio.sleep(self.header_every)
            self.height += 1
            self.send(writer, {"method": "blockchain.headers.subscribe", "params": [{"height": self.height}]})

    async def push_status(self, writer, scripthash):
        for n in itertools.count(1):
            await asyncio.sleep(0.7)
            self.send(writer, {"method": "blockchain.scripthash.subscribe", "params": [scripthash, f"{n:064x}"]})

    async def reply_later(self, writer, msg_id, delay, result):
        await asyncio.sleep(delay)
        self.send(writer, {"id": msg_id, "result": result})

    async def handle(self, reader, writer):
        background = []
        if self.crash_after is not None:
            asyncio.get_running_loop().call_later(self.crash_after, writer.close)  # the server process dies
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                method, params = msg["method"], msg["params"]
                if method == "blockchain.headers.subscribe":
                    result = {"height": self.height}
                    background.append(asyncio.create_task(self.push_headers(writer)))
                elif method == "blockchain.scripthash.subscribe":
                    result = None
                    background.append(asyncio.create_task(self.push_status(writer, params[0])))
                elif method == "blockchain.transaction.get":
                    background.append(asyncio.create_task(self.reply_later(writer, msg["id"], 3.0, "0200" * 60)))
                    continue
                elif method == "blockchain.estimatefee":
                    result = 0.00012 * params[0]
                else:
                    result = ["ElectrumX 1.16.0", "1.4"]
                self.send(writer, {"id": msg["id"], "result": result})
        except (OSError, ValueError):
            pass
        finally:
            for task in background:
                task.cancel()
            writer.close()


class StratumClient(asyncio.Protocol):
    def __init__(self, name):
        self.name = name
        self.transport = None
        self.buffer = b""
        self.ids = itertools.count(1)
        self.inflight = {}
        self.subscriptions = collections.defaultdict(list)  # method -> the queues of its subscribers
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "id" in msg:
                fut = self.inflight.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["result"])
            else:
                for queue in self.subscriptions.get(msg["method"], ()):
                    queue.put_nowait(msg["params"])

    def connection_lost(self, exc):
        self.transport = None
        error = ConnectionError(f"{self.name}: server connection lost")
        for fut in self.inflight.values():
            if not fut.done():
                fut.set_exception(error)
        self.inflight.clear()
        if not self.closed.done():
            self.closed.set_result(exc)

    def request(self, method, *params):
        if self.transport is None:
            raise ConnectionError(f"{self.name}: not connected")
        msg_id = next(self.ids)
        fut = self.inflight[msg_id] = asyncio.get_running_loop().create_future()
        self.transport.write(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        return fut

    async def subscribe(self, method, *params):
        queue = asyncio.Queue()
        self.subscriptions[method].append(queue)
        return await self.request(method, *params), queue


class Wallet:
    def __init__(self):
        self.height = 0
        self.backup_height = 0
        self.statuses = {}
        self.fees = []
        self.log = []


async def follow_headers(client, wallet):
    tip, queue = await client.subscribe("blockchain.headers.subscribe")
    wallet.height = tip["height"]
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            wallet.log.append(f"headers: {item}")
            return
        wallet.height = item[0]["height"]


async def watch_address(client, wallet, scripthash):
    wallet.statuses[scripthash], queue = await client.subscribe("blockchain.scripthash.subscribe", scripthash)
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            wallet.log.append(f"address {scripthash[:8]}: {item}")
            return
        if item[0] == scripthash:
            wallet.statuses[scripthash] = item[1]


async def fetch_transaction(client, wallet, txid):
    try:
        raw = await client.request("blockchain.transaction.get", txid)
        wallet.log.append(f"tx {txid[:8]}: {len(raw)} bytes")
    except ConnectionError as exc:
        wallet.log.append(f"tx {txid[:8]}: {exc}")


async def poll_fees(client, wallet):
    while True:
        wallet.fees.append(await client.request("blockchain.estimatefee", 2))
        del wallet.fees[:-20]
        await asyncio.sleep(0.5)


async def track_backup_tip(client, wallet):
    tip, queue = await client.subscribe("blockchain.headers.subscribe")
    wallet.backup_height = tip["height"]
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            return
        wallet.backup_height = item[0]["height"]


async def main():
    loop = asyncio.get_running_loop()
    primary_server = await asyncio.start_server(StratumServer(0.3, crash_after=1.0).handle, "127.0.0.1", 0)
    backup_server = await asyncio.start_server(StratumServer(3.0).handle, "127.0.0.1", 0)
    _, primary = await loop.create_connection(lambda: StratumClient("primary"), "127.0.0.1",
                                              primary_server.sockets[0].getsockname()[1])
    _, backup = await loop.create_connection(lambda: StratumClient("backup"), "127.0.0.1",
                                             backup_server.sockets[0].getsockname()[1])
    await primary.request("server.version", "wallet", "1.4")
    await backup.request("server.version", "wallet", "1.4")
    wallet = Wallet()
    tasks = [asyncio.create_task(follow_headers(primary, wallet))]
    tasks += [asyncio.create_task(watch_address(primary, wallet, sh)) for sh in ADDRESSES]
    tasks.append(asyncio.create_task(fetch_transaction(primary, wallet, "4a5e1e4baab89f3a32518a88c31bc87f")))
    tasks += [asyncio.create_task(poll_fees(backup, wallet)), asyncio.create_task(track_backup_tip(backup, wallet))]
    await primary.closed
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
