"""An export job whose feed reader dies; the writers and the job wait for an end that never comes.

Modelled on list-family/ansq #98: "Add CloseableQueue to prevent endless consumer
freezing": when the connection's reader task ended with an exception, nothing told the
consumers of its message queue, and they froze forever waiting for the next message.

Here ``Export.feed`` reads pages and puts rows on a queue, then one ``None`` per
writer; a page fails to decode, the feed task dies, and the writers wait in
``Queue.get`` for rows or an end marker that will never come, while ``Export.run``
waits for the writers in ``gather``.  The fix sends the end markers in a ``finally``.
"""
import asyncio
import json
import signal


class Export:
    def __init__(self, pages, writers):
        self.pages = pages
        self.rows = asyncio.Queue()
        self.written = []
        self.writers = writers

    async def feed(self):
        try:
            for page in self.pages:
                await asyncio.sleep(0.01)  # fetch the page
                for row in json.loads(page):
                    await self.rows.put(row)
        finally:
            for _ in range(self.writers):
                await self.rows.put(None)

    async def write(self):
        while (row := await self.rows.get()) is not None:
            self.written.append(row)
            await asyncio.sleep(0)

    async def run(self):
        feeder = asyncio.create_task(self.feed())
        await asyncio.gather(*(self.write() for _ in range(self.writers)))
        print("exported", len(self.written), "rows", feeder.done(), flush=True)


async def housekeeping(state):
    while True:
        state["runs"] += 1
        await asyncio.sleep(0.5)


async def mailer(outbox, sent):
    while True:
        sent.append(await outbox.get())


async def main():
    pages = [json.dumps([{"id": p * 10 + i} for i in range(10)]) for p in range(8)]
    pages[3] = pages[3][:-5]
    export = Export(pages, writers=3)
    state, outbox, sent = {"runs": 0}, asyncio.Queue(), []
    tasks = [asyncio.create_task(housekeeping(state)), asyncio.create_task(mailer(outbox, sent)),
             asyncio.create_task(export.run())]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
