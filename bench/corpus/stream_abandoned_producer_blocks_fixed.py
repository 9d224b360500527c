"""A paging scraper exposed as an async generator; a caller that stops early leaves its fetcher blocked.

Modelled on kalil0321/ats-scrapers #69: "eures, bundesagentur: add streaming variant for
memory-bound singletons": the review of the streaming variant pointed out that a consumer
that is cancelled or exits early leaves the background producer waiting on a full bounded
queue, and that the stream must stop its producer when the consumer goes away.

Here ``stream_jobs`` starts ``fetch_all`` as a background task that pages through a job
board into a bounded queue and yields the queued jobs.  ``first_match`` returns as soon as
it finds a match; the generator is closed at the ``yield`` and nothing stops the fetcher,
which fills the queue and waits in ``put`` forever (one per search).  The fix cancels the
fetcher in the generator's ``finally``.
"""
import asyncio
import signal

background = set()


class Board:
    def __init__(self, pages):
        self.pages = pages
        self.requests = 0

    async def page(self, n):
        self.requests += 1
        await asyncio.sleep(0.005)
        return [f"job-{n}-{i} {'python' if (n * 10 + i) % 7 == 3 else 'java'}" for i in range(10)]


async def fetch_all(board, queue):
    for n in range(board.pages):
        for job in await board.page(n):
            await queue.put(job)
    await queue.put(None)


async def stream_jobs(board):
    queue = asyncio.Queue(maxsize=16)
    fetcher = asyncio.create_task(fetch_all(board, queue))
    background.add(fetcher)
    fetcher.add_done_callback(background.discard)
    try:
        while (job := await queue.get()) is not None:
            yield job
    finally:
        fetcher.cancel()


async def first_match(board, keyword):
    async for job in stream_jobs(board):
        if keyword in job:
            return job
    return None


async def search_handler(searches, board, results):
    while True:
        keyword = await searches.get()
        results.append(await first_match(board, keyword))


async def metrics(board, samples):
    while True:
        samples.append(board.requests)
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    board = Board(pages=500)
    searches, results, samples = asyncio.Queue(), [], []
    tasks = [asyncio.create_task(search_handler(searches, board, results)) for _ in range(3)]
    tasks.append(asyncio.create_task(metrics(board, samples)))
    for keyword in ("python", "java"):
        searches.put_nowait(keyword)
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
