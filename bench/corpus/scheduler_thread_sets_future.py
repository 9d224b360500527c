"""A push service whose scheduler thread resolves the awaited future directly.

Modelled on agronholm/apscheduler #437: "Marking asyncio future as 'done' from
BackgroundScheduler task takes a very long time": a job running in the scheduler's thread
called ``set_result`` on an asyncio future; the loop was not woken, so the websocket
handler awaiting the future got the value seconds later, whenever something else woke
the loop, or never.

Here a quote pusher waits for the next price on a future that a background scheduler
thread resolves every 0.3 s.  The service is otherwise idle (a server waiting for clients,
two workers idle on a queue), so nothing wakes the loop: the pusher waits for good on a
future that is already done.  The fix hands the result to the loop with
``call_soon_threadsafe``.
"""
import asyncio
import signal
import threading


class PriceFeed:
    def __init__(self, loop):
        self.loop = loop
        self.next_price = loop.create_future()
        self.published = 0

    def publish(self, price):
        """Called by the scheduler's thread."""
        fut = self.next_price
        if not fut.done():
            fut.set_result(price)
        self.published += 1


def scheduler(feed, stop):
    price = 100.0
    while not stop.wait(0.3):
        price += 0.25
        feed.publish(price)


async def push_quotes(feed, sent):
    while True:
        price = await feed.next_price
        feed.next_price = feed.loop.create_future()
        sent.append(price)


async def audit_worker(jobs):
    while True:
        entry = await jobs.get()
        jobs.task_done()
        del entry


async def serve_client(reader, writer):
    await reader.read()
    writer.close()


async def main():
    loop = asyncio.get_running_loop()
    feed, sent, jobs = PriceFeed(loop), [], asyncio.Queue()
    server = await asyncio.start_server(serve_client, "127.0.0.1", 0)
    workers = [asyncio.create_task(audit_worker(jobs), name=f"audit-{i}") for i in range(2)]
    pusher = asyncio.create_task(push_quotes(feed, sent), name="push-quotes")
    stop = threading.Event()
    threading.Thread(target=scheduler, args=(feed, stop), name="scheduler", daemon=True).start()
    while not sent:  # the first price is through (woken by this very poll's timer)
        await asyncio.sleep(0.05)
    print("ready", flush=True)  # from here on nothing but the scheduler's jobs would wake the loop
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    stop.set()
    server.close()
    del workers, pusher


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
