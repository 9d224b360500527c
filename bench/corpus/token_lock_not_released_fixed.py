"""An API client whose token refresh fails once while holding the lock; every later call waits on it.

Modelled on joan2937/pigpio #190: "Address #189 ensuring socket locks are released":
the code assumed the section between ``acquire()`` and ``release()`` could not raise;
when it did, the lock stayed held and every later caller of the library deadlocked.
The fix was acquire/try/finally/release.

Here ``TokenCache.token`` acquires the refresh lock by hand, refreshes an expired token
from the auth server and releases the lock afterwards; the auth server answers one
refresh with an error, the exception leaves with the lock still held, and every request
after it waits on the lock.  The fix holds the lock with ``async with``.
"""
import asyncio
import signal
import time


class AuthError(Exception):
    pass


class AuthServer:
    def __init__(self, fail_on):
        self.calls = 0
        self.fail_on = fail_on

    async def issue(self):
        self.calls += 1
        await asyncio.sleep(0.02)
        if self.calls == self.fail_on:
            raise AuthError("503 from the auth server")
        return f"token-{self.calls}", time.monotonic() + 0.15


class TokenCache:
    def __init__(self, auth):
        self.auth = auth
        self.lock = asyncio.Lock()
        self.value, self.expires = "", 0.0

    async def token(self):
        if time.monotonic() < self.expires:
            return self.value
        async with self.lock:
            if time.monotonic() >= self.expires:
                self.value, self.expires = await self.auth.issue()
        return self.value


async def call_api(cache, n, log):
    for i in range(n):
        try:
            log.append(await cache.token())
        except AuthError as exc:
            log.append(str(exc))
        await asyncio.sleep(0.1)


async def audit(log, sizes):
    while True:
        sizes.append(len(log))
        del sizes[:-10]
        await asyncio.sleep(0.5)


async def main():
    cache = TokenCache(AuthServer(fail_on=3))
    log, sizes = [], []
    tasks = [asyncio.create_task(audit(log, sizes))]
    tasks += [asyncio.create_task(call_api(cache, 6, log)) for _ in range(3)]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
