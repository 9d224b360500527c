"""A memory-consolidation worker pool whose jobs run long, slow but advancing stages: long waits, no hang.

Modelled on vectorize-io/hindsight #3720: "fix(worker): detect stuck tasks by stage
progress": a large consolidation kept advancing through its LLM batches but crossed the
worker's total-age threshold, so the stuck-task watchdog raised false STUCK alerts and
dumped stacks for a job that was working.  The fix judges a task by how long its current
stage has gone without progress, not by its age.

Here nothing is hung.  Three ``Worker.run`` tasks take jobs from ``JobQueue`` through
``Condition.wait_for`` with no timeout; a job arrives at start and then with every new
memory bank the feed server announces (every 6 s) on a long-lived connection that
``feed_listener`` reads, idle in between.  A job loads its memory bank in a thread
(``asyncio.to_thread``, 3.5 s), then summarises it in four LLM batches through a
``Semaphore(2)``: the two holders stream tokens from the local model server for about 2 s
while the other batches wait their turn, and the worker waits on the gather of its batches.
``StageWatch.run`` checks every second that no running job has spent more than 20 s in one
stage.  The twin changes only the pace: a bank every 4 s, 2.5 s loads, three LLM permits.
"""
import asyncio
import collections
import itertools
import logging
import signal
import time

log = logging.getLogger("consolidator")

FEED_EVERY = 6.0
RECALL_SECONDS = 3.5
LLM_PERMITS = 2
TOKENS_PER_BATCH, TOKEN_EVERY = 14, 0.15
BATCHES = 4
STAGE_BUDGET = 20.0


def load_memory_bank(bank, seconds):
    """Blocking read of a bank's pages from the local store (slow disk, done in a thread)."""
    pages = []
    for page in range(10):
        time.sleep(seconds / 10)
        pages.append(f"{bank}/page-{page}")
    return pages


class Job:
    def __init__(self, job_id, bank):
        self.job_id, self.bank = job_id, bank
        self.stage, self.stage_started = "queued", time.monotonic()
        self.summaries = []

    def enter(self, stage):
        self.stage, self.stage_started = stage, time.monotonic()


class JobQueue:
    def __init__(self):
        self.jobs = collections.deque()
        self.ready = asyncio.Condition()
        self.ids = itertools.count(1)

    async def submit(self, bank):
        async with self.ready:
            self.jobs.append(Job(next(self.ids), bank))
            self.ready.notify(1)

    async def take(self):
        async with self.ready:
            await self.ready.wait_for(lambda: self.jobs)
            return self.jobs.popleft()


class LlmClient:
    def __init__(self, port):
        self.port = port
        self.permits = asyncio.Semaphore(LLM_PERMITS)

    async def complete(self, prompt):
        async with self.permits:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(f"COMPLETE {TOKENS_PER_BATCH} {prompt}\n".encode())
                tokens = []
                while (line := await reader.readline()) not in (b"", b"END\n"):
                    tokens.append(line.decode().strip())
                return " ".join(tokens)
            finally:
                writer.close()


async def model_server(reader, writer):
    """The local model: streams one token every TOKEN_EVERY seconds."""
    try:
        _, count, prompt = (await reader.readline()).decode().split(" ", 2)
        for n in range(int(count)):
            writer.write(f"tok{n}\n".encode())
            await writer.drain()
            await asyncio.sleep(TOKEN_EVERY)
        writer.write(b"END\n")
        await writer.drain()
    except (OSError, ValueError):
        pass
    finally:
        writer.close()


class Worker:
    def __init__(self, name, queue, llm, running, finished):
        self.name, self.queue, self.llm = name, queue, llm
        self.running, self.finished = running, finished

    async def run(self):
        while True:
            job = await self.queue.take()
            self.running[job.job_id] = job
            try:
                await self.consolidate(job)
            finally:
                del self.running[job.job_id]
            self.finished.append((job.job_id, job.bank, len(job.summaries)))
            del self.finished[:-20]

    async def consolidate(self, job):
        job.enter("recall")
        pages = await asyncio.to_thread(load_memory_bank, job.bank, RECALL_SECONDS)
        job.enter("summarise")
        batches = [pages[n::BATCHES] for n in range(BATCHES)]
        job.summaries = await asyncio.gather(*(self.llm.complete(",".join(batch)) for batch in batches))
        job.enter("store")
        await asyncio.sleep(0.05)


class StageWatch:
    """Flags a job only when its current stage has made no progress for STAGE_BUDGET seconds."""

    def __init__(self, running):
        self.running = running
        self.alerts = []

    async def run(self):
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for job in list(self.running.values()):
                if now - job.stage_started > STAGE_BUDGET:
                    self.alerts.append((job.job_id, job.stage))
                    log.warning("job %s stuck in stage %s", job.job_id, job.stage)


async def feed_server(reader, writer):
    """Announces a new memory bank every FEED_EVERY seconds on a long-lived connection."""
    try:
        await reader.readline()
        for n in itertools.count(1):
            await asyncio.sleep(1.0 if n == 1 else FEED_EVERY)
            writer.write(f"BANK user-{n:04d}\n".encode())
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def feed_listener(port, queue):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"SUBSCRIBE banks\n")
    while line := await reader.readline():
        _, bank = line.decode().split()
        await queue.submit(bank)


async def main():
    logging.basicConfig(level=logging.WARNING)
    model = await asyncio.start_server(model_server, "127.0.0.1", 0)
    feed = await asyncio.start_server(feed_server, "127.0.0.1", 0)
    queue, running, finished = JobQueue(), {}, []
    llm = LlmClient(model.sockets[0].getsockname()[1])
    watch = StageWatch(running)
    tasks = [asyncio.create_task(Worker(f"worker-{n}", queue, llm, running, finished).run()) for n in range(3)]
    tasks += [asyncio.create_task(watch.run()),
              asyncio.create_task(feed_listener(feed.sockets[0].getsockname()[1], queue))]
    await queue.submit("user-0000")
    await asyncio.sleep(1.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    model.close()
    feed.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
