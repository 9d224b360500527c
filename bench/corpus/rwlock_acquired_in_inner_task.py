"""A reader-writer lock acquired in a task of its own, which the lock then records as its owner.

Modelled on aiorwlock #409, "Lock not properly acquired when using ``asyncio.wait_for()``":
``wait_for`` ran the coroutine it was given in a task of its own (up to Python 3.11), so a lock
that records ``current_task()`` as its owner recorded that short-lived inner task; the caller's
``release()`` then failed the ownership check and the lock was never released.

Mechanism: a configuration service serves reads under the read side of a reader-writer lock and
reloads the configuration under the write side, bounding the wait with ``wait_for`` around
``shield()`` (so that a timeout does not cancel a half-finished acquire), which runs the acquire in
an inner task on every Python version.  The first reload's ``release_write()`` raises RuntimeError
in the reload task, which dies; the lock stays held by a finished task and the three request
handlers wait for the read lock forever.

Fix: bound the wait with ``async with asyncio.timeout()``, which runs the acquire in the caller's
own task.
"""
import asyncio
import collections
import logging
import signal


class RWLock:
    def __init__(self):
        self._readers = 0
        self._writer = None  # the task holding the write side
        self._waiters = collections.deque()

    async def _wait(self):
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _wake_all(self):
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def acquire_read(self):
        while self._writer is not None:
            await self._wait()
        self._readers += 1

    def release_read(self):
        self._readers -= 1
        if not self._readers:
            self._wake_all()

    async def acquire_write(self):
        while self._writer is not None or self._readers:
            await self._wait()
        self._writer = asyncio.current_task()

    def release_write(self):
        if self._writer is not asyncio.current_task():
            raise RuntimeError("release_write() by a task that does not hold the write lock")
        self._writer = None
        self._wake_all()


async def serve_reads(name, lock, config, served):
    while True:
        await lock.acquire_read()
        try:
            served.append((name, config["version"]))
            await asyncio.sleep(0.01)
        finally:
            lock.release_read()
        await asyncio.sleep(0.05)


async def reload_config(lock, config):
    while True:
        await asyncio.sleep(0.3)
        await asyncio.wait_for(asyncio.shield(lock.acquire_write()), timeout=2.0)
        try:
            config["version"] += 1
        finally:
            lock.release_write()


async def audit_worker(events):
    audit = logging.getLogger("audit")
    while True:
        who, what = await events.get()
        audit.info("%s %s", who, what)
        events.task_done()


async def main():
    loop = asyncio.get_running_loop()
    lock, config, served, events = RWLock(), {"version": 1}, [], asyncio.Queue()
    reloader = asyncio.create_task(reload_config(lock, config), name="reload")
    tasks = [reloader,
             *(asyncio.create_task(serve_reads(f"handler-{i}", lock, config, served), name=f"handler-{i}")
               for i in range(3)),
             *(asyncio.create_task(audit_worker(events), name=f"audit-{i}") for i in range(2))]
    while config["version"] < 3 and not reloader.done():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
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
