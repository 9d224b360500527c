"""The hangs real services have, as stand-alone programs under ``diag run``: each new
piece of evidence and each new verdict on a real process over loopback, on asyncio's
loop and on uvloop, next to a fixed twin that must stay quiet."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from diag.collect import holders, task_origins
from tests.support.cli import run_diag
from tests.support.programs import DiagRun

RUN_ON = """
import os
if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

HANGS = """
import asyncio, sys, threading

LOCK = asyncio.Lock()
POOL = asyncio.Semaphore(1)
JOBS = asyncio.Queue(maxsize=1)
NEVER = threading.Event()

class Client(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.pending = {}
    def connection_made(self, transport):
        self.transport = transport
    def connection_lost(self, exc):
        self.transport = None              # the bug: pending requests are never failed

async def nested():
    async with LOCK:
        await helper()

async def helper():
    async with LOCK:                       # asyncio.Lock is not reentrant
        pass

async def queued_on_lock():
    async with LOCK:
        pass

async def consumer():
    await JOBS.get()
    raise ConnectionResetError("peer reset")

async def producer():
    for i in range(10):
        await JOBS.put(i)

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass                           # swallows the cancel

async def shutdown(task):
    task.cancel()
    await task

async def request(client):
    fut = asyncio.get_running_loop().create_future()
    client.pending[1] = fut
    return await fut

async def lookup():
    await asyncio.to_thread(NEVER.wait)    # a blocking call with no timeout

class Device:
    def __init__(self, loop):
        self.loop = loop
        self.pending = {}
        self.asked = threading.Event()
    def read_loop(self):                   # a reader thread that dies, leaving its futures unresolved
        self.asked.wait(10)
        raise OSError("device unplugged")

async def poll(device):
    fut = device.loop.create_future()
    device.pending[1] = fut
    device.asked.set()
    return await fut

BACKLOG = asyncio.Queue()

async def drain():
    while True:
        item = await BACKLOG.get()
        if item == 1:
            continue                       # the bug: this path skips task_done()
        BACKLOG.task_done()

async def join_batch():
    for i in range(3):
        await BACKLOG.put(i)
    await BACKLOG.join()

async def export():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('x' * 2000000)",
                                                stdout=asyncio.subprocess.PIPE)
    await proc.wait()                      # the bug: nothing reads stdout while waiting
    return await proc.stdout.read()

async def batch():
    await asyncio.gather(asyncio.sleep(0.01), queued_on_lock())

class Snmp(asyncio.DatagramProtocol):
    def __init__(self):
        self.pending = {}
    def datagram_received(self, data, addr):
        fut = self.pending[1]
        value = {"INTEGER": int}[data.decode()]  # the bug: a kind it cannot decode raises before the set
        del self.pending[1]
        fut.set_result(value)

async def snmp_get(client):
    fut = asyncio.get_running_loop().create_future()
    client.pending[1] = fut
    return await fut

class Rpc:
    def __init__(self, reader, writer):
        self.writer = writer
        self.pending = {}
        self.receiver = asyncio.create_task(self.receive(reader), name="rpc-receive")
    async def receive(self, reader):
        while line := await reader.readline():
            fut = self.pending.pop(int(line), None)
            if fut is not None:
                fut.set_result(line)
        # the bug: on EOF the requests in flight are left pending

async def rpc_call(rpc):
    fut = asyncio.get_running_loop().create_future()
    rpc.pending[2] = fut
    rpc.writer.write(b"2\\n")
    return await fut

async def hang_up(reader, writer):
    await reader.readline()
    writer.close()

async def main():
    loop = asyncio.get_running_loop()
    keep = [asyncio.create_task(nested(), name="nested")]
    await asyncio.sleep(0.05)
    keep += [asyncio.create_task(queued_on_lock(), name="queued"), asyncio.create_task(batch(), name="batch"),
             asyncio.create_task(consumer(), name="consumer"), asyncio.create_task(producer(), name="producer")]
    worker = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0.05)
    keep.append(asyncio.create_task(shutdown(worker), name="shutdown"))
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    transport, client = await loop.create_connection(Client, "127.0.0.1", server.sockets[0].getsockname()[1])
    keep.append(asyncio.create_task(request(client), name="request"))
    await asyncio.sleep(0.05)
    transport.close()
    keep.append(asyncio.create_task(lookup(), name="lookup"))
    device = Device(loop)
    threading.Thread(target=device.read_loop, name="device-reader", daemon=True).start()
    keep.append(asyncio.create_task(poll(device), name="poll"))
    keep += [asyncio.create_task(drain(), name=f"drain-{i}") for i in range(2)]
    keep.append(asyncio.create_task(join_batch(), name="join_batch"))
    keep.append(asyncio.create_task(export(), name="export"))
    udp, snmp = await loop.create_datagram_endpoint(Snmp, local_addr=("127.0.0.1", 0))
    keep.append(asyncio.create_task(snmp_get(snmp), name="snmp_get"))
    await asyncio.sleep(0.05)
    peer, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=udp.get_extra_info("sockname"))
    peer.sendto(b"Opaque")
    rpc_server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    rpc = Rpc(*await asyncio.open_connection("127.0.0.1", rpc_server.sockets[0].getsockname()[1]))
    keep.append(asyncio.create_task(rpc_call(rpc), name="rpc_call"))
    await asyncio.Event().wait()
""" + RUN_ON

