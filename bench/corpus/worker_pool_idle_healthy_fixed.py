"""A busy but healthy job service: every long wait in it is legitimate and must not be reported.

Modelled on pingcap/tidb #14538: "test: add some goroutines to leak check white list":
a leak check failed about one CI build in five on background goroutines of gRPC and
goleveldb that were idle by design and ended later; they were reported as leaks.

The service has workers idle on a job queue, a batch flusher waiting on a condition
between batches, a shutdown watcher waiting on the stop event, a config watcher asleep,
an API server with clients on keep-alive connections, and a rate limiter (semaphore)
and a stats lock taken briefly.  There is no bug in either file; the twin is the same
service with more workers and clients that pause longer between requests.
"""
import asyncio
import signal


class Service:
    def __init__(self, workers):
        self.jobs = asyncio.Queue()
        self.limiter = asyncio.Semaphore(2)
        self.stats_lock = asyncio.Lock()
        self.batch = []
        self.batch_ready = asyncio.Condition()
        self.stats = {"jobs": 0, "batches": 0, "requests": 0}
        self.workers = [asyncio.create_task(self.work()) for _ in range(workers)]

    async def work(self):
        while True:
            job = await self.jobs.get()
            async with self.limiter:
                await asyncio.sleep(job)
            async with self.stats_lock:
                self.stats["jobs"] += 1
            async with self.batch_ready:
                self.batch.append(job)
                self.batch_ready.notify()
            self.jobs.task_done()

    async def flush_batches(self):
        while True:
            async with self.batch_ready:
                await self.batch_ready.wait_for(lambda: len(self.batch) >= 3)
                self.batch.clear()
            self.stats["batches"] += 1

    async def handle(self, reader, writer):
        while line := await reader.readline():
            self.stats["requests"] += 1
            self.jobs.put_nowait(0.02)
            writer.write(b"accepted " + line)
            await writer.drain()
        writer.close()


async def client(port, pause, bursts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(bursts):
        writer.write(b"job %d\n" % i)
        await writer.drain()
        await reader.readline()
        await asyncio.sleep(pause)
    await reader.read()


async def watch_config(service):
    while True:
        await asyncio.sleep(5.0)
        service.stats["config_checks"] = service.stats.get("config_checks", 0) + 1


async def shutdown_watcher(stop, service):
    await stop.wait()
    for task in service.workers:
        task.cancel()


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    service = Service(workers=8)
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(service.flush_batches()), asyncio.create_task(watch_config(service)),
             asyncio.create_task(shutdown_watcher(stop, service))]
    tasks += [asyncio.create_task(client(port, 0.5, 3)) for _ in range(3)]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
