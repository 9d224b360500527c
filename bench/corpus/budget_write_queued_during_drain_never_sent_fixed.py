"""A budget tool server whose write queue never sends a write that was queued while a batch was being applied.

Modelled on agigante80/actual-mcp-server #278, "fix(adapter): lost-wakeup deadlock in the write queue
hangs a write until an unrelated write arrives": writes were coalesced behind a debounce timer; a
timer that fired while the previous batch was still being applied returned early, above the line
that cleared the timer handle, and the batch's ``finally`` only scheduled another drain when the
handle was empty, so the fired-but-uncleared handle suppressed it and the queued write waited until
some unrelated write re-armed the timer.

Mechanism: a tool server (JSON lines on 127.0.0.1) serves two assistants' tool calls against a
budget server (another local server, which takes half a second to apply a batch of writes).
``BudgetAdapter.write`` queues the write with a future and (re)arms a 50 ms debounce timer
(``loop.call_later``); when it fires, ``drain`` sends the whole queue as one batch.  At 0.3 s the
bookkeeping assistant sets a category; 0.1 s later, while that batch is being applied, the
reconciling assistant records a transfer.  Its timer fires mid-batch, ``drain`` returns early and
leaves ``BudgetAdapter.timer`` set; when the first batch ends, its ``finally`` sees a timer and
schedules nothing.  The transfer's future is never resolved: the tool server's handler for the
reconciler's session waits on it for ever, and the reconciler waits for the answer.  No other write
comes to rescue it; read-only calls (balances) go straight to the budget server and keep working
for the bookkeeper and the health probe, and the sync reporter ticks on.

Fix: the timer's callback clears the handle before it drains, so a fired timer never looks pending.
"""
import asyncio
import json
import signal

DEBOUNCE = 0.05


class BudgetServer:
    """The budget file's sync server: applying a batch of writes takes half a second."""

    def __init__(self):
        self.accounts = {"checking": 1520.0, "savings": 8000.0}
        self.applied = []

    async def handle(self, reader, writer):
        while line := await reader.readline():
            request = json.loads(line)
            if request["op"] == "batch":
                await asyncio.sleep(0.5)  # rewrites and syncs the budget file
                self.applied.extend(request["writes"])
                reply = {"applied": len(request["writes"])}
            else:
                reply = {"accounts": self.accounts}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()


class BudgetAdapter:
    """Reads go straight to the budget server; writes are queued and sent in debounced batches."""

    def __init__(self, port):
        self.port = port
        self.queue = []  # (write, future) pairs not yet sent
        self.timer = None
        self.draining = False
        self.drains = set()

    async def request(self, payload):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(json.dumps(payload).encode() + b"\n")
            return json.loads(await reader.readline())
        finally:
            writer.close()

    async def balances(self):
        return (await self.request({"op": "accounts"}))["accounts"]

    async def write(self, operation):
        future = asyncio.get_running_loop().create_future()
        self.queue.append((operation, future))
        self.schedule_drain()
        return await future

    def schedule_drain(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(DEBOUNCE, self.on_timer)

    def on_timer(self):
        self.timer = None  # this timer has fired: it no longer stands for a pending drain
        task = asyncio.get_running_loop().create_task(self.drain())
        self.drains.add(task)
        task.add_done_callback(self.drains.discard)

    async def drain(self):
        if self.draining:
            return  # the batch being applied drains the queue again when it ends
        self.timer = None
        self.draining = True
        batch, self.queue = self.queue, []
        try:
            reply = await self.request({"op": "batch", "writes": [operation for operation, _ in batch]})
            for _, future in batch:
                future.set_result(reply)
        except OSError as exc:
            for _, future in batch:
                future.set_exception(exc)
        finally:
            self.draining = False
            if self.queue and self.timer is None:
                self.schedule_drain()


class ToolServer:
    def __init__(self, adapter):
        self.adapter = adapter

    async def handle(self, reader, writer):
        while line := await reader.readline():
            call = json.loads(line)
            if call["tool"] == "get_balances":
                result = await self.adapter.balances()
            else:
                result = await self.adapter.write({"tool": call["tool"], **call["args"]})
            writer.write(json.dumps({"id": call["id"], "result": result}).encode() + b"\n")
            await writer.drain()
        writer.close()


async def assistant(port, first_call_at, write, log):
    """One assistant session: a write, then balance checks every 0.4 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(first_call_at)
    calls = [write] + [("get_balances", {})] * 1000
    for n, (tool, args) in enumerate(calls):
        writer.write(json.dumps({"id": n, "tool": tool, "args": args}).encode() + b"\n")
        await writer.drain()
        log.append(json.loads(await reader.readline()))
        del log[:-20]
        await asyncio.sleep(0.4)


async def health_probe(port, beats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(100000):
        writer.write(json.dumps({"id": n, "tool": "get_balances", "args": {}}).encode() + b"\n")
        await writer.drain()
        beats.append(await reader.readline())
        del beats[:-10]
        await asyncio.sleep(0.3)


async def sync_reporter(budget, adapter, status):
    while True:
        await asyncio.sleep(0.5)
        status.update(applied=len(budget.applied), queued=len(adapter.queue))


async def main():
    loop = asyncio.get_running_loop()
    budget = BudgetServer()
    budget_server = await asyncio.start_server(budget.handle, "127.0.0.1", 0)
    adapter = BudgetAdapter(budget_server.sockets[0].getsockname()[1])
    tool_server = await asyncio.start_server(ToolServer(adapter).handle, "127.0.0.1", 0)
    port = tool_server.sockets[0].getsockname()[1]
    log, beats, status = [], [], {}
    categorize = ("set_category", {"payee": "Grocer", "category": "Food"})
    transfer = ("record_transfer", {"from": "checking", "to": "savings", "amount": 250})
    tasks = [asyncio.create_task(assistant(port, 0.3, categorize, log)),
             asyncio.create_task(assistant(port, 0.4, transfer, log)),
             asyncio.create_task(health_probe(port, beats)),
             asyncio.create_task(sync_reporter(budget, adapter, status))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        tool_server.close()
        budget_server.close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
