"""Loops a gather runs beside one that has ended: a client's read loop returns at EOF, its
write loop and its processor wait on queues that only the gathering task (stuck in that
very gather) and the ended reader fed.  Nothing left can feed them: orphaned.  With a
task that can still put into the queues, suspects.  Real programs under ``diag run``, on
asyncio and uvloop."""

from __future__ import annotations

import time

import pytest

from tests.diag.test_leaks_evidence import RUN_ON, settled
from tests.support.programs import DiagRun

LOOPS = """
import asyncio, os, signal

class Client:
    def __init__(self):
        self.outgoing = asyncio.Queue()
        self.incoming = asyncio.Queue()

    async def run(self, port):
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            self.outgoing.put_nowait(b"hello\\n")
            await asyncio.gather(self.read_loop(reader), self.write_loop(writer), self.process())
            writer.close()      # then reconnect: never reached

    async def read_loop(self, reader):
        while line := await reader.readline():
            await self.incoming.put(line)

    async def write_loop(self, writer):
        while True:
            writer.write(await self.outgoing.get())

    async def process(self):
        while True:
            await self.incoming.get()

async def pinger(client):
    while True:
        await asyncio.sleep(0.2)
        if os.environ.get("NEVER"):
            client.outgoing.put_nowait(b"ping\\n")
            client.incoming.put_nowait(b"pong\\n")

async def serve(reader, writer):
    await reader.readline()
    writer.close()              # the server drops the connection

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = Client()
    keep = [asyncio.create_task(client.run(server.sockets[0].getsockname()[1]), name="run")]
    if os.environ["FEEDER"] == "task":
        keep.append(asyncio.create_task(pinger(client), name="pinger"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON

LOOP_TASKS = {"Client.write_loop", "Client.process"}


def _by_coro(data: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in data["findings"]:
        for t in f.get("tasks", []):
            out.setdefault(t["coro"], set()).add(f["kind"])
    return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_loops_beside_an_ended_one_that_nothing_left_can_feed_are_orphaned(loop: str) -> None:
    with DiagRun(LOOPS, env={"LOOP": loop, "FEEDER": "none"}) as app:
        deadline = time.monotonic() + 60
        while True:
            code, data = settled(app.url, set(), "--min-wait", "1")
            kinds = _by_coro(data)
            if all(kinds.get(c) == {"orphaned"} for c in LOOP_TASKS) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert all(kinds.get(c) == {"orphaned"} for c in LOOP_TASKS), data["findings"]
        finding = next(f for f in data["findings"] if f["kind"] == "orphaned")
        assert "Client.read_loop" in finding["evidence"] and "already returned" in finding["evidence"], finding
        assert "task" in finding["evidence"] and "Client.run on gather" in finding["evidence"], finding
        assert code == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_task_that_can_still_feed_them_keeps_them_suspects(loop: str) -> None:
    with DiagRun(LOOPS, env={"LOOP": loop, "FEEDER": "task"}) as app:
        deadline = time.monotonic() + 60
        while True:  # until they have waited as long as the orphaned ones above are judged at
            code, data = settled(app.url, set(), "--min-wait", "1")
            waited = [t["wait"].get("seconds") or 0 for f in data["findings"] for t in f.get("tasks", [])
                      if t["coro"] in LOOP_TASKS]
            if (len(waited) == 2 and min(waited) >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(waited) == 2 and min(waited) >= 3, data["findings"]
        kinds = _by_coro(data)
        assert all(kinds.get(c) == {"suspect"} for c in LOOP_TASKS), data["findings"]
        assert code == 0
