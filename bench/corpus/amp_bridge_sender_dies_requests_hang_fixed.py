"""A home-automation bridge for an AV amplifier whose command sender task dies; every later command waits forever.

Modelled on elupus/arcam_fmj #96: "feat: use send task for send priority": requests go
through a priority queue to a single send task that writes each command and resolves the
caller's future with the amplifier's answer; the review found that when the send task
failed, the future of the command it was sending and those of every command still queued
(or queued later) were never resolved, so their callers waited for good.

Here ``AmpClient._process_send`` is the only consumer of ``AmpClient._queue``.  About 1.4 s
in, ``now_playing_sync`` pushes a podcast title longer than the 255 bytes a frame's length
byte can describe; encoding the frame raises ``ValueError`` inside the send task, which
ends with an exception nobody retrieves (the bridge keeps the task only in a list).  The
title's caller and every caller after it (the volume poller, the heartbeat, the wall
panel's request handler) put their commands in the queue and wait on futures that nothing
will resolve.  The fix fails the in-flight and queued futures when the send task stops and
closes the queue to new commands, so callers get ``NotConnected`` at once.
"""
import asyncio
import dataclasses
import itertools
import signal

START, END = 0x21, 0x0D
POWER, VOLUME, SOURCE, DISPLAY_TEXT, HEARTBEAT, STATUS_PUSH = 0x00, 0x0D, 0x1D, 0x3A, 0x25, 0x50
ANSWER_OK = 0x00
REQUEST_TIMEOUT = 0.5
SETTLE = 0.005


class NotConnected(ConnectionError):
    pass


def encode_frame(zone, command, data, answer=None):
    header = [START, zone, command] + ([] if answer is None else [answer])
    return bytes(header) + bytes([len(data)]) + data + bytes([END])


async def read_frame(reader, with_answer):
    header = await reader.readexactly(5 if with_answer else 4)
    body = await reader.readexactly(header[-1] + 1)
    if header[0] != START or body[-1] != END:
        raise ValueError("framing error")
    answer = header[3] if with_answer else None
    return header[1], header[2], answer, body[:-1]


class AmpEmulator:
    """The amplifier's IP control port: answers commands, pushes a status frame every second."""

    def __init__(self):
        self.state = {POWER: 1, VOLUME: 35, SOURCE: 3, DISPLAY_TEXT: 0}

    async def handle(self, reader, writer):
        pusher = asyncio.create_task(self.push_status(writer))
        try:
            while True:
                zone, command, _, data = await read_frame(reader, with_answer=False)
                await asyncio.sleep(0.01)  # the amp's microcontroller takes a moment
                if data and data != b"\xf0":
                    self.state[command] = data[0] if command != DISPLAY_TEXT else len(data)
                value = self.state.get(command, 0)
                writer.write(encode_frame(zone, command, bytes([value & 0xFF]), ANSWER_OK))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            pusher.cancel()
            writer.close()

    async def push_status(self, writer):
        for n in itertools.count():
            await asyncio.sleep(1.0)
            writer.write(encode_frame(1, STATUS_PUSH, bytes([n & 0xFF, 48]), ANSWER_OK))


@dataclasses.dataclass(order=True)
class QueueItem:
    priority: int
    seq: int
    command: int = dataclasses.field(compare=False)
    data: bytes = dataclasses.field(compare=False)
    future: asyncio.Future = dataclasses.field(compare=False)


