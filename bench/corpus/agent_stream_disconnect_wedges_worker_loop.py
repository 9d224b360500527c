"""An agent runtime whose streaming bridge freezes its shared worker loop after a streaming client disconnects.

Modelled on aws/bedrock-agentcore-sdk-python #482, "_async_gen_to_sync_gen deadlocks container when
SSE consumer disconnects (queue blocks worker loop thread)": the SDK ran the application's async
agents on one worker event loop in a thread of its own, and fed a streamed answer to the response's
synchronous iterator through a bounded ``queue.Queue`` with a blocking ``put()``.  When an SSE client
went away the server stopped iterating, the queue filled, and ``put()`` froze the worker loop's
thread: every later invocation hung, while the health check stayed green.

Mechanism: ``AgentRuntime`` runs agents on a worker loop in the "agent-worker-loop" thread;
``invoke`` schedules a coroutine there with ``run_coroutine_threadsafe`` and awaits the wrapped
future, and ``stream`` is a generator that schedules a producer there and yields what it puts in a
16-slot ``queue.Queue``.  The server (lines on 127.0.0.1) sends a stream's chunks from the default
executor (``next()`` blocks on the queue) and, like Starlette, stops iterating when the client
disconnects.  About 0.35 s in the dashboard viewer reads three chunks of a report and closes the
tab: nobody reads the queue again, it fills, and the producer's ``put()`` blocks the worker loop's
thread for good.  From then on the memory refresher and the API handler serving the ticket client
wait for ever on futures whose coroutines the frozen worker loop never runs, and the ticket client
waits for its answer.  The health probe's PINGs, answered on the server's own loop, keep working.

Fix: the producer never blocks the worker loop (``put_nowait``, and a short sleep while the queue is
full) and stops once the response's iterator is closed.
"""
import asyncio
import itertools
import queue
import signal
import threading

_DONE = object()


async def _ended(agen):
    """The chunks of ``agen``, then the end-of-stream marker."""
    async for chunk in agen:
        yield chunk
    yield _DONE


class AgentRuntime:
    """Runs the application's agents on one worker event loop, in a thread of its own."""

    def __init__(self):
        self.worker_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.worker_loop.run_forever, name="agent-worker-loop", daemon=True)
        self.thread.start()
        self.open_streams = 0

    async def invoke(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.worker_loop))

    def stream(self, agen):
        """The body of a streamed response: a synchronous iterator over ``agen`` run on the worker loop."""
        chunks = queue.Queue(maxsize=16)

        async def produce():
            async for item in _ended(agen):
                chunks.put(item)

        asyncio.run_coroutine_threadsafe(produce(), self.worker_loop)
        self.open_streams += 1
        try:
            while (item := chunks.get()) is not _DONE:
                yield item
        finally:
            self.open_streams -= 1


async def research(topic):
    for n in range(200):
        await asyncio.sleep(0.02)  # the model streams a token
        yield f"{topic} token {n}\n".encode()


async def summarize(ticket):
    await asyncio.sleep(0.01)
    return f"summary of {ticket}"


async def consolidate_memory(generation):
    await asyncio.sleep(0.01)
    return generation + 1


class AgentServer:
    def __init__(self, runtime):
        self.runtime = runtime

    async def handle(self, reader, writer):
        while line := await reader.readline():
            verb, _, arg = line.decode().strip().partition(" ")
            if verb == "PING":
                writer.write(b"pong streams=%d\n" % self.runtime.open_streams)
            elif verb == "INVOKE":
                answer = await self.runtime.invoke(summarize(arg))
                writer.write(answer.encode() + b"\n")
            elif verb == "STREAM":
                await self.stream_response(reader, writer, self.runtime.stream(research(arg)))
                break
            await writer.drain()
        writer.close()

    async def stream_response(self, reader, writer, body):
        """Send ``body`` until it ends or the client disconnects, whichever comes first."""
        sender = asyncio.create_task(self.send_body(writer, body))
        listener = asyncio.create_task(self.wait_for_disconnect(reader))
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        sender.cancel()
        listener.cancel()

    async def send_body(self, writer, body):
        loop = asyncio.get_running_loop()
        try:
            while (chunk := await loop.run_in_executor(None, next, body, None)) is not None:
                writer.write(chunk)
                await writer.drain()
            writer.write(b"END\n")
        except ConnectionError:
            pass

    async def wait_for_disconnect(self, reader):
        try:
            await reader.read()
        except ConnectionError:
            pass


async def refresh_memory(runtime, generations):
    generation = 0
    while True:
        generation = await runtime.invoke(consolidate_memory(generation))
        generations.append(generation)
        del generations[:-20]
        await asyncio.sleep(0.3)


async def ticket_client(port, answers):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in itertools.count():
        writer.write(b"INVOKE ticket-%d\n" % n)
        await writer.drain()
        answers.append(await reader.readline())
        del answers[:-20]
        await asyncio.sleep(0.3)


async def health_probe(port, beats):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"PING\n")
        await writer.drain()
        beats.append(await reader.readline())
        del beats[:-10]
        await asyncio.sleep(0.25)


async def dashboard_viewer(port, seen):
    await asyncio.sleep(0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"STREAM quarterly-report\n")
    await writer.drain()
    for _ in range(3):
        seen.append(await reader.readline())
    writer.close()  # the user closes the tab
    await writer.wait_closed()


async def main():
    loop = asyncio.get_running_loop()
    runtime = AgentRuntime()
    server = await asyncio.start_server(AgentServer(runtime).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    generations, answers, beats, seen = [], [], [], []
    tasks = [asyncio.create_task(refresh_memory(runtime, generations)),
             asyncio.create_task(ticket_client(port, answers)),
             asyncio.create_task(health_probe(port, beats)),
             asyncio.create_task(dashboard_viewer(port, seen))]
    await asyncio.sleep(1.5)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        server.close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
