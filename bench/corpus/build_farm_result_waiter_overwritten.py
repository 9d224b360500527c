"""A build service whose long-poll for a job's result loses its wake-up when a second client waits on the same job.

Modelled on modelcontextprotocol/python-sdk #2535: "InMemoryTaskStore.wait_for_update has
lost-wakeup races (concurrent waiters, notify-before-wait)": each call to
``wait_for_update`` stored a fresh event for the task id, replacing the one an earlier
caller was waiting on, and ``notify_update`` set only the event currently stored, so the
first of two concurrent waiters was never woken, even after the task had finished.

Here ``JobStore.wait_for_update`` does the same.  ``ci_client`` submits builds and asks for
each result (``RESULT``), which ``ApiServer.handle`` answers by waiting for updates until
the job is finished.  About 1.2 s in it submits the release build; when that build reaches
its compile step, ``release_bot`` (told by the service's event feed) asks for the same
result on its own connection, and its wait replaces the event ``ci_client``'s handler was
waiting on.  The build completes 0.5 s later: the bot gets the result, but ``ci_client``'s
handler waits on an event nobody holds any more, and ``ci_client`` waits for the reply for
good.  The fix shares one event per job among all of its waiters.
"""
import asyncio
import itertools
import signal

TERMINAL = ("completed", "failed")


class Job:
    def __init__(self, job_id, name, duration):
        self.id, self.name, self.duration = job_id, name, duration
        self.status = "queued"
        self.result = None


class JobStore:
    def __init__(self):
        self.jobs = {}
        self.ids = itertools.count(1)
        self._update_events = {}
        self.subscribers = set()

    def create(self, name, duration):
        job = Job(next(self.ids), name, duration)
        self.jobs[job.id] = job
        return job

    def update(self, job_id, status, result=None):
        job = self.jobs[job_id]
        job.status, job.result = status, result
        for feed in self.subscribers:
            feed.put_nowait(f"{status} {job_id} {job.name}")
        self.notify_update(job_id)

    def notify_update(self, job_id):
        event = self._update_events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_for_update(self, job_id):
        event = self._update_events[job_id] = asyncio.Event()
        await event.wait()


async def build_worker(store, queue, finished):
    while True:
        job = await queue.get()
        store.update(job.id, "running")
        await asyncio.sleep(0.1)  # checkout and dependency restore
        store.update(job.id, "compiling")
        await asyncio.sleep(job.duration)
        store.update(job.id, "completed", f"{job.name}-{job.id}.tar.gz")
        finished.append(job.id)
        del finished[:-50]


class ApiServer:
    def __init__(self, store, queue):
        self.store, self.queue = store, queue

    async def handle(self, reader, writer):
        while line := await reader.readline():
            verb, *args = line.decode().split()
            if verb == "SUBMIT":
                job = self.store.create(args[0], float(args[1]))
                self.queue.put_nowait(job)
                writer.write(f"job {job.id}\n".encode())
            elif verb == "RESULT":
                job = self.store.jobs[int(args[0])]
                while job.status not in TERMINAL:
                    await self.store.wait_for_update(job.id)
                writer.write(f"{job.id} {job.status} {job.result}\n".encode())
            elif verb == "EVENTS":
                await self.feed(writer)
                break
            await writer.drain()
        writer.close()

    async def feed(self, writer):
        feed = asyncio.Queue()
        self.store.subscribers.add(feed)
        try:
            while True:
                writer.write((await feed.get()).encode() + b"\n")
                await writer.drain()
        finally:
            self.store.subscribers.discard(feed)


async def request(reader, writer, text):
    writer.write(text.encode() + b"\n")
    return (await reader.readline()).decode().split()


async def ci_client(port, artifacts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    builds = [("api", 0.2), ("web", 0.25), ("worker", 0.2), ("release", 0.5), ("api", 0.2), ("web", 0.2)]
    for name, duration in itertools.cycle(builds):
        _, job_id = await request(reader, writer, f"SUBMIT {name} {duration}")
        artifacts.append(await request(reader, writer, f"RESULT {job_id}"))
        del artifacts[:-20]
        await asyncio.sleep(0.05)


async def nightly_scheduler(port, artifacts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        _, job_id = await request(reader, writer, "SUBMIT docs 0.15")
        artifacts.append(await request(reader, writer, f"RESULT {job_id}"))
        del artifacts[:-20]
        await asyncio.sleep(0.4)


async def release_bot(port, published):
    feed_reader, feed_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    feed_writer.write(b"EVENTS\n")
    while line := await feed_reader.readline():
        status, job_id, name = line.decode().split()
        if status == "compiling" and name == "release":
            published.append(await request(reader, writer, f"RESULT {job_id}"))


async def main():
    loop = asyncio.get_running_loop()
    store, queue = JobStore(), asyncio.Queue()
    finished, ci_artifacts, docs, published = [], [], [], []
    api = ApiServer(store, queue)
    server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(build_worker(store, queue, finished)) for _ in range(2)]
    tasks += [asyncio.create_task(release_bot(port, published))]
    await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(ci_client(port, ci_artifacts)),
              asyncio.create_task(nightly_scheduler(port, docs))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
