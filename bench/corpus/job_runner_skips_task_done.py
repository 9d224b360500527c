"""A job runner's error path skips ``task_done()``, so the batch that waits on ``queue.join()`` hangs.

Modelled on FlippFuzz/ai-sub #2, "Async io migration": in its runner loop, when looking up a job's
state failed after ``queue.get()`` succeeded, a ``continue`` in the ``except`` block bypassed the
``task_done()`` at the end of the loop body, leaving the item unacknowledged; the review noted
that any ``queue.join()`` downstream then waits forever.

Mechanism: a transcription service queues a batch of media files; three runners take jobs,
look up each job's record and process it.  One record is missing, the lookup raises, the
runner logs it and goes on to the next job without marking this one done.  Every runner is
soon idle on ``get()``, the queue is empty, and the batch's ``join()`` never returns.  A status
reporter ticks along, and the runners themselves are idle by design.

Fix: mark the item done on the error path too.
"""
import asyncio
import logging
import signal

log = logging.getLogger("runner")


class JobStore:
    def __init__(self, records):
        self._records = records

    async def get_job(self, job_id):
        await asyncio.sleep(0.01)
        return self._records[job_id]  # KeyError for a record that was deleted


class Runner:
    def __init__(self, name, queue, store, done):
        self.name, self.queue, self.store, self.done = name, queue, store, done

    async def run(self):
        while True:
            job_id = await self.queue.get()
            try:
                job = await self.store.get_job(job_id)
            except Exception:
                log.warning("%s: cannot load job %s", self.name, job_id)
                continue
            await asyncio.sleep(0.02)  # transcribe
            self.done.append(job["file"])
            self.queue.task_done()


async def submit_batch(queue, job_ids, finished):
    for job_id in job_ids:
        await queue.put(job_id)
    await queue.join()
    finished.set()


async def status_reporter(done, beats):
    while True:
        await asyncio.sleep(0.2)
        beats.append(len(done))


async def main():
    records = {n: {"file": f"episode-{n}.mp4"} for n in range(12) if n != 7}
    queue, store, done, beats = asyncio.Queue(), JobStore(records), [], []
    finished = asyncio.Event()
    runners = [Runner(f"runner-{i}", queue, store, done) for i in range(3)]
    tasks = [asyncio.create_task(r.run(), name=r.name) for r in runners]
    tasks.append(asyncio.create_task(status_reporter(done, beats), name="status"))
    tasks.append(asyncio.create_task(submit_batch(queue, list(range(12)), finished), name="batch"))
    while len(done) < 11 and len(beats) < 50:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
