"""Queue workers that turn a cancellation into "job failed, next job", so stop() never returns.

Modelled on python-websockets/websockets #672: "asyncio.CancelledError replaced with
InvalidMessage": a broad ``except`` around a step caught the cancellation and raised
an ordinary error instead, and the task that was being cancelled just tried again.

Here each ``Worker.run`` wraps one job in a catch-all that logs the failure and goes
on to the next job; the cancellation that ``WorkerPool.stop`` sends lands in a job and
is logged as a failure, so ``stop`` waits forever in ``gather`` for workers that are
idle on their queue again.  The fix lets ``CancelledError`` through.
"""
import asyncio
import signal


class Worker:
    def __init__(self, jobs, failures):
        self.jobs = jobs
        self.failures = failures
        self.done = 0

    async def run(self):
        while True:
            job = await self.jobs.get()
            try:
                await asyncio.sleep(job)  # the job's I/O
                self.done += 1
            except BaseException as exc:
                self.failures.append(repr(exc))
            finally:
                self.jobs.task_done()


class WorkerPool:
    def __init__(self, size):
        self.jobs = asyncio.Queue()
        self.failures = []
        self.workers = [Worker(self.jobs, self.failures) for _ in range(size)]
        self.tasks = [asyncio.create_task(w.run()) for w in self.workers]

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        print("pool stopped", flush=True)


async def scale_down(pool):
    for _ in range(len(pool.tasks)):
        pool.jobs.put_nowait(0.5)
    await asyncio.sleep(0.1)
    await pool.stop()


async def health(state):
    while True:
        state["ok"] += 1
        await asyncio.sleep(0.5)


async def main():
    state = {"ok": 0}
    checker = asyncio.create_task(health(state))
    pool = WorkerPool(3)
    scaler = asyncio.create_task(scale_down(pool))
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del checker, scaler


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
