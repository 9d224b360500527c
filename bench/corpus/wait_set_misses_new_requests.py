"""A connection's receive() waits on a snapshot of its request tasks, so answers to newer requests never arrive.

Modelled on valory-xyz/open-autonomy #1173: "asyncio.wait() copies the task container
that is passed to it": the ledger connection's ``receive`` passed its list of request
tasks to ``asyncio.wait(..., return_when=FIRST_COMPLETED)``; tasks appended by ``send``
after the wait began were not watched, so while an earlier request was blocked, every
later contract and ledger operation was blocked too.

Here the first request is a long-poll for a transaction receipt.  ``receive`` starts
waiting on ``[watch]``; the three balance requests sent afterwards finish at once, but
their results sit in done tasks nobody looks at, and their callers wait on their reply
futures forever.  A ticker and idle workers run alongside.  The fix also wakes the wait
when ``send`` adds a task, and waits again on the current list.
"""
import asyncio
import signal


class LedgerConnection:
    def __init__(self):
        self.receiving = []
        self.added = asyncio.Event()

    def send(self, request):
        self.receiving.append(asyncio.create_task(self.dispatch(request)))
        self.added.set()

    async def dispatch(self, request):
        rid, method, arg = request
        if method == "wait_receipt":
            await asyncio.sleep(3600)  # the transaction is not mined yet
        else:
            await asyncio.sleep(0.05)
        return rid, f"{method}({arg}) = 42"

    async def receive(self):
        while not self.receiving:
            self.added.clear()
            await self.added.wait()
        done, _ = await asyncio.wait(self.receiving, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        self.receiving.remove(task)
        return task.result()


class Multiplexer:
    def __init__(self, connection):
        self.connection = connection
        self.replies = {}
        self.next_id = 0

    async def request(self, method, arg):
        self.next_id += 1
        reply = self.replies[self.next_id] = asyncio.get_running_loop().create_future()
        self.connection.send((self.next_id, method, arg))
        return await reply

    async def receive_loop(self):
        while True:
            rid, result = await self.connection.receive()
            self.replies.pop(rid).set_result(result)


async def watch_receipt(mux, tx):
    return await mux.request("wait_receipt", tx)


async def fetch_balance(mux, account, balances):
    balances[account] = await mux.request("get_balance", account)


async def ticker(ticks):
    while True:
        ticks.append(asyncio.get_running_loop().time())
        del ticks[:-10]
        await asyncio.sleep(0.5)


async def idle_worker(jobs):
    while True:
        job = await jobs.get()
        job()


async def main():
    mux = Multiplexer(LedgerConnection())
    balances, ticks, jobs = {}, [], asyncio.Queue()
    tasks = [asyncio.create_task(mux.receive_loop()), asyncio.create_task(ticker(ticks))]
    tasks += [asyncio.create_task(idle_worker(jobs)) for _ in range(2)]
    tasks.append(asyncio.create_task(watch_receipt(mux, "0xabc")))
    await asyncio.sleep(0.2)
    tasks += [asyncio.create_task(fetch_balance(mux, a, balances)) for a in ("alice", "bob", "carol")]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