FIXED = """
import asyncio, sys, threading

LOCK = asyncio.Lock()
JOBS = asyncio.Queue(maxsize=1)
NEVER = threading.Event()

class Client(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.pending = {}
    def connection_made(self, transport):
        self.transport = transport
    def connection_lost(self, exc):
        self.transport = None
        for fut in self.pending.values():  # the fix
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

async def nested():
    async with LOCK:
        await helper()

async def helper():                        # the fix: the caller holds the lock
    pass

async def queued_on_lock():
    async with LOCK:
        pass

async def consumer():
    while True:
        item = await JOBS.get()
        if item == 0:
            try:
                raise ConnectionResetError("peer reset")
            except ConnectionResetError:
                pass                       # the fix: a bad item does not kill the consumer

async def producer():
    for i in range(10):
        await JOBS.put(i)

async def worker_loop():
    while True:
        await asyncio.sleep(3600)          # the fix: the cancel ends it

async def shutdown(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

async def request(client):
    fut = asyncio.get_running_loop().create_future()
    client.pending[1] = fut
    try:
        return await fut
    except ConnectionError:
        return None

async def lookup():
    try:
        async with asyncio.timeout(600):   # the fix: the call has a deadline
            await asyncio.to_thread(NEVER.wait, 600)
    except TimeoutError:
        pass

class Device:
    def __init__(self, loop):
        self.loop = loop
        self.pending = {}
        self.asked = threading.Event()
    def read_loop(self):
        self.asked.wait(10)
        error = OSError("device unplugged")
        for fut in self.pending.values():  # the fix: a dying reader fails what it was asked
            self.loop.call_soon_threadsafe(fut.set_exception, error)
        raise error

async def poll(device):
    fut = device.loop.create_future()
    device.pending[1] = fut
    device.asked.set()
    try:
        return await fut
    except OSError:
        return None

BACKLOG = asyncio.Queue()

async def drain():
    while True:
        item = await BACKLOG.get()
        BACKLOG.task_done()                # the fix: every item is marked done

async def join_batch():
    for i in range(3):
        await BACKLOG.put(i)
    await BACKLOG.join()

async def export():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('x' * 2000000)",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()      # the fix: read while waiting
    return out

class Snmp(asyncio.DatagramProtocol):
    def __init__(self):
        self.pending = {}
    def datagram_received(self, data, addr):
        fut = self.pending.pop(1)
        try:
            fut.set_result({"INTEGER": int}[data.decode()])
        except KeyError as exc:            # the fix: a decoding error goes to the waiter
            fut.set_exception(ValueError(f"cannot decode {exc}"))

async def snmp_get(client):
    fut = asyncio.get_running_loop().create_future()
    client.pending[1] = fut
    try:
        return await fut
    except ValueError:
        return None

class Rpc:
    def __init__(self, reader, writer):
        self.writer = writer
        self.pending = {}
        self.receiver = asyncio.create_task(self.receive(reader), name="rpc-receive")
    async def receive(self, reader):
        while line := await reader.readline():
            fut = self.pending.pop(int(line), None)
            if fut is not None:
                fut.set_result(line)
        for fut in self.pending.values():  # the fix: EOF fails the requests in flight
            fut.set_exception(ConnectionError("closed"))

async def rpc_call(rpc):
    fut = asyncio.get_running_loop().create_future()
    rpc.pending[2] = fut
    rpc.writer.write(b"2\\n")
    try:
        return await fut
    except ConnectionError:
        return None

async def hang_up(reader, writer):
    await reader.readline()
    writer.close()

async def submit(gate, work, i):
    await gate.acquire()                   # handed on: the consumer gives it back once the item is done
    await work.put(i)

async def consume(gate, work):
    while True:
        await work.get()
        await asyncio.sleep(0.2)
        gate.release()

async def rate_limited(rate):
    while True:
        await rate.acquire()               # a rate limit: a timer gives the permit back
        asyncio.get_running_loop().call_later(0.3, rate.release)

async def main():
    loop = asyncio.get_running_loop()
    keep = [asyncio.create_task(nested(), name="nested"), asyncio.create_task(queued_on_lock(), name="queued"),
            asyncio.create_task(consumer(), name="consumer"), asyncio.create_task(producer(), name="producer")]
    worker = asyncio.create_task(worker_loop(), name="worker")
    await asyncio.sleep(0.05)
    keep.append(asyncio.create_task(shutdown(worker), name="shutdown"))
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    transport, client = await loop.create_connection(Client, "127.0.0.1", server.sockets[0].getsockname()[1])
    keep.append(asyncio.create_task(request(client), name="request"))
    await asyncio.sleep(0.05)
    transport.close()
    keep.append(asyncio.create_task(lookup(), name="lookup"))
    device = Device(loop)
    threading.Thread(target=device.read_loop, name="device-reader", daemon=True).start()
    keep.append(asyncio.create_task(poll(device), name="poll"))
    keep += [asyncio.create_task(drain(), name=f"drain-{i}") for i in range(2)]
    keep.append(asyncio.create_task(join_batch(), name="join_batch"))
    keep.append(asyncio.create_task(export(), name="export"))
    udp, snmp = await loop.create_datagram_endpoint(Snmp, local_addr=("127.0.0.1", 0))
    keep.append(asyncio.create_task(snmp_get(snmp), name="snmp_get"))
    await asyncio.sleep(0.05)
    peer, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=udp.get_extra_info("sockname"))
    peer.sendto(b"Opaque")
    rpc_server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    rpc = Rpc(*await asyncio.open_connection("127.0.0.1", rpc_server.sockets[0].getsockname()[1]))
    keep.append(asyncio.create_task(rpc_call(rpc), name="rpc_call"))
    gate, work = asyncio.Semaphore(2), asyncio.Queue()
    keep.append(asyncio.create_task(consume(gate, work), name="consume"))
    keep += [asyncio.create_task(submit(gate, work, i), name=f"submit-{i}") for i in range(300)]
    keep.append(asyncio.create_task(rate_limited(asyncio.Semaphore(2)), name="rate_limited"))
    await asyncio.Event().wait()
""" + RUN_ON

ALL_KINDS = ("proven_leak,leaked_permit,deadlock,stuck_behind,swallowed_cancel,orphaned,loop_blocked,lost_wakeup,"
             "exhausted,suspect")
WANTED = {"deadlock", "stuck_behind", "swallowed_cancel", "orphaned", "suspect"}


