"""A mesh-radio repeater whose stats broadcast runs a heavy synchronous SQLite query on the event loop.

Modelled on openhop-dev/openhop_repeater #303: "Fix: Stop blocking the event loop with
synchronous SQLite": the repeater's storage ran SQLite statements (per-packet writes,
cumulative counts, 24-hour packet statistics) directly on the asyncio loop thread, which
stalled for as long as each query took, so web UI requests such as sending an advert
timed out; the fix moved the SQLite work to dedicated threads.

Here the repeater reads packets from its radio modem (a KISS-style TCP link on
127.0.0.1), stores each one, and forwards some of them.  Every 2 s ``stats_broadcast``
refreshes the dashboard with ``PacketStore.packet_stats``: a grouped query over the last
24 hours (about 300,000 rows), called directly from the coroutine, which holds the loop
for roughly 0.3-0.6 s (machine-dependent) each time.  No task is stuck; between queries
everything runs normally.  The fix runs the query in a worker thread with
``asyncio.to_thread`` (the store keeps a separate reader connection for it).
"""
import asyncio
import json
import os
import random
import signal
import sqlite3
import tempfile
import time

HISTORY_ROWS = 300_000
STATS_INTERVAL = 2.0
PACKET_TYPES = ["advert", "txt", "ack", "path", "req", "resp", "trace", "grp_txt"]


class PacketStore:
    def __init__(self, path):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE packets (id INTEGER PRIMARY KEY, ts REAL, type INTEGER, route TEXT,"
                        " rssi INTEGER, snr REAL, src TEXT, dst TEXT, length INTEGER, hops INTEGER,"
                        " forwarded INTEGER)")
        self.db.commit()
        self.reader = sqlite3.connect(path, check_same_thread=False)  # used by the stats query only
        self.recorded = 0

    def seed_history(self, rows, now):
        """Yesterday's traffic, as the repeater finds it in its database after a restart."""
        self.db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO packets (ts, type, route, rssi, snr, src, dst, length, hops, forwarded)"
            " SELECT ? - 86400.0 + 86400.0 * i / ?, abs(random()) % 8,"
            " CASE WHEN random() % 3 = 0 THEN 'direct' ELSE 'flood' END,"
            " -120 + abs(random()) % 80, (abs(random()) % 220) / 10.0 - 10.0,"
            " printf('%04x', abs(random()) % 400), printf('%04x', abs(random()) % 400),"
            " 10 + abs(random()) % 190, abs(random()) % 7, abs(random()) % 2 FROM n",
            (rows - 1, now, rows))
        self.db.commit()

    def record(self, packet, forwarded):
        self.db.execute(
            "INSERT INTO packets (ts, type, route, rssi, snr, src, dst, length, hops, forwarded)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), PACKET_TYPES.index(packet["type"]), packet["route"], packet["rssi"], packet["snr"],
             packet["src"], packet["dst"], len(packet["payload"]), packet["hops"], int(forwarded)))
        self.db.commit()
        self.recorded += 1

    def packet_stats(self, hours):
        since = time.time() - hours * 3600
        by_type = self.reader.execute(
            "SELECT type, route, count(*), avg(rssi), avg(snr), max(hops), sum(length),"
            " count(DISTINCT src), count(DISTINCT dst), sum(forwarded)"
            " FROM packets WHERE ts > ? GROUP BY type, route", (since,)).fetchall()
        timeline = self.reader.execute(
            "SELECT CAST((ts - ?) / 900 AS INTEGER) AS bucket, count(*), avg(rssi)"
            " FROM packets WHERE ts > ? GROUP BY bucket", (since, since)).fetchall()
        return {"by_type": len(by_type), "buckets": len(timeline), "total": sum(row[2] for row in by_type)}


