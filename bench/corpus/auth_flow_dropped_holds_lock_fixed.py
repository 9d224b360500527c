"""A tool-call bridge drops an auth-flow generator that holds the provider's lock; every later call waits.

Modelled on NousResearch/hermes-agent #101756: "MCP OAuth: async_auth_flow bridge drops
the SDK's inner generator without aclose(), poisoning context.lock cross-task - every
OAuth MCP server parks permanently": the auth flow was an async generator suspended at
``yield request`` inside ``async with context.lock``; the bridge dropped it instead of
closing it, asyncio finalized it in a different task, the lock refused a release from a
task that did not acquire it, and the lock stayed held for the life of the process.

Here ``OAuthProvider.auth_flow`` holds the provider's ``TaskLock`` (which, like anyio's
Lock, only the acquiring task may release) across ``yield request``.  ``ToolClient.call``
takes the authorised request from the flow and, when the answer is not a 401, returns
without closing the flow.  The loop's async-generator finalizer closes the dropped flow
in a task of its own; the lock's ``__aexit__`` raises there, the finalizer task dies with
an exception nobody retrieves, and the lock stays held by the finished call task.  Every
later tool call waits for it.  The fix closes the flow in the calling task
(``await flow.aclose()`` before each return).
"""
import asyncio
import itertools
import signal


class TaskLock:
    """A lock only the task that acquired it may release."""

    def __init__(self):
        self._lock = asyncio.Lock()
        self._owner = None

    async def __aenter__(self):
        await self._lock.acquire()
        self._owner = asyncio.current_task()

    async def __aexit__(self, *exc):
        if asyncio.current_task() is not self._owner:
            raise RuntimeError("TaskLock released by a task that does not own it")
        self._owner = None
        self._lock.release()


class OAuthProvider:
    def __init__(self, port):
        self.port = port
        self.lock = TaskLock()
        self.token = None
        self.refreshes = 0

    async def refresh(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"TOKEN\n")
        line = await reader.readline()
        writer.close()
        self.refreshes += 1
        return line.split()[1].decode()

    async def auth_flow(self, request):
        async with self.lock:
            if self.token is None:
                self.token = await self.refresh()
            request["token"] = self.token
            response = yield request
            if response["status"] == 401:
                self.token = await self.refresh()
                request["token"] = self.token
                yield request


class ToolClient:
    def __init__(self, port, provider):
        self.port = port
        self.provider = provider

    async def send(self, request):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"CALL {request['tool']} {request['token']}\n".encode())
        status, _, body = (await reader.readline()).decode().strip().partition(" ")
        writer.close()
        return {"status": int(status), "body": body}

    async def call(self, tool):
        flow = self.provider.auth_flow({"tool": tool})
        request = await flow.__anext__()
        response = await self.send(request)
        if response["status"] != 401:
            await flow.aclose()  # closed in this task, which owns the provider's lock
            return response
        request = await flow.asend(response)
        await flow.aclose()
        return await self.send(request)


class ToolServer:
    def __init__(self):
        self.token = "t-1"
        self.calls = 0

    async def handle(self, reader, writer):
        words = (await reader.readline()).decode().split()
        if words and words[0] == "TOKEN":
            writer.write(f"OK {self.token}\n".encode())
        elif words and words[0] == "CALL":
            self.calls += 1
            await asyncio.sleep(0.05)
            ok = words[2] == self.token
            writer.write(f"200 {words[1]}-done\n".encode() if ok else b"401 expired\n")
        await writer.drain()
        writer.close()

    async def events(self, reader, writer):
        """The server's notification stream: quiet unless a tool list changes."""
        writer.write(b"HELLO\n")
        await reader.read()
        writer.close()


async def run_tool_call(client, tool, results):
    results.append(await client.call(tool))


class Agent:
    def __init__(self, client):
        self.client = client
        self.results = []

    async def run(self, turns):
        for tools in itertools.chain(turns, itertools.repeat(["search"])):
            await asyncio.gather(*(run_tool_call(self.client, t, self.results) for t in tools))
            await asyncio.sleep(0.2)


async def watch_events(port, seen):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while line := await reader.readline():
        seen.append(line)


async def rotate(tools):
    """The server rotates its tokens now and then; a stale one gets a 401."""
    n = 1
    while True:
        await asyncio.sleep(1.5)
        n += 1
        tools.token = f"t-{n}"


async def heartbeat(samples, agent):
    while True:
        samples.append(len(agent.results))
        del samples[:-20]
        await asyncio.sleep(0.5)


async def main():
    tools = ToolServer()
    server = await asyncio.start_server(tools.handle, "127.0.0.1", 0)
    events = await asyncio.start_server(tools.events, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ToolClient(port, OAuthProvider(port))
    agent = Agent(client)
    seen, samples = [], []
    turns = [["search"], ["read_file", "list_dir", "grep"], ["summarise"]]
    tasks = [asyncio.create_task(agent.run(turns)),
             asyncio.create_task(watch_events(events.sockets[0].getsockname()[1], seen)),
             asyncio.create_task(heartbeat(samples, agent)), asyncio.create_task(rotate(tools))]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
