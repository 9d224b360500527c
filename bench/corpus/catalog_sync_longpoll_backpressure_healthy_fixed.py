"""A healthy catalog sync: a long-polled export, a rate-limited crawl held back by a slow indexer, a cache that refreshes.

Modelled on DevExpress/testcafe-hammerhead #347: "Timeout of 25s is too small for `hanged`
XHRs": the proxy aborted, as hung, a long-polling request with which a page waited about
50 s for the server to build a database; the wait was the application working, and cutting
it short is what broke the page.

The sync service submits a catalog export and long-polls for it: the export server holds
each poll for up to 5 s and the export takes 9 s, so the client sits in a read of a live
connection for seconds at a time while the server's job task sleeps and its poll handler
waits on the job's event.  Six crawlers fetch supplier pages under a rate limit of two
requests a second (a semaphore whose permits are given back by timers a second after each
request), so most of them wait seconds for a permit, and hand the pages to a single indexer
through a queue of two.  Every six pages the indexer commits its batch (4 s), and while the
price rules are reloaded (2 s every 6 s) it waits on the rules' ready event: meanwhile the
queue fills and crawlers wait in ``put``.  The page scheduler waits in ``put`` on the full
frontier, and an alerting task waits on a condition for the next rules version.  There is no
bug in either file; the twin's export is faster and its polls shorter, its rate limit
higher, its commits quicker and its rules reload sooner.
"""
import asyncio
import itertools
import json
import signal

HOLD_SECONDS = 3.0
EXPORT_SECONDS = 5.0
RATE_PER_SECOND = 4
BATCH_PAGES, COMMIT_SECONDS = 6, 1.5
RULES_EVERY, RULES_SECONDS = 4.0, 1.0


class ExportServer:
    """Runs catalog exports in the background; ``WAIT`` holds the request until done or HOLD_SECONDS pass."""

    def __init__(self):
        self.jobs = {}
        self.ids = itertools.count(1)
        self.running = set()

    async def run_job(self, job_id):
        await asyncio.sleep(EXPORT_SECONDS)
        self.jobs[job_id]["rows"] = 12_000 + job_id
        self.jobs[job_id]["done"].set()

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                verb, _, arg = line.decode().strip().partition(" ")
                if verb == "SUBMIT":
                    job_id = next(self.ids)
                    self.jobs[job_id] = {"done": asyncio.Event(), "rows": 0}
                    task = asyncio.create_task(self.run_job(job_id))
                    self.running.add(task)
                    task.add_done_callback(self.running.discard)
                    writer.write(f"JOB {job_id}\n".encode())
                elif verb == "WAIT":
                    job = self.jobs[int(arg)]
                    try:
                        await asyncio.wait_for(job["done"].wait(), HOLD_SECONDS)
                        writer.write(f"DONE {arg} {job['rows']}\n".encode())
                    except asyncio.TimeoutError:
                        writer.write(f"PENDING {arg}\n".encode())
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def export_catalog(port, exports):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"SUBMIT catalog\n")
        job_id = (await reader.readline()).split()[1].decode()
        while True:
            writer.write(f"WAIT {job_id}\n".encode())
            status, *rest = (await reader.readline()).decode().split()
            if status == "DONE":
                exports.append(int(rest[1]))
                break
        del exports[:-10]
        await asyncio.sleep(1.0)


async def supplier_api(reader, writer):
    try:
        while line := await reader.readline():
            page = int(line.split()[1].rsplit(b"/", 1)[1])
            await asyncio.sleep(0.05)
            writer.write(json.dumps({"page": page, "items": [page * 10 + i for i in range(5)]}).encode() + b"\n")
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class RateLimiter:
    """At most ``rate`` requests in any second: each request's permit comes back a second later."""

    def __init__(self, rate):
        self.slots = asyncio.Semaphore(rate)

    async def acquire(self):
        await self.slots.acquire()
        asyncio.get_running_loop().call_later(1.0, self.slots.release)


async def schedule_pages(frontier):
    for page in itertools.count(1):
        await frontier.put(page)


async def crawl(port, frontier, limiter, parsed):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        page = await frontier.get()
        await limiter.acquire()
        writer.write(f"GET /products/{page}\n".encode())
        await parsed.put(json.loads(await reader.readline()))


class PriceRules:
    def __init__(self):
        self.version = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Condition()

    async def reload_loop(self):
        while True:
            self.ready.clear()
            await asyncio.sleep(RULES_SECONDS)  # the rules service is slow to export them
            async with self.changed:
                self.version += 1
                self.changed.notify_all()
            self.ready.set()
            await asyncio.sleep(RULES_EVERY - RULES_SECONDS)


class Indexer:
    def __init__(self, rules):
        self.rules = rules
        self.batch = []
        self.indexed = 0

    async def run(self, parsed):
        while True:
            page = await parsed.get()
            await self.rules.ready.wait()
            self.batch.append([(item, self.rules.version) for item in page["items"]])
            if len(self.batch) >= BATCH_PAGES:
                await asyncio.sleep(COMMIT_SECONDS)  # the search index's bulk commit
                self.indexed += sum(map(len, self.batch))
                self.batch.clear()


async def price_alerts(rules, alerts):
    seen = 0
    while True:
        async with rules.changed:
            await rules.changed.wait_for(lambda: rules.version > seen)
            seen = rules.version
        alerts.append(seen)
        del alerts[:-10]


async def main():
    export_server = ExportServer()
    exports_listener = await asyncio.start_server(export_server.handle, "127.0.0.1", 0)
    supplier_listener = await asyncio.start_server(supplier_api, "127.0.0.1", 0)
    supplier_port = supplier_listener.sockets[0].getsockname()[1]
    rules, limiter = PriceRules(), RateLimiter(RATE_PER_SECOND)
    frontier, parsed = asyncio.Queue(maxsize=10), asyncio.Queue(maxsize=2)
    indexer, exports, alerts = Indexer(rules), [], []
    tasks = [asyncio.create_task(rules.reload_loop()), asyncio.create_task(schedule_pages(frontier)),
             asyncio.create_task(indexer.run(parsed)),
             asyncio.create_task(price_alerts(rules, alerts)),
             asyncio.create_task(export_catalog(exports_listener.sockets[0].getsockname()[1], exports))]
    tasks += [asyncio.create_task(crawl(supplier_port, frontier, limiter, parsed)) for _ in range(6)]
    await asyncio.sleep(3.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
