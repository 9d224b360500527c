"""A rate cache whose retry decorator retries the cancellation of its own timeout.

Modelled on jd/tenacity #529: "retry_if_not_exception_type swallows
asyncio.CancelledError": a retry policy of "retry on anything but these errors" also
retries ``CancelledError``, so a ``wait_for`` (or ``asyncio.timeout``) around the
decorated coroutine cancels it, the decorator starts another attempt, and the timeout
never takes effect.

Here ``RateCache.fetch`` is wrapped by ``retry_unless(ValueError)``, which catches
``BaseException`` and retries everything else after a back-off.  The upstream rate
service is wedged (its listen queue accepts connections, nothing answers), so the first
attempt waits on the reply; ``RateCache.refresh`` bounds it with ``asyncio.timeout(1.5)``,
the timeout cancels the task, the decorator catches the cancellation and tries again,
and the second attempt waits on a reply with no deadline left.  Quote clients keep
reading the cached rates from the API server.  The fix retries ``Exception`` only.
"""
import asyncio
import signal
import socket


def retry_unless(*fatal):
    def decorate(fn):
        async def wrapper(*args, **kwargs):
            delay = 0.2
            while True:
                try:
                    return await fn(*args, **kwargs)
                except fatal:
                    raise
                except Exception:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        return wrapper
    return decorate


class RateCache:
    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.rates = {"EURUSD": 1.08}
        self.errors = []

    @retry_unless(ValueError)
    async def fetch(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(b"RATES\n")
            await writer.drain()
            line = await reader.readline()
            pair, value = line.decode().split()
            return {pair: float(value)}
        finally:
            writer.close()

    async def refresh(self):
        while True:
            try:
                async with asyncio.timeout(1.5):
                    self.rates.update(await self.fetch())
            except TimeoutError:
                self.errors.append("rates upstream timed out")
            await asyncio.sleep(3.0)


async def handle(cache, reader, writer):
    while await reader.readline():
        writer.write(b"%r\n" % cache.rates)
        await writer.drain()
    writer.close()


async def quote_client(port, answers):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"GET\n")
        answers.append(await reader.readline())
        del answers[:-20]
        await asyncio.sleep(0.2)


async def main():
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(16)  # the wedged rate service: connections queue, nobody answers
    cache = RateCache(upstream.getsockname()[1])
    server = await asyncio.start_server(lambda r, w: handle(cache, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers = []
    tasks = [asyncio.create_task(cache.refresh())]
    tasks += [asyncio.create_task(quote_client(port, answers)) for _ in range(2)]
    await asyncio.sleep(2.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks
    upstream.close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
