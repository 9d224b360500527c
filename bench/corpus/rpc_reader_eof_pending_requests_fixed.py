"""A JSON-RPC client whose receive loop ends on EOF and leaves the requests in flight pending.

Modelled on agentclientprotocol/python-sdk #86, "fix: reject pending requests on EOF to prevent
infinite hang" (issue #85): when the agent process died, the client's ``_receive_loop`` returned
cleanly on EOF, nothing failed the outstanding ``send_request`` futures, and their callers waited
forever.

Mechanism: a pool of prompt workers shares one client connection to an agent (here a server on
127.0.0.1).  The agent answers three prompts, accepts two more and crashes, closing its socket.  The
reader sees EOF and returns; the two futures stay in ``_pending`` and their workers wait on them
forever, while the third worker idles on the job queue.

Fix: when the receive loop ends, fail every pending future with ConnectionError, so the workers log
the error and go back to the queue.
"""
import asyncio
import itertools
import json
import signal


class Agent:
    """The remote end: answers prompts, then crashes with two of them unanswered."""

    def __init__(self):
        self.answered = 0

    async def handle(self, reader, writer):
        held = 0
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if msg["method"] == "session/prompt" and self.answered >= 3:
                    held += 1
                    if held == 2:
                        return  # the agent process dies here
                    continue
                await asyncio.sleep(0.05)
                self.answered += msg["method"] == "session/prompt"
                reply = {"id": msg["id"], "result": {"text": f"done {msg['params']}"}}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


class RpcClient:
    def __init__(self):
        self._ids = itertools.count(1)
        self._pending = {}
        self._writer = None
        self.receiver = None

    async def connect(self, host, port):
        reader, self._writer = await asyncio.open_connection(host, port)
        self.receiver = asyncio.create_task(self._receive_loop(reader), name="rpc-receive")

    async def _receive_loop(self, reader):
        while True:
            line = await reader.readline()
            if not line:
                break
            msg = json.loads(line)
            fut = self._pending.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg["result"])
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed: remote end sent EOF"))
        self._pending.clear()

    async def request(self, method, params):
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        self._writer.write(json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n")
        await self._writer.drain()
        return await fut


async def worker(client, jobs, results):
    while True:
        prompt = await jobs.get()
        try:
            results.append(await client.request("session/prompt", prompt))
        except ConnectionError as exc:
            results.append(exc)
        finally:
            jobs.task_done()


async def metrics(results):
    while True:
        await asyncio.sleep(0.5)
        len(results)


async def main():
    agent = Agent()
    server = await asyncio.start_server(agent.handle, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve_forever(), name="agent-server")
    client = RpcClient()
    await client.connect("127.0.0.1", server.sockets[0].getsockname()[1])
    await client.request("initialize", {"protocol": 1})
    jobs, results = asyncio.Queue(), []
    workers = [asyncio.create_task(worker(client, jobs, results), name=f"prompt-{i}") for i in range(3)]
    ticker = asyncio.create_task(metrics(results), name="metrics")
    for n in range(5):
        jobs.put_nowait(f"prompt {n}")
    await asyncio.wait([client.receiver])
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for task in (serving, ticker, *workers):
            task.cancel()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