class ModemLink:
    """The radio modem: hands received packets to the host, transmits what the host sends."""

    def __init__(self):
        self.rng = random.Random(3)
        self.transmitted = 0

    async def handle(self, reader, writer):
        tx_task = asyncio.create_task(self.transmit(reader, writer))
        try:
            while True:
                await asyncio.sleep(self.rng.uniform(0.04, 0.08))
                packet = {"type": self.rng.choice(PACKET_TYPES), "route": self.rng.choice(["flood", "direct"]),
                          "rssi": self.rng.randint(-120, -40), "snr": round(self.rng.uniform(-10, 12), 1),
                          "src": f"{self.rng.randrange(400):04x}", "dst": f"{self.rng.randrange(400):04x}",
                          "hops": self.rng.randint(0, 5), "payload": "x" * self.rng.randint(10, 150)}
                writer.write(b"RX " + json.dumps(packet).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            tx_task.cancel()
            writer.close()

    async def transmit(self, reader, writer):
        while line := await reader.readline():
            await asyncio.sleep(0.005 + len(line) / 50_000)  # airtime
            self.transmitted += 1
            writer.write(b"TXDONE " + line.split(b" ", 2)[1] + b"\n")


class Repeater:
    def __init__(self, store, port):
        self.store, self.port = store, port
        self.tx_queue = asyncio.Queue()
        self.tx_done = {}
        self.tx_ids = iter(range(1, 1 << 30))
        self.stats = {}
        self.writer = None

    async def run(self):
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        while line := await reader.readline():
            kind, _, body = line.partition(b" ")
            if kind == b"RX":
                packet = json.loads(body)
                forward = packet["route"] == "flood" and packet["hops"] < 4
                self.store.record(packet, forward)
                if forward:
                    self.tx_queue.put_nowait(dict(packet, hops=packet["hops"] + 1))
            elif kind == b"TXDONE":
                future = self.tx_done.pop(int(body), None)
                if future is not None and not future.done():
                    future.set_result(True)

    async def transmitter(self):
        while True:
            packet = await self.tx_queue.get()
            tx_id = packet.pop("tx_id", None) or next(self.tx_ids)
            self.writer.write(f"TX {tx_id} {json.dumps(packet)}\n".encode())
            await self.writer.drain()

    async def send_advert(self, name):
        tx_id = next(self.tx_ids)
        done = self.tx_done[tx_id] = asyncio.get_running_loop().create_future()
        self.tx_queue.put_nowait({"tx_id": tx_id, "type": "advert", "name": name})
        async with asyncio.timeout(2.0):
            await done

    async def stats_broadcast(self):
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            stats = await asyncio.to_thread(self.store.packet_stats, 24)
            self.stats = dict(stats, recorded=self.store.recorded)


class WebUi:
    def __init__(self, repeater):
        self.repeater = repeater

    async def handle(self, reader, writer):
        while line := await reader.readline():
            if line.strip() == b"ADVERT":
                try:
                    await self.repeater.send_advert("hilltop-rpt")
                    writer.write(b"advert sent\n")
                except TimeoutError:
                    writer.write(b"advert timed out\n")
            else:
                writer.write(json.dumps(self.repeater.stats).encode() + b"\n")
            await writer.drain()
        writer.close()


async def ui_client(port, request, interval, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        started = time.monotonic()
        writer.write(request + b"\n")
        await reader.readline()
        latencies.append(time.monotonic() - started)
        del latencies[:-50]
        await asyncio.sleep(interval)


async def main():
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        store = PacketStore(os.path.join(tmp, "repeater.db"))
        store.seed_history(HISTORY_ROWS, time.time())
        modem = ModemLink()
        modem_server = await asyncio.start_server(modem.handle, "127.0.0.1", 0)
        repeater = Repeater(store, modem_server.sockets[0].getsockname()[1])
        ui = WebUi(repeater)
        ui_server = await asyncio.start_server(ui.handle, "127.0.0.1", 0)
        ui_port = ui_server.sockets[0].getsockname()[1]
        latencies = []
        tasks = [asyncio.create_task(repeater.run()), asyncio.create_task(repeater.transmitter()),
                 asyncio.create_task(repeater.stats_broadcast()),
                 asyncio.create_task(ui_client(ui_port, b"STATS", 0.3, latencies)),
                 asyncio.create_task(ui_client(ui_port, b"ADVERT", 1.5, latencies))]
        try:
            await asyncio.sleep(1.0)
            print("ready", flush=True)
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
        finally:
            ui_server.close()
            modem_server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.db.close()


if __name__ == "__main__":
    from _corpus_runner import run
    run(main)
