"""A blocking fetcher thread serves the loop's requests; when it crashes, the waiting requests hang.

Modelled on notatallshaw/nab #364, "fix shutdown raising "Event loop is closed" after fetcher
crash": a library runs its network fetches on a dedicated thread and hands each result back to
the asyncio side with ``call_soon_threadsafe``; when that thread died, requests already handed to
it were never answered, so their waiters hung instead of seeing the crash.

Mechanism: a price cache asks a feed thread for quotes.  The feed thread reads a feed file line by
line (a blocking client library); a malformed line makes its parser raise, the exception ends the
thread, and the futures it had accepted stay pending in ``FeedClient._pending``.  The two refresh
tasks awaiting them wait forever.  A pair of idle HTTP-like workers on a job queue, and a ticker,
keep running and must stay quiet.

Fix: the thread catches what ends it and fails every pending future with it before exiting.
"""
import asyncio
import itertools
import queue
import signal
import threading


class FeedClient:
    """Fetches quotes on a thread of its own; the loop side awaits futures."""

    def __init__(self, loop, lines):
        self._loop = loop
        self._lines = lines
        self._requests = queue.Queue()
        self._pending = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._serve, name="quote-feed", daemon=True)
        self._thread.start()

    def _serve(self):
        for raw in self._lines:
            req_id, symbol = self._requests.get()
            try:
                price = float(raw.split(",")[1])  # a malformed line raises here and ends the thread
            except Exception as exc:
                for fut in self._pending.values():
                    self._loop.call_soon_threadsafe(fut.set_exception, exc)
                raise
            fut = self._pending.pop(req_id)
            self._loop.call_soon_threadsafe(fut.set_result, (symbol, price))

    async def quote(self, symbol):
        req_id = next(self._ids)
        fut = self._loop.create_future()
        self._pending[req_id] = fut
        self._requests.put((req_id, symbol))
        return await fut


async def refresh(client, symbol, prices):
    while True:
        prices[symbol] = await client.quote(symbol)
        await asyncio.sleep(0.05)


async def http_worker(jobs):
    while True:
        job = await jobs.get()
        job.set_result("ok")
        jobs.task_done()


async def ticker(beats):
    while True:
        await asyncio.sleep(0.1)
        beats.append(1)


async def main():
    loop = asyncio.get_running_loop()
    feed = [f"{n},{100 + n}.5" for n in range(6)] + ["7;garbled"] + [f"{n},1.0" for n in range(8, 20)]
    client, prices, jobs, beats = FeedClient(loop, feed), {}, asyncio.Queue(), []
    tasks = [asyncio.create_task(refresh(client, s, prices), name=f"refresh-{s}") for s in ("ACME", "INIT")]
    tasks += [asyncio.create_task(http_worker(jobs), name=f"http-{i}") for i in range(2)]
    tasks.append(asyncio.create_task(ticker(beats), name="ticker"))
    while client._thread.is_alive() and len(beats) < 50:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
