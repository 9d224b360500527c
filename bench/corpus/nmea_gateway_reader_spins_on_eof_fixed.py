"""A boat's data hub whose gateway reader spins on the loop once the serial-to-TCP bridge closes its socket.

Modelled on tomer-w/nmea2000 #61: "fix: TextNmea2000Gateway spin-loop at 100% CPU on TCP
disconnect": when the remote bridge closed the connection, ``StreamReader.readline()``
returned ``b""``; the gateway decoded it to an empty string, failed to parse it, logged
and returned normally, and its receive loop called it again at once, forever.

Here ``TextGateway._receive_impl`` reads one NMEA 0183 sentence from the bridge and counts
a line that does not parse as a bad sentence.  About 1.2 s in, the bridge goes through a
watchdog reset and closes the connection cleanly.  From then on ``readline()`` returns
``b""`` at once, without ever suspending, so ``TextGateway.run`` never hands the event loop
back: the dashboard and its clients, the alarm workers, the track logger and the bridge
all stop, and the reconnect path in ``run`` is never reached.  The fix treats ``b""`` as
the connection closing, so ``run`` reconnects once the bridge is back.
"""
import asyncio
import functools
import logging
import math
import random
import signal

log = logging.getLogger("hub.gateway")
RECONNECT_DELAY = 0.5


def checksum(body):
    return functools.reduce(lambda acc, ch: acc ^ ord(ch), body, 0)


def sentence(body):
    return f"${body}*{checksum(body):02X}"


def parse_sentence(text):
    if not text.startswith("$") or "*" not in text:
        raise ValueError("not a sentence")
    body, _, check = text[1:].rpartition("*")
    if int(check, 16) != checksum(body):
        raise ValueError("bad checksum")
    talker, *fields = body.split(",")
    return talker, fields


class TextGateway:
    def __init__(self, host, port, on_sentence):
        self.host, self.port = host, port
        self.on_sentence = on_sentence
        self.sentences = self.bad_sentences = self.reconnects = 0
        self._reader = self._writer = None

    async def _receive_impl(self):
        line = await self._reader.readline()
        if not line:
            raise ConnectionError("bridge closed the connection")
        text = line.decode("ascii", errors="replace").strip()
        try:
            talker, fields = parse_sentence(text)
        except ValueError:
            self.bad_sentences += 1
            log.debug("dropping unparsable sentence %r", text)
            return
        self.sentences += 1
        await self.on_sentence(talker, fields)

    async def run(self):
        while True:
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                while True:
                    await self._receive_impl()
            except (ConnectionError, OSError) as exc:
                log.warning("bridge connection lost (%s), reconnecting", exc)
                if self._writer is not None:
                    self._writer.close()
                self.reconnects += 1
                await asyncio.sleep(RECONNECT_DELAY)


class SerialBridge:
    """The serial-to-TCP bridge on the NMEA bus: streams sentences, and resets once."""

    def __init__(self, reset_after):
        self.reset_after = reset_after
        self.rng = random.Random(17)

    def next_sentence(self, n):
        heading = (n * 0.7) % 360
        kind = n % 3
        if kind == 0:
            return sentence(f"GPRMC,1200{n % 60:02d},A,5956.{n % 1000:03d},N,01043.{n % 1000:03d},E,5.2,"
                            f"{heading:.1f},010624,,")
        if kind == 1:
            return sentence(f"SDDBT,,f,{8 + math.sin(n / 20):.1f},M,,F")
        return sentence(f"WIMWV,{self.rng.uniform(0, 359):.0f},R,{self.rng.uniform(4, 14):.1f},N,A")

    async def handle(self, reader, writer):
        n = 0
        try:
            while True:
                writer.write((self.next_sentence(n) + "\r\n").encode())
                await writer.drain()
                n += 1
                if n == self.reset_after:
                    self.reset_after = None  # the watchdog resets the bridge once
                    break
                await asyncio.sleep(0.02)
        except OSError:
            pass
        finally:
            writer.close()


class Hub:
    def __init__(self):
        self.position = None
        self.depth = None
        self.alarms = asyncio.Queue()

    async def on_sentence(self, talker, fields):
        if talker == "GPRMC":
            self.position = (fields[2], fields[4], fields[7])
        elif talker == "SDDBT":
            self.depth = float(fields[2])
            if self.depth < 2.0:
                await self.alarms.put(("shallow", self.depth))


async def alarm_worker(hub, raised):
    while True:
        kind, value = await hub.alarms.get()
        await asyncio.sleep(0.01)  # sound the buzzer, notify the phone
        raised.append((kind, value))


async def dashboard(hub, reader, writer):
    while line := await reader.readline():
        if line.strip() == b"position":
            writer.write(f"{hub.position} depth={hub.depth}\n".encode())
            await writer.drain()
    writer.close()


async def display(port, shown):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        writer.write(b"position\n")
        shown.append(await reader.readline())
        del shown[:-20]
        await asyncio.sleep(0.2)


async def track_logger(hub, track):
    while True:
        track.append(hub.position)
        del track[:-100]
        await asyncio.sleep(0.5)


async def main():
    loop = asyncio.get_running_loop()
    hub = Hub()
    bridge = SerialBridge(reset_after=60)
    bridge_server = await asyncio.start_server(bridge.handle, "127.0.0.1", 0)
    dash_server = await asyncio.start_server(functools.partial(dashboard, hub), "127.0.0.1", 0)
    gateway = TextGateway("127.0.0.1", bridge_server.sockets[0].getsockname()[1], hub.on_sentence)
    raised, shown, track = [], [], []
    dash_port = dash_server.sockets[0].getsockname()[1]
    tasks = [asyncio.create_task(gateway.run()), asyncio.create_task(track_logger(hub, track)),
             *(asyncio.create_task(alarm_worker(hub, raised)) for _ in range(2)),
             *(asyncio.create_task(display(dash_port, shown)) for _ in range(2))]
    try:
        await asyncio.sleep(1.0)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        bridge_server.close()
        dash_server.close()
        del tasks


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
