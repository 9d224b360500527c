"""A client that files in-flight requests under a fixed key, so a concurrent duplicate orphans the first.

Modelled on ib_async #216, "Concurrent requests can orphan Future and hang": requests such as
``reqAllOpenOrdersAsync()`` stored their future as ``self._futures["openOrders"]``; a second call
made while the first was in flight overwrote the entry, the end-of-data message resolved only the
latest future, and the first caller waited forever.

Mechanism: a trading service talks to a gateway (a server on 127.0.0.1) through one client.  At
start-up the dashboard refresher and the risk checker both ask for the open orders at once.  The
second request replaces the first one's future in ``_futures``; the first ``openOrdersEnd``
resolves the second caller, the second one finds no future, and the dashboard refresher waits on a
future that nothing refers to any more.  The risk checker goes on polling every half second.

Fix: a caller that finds the same request already in flight awaits that request's future instead
of starting another one.
"""
import asyncio
import signal

ORDERS = ["AAPL BUY 100 LMT 187.20", "MSFT SELL 50 LMT 411.00", "NVDA BUY 10 MKT"]


async def gateway(reader, writer):
    try:
        while line := await reader.readline():
            if line.strip() == b"reqOpenOrders":
                await asyncio.sleep(0.02)
                for order in ORDERS:
                    writer.write(f"openOrder {order}\n".encode())
                writer.write(b"openOrdersEnd\n")
                await writer.drain()
    finally:
        writer.close()


class GatewayClient:
    def __init__(self):
        self._futures = {}
        self._results = {}
        self._writer = None
        self.reader_task = None

    async def connect(self, host, port):
        reader, self._writer = await asyncio.open_connection(host, port)
        self.reader_task = asyncio.create_task(self._read_loop(reader), name="gateway-reader")

    async def _read_loop(self, reader):
        while line := await reader.readline():
            kind, _, payload = line.decode().rstrip("\n").partition(" ")
            if kind == "openOrder":
                self._results.setdefault("openOrders", []).append(payload)
            elif kind == "openOrdersEnd":
                fut = self._futures.pop("openOrders", None)
                rows = self._results.pop("openOrders", [])
                if fut is not None and not fut.done():
                    fut.set_result(rows)

    def _start_req(self, key):
        fut = asyncio.get_running_loop().create_future()
        self._futures[key] = fut
        self._results[key] = []
        return fut

    async def req_open_orders(self):
        fut = self._start_req("openOrders")
        self._writer.write(b"reqOpenOrders\n")
        return await fut


async def refresh_dashboard(client, board):
    while True:
        board["orders"] = await client.req_open_orders()
        await asyncio.sleep(1.0)


async def risk_check(client, board):
    while True:
        board["exposure"] = len(await client.req_open_orders())
        await asyncio.sleep(0.5)


async def fill_worker(fills):
    while True:
        fill = await fills.get()
        fill["booked"] = True
        fills.task_done()


async def main():
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(gateway, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve_forever(), name="gateway-server")
    client = GatewayClient()
    await client.connect("127.0.0.1", server.sockets[0].getsockname()[1])
    board, fills = {}, asyncio.Queue()
    tasks = [asyncio.create_task(refresh_dashboard(client, board), name="dashboard"),
             asyncio.create_task(risk_check(client, board), name="risk"),
             *(asyncio.create_task(fill_worker(fills), name=f"fills-{i}") for i in range(2))]
    while "exposure" not in board:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (serving, *tasks):
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
