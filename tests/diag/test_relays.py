"""A wait whose only other user is itself waiting for work that nobody left can hand it:
requests pending on a client whose reader hit EOF, and an idle worker of the same pool
that holds the client too.  The idle worker could act only once fed; when no task left
(and nothing outside the tasks) can put into its queue, the requests are orphaned.  A
feeder that can still run keeps them suspects.  Real programs under ``diag run``, on
asyncio and uvloop."""

from __future__ import annotations

import time

import pytest

from diag.collect import task_origins
from tests.diag.test_leaks_evidence import RUN_ON, by_task, judged_as, settled
from tests.support.programs import DiagRun

POOL = """
import asyncio, os, signal

class Client:
    def __init__(self, writer):
        self._writer = writer
        self._pending = {}

    async def receive(self, reader):
        while line := await reader.readline():
            fut = self._pending.pop(int(line), None)
            if fut is not None:
                fut.set_result(line)

    async def request(self, n):
        fut = asyncio.get_running_loop().create_future()
        self._pending[n] = fut
        self._writer.write(b"%d\\n" % n)
        return await fut

async def worker(client, jobs):
    while True:
        n = await jobs.get()
        await client.request(n)

async def feeder(jobs):
    while True:
        await asyncio.sleep(0.2)
        if jobs.qsize() > 1000:
            jobs.put_nowait(0)

async def serve(reader, writer):
    await reader.readline()
    writer.close()              # the peer goes away with the requests unanswered

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = Client(writer)
    jobs = asyncio.Queue()
    keep = [asyncio.create_task(worker(client, jobs), name=f"worker-{i}") for i in range(3)]
    keep.append(asyncio.create_task(client.receive(reader), name="receive"))
    if os.environ["FEEDER"] == "task":
        keep.append(asyncio.create_task(feeder(jobs), name="feeder"))
    jobs.put_nowait(1)
    jobs.put_nowait(2)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    del keep
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_whose_only_other_user_waits_for_work_nobody_can_give_are_orphaned(loop: str) -> None:
    if not hasattr(task_origins._fast, "frame_locals"):
        pytest.skip("the main task holds the queue in a local: read by the C accelerator")
    with DiagRun(POOL, env={"LOOP": loop, "FEEDER": "none"}) as app:
        code, data = judged_as(app.url, {"worker-0", "worker-1"}, "orphaned")
        (finding,) = {f["title"]: f for name in ("worker-0", "worker-1") for f in by_task(data)[name]}.values()
        assert "reader is at EOF" in finding["evidence"], finding
        assert "for work that no task left can hand it, nor anything outside the tasks" in finding["evidence"], finding
        assert "worker-2" not in by_task(data), data["findings"]  # the idle worker is no finding itself
        assert all(t["wait"].get("relay") is not True for t in finding["tasks"]), finding  # no relays themselves
        assert code == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_feeder_that_can_still_run_keeps_them_suspects(loop: str) -> None:
    with DiagRun(POOL, env={"LOOP": loop, "FEEDER": "task"}) as app:
        deadline = time.monotonic() + 60
        while True:  # until the requests have waited as long as the orphaned ones above are judged at
            code, data = settled(app.url, {"worker-0", "worker-1"}, "--min-wait", "1")
            waited = [t["wait"].get("seconds") or 0 for name in ("worker-0", "worker-1")
                      for f in by_task(data).get(name, []) for t in f["tasks"]]
            if (waited and min(waited) >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert waited and min(waited) >= 3, data["findings"]
        kinds = {f["kind"] for name in ("worker-0", "worker-1") for f in by_task(data).get(name, [])}
        assert kinds == {"suspect"}, data["findings"]
        assert code == 0