def leaks(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_diag("leaks", url, "--format", "json", *args, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_task(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in data["findings"]:
        for t in f["tasks"]:
            out.setdefault(t["name"], []).append(f)
    return out


def settled(url: str, wanted_names: set[str], *args: str, within: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``diag leaks`` once every wanted task is named by some finding (waits are lower
    bounds sampled once a second, so the verdicts appear over the first seconds)."""
    deadline = time.monotonic() + within
    while True:
        code, data = leaks(url, *args)
        if wanted_names <= set(by_task(data)) or time.monotonic() > deadline:
            return code, data
        time.sleep(0.3)


def judged_as(url: str, names: set[str], kind: str, within: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``diag leaks --min-wait 1`` asked until every finding naming the tasks ``names`` is of
    ``kind`` (waits are sampled once a second; the verdict comes in the first seconds);
    asserted, with what was seen."""
    deadline = time.monotonic() + within
    while True:
        code, data = leaks(url, "--min-wait", "1")
        found = by_task(data)
        kinds = {f["kind"] for name in names for f in found.get(name, [])}
        if kinds == {kind} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert kinds == {kind}, data["findings"]
    return code, data


def dump_until(url: str, ready: Callable[[list[dict[str, Any]]], bool], within: float = 60.0) -> list[dict[str, Any]]:
    """``diag tasks --debug 2`` asked until ``ready`` holds of its tasks (or ``within``
    seconds pass: the caller's assertion then says what was seen)."""
    deadline = time.monotonic() + within
    while True:
        tasks: list[dict[str, Any]] = json.loads(run_diag("tasks", url, "--format", "json", "--debug", "2").stdout)["tasks"]
        if ready(tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.3)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_hang_gets_its_verdict_and_names_its_mechanism(loop: str) -> None:
    names = {"nested", "queued", "batch", "producer", "stubborn", "shutdown", "request", "lookup", "poll",
             "join_batch", "export", "snmp_get", "rpc_call"}
    with DiagRun(HANGS, env={"LOOP": loop}) as app:
        code, data = settled(app.url, names, "--min-wait", "1", "--cancel-grace", "1")
        found = by_task(data)
        assert names <= set(found), (sorted(found), data["findings"])
        assert code == 1 and WANTED <= {f["kind"] for f in data["findings"]}

        def kind_of(name: str) -> set[str]:
            return {f["kind"] for f in found[name]}

        def evidence(name: str) -> str:
            return " | ".join(f["evidence"] for f in found[name])

        assert kind_of("nested") == {"deadlock"} and "holds __main__.LOCK" in evidence("nested")
        assert kind_of("queued") == {"stuck_behind"} and "waits on a lock it holds itself" in evidence("queued")
        assert kind_of("batch") == {"stuck_behind"} and "can never finish" in evidence("batch")
        assert kind_of("stubborn") == {"swallowed_cancel"} and kind_of("shutdown") == {"swallowed_cancel"}
        assert "(await task in shutdown)" in evidence("stubborn")
        # the other side gone (its consumer died, its connection closed, the thread or callback
        # that would answer died) and no other task that could act refers to it: orphaned
        assert kind_of("producer") == {"orphaned"}
        assert "consumer (task" in evidence("producer") and "ConnectionResetError: peer reset" in evidence("producer")
        assert "no other task refers to it or reaches for it through what keeps it" in evidence("producer")
        assert kind_of("request") == {"orphaned"}
        assert "is kept by Client.pending, its connection was lost" in evidence("request")
        assert kind_of("lookup") == {"suspect"}
        assert "in thread" in evidence("lookup") and "Condition.wait" in evidence("lookup")
        assert kind_of("poll") == {"orphaned"}
        assert ("the thread that used the object that keeps it (Device.pending" in evidence("poll")
                and "'device-reader' running Device.read_loop, died" in evidence("poll")
                and "with OSError: device unplugged" in evidence("poll"))
        assert "main" not in {t["coro"] for f in data["findings"] for t in f["tasks"]}  # the runner holds it
        # every task appears in one finding only: one finding per cause
        assert all(len(fs) == 1 for fs in found.values()), {n: [f["kind"] for f in fs] for n, fs in found.items()}
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
        dead = [d for d in tasks["dead_tasks"] if d["name"] == "consumer"]
        assert dead and dead[0]["exception"] == "ConnectionResetError: peer reset"
        assert any(t["runs_future"] for t in tasks["threads"])  # the worker thread of lookup's call
        assert kind_of("join_batch") == {"orphaned"}  # no task that could mark the item done is left
        assert ("1 item of __main__.BACKLOG" in evidence("join_batch")
                and "every consumer (2 tasks of drain) is idle in get()" in evidence("join_batch"))
        (join,) = [t for t in tasks["tasks"] if t["name"] == "join_batch"]
        assert (join["wait"]["kind"], join["wait"]["detail"]) == ("event", "Queue.join")
        assert join["wait"]["primitive"]["unfinished"] == 1 and join["wait"]["primitive"]["size"] == 0
        assert kind_of("export") == {"deadlock"}  # no other task can read the pipe
        assert "is blocked writing to its stdout pipe" in evidence("export")
        assert "no other task refers to that pipe" in evidence("export")
        (export,) = [t for t in tasks["tasks"] if t["name"] == "export"]
        child = export["wait"]["child"]
        assert (export["wait"]["detail"], child["state"], child["outputs"][0]["name"], child["outputs"][0]["paused"]) \
            == ("Process.wait", "S", "stdout", True)
        (reader,) = [d for d in tasks["dead_tasks"] if d["how"] == "thread_exception"]
        assert (reader["name"], reader["coro"], reader["exception"]) == (
            "device-reader", "Device.read_loop", "OSError: device unplugged")
        # a protocol callback that raised before it set the future: the loop only logged it
        assert kind_of("snmp_get") == {"orphaned"}
        assert ("the loop's callback Snmp.datagram_received, which used the future it awaits, raised KeyError: "
                "Opaque" in evidence("snmp_get")), evidence("snmp_get")
        (callback,) = [d for d in tasks["dead_tasks"] if d["how"] == "callback_exception"]
        assert (callback["coro"], callback["exception"]) == ("Snmp.datagram_received", "KeyError: Opaque")
        # a reader loop that returned on EOF, leaving the request in flight
        assert kind_of("rpc_call") == {"orphaned"}
        assert ("kept by Rpc.pending, writer: its stream's reader is at EOF (the peer closed the connection)"
                in evidence("rpc_call")), evidence("rpc_call")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_fixed_twin_has_no_finding_at_all(loop: str) -> None:
    with DiagRun(FIXED, env={"LOOP": loop}) as app:
        # Wait until the twin's long waits are old enough to be judged, then ask.
        deadline = time.monotonic() + 30
        while True:
            tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
            lookup = [t for t in tasks["tasks"] if t["name"] == "lookup"]
            if lookup and (lookup[0]["wait"]["seconds"] or 0) >= 1.5 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        code, data = leaks(app.url, "--min-wait", "1", "--cancel-grace", "1", "--stall-threshold", "5",
                           "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


RUNS_FOREVER = """
import asyncio

async def worker(jobs):
    while True:
        await jobs.get()

async def main():
    jobs = asyncio.Queue()           # only main holds it: main's frame runs again on Ctrl-C
    workers = [asyncio.create_task(worker(jobs), name=f"worker-{i}") for i in range(3)]
    await asyncio.Event().wait()     # run until stopped: an idiom, not a leak
""" + RUN_ON


RUNS_FOREVER_BOUNDED = RUNS_FOREVER.replace(RUN_ON, """
import os
if os.environ.get("LOOP") == "uvloop":
    import uvloop
    uvloop.run(asyncio.wait_for(main(), 600))
else:
    asyncio.run(asyncio.wait_for(main(), 600))  # on 3.11 main() runs in a task of wait_for's
""")


@pytest.mark.parametrize("bounded", [False, True], ids=["main", "wait_for-main"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_main_that_runs_forever_on_a_local_event_is_not_a_leak(loop: str, bounded: bool) -> None:
    with DiagRun(RUNS_FOREVER_BOUNDED if bounded else RUNS_FOREVER, env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 30
        while True:  # until the waits are old enough to be judged
            tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
            if all((t["wait"]["seconds"] or 0) >= 1.5 for t in tasks["tasks"]) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # uvloop.run wraps main in a coroutine of its own; 3.11's wait_for runs it in a task of its own
        mains = [t for t in tasks["tasks"] if t.get("main")]
        assert "main" in {f["function"] for t in mains for f in t["stack"]}, mains
        code, data = leaks(app.url, "--min-wait", "1", "--stall-threshold", "5", "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


PEER_NOT_READING = """
import asyncio

CHUNK = b"x" * (1 << 20)

async def serve(reader, writer):
    PEERS.append(writer)
    await asyncio.Event().wait()           # the bug: the peer never reads what it is sent

async def push():
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    while True:
        writer.write(CHUNK)
        await writer.drain()               # waits for the peer to read, with no timeout

async def hang_up():
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(CHUNK * 8)
    writer.close()
    await writer.wait_closed()             # the close waits for those bytes to go

async def main():
    global PORT
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    PORT = server.sockets[0].getsockname()[1]
    keep = [asyncio.create_task(push(), name="push"), asyncio.create_task(hang_up(), name="hang_up")]
    await asyncio.Event().wait()

PEERS = []
""" + RUN_ON

PEER_READING = PEER_NOT_READING.replace(
    "    await asyncio.Event().wait()           # the bug: the peer never reads what it is sent",
    "    while await reader.read(1 << 16):      # the fix: the peer reads\n        pass\n    writer.close()").replace(
    "    while True:\n        writer.write(CHUNK)", "    for _ in range(16):\n        writer.write(CHUNK)")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_writes_to_a_peer_that_stopped_reading_name_the_bytes_waiting(loop: str) -> None:
    # A drain() and a wait_closed() stuck behind a peer that accepted the connection but
    # never reads: the suspect is the writer, with what waits in its buffers, and a closing
    # transport with bytes still to send is never called closed.
    with DiagRun(PEER_NOT_READING, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"push", "hang_up"}, "--min-wait", "1")
        found = by_task(data)
        assert {"push", "hang_up"} <= set(found), data["findings"]
        push = " | ".join(f["evidence"] for f in found["push"])
        close = " | ".join(f["evidence"] for f in found["hang_up"])
        assert {f["kind"] for f in found["push"] + found["hang_up"]} == {"suspect"}
        assert "is not reading: " in push and "drain() returns only once it has read enough" in push, push
        assert "is closing, but " in close and "wait_closed() returns" in close, close
        assert "transport is closed" not in close and "nothing is left to wake it" not in close, close
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
        backlog = {t["name"]: t["wait"].get("backlog") for t in tasks["tasks"] if t["name"] in ("push", "hang_up")}
        assert backlog["push"]["closing"] is False and backlog["hang_up"]["closing"] is True, backlog
        assert backlog["hang_up"]["buffered"] + (backlog["hang_up"]["in_kernel"] or 0) > 0, backlog
        assert backlog["push"]["peer"].startswith("127.0.0.1:"), backlog
        text = run_diag("tasks", app.url, "--format", "text").stdout
        assert "StreamWriter.drain <to 127.0.0.1:" in text and "closing>" in text, text


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_writes_a_peer_reads_are_left_alone(loop: str) -> None:
    with DiagRun(PEER_READING, env={"LOOP": loop}) as app:
        def writers(tasks: list[dict[str, Any]]) -> set[str]:
            return {t["name"] for t in tasks} & {"push", "hang_up"}

        tasks = dump_until(app.url, lambda ts: not writers(ts))  # both done: every byte was read
        assert not writers(tasks), tasks
        code, data = leaks(app.url, "--min-wait", "1", "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


POOL_WAITS_ON_ITSELF = """
import asyncio, concurrent.futures, threading

POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
IO_POOL = POOL                             # the bug: template reads share the renderers' pool
SLOW = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slow")
NEVER = threading.Event()

async def template(name):
    return await asyncio.get_running_loop().run_in_executor(IO_POOL, str.upper, name)

def render(loop, page):
    return asyncio.run_coroutine_threadsafe(template(page), loop).result()

async def render_page(page):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(POOL, render, loop, page)

async def blocking_call(i):
    return await asyncio.get_running_loop().run_in_executor(SLOW, NEVER.wait)

async def main():
    keep = [asyncio.create_task(render_page(p), name=f"page-{p}") for p in ("index", "about")]
    keep += [asyncio.create_task(blocking_call(i), name=f"slow-{i}") for i in range(3)]
    await asyncio.Event().wait()
""" + RUN_ON

POOL_WITH_ITS_OWN_IO = POOL_WAITS_ON_ITSELF.replace(
    'IO_POOL = POOL                             # the bug: template reads share the renderers\' pool',
    'IO_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2)  # the fix: reads have their own pool').replace(
    "    keep += [asyncio.create_task(blocking_call(i), name=f\"slow-{i}\") for i in range(3)]\n", "")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_whose_threads_wait_on_calls_queued_in_it_is_a_deadlock(loop: str) -> None:
    # Each worker of "render" blocks in run_coroutine_threadsafe(...).result() on a task
    # whose run_in_executor call waits in the same pool's queue: a deadlock, proven from
    # the threads' stacks and the queue.  A one-worker pool stuck in a blocking call with
    # calls queued behind it is exhausted.
    with DiagRun(POOL_WAITS_ON_ITSELF, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"page-index", "page-about", "slow-1"}, "--min-wait", "1")
        kinds = {f["kind"]: f for f in data["findings"]}
        assert code == 1 and "deadlock" in kinds, data["findings"]
        lock = kinds["deadlock"]
        assert lock["title"] == "deadlock: every thread of executor render waits for a call queued behind it", lock
        assert "waits in Future.result() for task" in lock["evidence"] and "(template)" in lock["evidence"], lock
        assert {t["coro"] for t in lock["tasks"]} == {"template"} and lock["task_count"] == 2, lock
        behind = [f for f in data["findings"] if f["kind"] == "stuck_behind"]
        assert {t["name"] for f in behind for t in f["tasks"]} == {"page-index", "page-about"}, data["findings"]
        assert all("blocks with no timeout (Future.result())" in f["evidence"] for f in behind), behind
        slow = [f for f in data["findings"] if f["kind"] == "exhausted"]
        assert [f["title"] for f in slow] == ["executor slow is exhausted"], data["findings"]
        assert "its only worker is busy and 2 calls wait in its queue" in slow[0]["evidence"], slow
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
        render = [t for t in tasks["threads"] if t["executor"] == "render"]
        assert len(render) == 2 and all(t.get("waits_task") for t in render), render
        (pool,) = [e for e in tasks["executors"] if e["name"] == "render"]
        assert pool["queued"] == 2 and len(pool["queued_futures"]) == 2, pool


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_that_waits_on_another_pool_is_left_alone(loop: str) -> None:
    with DiagRun(POOL_WITH_ITS_OWN_IO, env={"LOOP": loop}) as app:
        def pages(tasks: list[dict[str, Any]]) -> list[str]:
            return [t["name"] for t in tasks if t["name"].startswith("page-")]

        tasks = dump_until(app.url, lambda ts: not pages(ts))  # both pages rendered
        assert not pages(tasks), tasks
        code, data = leaks(app.url, "--min-wait", "1", "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


CANCEL_CLEANUPS = """
import asyncio

FLUSHED = asyncio.Event()
NEVER = asyncio.Event()

async def drain_then_stop():
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await FLUSHED.wait()                # a graceful drain: flushes, then lets the cancel through
        raise

async def stuck_cleanup():
    try:
        await asyncio.sleep(3600)
    finally:
        await NEVER.wait()                  # the bug: a cleanup that never ends

async def main():
    tasks = [asyncio.create_task(drain_then_stop(), name="drain"), asyncio.create_task(stuck_cleanup(), name="stuck")]
    await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.Event().wait()

GLOBAL_KEEP = (FLUSHED, NEVER)
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_task_still_cleaning_up_after_its_cancel_is_judged_after_min_wait_not_the_cancel_grace(loop: str) -> None:
    # Both tasks were cancelled and wait in the block handling their CancelledError.  Past
    # --cancel-grace but under --min-wait neither is a swallowed cancel (a drain may take a
    # while); past --min-wait, a cleanup still waiting with no timeout is one, worded so.
    with DiagRun(CANCEL_CLEANUPS, env={"LOOP": loop}) as app:
        def cancelled(tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {t["name"]: t for t in tasks if t.get("cancel_seconds") is not None}

        found = cancelled(dump_until(app.url, lambda ts: len(cancelled(ts)) == 2 and min(
            t["cancel_seconds"] for t in cancelled(ts).values()) >= 1.5))
        assert all(t.get("handling_cancel") for t in found.values()) and len(found) == 2, found
        code, data = leaks(app.url, "--cancel-grace", "1", "--min-wait", "600")
        assert not [f for f in data["findings"] if f["kind"] == "swallowed_cancel"], data["findings"]
        code, data = settled(app.url, {"drain", "stuck"}, "--cancel-grace", "1", "--min-wait", "1")
        swallowed = {t["name"]: f for f in data["findings"] if f["kind"] == "swallowed_cancel" for t in f["tasks"]}
        assert set(swallowed) == {"drain", "stuck"}, data["findings"]
        assert "has not finished handling its cancellation" in swallowed["stuck"]["title"], swallowed
        assert "still in the except or finally block handling the CancelledError" in swallowed["stuck"]["evidence"]


HOT_LOCK = """
import asyncio

async def writer(lock, rows):
    while True:
        await lock.acquire()               # released and taken again at once, by three tasks
        try:
            rows.append(1)
            del rows[:-100]
            await asyncio.sleep(0.002)
        finally:
            lock.release()

async def main():
    lock, rows = asyncio.Lock(), []
    keep = [asyncio.create_task(writer(lock, rows), name=f"writer-{i}") for i in range(3)]
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_hot_lock_passed_between_tasks_is_never_a_deadlock(loop: str) -> None:
    # The snapshot is read while the loop runs on: a writer can be read waiting on the lock
    # it gave back a moment before, with its holder record not yet gone.  A wait first seen
    # in this very snapshot is not judged, so no query ever calls that a deadlock.  And the
    # proof pauses the loop for real: one that ran a turn in the middle of the marking
    # made the sleeping holder look unreachable (a false proven_leak, now and then, on a
    # busy machine, on either loop).
    with DiagRun(HOT_LOCK, env={"LOOP": loop}) as app:
        seen = []
        for _ in range(15):
            code, data = leaks(app.url, "--min-wait", "1", "--fail-on", ALL_KINDS)
            seen += [f["title"] for f in data["findings"]]
        assert seen == [], seen


READERS = """
import asyncio

async def serve(reader, writer):
    line = await reader.readline()
    if line == b"hello\\n":
        writer.write(b"welcome\\n")       # answers, then pushes nothing more
    PEERS.append(writer)                 # asked anything else, never answers
    await asyncio.Event().wait()

async def subscriber():
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"hello\\n")
    await reader.readline()
    while True:
        await reader.readline()          # waits for what the server pushes: idle by design

async def requester():
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"status?\\n")
    return await reader.readline()       # an answer that never comes

async def main():
    global PORT
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    PORT = server.sockets[0].getsockname()[1]
    keep = [asyncio.create_task(subscriber(), name="subscriber"), asyncio.create_task(requester(), name="requester")]
    await asyncio.Event().wait()

PEERS = []
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_read_is_suspect_when_a_question_is_unanswered_not_after_an_answer(loop: str) -> None:
    # TCP_INFO says which end sent last: a reader whose peer answered everything sent waits
    # for what the peer pushes (a subscription), one that sent and heard nothing back waits
    # for an answer.
    with DiagRun(READERS, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"requester"}, "--min-wait", "1")
        time.sleep(1.0)  # the subscriber's read as old as the requester's, past --min-wait
        code, data = leaks(app.url, "--min-wait", "1")
        found = by_task(data)
        assert "requester" in found and "subscriber" not in found, data["findings"]
        evidence = " | ".join(f["evidence"] for f in found["requester"])
        assert "the peer has sent nothing since this end sent data" in evidence, evidence
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)
        traffic = {t["name"]: t["wait"].get("traffic") for t in tasks["tasks"] if t["name"] in ("subscriber", "requester")}
        # (the two times are kept in scheduler ticks: on loopback a question and its answer share one)
        sub, req = traffic["subscriber"], traffic["requester"]
        assert sub["received_ago"] <= sub["sent_ago"] and sub["bytes_received"] == len("welcome\n"), traffic
        assert req["bytes_sent"] == len("status?\n") and req["bytes_received"] == 0, traffic


WATCHERS = """
import asyncio

CHANGED = asyncio.Event()

async def serve(reader, writer):
    line = await reader.readline()
    if line.startswith(b"WATCH"):
        try:                             # a long poll: held until a change, or for an hour at most
            await asyncio.wait_for(CHANGED.wait(), 3600)
            writer.write(b"changed\\n")
        except asyncio.TimeoutError:
            writer.write(b"unchanged\\n")
    else:
        await CHANGED.wait()             # the bug: a status request waits for a change too
        writer.write(b"ok\\n")

async def client(request):
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(request)
    return await reader.readline()

async def main():
    global PORT
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    PORT = server.sockets[0].getsockname()[1]
    keep = [asyncio.create_task(client(b"WATCH config\\n"), name="watcher"),
            asyncio.create_task(client(b"STATUS\\n"), name="status")]
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_read_served_in_this_process_is_judged_by_the_task_that_serves_it(loop: str) -> None:
    # Both ends of each connection are in this process: a long poll's client waits for a
    # handler holding its request under a timeout (a wait with an end: quiet); the status
    # client's handler waits with nothing to end it (a suspect, the handler named).
    with DiagRun(WATCHERS, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"status"}, "--min-wait", "1")
        time.sleep(1.0)  # the watcher's read as old as the status read, past --min-wait
        code, data = leaks(app.url, "--min-wait", "1")
        found = by_task(data)
        assert "status" in found and "watcher" not in found, data["findings"]
        evidence = " | ".join(f["evidence"] for f in found["status"])
        assert "nothing at all on this connection" in evidence, evidence
        assert re.search(r"the other end is served in this process by serve \(task \d+\), which has waited \d+s on "
                         r"Event.wait", evidence), evidence


TIMED_CLEANUP = """
import asyncio

ACK = asyncio.Event()

async def handler():
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.wait_for(ACK.wait(), 600)   # a close handshake, bounded
        raise

async def main():
    task = asyncio.create_task(handler(), name="handler")
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cleanup_under_wait_for_has_an_end_on_either_loop(loop: str) -> None:
    # 3.11's wait_for keeps its timer handle in its frame (uvloop's own handle type on
    # uvloop); 3.12's is an asyncio.timeout.  Either way the wait has an end.
    with DiagRun(TIMED_CLEANUP, env={"LOOP": loop}) as app:
        def handler_of(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
            return next((t for t in tasks if t["name"] == "handler"), None)

        handler = handler_of(dump_until(app.url, lambda ts: ((handler_of(ts) or {}).get("cancel_seconds") or 0) >= 2.5))
        assert handler and handler.get("handling_cancel"), handler
        code, data = leaks(app.url, "--cancel-grace", "1", "--min-wait", "1", "--fail-on", ALL_KINDS)
        assert not [f for f in data["findings"] if f["kind"] == "swallowed_cancel"], data["findings"]


GATHERED_LOOPS = """
import asyncio

async def reader(inbox):
    for n in range(3):
        await inbox.put(n)
    return "eof"                         # the connection ended: it returns, nobody reconnects

async def processor(inbox):
    while True:
        await inbox.get()                # only the reader fed it

async def ticker():
    while True:
        await asyncio.sleep(0.2)         # has an end every time: never stuck

INBOXES = []                             # reachable: no proof can call it leaked (no code reads it again)

async def session():
    inbox = asyncio.Queue()
    INBOXES.append(inbox)
    await asyncio.gather(reader(inbox), processor(inbox))

async def service():
    async def once():
        return "migrated"
    await asyncio.gather(once(), ticker())  # one ended, the other runs forever by design

async def main():
    keep = [asyncio.create_task(session(), name="session"), asyncio.create_task(service(), name="service")]
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_gather_whose_other_tasks_wait_forever_after_one_ended(loop: str) -> None:
    """The session waits on its gather (a suspect: still reachable); the processor beside the
    ended reader is orphaned: only the reader fed its inbox, the session that holds it never
    reads it again, and the module list that keeps it is read by no code left to run."""
    with DiagRun(GATHERED_LOOPS, env={"LOOP": loop}) as app:
        proc = run_diag("tasks", app.url, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"gather \(tasks \d+, \d+; ended: \d+ reader returned\)", proc.stdout), proc.stdout
        assert re.search(r"gather \(tasks \d+, \d+; ended: \d+ service.<locals>.once returned\)", proc.stdout), proc.stdout
        code, data = settled(app.url, {"session"}, "--min-wait", "1")
        found = by_task(data)
        (waiter,) = found["session"]
        assert "reader (task" in waiter["evidence"] and "already returned" in waiter["evidence"], waiter
        assert "processor on Queue.get" in waiter["evidence"], waiter
        assert waiter["kind"] == "suspect", waiter
        processors = [f for f in data["findings"] if any(t["coro"] == "processor" for t in f["tasks"])]
        assert processors and "gathered with it by session" in processors[0]["evidence"], data["findings"]
        # The ended task's sibling that sleeps has an end: the other gather is no suspect.
        assert "service" not in found and not any(t["coro"] == "ticker" for f in data["findings"] for t in f["tasks"]), \
            data["findings"]
        deadline = time.monotonic() + 60
        while True:  # waits are sampled once a second: the verdict comes in the first seconds
            kinds = {f["kind"] for f in processors}
            if kinds == {"orphaned"} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
            code, data = leaks(app.url, "--min-wait", "1")
            processors = [f for f in data["findings"] if any(t["coro"] == "processor" for t in f["tasks"])]
        assert kinds == {"orphaned"}, data["findings"]
        assert "the one other task that refers to it" not in processors[0]["evidence"], processors  # not the session
        assert code == 1


RESET_SEQ = """
import asyncio

class Channel:
    def __init__(self):
        self.seq = 0
        self.changed = asyncio.Condition()

    async def reconnect(self):
        async with self.changed:
            self.seq = 1                   # the bug: counts from 0 again on each reconnect
            self.changed.notify_all()

    async def call(self, failed_on):
        async with self.changed:
            await self.changed.wait_for(lambda: self.seq > failed_on)

async def main():
    channel = Channel()
    await channel.reconnect()
    keep = [asyncio.create_task(channel.call(1), name=f"export-{i}") for i in range(2)]
    await channel.reconnect()              # before the calls wait: seq is 1 again
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_diag_tasks_shows_what_a_condition_wait_for_waits_to_see(loop: str) -> None:
    """The predicate of a wait_for that never holds, with the values that keep it false."""
    with DiagRun(RESET_SEQ, env={"LOOP": loop}) as app:
        want = "(wait_for Channel.call.<locals>.<lambda> at app.py:16: failed_on=1, self.seq=1)"
        deadline = time.monotonic() + 60
        while True:
            out = run_diag("tasks", app.url, "--format", "text").stdout
            if want in out or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert "2 tasks @ Condition.wait <Channel.changed" in out and want in out, out
        tasks = dump_until(app.url, lambda ts: sum(t["wait"].get("predicate", "").endswith("self.seq=1")
                                                     for t in ts) == 2)
        assert sorted(t["name"] for t in tasks if "predicate" in t["wait"]) == ["export-0", "export-1"]


RENOTIFIED = """
import asyncio

class Channel:
    def __init__(self):
        self.seq = 1
        self.changed = asyncio.Condition()

    async def maintain(self):
        while True:                        # reconnects every 0.1 s, and counts from 1 again each time
            await asyncio.sleep(0.1)
            async with self.changed:
                self.seq = 1
                self.changed.notify_all()

    async def call(self, failed_on):
        async with self.changed:
            await self.changed.wait_for(lambda: self.seq > failed_on)

async def main():
    channel = Channel()
    keep = [asyncio.create_task(channel.maintain(), name="maintain"),
            asyncio.create_task(channel.call(1), name="export")]
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_condition_wait_for_woken_again_and_again_is_timed_from_its_start(loop: str) -> None:
    """Every notify wakes the wait_for, which finds its predicate false and waits on a new
    future: its wait goes on all the same, and its age with it (it used to restart at each
    wake-up, so that it never looked older than the notify interval)."""
    with DiagRun(RENOTIFIED, env={"LOOP": loop}) as app:
        started = time.monotonic()
        tasks = dump_until(app.url, lambda ts: any(t["name"] == "export" and (t["wait"]["seconds"] or 0) >= 3
                                                   for t in ts))
        (export,) = [t for t in tasks if t["name"] == "export"]
        assert export["wait"]["kind"] == "condition" and export["wait"]["seconds"] >= 3, export["wait"]
        assert export["wait"]["seconds"] <= time.monotonic() - started + 1, export["wait"]  # no older than the program


CANCEL_BECOMES_IO_ERROR = """
import asyncio

class ReadError(Exception):
    pass

async def read_register():
    try:
        await asyncio.wait_for(asyncio.Event().wait(), 30)    # a device that stopped answering
    except asyncio.CancelledError as exc:
        raise ReadError("request cancelled") from exc        # the bug: a cancel becomes an I/O error
    except asyncio.TimeoutError:
        raise ReadError("no answer") from None

async def poll():
    while True:
        try:
            await read_register()
        except Exception:                                     # log and poll again
            pass

async def watchdog():
    poller = asyncio.create_task(poll(), name="poller")
    await asyncio.sleep(0.3)
    poller.cancel()                                           # restart it ...
    await poller                                              # ... once it has ended: never

async def main():
    keep = asyncio.create_task(watchdog(), name="watchdog")
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cancel_turned_into_another_error_is_swallowed_though_every_read_has_a_timeout(loop: str) -> None:
    # The poller is always inside a read with a 30 s timeout, so its wait always has an end:
    # only the task being past the block that handled the cancel tells it swallowed it.
    with DiagRun(CANCEL_BECOMES_IO_ERROR, env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 60
        while True:  # the cancel counts once --min-wait has passed since the sampler saw it
            code, data = leaks(app.url, "--min-wait", "2")
            found = [f for f in data["findings"] if f["kind"] == "swallowed_cancel"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert code == 1, data["findings"]
        (finding,) = found
        # the poller's read waits on an Event nothing else can reach, but under a timeout: it
        # will be woken, so it is no proven leak
        assert not [f for f in data["findings"] if f["kind"] == "proven_leak" and "poll" in f["title"]], data
        assert [t["name"] for t in finding["tasks"]] == ["poller", "watchdog"], finding
        assert "that wait has an end, but the task is past any except or finally block" in finding["evidence"]


GATHER_CHILD_DIES = """
import asyncio

async def lister(todo):
    await asyncio.sleep(0)
    raise PermissionError("listing denied")   # its frame, in the traceback, still holds todo

async def copier(todo):
    while (key := await todo.get()) is not None:
        pass

async def sync_bucket(inflight):
    todo = asyncio.Queue()
    children = [asyncio.create_task(lister(todo))]
    children += [asyncio.create_task(copier(todo), name=f"copier-{i}") for i in range(2)]
    inflight.update(children[1:])          # kept: a service waits for its copies at shutdown
    try:
        await asyncio.gather(*children)    # the failed lister stays in the gather, kept by the copiers
    except PermissionError:
        pass

async def main():
    inflight = set()
    await sync_bucket(inflight)
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_queue_only_a_dead_tasks_traceback_reaches_is_proven_lost(loop: str) -> None:
    """The copiers' queue is reachable from a root only through the frame of the lister
    that died (its exception, kept by the gather the copiers are part of): a finished
    frame runs no code again, so nothing can put into that queue."""
    if not holders.accelerated():
        pytest.skip("the C marking tells a finished frame from a suspended one")
    with DiagRun(GATHER_CHILD_DIES, env={"LOOP": loop}) as app:
        deadline = time.monotonic() + 60
        while True:  # waits are sampled once a second: the verdict comes in the first seconds
            code, data = leaks(app.url, "--min-wait", "1")
            found = by_task(data)
            kinds = {f["kind"] for name in ("copier-0", "copier-1") for f in found.get(name, [])}
            if kinds == {"proven_leak"} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert kinds == {"proven_leak"}, data["findings"]
        assert code == 1


GATHER_CHILD_DIES_QUEUE_KEPT_DORMANT = GATHER_CHILD_DIES.replace(
    "    except PermissionError:\n        pass\n", "    except PermissionError:\n        pass\n    return todo\n").replace(
    "    await sync_bucket(inflight)\n", "    todo = await sync_bucket(inflight)   # kept by a frame that never runs again\n")
GATHER_CHILD_DIES_QUEUE_KEPT_UNREAD = GATHER_CHILD_DIES_QUEUE_KEPT_DORMANT.replace(
    "# kept by a frame that never runs again", "# kept by a live frame whose code never reads it again").replace(
    "    await asyncio.Event().wait()\n", "    while True:\n        await asyncio.sleep(0.2)\n")
GATHER_CHILD_DIES_QUEUE_KEPT = GATHER_CHILD_DIES_QUEUE_KEPT_DORMANT.replace(
    "# kept by a frame that never runs again", "# kept by a live frame: a put may come").replace(
    "    await asyncio.Event().wait()\n",
    "    while True:\n        await asyncio.sleep(0.2)\n        if todo.qsize() > 1000:\n            todo.put_nowait(None)\n")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_same_queue_kept_by_a_live_frame_too_is_not_proven_lost(loop: str) -> None:
    """The healthy counterpart: the dead lister's traceback reaches the queue, and so does
    the main task's own frame, which can still put into it: a suspect at most."""
    assert "return todo" in GATHER_CHILD_DIES_QUEUE_KEPT and "todo = await sync_bucket" in GATHER_CHILD_DIES_QUEUE_KEPT
    assert "todo.put_nowait(None)" in GATHER_CHILD_DIES_QUEUE_KEPT
    with DiagRun(GATHER_CHILD_DIES_QUEUE_KEPT, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"copier-0", "copier-1"}, "--min-wait", "1")
        found = by_task(data)
        kinds = {f["kind"] for name in ("copier-0", "copier-1") for f in found.get(name, [])}
        assert kinds == {"suspect"}, data["findings"]  # named by the lister's death, not proven
        assert "died" in found["copier-0"][0]["evidence"], found["copier-0"]
        assert code == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_same_queue_kept_only_by_a_frame_that_never_runs_again_is_orphaned(loop: str) -> None:
    """The main task keeps the queue but waits on an event nobody can set: no task that
    could put into it is left, so the copiers are orphaned (not proven: the main frame is
    live)."""
    assert "await asyncio.Event().wait()" in GATHER_CHILD_DIES_QUEUE_KEPT_DORMANT
    with DiagRun(GATHER_CHILD_DIES_QUEUE_KEPT_DORMANT, env={"LOOP": loop}) as app:
        code, data = judged_as(app.url, {"copier-0", "copier-1"}, "orphaned")
        evidence = by_task(data)["copier-0"][0]["evidence"]
        assert "lister" in evidence and "PermissionError: listing denied" in evidence, evidence
        if hasattr(task_origins._fast, "frame_locals"):
            # the main task's frame holds the queue, in a local its code never reads again
            assert "no other task refers to it or reaches for it through what keeps it, in code still to run" \
                in evidence, evidence
        else:  # without the accelerator, whatever a frame holds counts as read
            assert "the one other task that refers to it or reaches for it waits too" in evidence, evidence
            assert "on Event.wait)" in evidence, evidence
        assert code == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_same_queue_kept_by_a_live_frame_that_never_reads_it_is_orphaned(loop: str) -> None:
    """The main task runs on, and its frame keeps the queue, but in a local that the code it
    has still to run (a loop of sleeps) never reads: it cannot put into it either."""
    assert "todo.put_nowait" not in GATHER_CHILD_DIES_QUEUE_KEPT_UNREAD
    assert "await asyncio.sleep(0.2)" in GATHER_CHILD_DIES_QUEUE_KEPT_UNREAD
    if task_origins._fast is None or not hasattr(task_origins._fast, "frame_locals"):
        pytest.skip("a frame's locals are read by the C accelerator")
    with DiagRun(GATHER_CHILD_DIES_QUEUE_KEPT_UNREAD, env={"LOOP": loop}) as app:
        code, data = judged_as(app.url, {"copier-0", "copier-1"}, "orphaned")
        evidence = by_task(data)["copier-0"][0]["evidence"]
        assert "PermissionError: listing denied" in evidence, evidence
        assert "no other task refers to it or reaches for it through what keeps it, in code still to run" in evidence, \
            evidence
        assert code == 1


GATHER_CHILD_DIES_AUDITED = """
import asyncio

async def lister(todo):
    await asyncio.sleep(0)
    raise PermissionError("listing denied")

async def copier(todo):
    while (key := await todo.get()) is not None:
        pass

async def audit_writer(audit):
    while True:
        await audit.get()                  # idle between failures: healthy

async def sync_bucket(inflight, audit):
    todo = asyncio.Queue()
    children = [asyncio.create_task(lister(todo))]
    children += [asyncio.create_task(copier(todo), name=f"copier-{i}") for i in range(2)]
    inflight.update(children[1:])
    try:
        await asyncio.gather(*children)
    except PermissionError:
        audit.put_nowait("failed")         # this frame, not the lister's, uses audit

async def main():
    inflight, audit = set(), asyncio.Queue()
    writer = asyncio.create_task(audit_writer(audit), name="audit-writer")
    await sync_bucket(inflight, audit)
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_idle_worker_on_a_queue_the_awaiter_of_a_dead_task_used_is_left_alone(loop: str) -> None:
    """The lister's exception passed through sync_bucket's frame, which uses the audit
    queue: that queue is not the lister's, and its idle writer is no suspect."""
    with DiagRun(GATHER_CHILD_DIES_AUDITED, env={"LOOP": loop}) as app:
        # once the lister's death is logged and the writer has idled past --min-wait
        deadline = time.monotonic() + 60
        while "PermissionError" not in (dead := run_diag("tasks", app.url, "--dead").stdout):
            assert time.monotonic() < deadline, dead
            time.sleep(0.3)
        dump_until(app.url, lambda tasks: any(t["name"] == "audit-writer" and (t["wait"].get("seconds") or 0) >= 2
                                              for t in tasks))
        code, data = settled(app.url, {"copier-0", "copier-1"}, "--min-wait", "1")
        found = by_task(data)
        assert "copier-0" in found and "copier-1" in found, data["findings"]
        assert "audit-writer" not in found, found["audit-writer"]


SILENT_SERVER = """
import asyncio

class Client:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.pending = {}
        self.seq = 0

    async def read_loop(self):
        while line := await self.reader.readline():
            fut = self.pending.pop(int(line), None)
            if fut is not None and not fut.done():
                fut.set_result(line)

    async def call(self):
        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = fut
        self.writer.write(b"%d\\n" % self.seq)
        return await fut

async def request(client):
    return await client.call()

async def answer(reader, writer):
    PEERS.append(writer)
    while line := await reader.readline():
        if ANSWERS:
            writer.write(line)

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = Client(reader, writer)
    loop_task = asyncio.create_task(client.read_loop(), name="read-loop")
    calls = [asyncio.create_task(request(client), name="request") for _ in range(2)]
    await asyncio.Event().wait()

PEERS = []
ANSWERS = False                            # the bug: the server reads requests and never answers
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_requests_future_names_the_reader_loop_of_the_client_that_keeps_it(loop: str) -> None:
    # Requests wait on futures kept in Client.pending; what would resolve them is the
    # client's reader loop (a task running a method of that Client), itself waiting on a
    # server that never answers: the evidence leads from the requests to it.
    with DiagRun(SILENT_SERVER, env={"LOOP": loop}) as app:
        # the reader's wait counts once it is as long as --min-wait too (waits are sampled)
        deadline = time.monotonic() + 60
        while True:
            code, data = settled(app.url, {"request", "read-loop"}, "--min-wait", "1")
            found = by_task(data)
            if "Client.read_loop (task " in str(found.get("request")) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert {f["kind"] for f in found["request"]} == {"suspect"}, data["findings"]
        request = " | ".join(f["evidence"] for f in found["request"])
        assert "a task of the Client that keeps it, has itself waited" in request, request
        assert "Client.read_loop (task " in request and "s on StreamReader.readuntil" in request, request
        (reader,) = {t["id"] for f in found["read-loop"] for t in f["tasks"] if t["name"] == "read-loop"}
        requests = {t["id"]: t for f in found["request"] for t in f["tasks"] if t["name"] == "request"}
        assert len(requests) == 2 and all(t["wait"]["owner_tasks"] == [reader] for t in requests.values()), requests


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_whose_server_answers_has_no_finding(loop: str) -> None:
    with DiagRun(SILENT_SERVER.replace("ANSWERS = False ", "ANSWERS = True  "), env={"LOOP": loop}) as app:
        tasks = dump_until(app.url, lambda ts: not any(t["name"] == "request" for t in ts)
                           and any(t["name"] == "read-loop" and (t["wait"].get("seconds") or 0) >= 1.5 for t in ts))
        assert not [t for t in tasks if t["name"] == "request"], tasks
        code, data = leaks(app.url, "--min-wait", "1", "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


IDLE_WORKERS = """
import asyncio, collections

class Pool:
    def __init__(self, size):
        self.idle = collections.deque()
        self.jobs = collections.deque()
        self.workers = [asyncio.create_task(self.worker(), name="worker") for _ in range(size)]

    async def worker(self):
        while True:                        # a worker waits for work on a future of its own
            if not self.jobs:
                wake = asyncio.get_running_loop().create_future()
                self.idle.append(wake)
                await wake
                continue
            job, done = self.jobs.popleft()
            done.set_result(job * 2)

    async def submit(self, job):           # one call, one answer: run as a task of its own
        done = asyncio.get_running_loop().create_future()
        self.jobs.append((job, done))
        if WAKES and self.idle:
            self.idle.popleft().set_result(None)
        return await done

async def main():
    pool = Pool(3)
    await asyncio.sleep(0.1)
    calls = [asyncio.create_task(pool.submit(i), name="submit") for i in range(2)]
    await asyncio.Event().wait()

WAKES = False                              # the bug: a submit never wakes an idle worker
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_idle_workers_on_futures_of_their_pool_are_left_alone_its_callers_are_not(loop: str) -> None:
    # Workers run a method of the Pool and wait, inside their loop, on futures the Pool keeps:
    # idle until handed work. The submits run a method of the same Pool too, but wait once,
    # for an answer that never comes: suspects.
    with DiagRun(IDLE_WORKERS, env={"LOOP": loop}) as app:
        code, data = settled(app.url, {"submit"}, "--min-wait", "1")
        found = by_task(data)
        assert {f["kind"] for f in found["submit"]} == {"suspect"}, data["findings"]
        assert "awaited a bare future" in " ".join(f["evidence"] for f in found["submit"])
        tasks = json.loads(run_diag("tasks", app.url, "--format", "json", "--debug", "2").stdout)["tasks"]
        assert [t for t in tasks if t["name"] == "worker" and (t["wait"]["seconds"] or 0) >= 1], tasks
        code, data = leaks(app.url, "--min-wait", "1")
        assert "worker" not in by_task(data), data["findings"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pool_whose_submits_wake_a_worker_has_no_finding(loop: str) -> None:
    with DiagRun(IDLE_WORKERS.replace("WAKES = False ", "WAKES = True  "), env={"LOOP": loop}) as app:
        tasks = dump_until(app.url, lambda ts: not any(t["name"] == "submit" for t in ts)
                           and any(t["name"] == "worker" and (t["wait"].get("seconds") or 0) >= 1.5 for t in ts))
        assert not [t for t in tasks if t["name"] == "submit"], tasks
        code, data = leaks(app.url, "--min-wait", "1", "--fail-on", ALL_KINDS)
        assert code == 0 and data["findings"] == [], data["findings"]


KEEPER_USERS = """
import asyncio, os

class Pipeline:
    def __init__(self):
        self.queue = asyncio.Queue(maxsize=1)
        self.stats = {"parsed": 0}

    def backlog(self):
        return self.queue.qsize()

async def consume(pipeline):
    await pipeline.queue.get()
    raise ValueError("bad record")

async def produce(pipeline):
    for i in range(5):
        await pipeline.queue.put(i)

async def report(pipeline):            # holds the pipeline, reads only its stats
    while True:
        pipeline.stats["parsed"] += 0
        await asyncio.sleep(0.1)

async def rebalance(pipeline):         # holds the pipeline and reaches for its queue
    while True:
        pipeline.backlog()
        await asyncio.sleep(0.1)

async def main():
    pipeline = Pipeline()
    tasks = [asyncio.create_task(consume(pipeline), name="consume"),
             asyncio.create_task(produce(pipeline), name="produce"),
             asyncio.create_task(report(pipeline), name="report")]
    if os.environ.get("REBALANCE"):
        tasks.append(asyncio.create_task(rebalance(pipeline), name="rebalance"))
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("rebalance", [False, True], ids=["stats-reader", "queue-reader"])
def test_a_task_at_work_that_reaches_for_the_queue_keeps_the_wait_a_suspect(loop: str, rebalance: bool) -> None:
    """The consumer died; a reporter at work holds the pipeline but only reads its stats:
    the producer is orphaned.  A task at work whose code reaches for the queue (through a
    method of the pipeline that reads it) may yet get from it: a suspect."""
    env = {"LOOP": loop, **({"REBALANCE": "1"} if rebalance else {})}
    with DiagRun(KEEPER_USERS, env=env) as app:
        want = "suspect" if rebalance else "orphaned"
        code, data = judged_as(app.url, {"produce"}, want)
        (finding,) = by_task(data)["produce"]
        assert "consume (task" in finding["evidence"] and "ValueError: bad record" in finding["evidence"]
        assert code == (0 if rebalance else 1)
        if not rebalance:
            # main holds the pipeline too, and the reporter, but neither's code reaches for the queue
            assert "no other task refers to it or reaches for it through what keeps it" in finding["evidence"]
        saved = Path(tempfile.mkdtemp(prefix="diag-users-")) / "sync.json"
        try:
            run_diag("leaks", app.url, "--min-wait", "1", "--format", "json", "-o", str(saved), timeout=60)
            tasks = json.loads(saved.read_text())["tasks"]["tasks"]
        finally:
            shutil.rmtree(saved.parent)
        (produce,) = [t for t in tasks if t["name"] == "produce"]
        ids = {t["name"]: t["id"] for t in tasks}
        assert produce["wait"]["users"] == ([ids["rebalance"]] if rebalance else []), produce["wait"]


GLOBAL_QUEUE = """
import asyncio, os

JOBS = asyncio.Queue(maxsize=1)

async def consume():
    await JOBS.get()
    raise ValueError("bad job")

async def produce():
    for i in range(5):
        await JOBS.put(i)

async def drain_at_night():            # names the global queue, and may yet get from it
    while True:
        await asyncio.sleep(0.1)
        if JOBS.qsize() > 100:
            JOBS.get_nowait()

async def main():
    tasks = [asyncio.create_task(consume(), name="consume"), asyncio.create_task(produce(), name="produce")]
    if os.environ.get("DRAIN"):
        tasks.append(asyncio.create_task(drain_at_night(), name="drain"))
    await asyncio.Event().wait()
""" + RUN_ON


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("drain", [False, True], ids=["alone", "named-elsewhere"])
def test_a_module_global_is_used_by_the_code_that_names_it(loop: str, drain: bool) -> None:
    """A module-level queue is no frame's own reference: a task at work whose code names it
    may still get from it, so the producer left by a dead consumer stays a suspect."""
    env = {"LOOP": loop, **({"DRAIN": "1"} if drain else {})}
    with DiagRun(GLOBAL_QUEUE, env=env) as app:
        want = "suspect" if drain else "orphaned"
        code, data = judged_as(app.url, {"produce"}, want)
        assert "__main__.JOBS" in by_task(data)["produce"][0]["evidence"]
        assert code == (0 if drain else 1)