class AmpClient:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self._queue = None
        self._seq = 0
        self._listeners = set()
        self._tasks = []
        self.status = {}

    async def start(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._queue = asyncio.PriorityQueue()
        self._tasks = [asyncio.create_task(self._process_receive(reader)),
                       asyncio.create_task(self._process_send(writer))]

    async def request(self, command, data=b"\xf0", priority=10):
        if self._queue is None:
            raise NotConnected("amplifier not connected")
        future = asyncio.get_running_loop().create_future()
        self._seq += 1
        self._queue.put_nowait(QueueItem(priority, self._seq, command, data, future))
        return await future

    async def _process_receive(self, reader):
        while True:
            frame = await read_frame(reader, with_answer=True)
            if frame[1] == STATUS_PUSH:
                self.status["pushes"] = self.status.get("pushes", 0) + 1
            for listener in list(self._listeners):
                listener(frame)

    async def _write_and_wait(self, writer, item):
        answered = asyncio.get_running_loop().create_future()

        def listen(frame):
            if frame[1] == item.command and not answered.done():
                answered.set_result(frame)

        self._listeners.add(listen)
        try:
            writer.write(encode_frame(1, item.command, item.data))
            await writer.drain()
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await answered
        finally:
            self._listeners.discard(listen)

    async def _process_send(self, writer):
        while True:
            item = await self._queue.get()
            try:
                frame = await self._write_and_wait(writer, item)
            except TimeoutError as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            except Exception as exc:  # the sender is done for: fail this command and every queued one
                queue, self._queue = self._queue, None  # and refuse new ones
                for pending in [item, *(queue.get_nowait() for _ in range(queue.qsize()))]:
                    if not pending.future.done():
                        pending.future.set_exception(NotConnected(f"command sender failed: {exc!r}"))
                return
            else:
                if not item.future.done():
                    item.future.set_result(frame)
            await asyncio.sleep(SETTLE)


class ControlApi:
    """The bridge's line-based API for the wall panels: 'VOL n', 'SRC n', 'CACHED'."""

    def __init__(self, client):
        self.client = client

    async def handle(self, reader, writer):
        while line := await reader.readline():
            verb, _, arg = line.decode().strip().partition(" ")
            try:
                if verb == "CACHED":
                    reply = f"pushes={self.client.status.get('pushes', 0)}"
                else:
                    command = VOLUME if verb == "VOL" else SOURCE
                    frame = await self.client.request(command, bytes([int(arg)]), priority=0)
                    reply = f"ok {frame[3][0]}"
            except (NotConnected, TimeoutError) as exc:
                reply = f"error {exc!r}"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        writer.close()


async def wall_panel(port, commands, log):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in itertools.count():
        writer.write(commands[n % len(commands)].encode() + b"\n")
        log.append(await reader.readline())
        del log[:-20]
        await asyncio.sleep(0.3)


async def volume_poller(client, levels):
    while True:
        try:
            frame = await client.request(VOLUME)
            levels.append(frame[3][0])
            del levels[:-20]
        except (NotConnected, TimeoutError):
            pass
        await asyncio.sleep(0.25)


async def heartbeat(client, beats):
    while True:
        await asyncio.sleep(0.5)
        try:
            await client.request(HEARTBEAT, priority=100)
            beats.append("ok")
        except (NotConnected, TimeoutError):
            beats.append("missed")
        del beats[:-20]


async def now_playing_sync(client, shown):
    titles = ["Morning Jazz", "Blue in Green", "So What", "Freddie Freeloader",
              "Daily Tech Briefing - Episode 412: " + "an interview about home networks, " * 8,
              "Kind of Blue (Remastered)"]
    for title in titles:
        try:
            await client.request(DISPLAY_TEXT, title.encode())
            shown.append(title[:20])
        except (NotConnected, TimeoutError):
            shown.append(None)
        await asyncio.sleep(0.35)


async def main():
    loop = asyncio.get_running_loop()
    amp = AmpEmulator()
    amp_server = await asyncio.start_server(amp.handle, "127.0.0.1", 0)
    client = AmpClient("127.0.0.1", amp_server.sockets[0].getsockname()[1])
    await client.start()
    api = ControlApi(client)
    api_server = await asyncio.start_server(api.handle, "127.0.0.1", 0)
    api_port = api_server.sockets[0].getsockname()[1]
    levels, beats, shown, panel_log, viewer_log = [], [], [], [], []
    tasks = [asyncio.create_task(volume_poller(client, levels)),
             asyncio.create_task(heartbeat(client, beats)),
             asyncio.create_task(now_playing_sync(client, shown)),
             asyncio.create_task(wall_panel(api_port, ["VOL 30", "SRC 5", "VOL 32"], panel_log)),
             asyncio.create_task(wall_panel(api_port, ["CACHED"], viewer_log))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        api_server.close()
        amp_server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
