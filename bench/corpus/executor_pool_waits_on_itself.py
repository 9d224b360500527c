"""A renderer whose pool threads wait on coroutines that need a thread of the same pool.

Modelled on xorq-labs/xorq #2243: "Flight client's shared ThreadPoolExecutor silently
deadlocks nested exchanges": one bounded pool is shared by every exchange, each exchange's
supervisor runs on a pool thread and blocks on work it submitted to the same pool, and once
every thread is such a supervisor the queued work never runs and the process hangs with no
error.

Here ``Renderer.render_page`` runs the blocking ``render`` on the shared two-thread pool;
``render`` hops back to the loop with ``run_coroutine_threadsafe`` to load its template,
and ``Renderer.template`` reads the file with ``run_in_executor`` on that same pool.  Two
pages at once take both threads, each blocked in ``Future.result()``; the two template
reads queue behind them forever.  A health ticker and idle request workers keep running.
The fix gives template I/O its own pool.
"""
import asyncio
import concurrent.futures
import signal
import time


def read_template(name):
    time.sleep(0.05)  # a blocking file read
    return "<h1>{title}</h1><p>%s</p>" % name


class Renderer:
    def __init__(self, loop):
        self.loop = loop
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
        self.io_pool = self.pool

    async def template(self, name):
        return await self.loop.run_in_executor(self.io_pool, read_template, name)

    def render(self, page):
        source = asyncio.run_coroutine_threadsafe(self.template(page), self.loop).result()
        time.sleep(0.01)  # CPU-bound templating
        return source.format(title=page.upper())

    async def render_page(self, page):
        return await self.loop.run_in_executor(self.pool, self.render, page)


async def request_worker(requests, renderer, served):
    while True:
        page = await requests.get()
        served.append(await renderer.render_page(page))


async def health(beats):
    while True:
        beats.append(time.monotonic())
        del beats[:-10]
        await asyncio.sleep(0.5)


async def main():
    renderer = Renderer(asyncio.get_running_loop())
    requests, served, beats = asyncio.Queue(), [], []
    tasks = [asyncio.create_task(request_worker(requests, renderer, served)) for _ in range(4)]
    tasks.append(asyncio.create_task(health(beats)))
    requests.put_nowait("index")
    await asyncio.sleep(0.3)
    requests.put_nowait("about")
    requests.put_nowait("pricing")
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
