"""A newsletter service whose render pool loses a wake-up when a resize retires the worker it just notified.

Modelled on python/cpython #112202: "Race between asyncio Condition.notify() and
Task.cancel() may result in lost wakeups": ``notify(1)`` hands the wake-up to one waiting
task by resolving its waiter future; if that task is cancelled before it runs, it leaves
``wait()`` with ``CancelledError`` and the notification is gone, so none of the other
waiting tasks wakes up for the work that was announced.

Here ``RenderPool`` keeps its idle workers' waiter futures in FIFO order; ``submit``
queues a job and resolves the first waiter, and ``resize`` retires surplus workers by
cancelling the longest-idle ones.  The operator shrinks the pool from 4 to 2 workers over
the admin connection; the scheduler applies the new size when it next wakes, which is when
the daily digest falls due, right after submitting it.  The worker that was notified for
the digest is the first one retired: its cancellation arrives before it runs, it removes
nothing (its waiter was already popped) and exits.  The digest stays queued while the two
remaining workers wait on their waiter futures, and ``deliver_digest`` waits for the
rendered digest forever.  Healthy: the status client polls the pool every 0.3 s, the admin
connection idles, the scheduler sleeps until tomorrow.  The fix (as in CPython's) passes a
notification on to the next waiter when a notified worker is cancelled.
"""
import asyncio
import collections
import json
import signal


class RenderPool:
    def __init__(self, size):
        self.jobs = collections.deque()
        self.waiters = collections.deque()  # idle workers' waiter futures, longest idle first
        self.idle = {}  # worker task -> its waiter, until that worker runs again
        self.workers = set()
        self.done = 0
        for n in range(size):
            self.workers.add(asyncio.create_task(self._worker(n), name=f"render-{n}"))

    def submit(self, render, *args):
        result = asyncio.get_running_loop().create_future()
        self.jobs.append((render, args, result))
        self._notify_one()
        return result

    def _notify_one(self):
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def resize(self, size):
        for task in list(self.idle)[:max(0, len(self.workers) - size)]:
            task.cancel()

    async def _worker(self, n):
        me = asyncio.current_task()
        while True:
            while not self.jobs:
                waiter = asyncio.get_running_loop().create_future()
                self.waiters.append(waiter)
                self.idle[me] = waiter
                try:
                    await waiter
                except asyncio.CancelledError:  # retired by resize()
                    if waiter in self.waiters:
                        self.waiters.remove(waiter)
                    elif not waiter.cancelled():  # notified, then retired before it ran: pass it on
                        self._notify_one()
                    self.workers.discard(me)
                    raise
                finally:
                    self.idle.pop(me, None)
            render, args, result = self.jobs.popleft()
            try:
                result.set_result(await render(*args))
            except Exception as exc:
                result.set_exception(exc)
            self.done += 1


class Config:
    def __init__(self):
        self.pool_size = 4
        self.pending_size = None


async def render_digest(edition):
    await asyncio.sleep(0.1)  # template rendering, image inlining
    return f"<html><h1>{edition} digest</h1></html>"


async def deliver_digest(rendered, outbox):
    html = await rendered
    outbox.append(html)


async def scheduler(pool, config, outbox, tasks):
    await asyncio.sleep(1.2)  # sleep until the digest is due
    tasks.append(asyncio.create_task(deliver_digest(pool.submit(render_digest, "daily"), outbox)))
    if config.pending_size is not None:  # apply a reloaded pool size once the due jobs are queued
        config.pool_size, config.pending_size = config.pending_size, None
        pool.resize(config.pool_size)
    await asyncio.sleep(86400)  # next digest: tomorrow


async def admin(pool, config, reader, writer):
    while line := await reader.readline():
        cmd, key, value = line.decode().split()
        if cmd == "SET" and key == "pool_size":
            config.pending_size = int(value)
        writer.write(json.dumps({"workers": len(pool.workers), "queued": len(pool.jobs),
                                 "done": pool.done}).encode() + b"\n")
        await writer.drain()
    writer.close()


async def operator_console(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.5)
    writer.write(b"SET pool_size 2\n")
    await reader.readline()
    await reader.read()  # stay connected until the service goes away


async def status_client(port, samples):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"GET status all\n")
        samples.append(json.loads(await reader.readline()))
        del samples[:-20]
        await asyncio.sleep(0.3)


async def main():
    pool, config, outbox, samples, tasks = RenderPool(4), Config(), [], [], []
    server = await asyncio.start_server(lambda r, w: admin(pool, config, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tasks += [asyncio.create_task(scheduler(pool, config, outbox, tasks)),
              asyncio.create_task(operator_console(port)),
              asyncio.create_task(status_client(port, samples))]
    await asyncio.sleep(2.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
