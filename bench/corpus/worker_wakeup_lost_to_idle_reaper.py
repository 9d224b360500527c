"""A worker pool wakes an idle worker that its reaper cancels in the same pass; the job is never run.

Modelled on CPython gh-112202: "Race between asyncio Condition.notify() and
Task.cancel() may result in lost wakeups": a task woken by ``notify(1)`` but cancelled
before it resumed swallowed the notification, so no waiting task returned from
``wait()`` and the work it was woken for sat there, with the other waiters asleep.

Here ``WorkerPool`` keeps its idle workers' futures in FIFO order; ``submit`` resolves
the first one.  The housekeeping pass resubmits failed jobs and then cancels idle
workers beyond ``max_idle`` that have idled past the timeout, longest idle first.  The
worker that has idled longest is also the first in the wake-up order, so the pass wakes
it for the retried job and cancels it before it runs; its ``CancelledError`` handler
drops the wake-up.  The job stays queued, two workers wait on their futures, and the
batch waits for the job's result.  The fix hands a wake-up that arrived with the
cancellation on to the next idle worker.
"""
import asyncio
import collections
import signal

IDLE_TIMEOUT = 0.2
TICK = 0.5
BATCH_EVERY = 2.0


class Job:
    def __init__(self, name, seconds, fail_first=False):
        self.name = name
        self.seconds = seconds
        self.fail_first = fail_first
        self.attempts = 0
        self.result = asyncio.get_running_loop().create_future()

    async def run(self):
        self.attempts += 1
        await asyncio.sleep(self.seconds)
        if self.fail_first and self.attempts == 1:
            raise ConnectionError(f"{self.name}: upstream reset")
        return f"{self.name}: ok"


class WorkerPool:
    def __init__(self, max_workers, max_idle):
        self.max_workers = max_workers
        self.max_idle = max_idle
        self.jobs = collections.deque()
        self.retries = []
        self.waiters = collections.deque()  # idle workers' wake-up futures, first idle first
        self.idle_since = {}
        self.workers = set()
        self.reaped = 0

    def submit(self, job):
        self.jobs.append(job)
        self._wake_one()

    def _wake_one(self):
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        if len(self.workers) < self.max_workers:
            task = asyncio.create_task(self.worker())
            self.workers.add(task)
            task.add_done_callback(self.workers.discard)

    async def _idle(self):
        me = asyncio.current_task()
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.idle_since[me] = asyncio.get_running_loop().time()
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self.waiters:
                self.waiters.remove(fut)
            raise
        finally:
            self.idle_since.pop(me, None)

    async def worker(self):
        while True:
            while self.jobs:
                job = self.jobs.popleft()
                try:
                    job.result.set_result(await job.run())
                except ConnectionError:
                    self.retries.append(job)  # resubmitted by the next housekeeping pass
            await self._idle()

    def housekeeping(self):
        for job in self.retries:
            self.submit(job)
        self.retries.clear()
        now = asyncio.get_running_loop().time()
        idle = sorted(self.idle_since.items(), key=lambda item: item[1])
        for task, since in idle[:max(0, len(idle) - self.max_idle)]:
            if now - since > IDLE_TIMEOUT:
                self.reaped += 1
                task.cancel()


async def run_housekeeping(pool):
    while True:
        await asyncio.sleep(TICK)
        pool.housekeeping()


async def run_batches(pool, results):
    n = 0
    while True:
        n += 1
        jobs = [Job(f"b{n}-thumbs", 0.05, fail_first=True), Job(f"b{n}-index", 0.1), Job(f"b{n}-mail", 0.15)]
        for job in jobs:
            pool.submit(job)
        for job in jobs:
            results.append(await job.result)
        del results[:-30]
        await asyncio.sleep(BATCH_EVERY)


async def main():
    pool = WorkerPool(max_workers=3, max_idle=2)
    results = []
    tasks = [asyncio.create_task(run_batches(pool, results))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(run_housekeeping(pool)))
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
