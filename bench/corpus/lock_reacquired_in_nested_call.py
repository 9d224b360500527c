"""A repository mirror whose update path calls a method that takes the lock the update already holds.

Modelled on python/asyncio #439, "Reentrant locks in asyncio": ``asyncio.Lock`` is not reentrant,
so a coroutine holding it that calls another coroutine taking the same lock blocks forever; the
use case raised in the thread was a tool that runs git commands under such a lock.

Mechanism: a mirror service keeps four repositories up to date, one sync task each, and applies
push webhooks through a worker.  Each repository's operations take its lock.  The ``docs``
checkout is missing, so ``update()`` calls ``clone()`` while holding the lock, and ``clone()`` waits
for that same lock; the webhook for ``docs`` then queues on it as well.  The other repositories
keep syncing.

Fix: ``update()`` calls the lock-free ``_clone()`` it already holds the lock for.
"""
import asyncio
import signal


class Mirror:
    def __init__(self, name, present=True):
        self.name = name
        self.lock = asyncio.Lock()
        self.present = present
        self.fetches = 0

    async def _git(self, *args):
        await asyncio.sleep(0.02)  # the remote round trip

    async def _clone(self):
        await self._git("clone", "--mirror", f"https://git.example/{self.name}.git")
        self.present = True

    async def clone(self):
        async with self.lock:
            await self._clone()

    async def update(self):
        async with self.lock:
            if not self.present:
                await self.clone()
            await self._git("remote", "update", "--prune")
            self.fetches += 1


async def sync_repo(mirror):
    while True:
        await mirror.update()
        await asyncio.sleep(0.3)


async def webhook_worker(mirrors, pushes):
    while True:
        name = await pushes.get()
        await mirrors[name].update()
        pushes.task_done()


async def main():
    loop = asyncio.get_running_loop()
    mirrors = {name: Mirror(name, present=name != "docs") for name in ("api", "web", "infra", "docs")}
    pushes = asyncio.Queue()
    tasks = [*(asyncio.create_task(sync_repo(m), name=f"sync-{m.name}") for m in mirrors.values()),
             *(asyncio.create_task(webhook_worker(mirrors, pushes), name=f"webhook-{i}") for i in range(2))]
    for name in ("api", "web", "docs"):
        pushes.put_nowait(name)
    while min(mirrors[name].fetches for name in ("api", "web", "infra")) < 3:
        await asyncio.sleep(0.05)
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
