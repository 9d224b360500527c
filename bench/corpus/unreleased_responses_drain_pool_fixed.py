"""A quote service whose client pool runs dry: error responses are never released.

Modelled on aio-libs/aiohttp #1623, "capacity/limit functionality is seriously broken in
some way": requests made through a connector at its limit never got made, because the
responses taken earlier were neither read nor released, and each one keeps its
connection out of the pool.

Here ``QuoteClient.quote`` raises ``UpstreamError`` on a non-200 answer without reading or
releasing the response; ``poll`` keeps the last errors for a status page, and each
error's traceback keeps the ``quote`` frame, and so the response, alive.  The upstream
answers 503 with a large status page for halted symbols; after four of those the
connector's four connections are all held by responses nobody will read, and every
poller waits for a free connection.  The fix takes the response with ``async with``.
"""
import asyncio
import collections
import signal

import aiohttp
from aiohttp import web

HALTED = {"ACME", "GLOBX", "INITECH", "UMBRL"}
PAGE_CHUNK = b"<p>trading halted: down for maintenance</p>\n" * 1500


async def quote_handler(request):
    symbol = request.match_info["symbol"]
    if symbol not in HALTED:
        return web.json_response({"symbol": symbol, "price": 100.0})
    page = web.StreamResponse(status=503, headers={"Content-Type": "text/html"})
    await page.prepare(request)
    try:
        for _ in range(256):  # a 16 MB status page, with the halt's whole history
            await page.write(PAGE_CHUNK)
        await page.write_eof()
    except ConnectionError:
        pass  # the client went away
    return page


class UpstreamError(Exception):
    def __init__(self, symbol, status):
        super().__init__(f"{symbol}: upstream answered {status}")
        self.status = status


class QuoteClient:
    def __init__(self, session, base):
        self.session, self.base = session, base
        self.recent_errors = collections.deque(maxlen=50)
        self.prices = {}

    async def quote(self, symbol):
        async with self.session.get(f"{self.base}/quote/{symbol}") as resp:
            if resp.status != 200:
                raise UpstreamError(symbol, resp.status)
            return (await resp.json())["price"]

    async def poll(self, symbol):
        while True:
            try:
                self.prices[symbol] = await self.quote(symbol)
            except UpstreamError as err:
                self.recent_errors.append(err)
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.05)


async def main():
    loop = asyncio.get_running_loop()
    app = web.Application()
    app.router.add_get("/quote/{symbol}", quote_handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4))
    client = QuoteClient(session, f"http://127.0.0.1:{port}")
    symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", *sorted(HALTED)]
    pollers = [asyncio.create_task(client.poll(s), name=f"poll-{s}") for s in symbols]
    while len(client.recent_errors) < len(HALTED) or len(client.prices) < 6:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in pollers:
            task.cancel()
        await session.close()
        await runner.cleanup()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
