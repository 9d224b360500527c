"""A healthy voice-bot pipeline: long waits for the user to speak, a context lock held through a reply, a slow tool.

Modelled on pipecat-ai/pipecat #2063: "no need to call start_watchdog() only
reset_watchdog()": the pipeline's watchdog timers had to be reset while a task waits for
data (a websocket read, a queue, an async iterator), because a task waiting for input is
not stalled; the watchdog is for code blocked while processing data.

The bot's transport gathers its receive, send and dispatch loops over one connection
that stays up, with the user silent for seconds between turns; two analytics tasks wait
on a condition for the next turn number; each turn, the reply is streamed by an async
generator that holds the LLM's context lock until the last token is spoken, while the
summariser and the transcript writer wait for that lock; text-to-speech runs on a small
worker pool whose idle workers wait on wake-up futures; and a weather lookup waits
seconds for a slow tool server, its future kept in the tool client's pending table.
There is no bug in either file; the twin's user speaks more often and its tool answers
faster.
"""
import asyncio
import collections
import itertools
import signal

USER_TURN_EVERY = 3.0
TOOL_SECONDS = 1.5
REPLY_TOKENS = 5


class UserDevice:
    """The user's side: silent, then a burst of audio and an end-of-speech marker every few seconds."""

    async def handle(self, reader, writer):
        drain = asyncio.create_task(reader.read())  # the bot's audio, played and discarded
        try:
            for n in itertools.count(1):
                await asyncio.sleep(USER_TURN_EVERY)
                for i in range(5):
                    writer.write(b"AUDIO %d.%d\n" % (n, i))
                writer.write(b"EOS %d\n" % n)
                await writer.drain()
        finally:
            drain.cancel()
            writer.close()


class ToolServer:
    async def handle(self, reader, writer):
        while line := await reader.readline():
            rid, _, name = line.decode().strip().partition(" ")
            asyncio.create_task(self.answer(writer, rid, name))
        writer.close()

    async def answer(self, writer, rid, name):
        await asyncio.sleep(TOOL_SECONDS)
        writer.write(f"{rid} {name}: 21C, light rain\n".encode())


class ToolClient:
    def __init__(self):
        self.pending = {}
        self.ids = itertools.count(1)

    async def connect(self, port):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.receiver = asyncio.create_task(self.receive())

    async def receive(self):
        while line := await self.reader.readline():
            rid, _, body = line.decode().strip().partition(" ")
            fut = self.pending.pop(int(rid), None)
            if fut is not None and not fut.done():
                fut.set_result(body)

    async def call(self, name):
        rid = next(self.ids)
        fut = self.pending[rid] = asyncio.get_running_loop().create_future()
        self.writer.write(f"{rid} {name}\n".encode())
        return await asyncio.wait_for(fut, 30.0)


class SynthPool:
    """Text-to-speech workers; an idle worker waits on its own wake-up future."""

    def __init__(self, size):
        self.jobs = collections.deque()
        self.waiters = collections.deque()
        self.workers = [asyncio.create_task(self.worker()) for _ in range(size)]

    def synthesize(self, text):
        fut = asyncio.get_running_loop().create_future()
        self.jobs.append((text, fut))
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        return fut

    async def worker(self):
        while True:
            while self.jobs:
                text, fut = self.jobs.popleft()
                await asyncio.sleep(0.3)
                fut.set_result(b"PCM " + text.encode())
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter


class TurnTracker:
    def __init__(self):
        self.turn = 0
        self.changed = asyncio.Condition()

    async def bump(self):
        async with self.changed:
            self.turn += 1
            self.changed.notify_all()


class LLM:
    def __init__(self):
        self.context_lock = asyncio.Lock()
        self.context = []

    async def stream_reply(self, turn):
        async with self.context_lock:  # held until the whole reply has been consumed
            for i in range(REPLY_TOKENS):
                await asyncio.sleep(0.05)
                token = f"t{turn}.{i}"
                self.context.append(token)
                yield token


class Bot:
    def __init__(self, tools, turns):
        self.llm, self.tools, self.turns = LLM(), tools, turns
        self.synth = SynthPool(2)
        self.inbound, self.outbound = asyncio.Queue(), asyncio.Queue()
        self.summaries, self.transcript, self.forecasts = [], [], []
        self.background = set()

    async def run_transport(self, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(self.receive_loop(reader), self.send_loop(writer), self.dispatch())

    async def receive_loop(self, reader):
        while line := await reader.readline():
            await self.inbound.put(line)

    async def send_loop(self, writer):
        while True:
            writer.write(await self.outbound.get())
            await writer.drain()

    async def dispatch(self):
        while True:
            kind, _, body = (await self.inbound.get()).strip().partition(b" ")
            if kind == b"EOS":
                await self.turns.bump()
                for coro in (self.bot_turn(int(body)), self.summarize(), self.store_transcript(), self.lookup_weather()):
                    task = asyncio.create_task(coro)
                    self.background.add(task)
                    task.add_done_callback(self.background.discard)

    async def bot_turn(self, turn):
        async for token in self.llm.stream_reply(turn):
            pcm = await self.synth.synthesize(token)
            await self.outbound.put(pcm + b"\n")

    async def summarize(self):
        await asyncio.sleep(0.1)
        async with self.llm.context_lock:
            self.summaries.append(len(self.llm.context))
            del self.summaries[:-10]

    async def store_transcript(self):
        await asyncio.sleep(0.1)
        async with self.llm.context_lock:
            self.transcript[:] = self.llm.context[-20:]

    async def lookup_weather(self):
        self.forecasts.append(await self.tools.call("weather"))
        del self.forecasts[:-10]


async def track_turns(turns, name, seen_turns):
    seen = 0
    while True:
        async with turns.changed:
            await turns.changed.wait_for(lambda: turns.turn > seen)
            seen = turns.turn
        seen_turns.append((name, seen))
        del seen_turns[:-20]


async def main():
    device, tool_server = UserDevice(), ToolServer()
    device_listener = await asyncio.start_server(device.handle, "127.0.0.1", 0)
    tool_listener = await asyncio.start_server(tool_server.handle, "127.0.0.1", 0)
    tools = ToolClient()
    await tools.connect(tool_listener.sockets[0].getsockname()[1])
    turns, seen_turns = TurnTracker(), []
    bot = Bot(tools, turns)
    tasks = [asyncio.create_task(bot.run_transport(device_listener.sockets[0].getsockname()[1])),
             asyncio.create_task(track_turns(turns, "latency", seen_turns)),
             asyncio.create_task(track_turns(turns, "billing", seen_turns))]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
