"""Who else could end a wait: the names a keeper's code uses for what it keeps, and the
tasks whose await chains refer to it (``sync_collector.keeper_names``, ``_referred``).
In-process, on real objects and real coroutines."""

from __future__ import annotations

import asyncio
import collections

from diag.collect.sync_collector import ANY_NAME, _chain_names, _referred, keeper_names, _reaches, keeper_levels


class Client:
    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.ready = asyncio.Event()
        self.stats = collections.Counter[str]()
        self.opened = False
        self.rounds = 0

    def fail_all(self) -> None:
        for fut in self.pending.values():
            fut.set_exception(ConnectionError())

    def count(self) -> None:
        self.stats["calls"] += 1


class Slotted:
    __slots__ = ("fut",)

    def __init__(self, fut: object) -> None:
        self.fut = fut


def test_a_keeper_names_the_attribute_holding_it_and_the_methods_that_read_it() -> None:
    async def main() -> None:
        client = Client()
        fut = asyncio.get_running_loop().create_future()
        client.pending[7] = fut
        assert keeper_names(client, {id(fut)}, id(fut)) == {"pending", "fail_all"}  # in a dict: its values
        assert keeper_names(client, {id(client.ready)}, id(client.ready)) == {"ready"}
        # what reaches it cannot be told (kept where diag does not read: a custom container,
        # slots): any holder counts
        assert keeper_names(client, {id(object())}, 0) == {ANY_NAME}
        assert keeper_names(Slotted(fut), {id(fut)}, id(fut)) == {ANY_NAME}
        # a container read only in part
        many = [object() for _ in range(300)] + [fut]
        assert keeper_names(many, {id(fut)}, id(fut)) == {ANY_NAME}
        # a container is reached through its items: a list of clients by their names, the
        # dict of pending futures by any index
        clients = [Client(), client]
        assert keeper_names(clients, {id(fut), id(client)}, id(fut)) == {"pending", "fail_all"}
        assert keeper_names(client.pending, {id(fut)}, id(fut)) == {ANY_NAME}
        fut.cancel()

    asyncio.run(main())


def _settle(client: Client) -> None:
    client.pending.clear()


def test_a_tasks_await_chain_is_read_for_references_and_names_and_a_running_one_is_left_alone() -> None:
    async def waits_on(client: Client) -> None:
        client.opened = True  # read before the wait, never again
        await inner(client.ready)
        _settle(client)  # a module function called after it: what it reads counts

    async def inner(event: asyncio.Event) -> None:
        await event.wait()

    async def loops(client: Client) -> None:
        while True:
            client.rounds = 1  # before the wait, but in the loop around it: read again
            await client.ready.wait()

    async def main() -> None:
        client = Client()
        task = asyncio.create_task(waits_on(client))
        await asyncio.sleep(0)
        wanted = {id(client): [1], id(client.ready): [1], id(object()): [1]}
        found = _referred(task, wanted)
        assert found is not None and set(found) == {id(client), id(client.ready)}
        assert found[id(client)] is client
        names = _chain_names(task)
        assert {"_settle", "pending", "clear", "_waiters"} <= names  # (Event.wait's own code too)
        assert "opened" not in names and "ready" not in names
        looping = asyncio.create_task(loops(client))
        await asyncio.sleep(0)
        assert {"rounds", "ready", "wait"} <= _chain_names(looping)
        looping.cancel()
        # a closure's variable is what its cell holds
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def closure() -> None:
            await queue.get()

        inner_task = asyncio.create_task(closure())
        await asyncio.sleep(0)
        assert set(_referred(inner_task, {id(queue): [1]}) or ()) == {id(queue)}
        inner_task.cancel()
        # the task that runs now (the loop thread's own step) is not read
        assert _referred(asyncio.current_task(), wanted) is None
        client.ready.set()
        await task

    asyncio.run(main())


def test_a_timer_or_a_thread_holding_the_keeper_is_a_user_outside_any_task() -> None:
    import functools
    import threading

    from diag.collect.sync_collector import _outside_users

    async def main() -> None:
        client, other, lone = Client(), Client(), Client()
        loop = asyncio.get_running_loop()
        reconnect = loop.call_later(60, client.fail_all)  # a reconnect timer bound to the client
        retry = loop.call_later(60, functools.partial(print, "retry"), other)  # an argument
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait, args=(30,))
        worker.start()
        holder = asyncio.create_task(asyncio.sleep(60))  # the loop is found through the tasks
        try:
            wanted = {id(client): [1], id(other): [2], id(lone): [3], id(stop): [4]}
            assert _outside_users({1: holder}, wanted) == {id(client), id(other), id(stop)}
        finally:
            stop.set()
            worker.join(5)
            reconnect.cancel()
            retry.cancel()
            holder.cancel()

    asyncio.run(main())


class Shard:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.data: dict[str, int] = {}

    def mark(self) -> None:
        self.ready.set()


class Cache:
    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards
        self.hits = 0

    def warm(self) -> None:
        for shard in self.shards:
            shard.mark()


def test_a_keeper_is_reached_through_a_name_at_each_level() -> None:
    async def main() -> None:
        shards = [Shard(), Shard()]
        cache = Cache(shards)
        event = shards[1].ready
        inner = {id(event), id(shards[1]), id(shards)}
        levels = keeper_levels(cache, inner, id(event))
        assert levels == ({"shards", "warm"}, {"ready", "mark"})
        # code reading cache.shards and each shard's data reaches the shards, never the event
        assert not _reaches(levels, {"shards", "data", "get"})
        assert _reaches(levels, {"shards", "mark"}) and _reaches(levels, {"warm"} | {"mark"})
        # the list itself is indexed: only the shard's names count
        assert keeper_levels(shards, {id(event), id(shards[1])}, id(event)) == ({"ready", "mark"},)
        # a dict of pending futures, by any index
        assert keeper_levels({"k": event}, {id(event)}, id(event)) == ()

    asyncio.run(main())
