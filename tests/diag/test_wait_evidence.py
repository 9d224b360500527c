"""The evidence collectors on real asyncio objects: who keeps an awaited thing and whether
its connection is closed, and what can end a wait."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from diag.collect import task_origins, wait_evidence
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import collect_tasks


class Stream:
    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._buffer: collections.deque[bytes] = collections.deque()


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: Any = None
        self._streams: dict[str, Stream] = {}
        self.pending: dict[int, asyncio.Future[bytes]] = {}

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


@pytest.mark.parametrize("materialised", [False, True])
async def test_the_owner_of_an_awaited_event_is_found_up_the_chain_with_why_it_is_closed(materialised: bool) -> None:
    conn = Connection()
    stream = conn._streams["cpu"] = Stream()
    fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn.pending[1] = fut
    if materialised:  # instance dicts made real (by earlier introspection, say): other referrer shapes
        vars(stream), vars(conn)
    found = wait_evidence.closed_owners([stream._ready, fut])
    # where it is kept, why that is closed, and the keepers found, nearest first
    assert found[id(stream._ready)] == ("Stream._ready in Connection._streams",
                                        "its connection was lost (transport is None)", (id(stream), id(conn)))
    assert found[id(fut)] == ("Connection.pending", "its connection was lost (transport is None)", (id(conn),))
    fut.cancel()


@pytest.mark.parametrize("materialised", [False, True])
@pytest.mark.parametrize("shape", ["defaultdict", "dict", "list"])
async def test_a_queue_kept_in_a_container_in_a_container_is_traced_to_its_closed_connection(
        materialised: bool, shape: str) -> None:
    """Subscribers' queues by topic (a dict of lists): the client that keeps them is found
    through both containers, and its lost connection with it."""
    conn = Connection()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    subs: Any = collections.defaultdict(list) if shape == "defaultdict" else {} if shape == "dict" else []
    if shape == "list":
        subs.append([queue])
    else:
        subs.setdefault("headers", []).append(queue)
    conn.subscriptions = subs  # type: ignore[attr-defined]
    if materialised:
        vars(conn)
    found = wait_evidence.closed_owners([queue])
    assert found[id(queue)] == ("Connection.subscriptions", "its connection was lost (transport is None)",
                                (id(conn),))


async def test_an_open_connection_is_named_but_not_called_closed() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    transport, conn = await loop.create_connection(Connection, "127.0.0.1", server.sockets[0].getsockname()[1])
    conn._transport = transport
    stream = conn._streams["cpu"] = Stream()
    try:
        (label, closed, keepers), = wait_evidence.closed_owners([stream._ready]).values()
        assert label.startswith("Stream._ready") and closed == "" and keepers[0] == id(stream)
        transport.close()
        (label, closed, keepers), = wait_evidence.closed_owners([stream._ready]).values()
        assert closed.endswith("its transport is closed"), closed
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


class RpcClient:
    """A client whose reader loop resolves the requests it keeps in ``_pending``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self.receiver = asyncio.create_task(self._receive_loop(reader))

    async def _receive_loop(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self._pending.pop(int(line), None)


async def test_a_stream_the_peer_closed_is_a_closed_owner_though_its_transport_stays_open() -> None:
    served: list[asyncio.StreamWriter] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        holder = Connection()
        holder._transport = writer  # a writer kept where a transport would be is read the same
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        holder.pending[1] = fut
        (label, closed, _), = wait_evidence.closed_owners([fut]).values()
        assert (label, closed) == ("Connection.pending", "")  # open both ways: not closed
        assert await reader.read() == b""  # the peer hung up
        assert not writer.transport.is_closing()  # half-closed: still open for writing
        (label, closed, _), = wait_evidence.closed_owners([fut]).values()
        assert closed == "_transport: its stream's reader is at EOF (the peer closed the connection)", closed
        fut.cancel()
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_a_future_whose_owners_reader_task_has_ended_has_nobody_left_to_set_it() -> None:
    stream = asyncio.StreamReader()
    client = RpcClient(stream, writer=None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    client._pending[7] = fut
    idle: asyncio.Queue[int] = asyncio.Queue()
    client.jobs = idle  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    # the reader loop still runs: it may yet answer
    assert wait_evidence.closed_owners([fut])[id(fut)][1] == ""
    stream.feed_eof()
    await client.receiver
    assert wait_evidence.closed_owners([fut])[id(fut)][1] == (
        "receiver: its task RpcClient._receive_loop has ended (it returned)")
    # a queue of the same object is a worker's to get from, not the reader's to answer
    assert wait_evidence.closed_owners([idle])[id(idle)][1] == ""
    fut.cancel()
    for end, how in (("raise", "it raised ConnectionResetError"), ("cancel", "it was cancelled")):
        broken = asyncio.StreamReader()
        failing = RpcClient(broken, writer=None)  # type: ignore[arg-type]
        answer: asyncio.Future[bytes] = loop.create_future()
        failing._pending[1] = answer
        await asyncio.sleep(0)
        if end == "raise":
            broken.set_exception(ConnectionResetError("peer reset"))
        else:
            failing.receiver.cancel()
        await asyncio.gather(failing.receiver, return_exceptions=True)
        assert wait_evidence.closed_owners([answer])[id(answer)][1] == (
            f"receiver: its task RpcClient._receive_loop has ended ({how})")
        answer.cancel()


async def _check_deadlines(with_timer: bool) -> None:
    """An ``asyncio.timeout``, a ``wait_for``, a timer that cancels the task (``with_timer``)
    and a bare wait, each read for what ends it."""
    loop = asyncio.get_running_loop()
    never = asyncio.Event()

    async def under_timeout() -> None:
        async with asyncio.timeout(30):
            await never.wait()

    async def bare() -> None:
        await never.wait()

    tasks = [asyncio.create_task(under_timeout(), name="timeout"),
             asyncio.create_task(asyncio.wait_for(never.wait(), 20), name="wait_for"),
             asyncio.create_task(bare(), name="bare")]
    handle = None
    if with_timer:
        tasks.append(asyncio.create_task(bare(), name="timer"))
        handle = loop.call_later(10, tasks[-1].cancel)
    watch = LoopWatch(install_factories=False)
    await asyncio.sleep(0.05)
    watch.sample_waits()
    await asyncio.sleep(0.05)
    try:
        by_name = {t.name: t.wait for t in collect_tasks(watch).tasks}
        assert by_name["timeout"].deadline_by == "asyncio.timeout" and 25 < by_name["timeout"].deadline < 30
        assert by_name["wait_for"].deadline is not None and 15 < by_name["wait_for"].deadline < 20
        assert by_name["bare"].deadline_known and by_name["bare"].deadline is None
        if with_timer:
            assert by_name["timer"].deadline is not None and 5 < by_name["timer"].deadline < 10
            assert "task.cancel" in by_name["timer"].deadline_by
    finally:
        if handle is not None:
            handle.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_deadlines_come_from_timeouts_wait_for_and_timers_that_cancel() -> None:
    await _check_deadlines(with_timer=True)


async def test_event_sets_are_counted_and_timed_while_installed_and_not_after() -> None:
    from diag.collect import event_activity

    event = asyncio.Event()
    was_installed = event_activity.installed()
    event_activity.install()
    try:
        event.set()
        event.clear()
        event.set()
        count, when = event_activity.last_set(event) or (0, 0.0)
        assert count == 2 and when > 0
        assert event.is_set()  # asyncio's own set still ran

        async def rearm() -> None:
            event.clear()

        clearer = asyncio.create_task(rearm())
        await clearer
        cleared = event_activity.last_clear(event)
        assert cleared is not None and cleared[0] >= when and not event.is_set()
        assert cleared[1] == task_origins.task_seq(clearer)  # which task cleared it
        event.clear()  # already clear (as a Queue's join event on each put): nothing to keep
        assert event_activity.last_clear(event) == cleared
    finally:
        if not was_installed:
            event_activity.uninstall()
    if not was_installed:
        other = asyncio.Event()
        other.set()
        assert event_activity.last_set(other) is None


async def test_a_stream_read_knows_which_end_of_the_connection_it_is() -> None:
    sides: list[str] = []
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sides.append(wait_evidence.stream_side(reader))
        got.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        await got.wait()
        assert sides == ["server"] and wait_evidence.stream_side(reader) == "client"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


class Channel:
    def __init__(self) -> None:
        self.seq = 1
        self.transport: object | None = object()
        self.changed = asyncio.Condition()
        self.asked = 0

    async def call(self, failed_on: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.transport is not None and self.seq > failed_on)

    def ready(self) -> bool:
        self.asked += 1
        return self.seq > 5

    async def wait_ready(self) -> None:
        async with self.changed:
            await self.changed.wait_for(self.ready)


async def test_a_condition_wait_for_shows_its_predicate_and_the_values_it_reads() -> None:
    """``wait_for`` waits for its predicate to hold: the dump names the predicate and what
    it reads, from its closure and the attributes it names, without calling it."""
    channel = Channel()
    tasks = [asyncio.create_task(channel.call(1)), asyncio.create_task(channel.wait_ready())]
    try:
        while len(channel.changed._waiters or ()) < 2:
            await asyncio.sleep(0)
        asked = channel.asked
        snap = collect_tasks()
        assert channel.asked == asked  # read, never called
        by_coro = {t.coro: t.wait for t in snap.tasks if t.wait.kind == "condition"}
        line = Channel.call.__code__.co_firstlineno + 2
        assert by_coro["Channel.call"].predicate == (
            f"Channel.call.<locals>.<lambda> at test_wait_evidence.py:{line}: failed_on=1, "
            f"self.transport=<object>, self.seq=1")
        assert by_coro["Channel.wait_ready"].predicate == (
            f"Channel.ready at test_wait_evidence.py:{Channel.ready.__code__.co_firstlineno}: "
            f"self.asked={asked}, self.seq=1")
        from diag.model.task_snapshot import Wait
        from diag.render.formatting import wait_reason
        # a value of the call's own (failed_on) against one on shared state alone (self)
        assert by_coro["Channel.call"].predicate_own == ("failed_on",)
        assert by_coro["Channel.wait_ready"].predicate_own == ()
        wait = by_coro["Channel.call"]
        assert wait.woken == 0  # no notify yet
        assert Wait.from_dict(wait.to_dict()) == wait
        assert wait_reason(wait).endswith(f"(wait_for {wait.predicate})")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_deadlines_under_uvloop_come_from_its_own_timer_handles() -> None:
    """uvloop's TimerHandle is its own type (3.11's wait_for keeps one in its frame) and
    asyncio.timeout schedules one too: both are read through uvloop's getters.  (A timer
    that cancels the task is read from asyncio's own loops' scheduled handles only.)"""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_check_deadlines(with_timer=False))
