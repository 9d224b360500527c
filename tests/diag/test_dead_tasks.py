"""The dead-task log: what it records of a task that raised or was destroyed pending, and
what it must leave alone (the program's own exception log, its memory)."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import weakref
from typing import Any

import pytest

from diag.collect import task_origins
from diag.collect.dead_tasks import DeadTaskLog, exception_text
from diag.collect.loop_watch import STACKS_PER_SAMPLE, LoopWatch
from diag.collect.wait_evidence import is_main_task

JOBS: asyncio.Queue[int] = asyncio.Queue()


class Worker:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[int] = asyncio.Queue()

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise ConnectionResetError("peer reset")


async def global_consumer() -> None:
    await asyncio.sleep(0)
    JOBS.qsize()
    raise ValueError("bad row")


async def test_a_dead_task_is_recorded_with_its_exception_site_and_what_it_served() -> None:
    log = DeadTaskLog()
    worker = Worker()
    tasks = [asyncio.create_task(worker.run(), name="worker"), asyncio.create_task(global_consumer())]
    await asyncio.wait(tasks)
    for t in tasks:
        log.note_done(t)
        log.note_done(t)  # the sampler sees a kept task every second: recorded once
    first, second = log.snapshot()
    assert (first.name, first.coro, first.how) == ("worker", "Worker.run", "exception")
    assert first.exception == "ConnectionResetError: peer reset"
    assert first.stack[0].function == "Worker.run" and first.stack[0].source == 'raise ConnectionResetError("peer reset")'
    assert hex(id(worker.inbox)) in first.touched  # through self
    assert hex(id(JOBS)) in second.touched  # through the module global it names
    # the program's own "exception was never retrieved" log is not silenced by the read
    assert all(t._log_traceback for t in tasks)  # type: ignore[attr-defined]
    for t in tasks:
        t.exception()  # retrieve them now, so this test does not log


async def lister(todo: asyncio.Queue[str]) -> None:
    await asyncio.sleep(0)
    todo.qsize()
    raise PermissionError("listing denied")


async def copier(todo: asyncio.Queue[str]) -> None:
    await todo.get()


async def test_what_a_dead_task_touched_is_read_from_its_own_frames_not_its_awaiters() -> None:
    # The exception a gathered child dies of goes on into the frame awaiting the gather,
    # and that frame is added to the same traceback: its locals (an audit queue the child
    # never used) are not the child's, nor is that frame where the child died.
    log = DeadTaskLog()
    todo: asyncio.Queue[str] = asyncio.Queue()
    audit: asyncio.Queue[str] = asyncio.Queue()
    children = [asyncio.ensure_future(lister(todo)), asyncio.ensure_future(copier(todo))]
    try:
        await asyncio.gather(*children)
    except PermissionError:
        audit.put_nowait("failed")  # the awaiting frame uses audit: it is in its locals
    log.note_done(children[0])  # the sampler sees it about a second later, as here
    dead, = log.snapshot()
    assert dead.coro == "lister" and dead.stack[-1].function == "lister", dead.stack
    assert hex(id(todo)) in dead.touched
    assert hex(id(audit)) not in dead.touched, dead.touched
    children[1].cancel()
    await asyncio.gather(*children, return_exceptions=True)


async def crawl(depth: int, seen: asyncio.Queue[int], children: list[asyncio.Task[Any]]) -> None:
    mine: asyncio.Queue[int] = asyncio.Queue()  # each level's own queue
    if depth == 0:
        await asyncio.sleep(0)
        mine.qsize()
        raise PermissionError("denied")
    child = asyncio.ensure_future(crawl(depth - 1, seen, children))
    children.append(child)
    try:
        await asyncio.gather(child)
    except PermissionError:
        seen.put_nowait(mine.qsize())


async def test_a_recursive_task_s_dead_child_is_read_from_its_own_frames_not_its_parents() -> None:
    # The parent awaiting the dead child runs the same coroutine: its frame, added to the
    # traceback as the exception left the child, has the child's code but is not the child's.
    log = DeadTaskLog()
    seen: asyncio.Queue[int] = asyncio.Queue()
    children: list[asyncio.Task[Any]] = []
    await crawl(1, seen, children)
    (child,) = children
    log.note_done(child)
    dead, = log.snapshot()
    assert [f.function for f in dead.stack] == ["crawl"], dead.stack  # the child's frame alone
    assert dead.stack[0].source == 'raise PermissionError("denied")', dead.stack
    assert hex(id(seen)) in dead.touched  # its own argument


async def test_the_log_holds_no_task_exception_or_frame_and_stays_bounded() -> None:
    log = DeadTaskLog(maxlen=5)
    refs: list[Any] = []
    for _ in range(20):
        t = asyncio.create_task(Worker().run())
        await asyncio.wait([t])
        log.note_done(t)
        refs.append(weakref.ref(t))
        t.exception()
        del t
    gc.collect()
    assert len(log) == 5 and len(log.snapshot()) == 5
    assert all(r() is None for r in refs)  # nothing of theirs kept alive


@pytest.mark.diag_allow_leaks  # loses a pending task on purpose: a checked test's tasks are kept from the GC
async def test_a_task_destroyed_while_pending_is_recorded_through_the_loops_exception_handler() -> None:
    loop = asyncio.get_running_loop()
    log = DeadTaskLog()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
    before = vars(loop).get("call_exception_handler")
    log.hook_loop(loop)
    try:
        async def lost() -> None:
            await loop.create_future()  # nothing else refers to it

        t = asyncio.create_task(lost(), name="lost")
        await asyncio.sleep(0)
        del t
        gc.collect()
        (dead,) = log.snapshot()
        assert (dead.name, dead.how) == ("lost", "destroyed_pending")
        assert seen == ["Task was destroyed but it is pending!"]  # the program's handler still runs
    finally:
        log.unhook_loop(loop)
        loop.set_exception_handler(None)
    assert vars(loop).get("call_exception_handler") is before  # as it was (the suite's own plugin may wrap it)


@pytest.mark.diag_allow_leaks  # loses a pending task on purpose: a checked test's tasks are kept from the GC
async def test_a_task_destroyed_while_pending_keeps_where_the_sampler_last_saw_it_wait() -> None:
    """The GC closes a garbage task's coroutine before the loop hears of it, so its frames
    are gone: the record keeps the stack of the wait the sampler saw in two samples."""
    loop = asyncio.get_running_loop()
    watch = LoopWatch(install_factories=False)
    watch.dead.hook_loop(loop)
    loop.set_exception_handler(lambda _loop, ctx: None)
    try:
        async def wait_inside() -> None:
            await loop.create_future()  # nothing else refers to it

        async def lost() -> None:
            await wait_inside()

        t = asyncio.create_task(lost(), name="lost")
        await asyncio.sleep(0)
        watch.sample_waits()
        watch.sample_waits()  # the same wait twice: its stack is read
        del t
        gc.collect()
        (dead,) = watch.dead.snapshot()
        assert dead.how == "destroyed_pending"
        prefix = "test_a_task_destroyed_while_pending_keeps_where_the_sampler_last_saw_it_wait.<locals>."
        assert [(f.function, f.source) for f in dead.stack] == [
            (prefix + "wait_inside", "await loop.create_future()  # nothing else refers to it"),
            (prefix + "lost", "await wait_inside()")]
    finally:
        watch.dead.unhook_loop(loop)
        loop.set_exception_handler(None)


async def test_the_sampler_reads_a_bounded_number_of_new_stacks_each_time() -> None:
    watch = LoopWatch(install_factories=False)
    stop = asyncio.Event()
    waiters = [asyncio.create_task(stop.wait()) for _ in range(STACKS_PER_SAMPLE + 10)]
    await asyncio.sleep(0)
    try:
        watch.sample_waits()
        watch.sample_waits()
        assert sum(1 for t in waiters if watch._last_stack(t)) == STACKS_PER_SAMPLE
        watch.sample_waits()
        assert all(watch._last_stack(t) for t in waiters)
    finally:
        stop.set()
        await asyncio.gather(*waiters)


def test_exception_text_never_runs_the_exceptions_own_str() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise AssertionError("ran __str__")

    assert exception_text(Hostile("plain", 1)) == "test_exception_text_never_runs_the_exceptions_own_str.<locals>.Hostile: plain"
    assert exception_text(Hostile(object())).endswith("Hostile")


async def test_the_runners_task_is_the_main_task() -> None:
    other = asyncio.create_task(asyncio.sleep(0))
    assert not is_main_task(other)
    await other


async def test_a_new_future_at_a_recycled_address_starts_a_new_wait() -> None:
    """A reader awaiting a fresh future every few milliseconds never waits long, even when
    asyncio hands each new future the address of the one just freed."""
    from diag.collect.loop_watch import LoopWatch
    from diag.collect.task_collector import collect_tasks

    loop = asyncio.get_running_loop()
    stop = False

    async def reader() -> None:
        while not stop:
            fut = loop.create_future()
            loop.call_later(0.005, fut.set_result, None)
            await fut
            del fut

    task = asyncio.create_task(reader(), name="reader")
    watch = LoopWatch(install_factories=False)
    try:
        addresses = set()
        for _ in range(12):
            await asyncio.sleep(0.05)
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            addresses.add(id(waiter))
            del waiter
            watch.sample_waits()
        (info,) = [t for t in collect_tasks(watch).tasks if t.name == "reader"]
        assert info.wait.seconds is not None and info.wait.seconds < 0.2, (info.wait.seconds, len(addresses))
    finally:
        stop = True
        await task


@pytest.mark.diag_allow_leaks  # loses a pending task on purpose: a checked test's tasks are kept from the GC
async def test_a_task_the_gc_destroys_keeps_its_id_and_creator() -> None:
    """In a GC pass weak references die before finalizers run: the record must still carry
    the id the task had (a holder record names it) and where it was created."""
    loop = asyncio.get_running_loop()
    log = DeadTaskLog()
    log.hook_loop(loop)
    loop.set_exception_handler(lambda _loop, ctx: None)
    previous = loop.get_task_factory()
    task_origins.install_factory(loop)
    try:
        async def lost() -> None:
            await loop.create_future()  # nothing else refers to it

        t = asyncio.create_task(lost(), name="lost")
        seq = task_origins.task_seq(t)
        await asyncio.sleep(0)
        del t
        gc.collect()
        (dead,) = log.snapshot()
        assert (dead.id, dead.how) == (seq, "destroyed_pending")
        assert dead.created_by is not None
        assert dead.created_by.function == "test_a_task_the_gc_destroys_keeps_its_id_and_creator"
    finally:
        loop.set_task_factory(previous)
        log.unhook_loop(loop)
        loop.set_exception_handler(None)


class Feed:
    def __init__(self) -> None:
        self.pending: dict[int, object] = {}

    def serve(self) -> None:
        raise OSError("device unplugged")


def test_a_thread_that_dies_is_logged_with_what_it_served_and_the_programs_hook_still_runs() -> None:
    import threading

    seen: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(type(args.exc_value).__name__)
    log = DeadTaskLog()
    try:
        log.hook_threads()
        feed = Feed()
        worker = threading.Thread(target=feed.serve, name="feed-reader")
        worker.start()
        worker.join()
        (dead,) = log.snapshot()
        assert (dead.how, dead.name, dead.coro) == ("thread_exception", "feed-reader", "Feed.serve")
        assert dead.exception == "OSError: device unplugged" and dead.id < 0
        assert dead.stack[0].function == "Feed.serve"
        assert hex(id(feed)) in dead.touched  # the object whose method died
        assert seen == ["OSError"]  # the hook it wrapped still runs

        def leave() -> None:
            raise SystemExit(0)  # a thread's way to end on purpose: no death

        quiet = threading.Thread(target=leave, name="exits")
        quiet.start()
        quiet.join()
        assert len(log.snapshot()) == 1
        log.unhook_threads()
        assert threading.excepthook.__name__ == "<lambda>"  # the program's hook is back
    finally:
        log.unhook_threads()
        threading.excepthook = previous


@pytest.mark.diag_allow_leaks  # loses a pending task on purpose
async def test_a_never_numbered_task_at_a_reused_address_is_not_taken_for_the_task_before_it() -> None:
    """A task diag never numbered, destroyed at the address of an earlier task the log
    already holds, is recorded with no id rather than dropped as a repeat or given the
    earlier task's id."""
    loop = asyncio.get_running_loop()
    log = DeadTaskLog()
    log.hook_loop(loop)
    loop.set_exception_handler(lambda _loop, ctx: None)
    try:
        async def boom() -> None:
            raise ValueError("first")

        async def lost() -> None:
            await loop.create_future()

        first = asyncio.Task(boom(), loop=loop)  # asyncio.Task() directly: not numbered at creation
        await asyncio.sleep(0)
        log.note_done(first)  # numbered and logged
        (earlier,) = log.snapshot()
        address = id(first)
        first.exception()
        del first
        gc.collect()
        reused = None
        for _ in range(2000):  # allocate until a new task lands where the first one was
            candidate = asyncio.Task(lost(), loop=loop)
            if id(candidate) == address:
                reused = candidate
                break
            candidate.cancel()
        if reused is None:
            pytest.skip("the allocator did not reuse the address")
        await asyncio.sleep(0)
        del reused, candidate
        gc.collect()
        records = log.snapshot()
        assert len(records) == 2, records
        assert records[1].how == "destroyed_pending" and records[1].id != earlier.id and records[1].id < 0
    finally:
        log.unhook_loop(loop)
        loop.set_exception_handler(None)


class Poller(asyncio.DatagramProtocol):
    """Resolves the request a datagram answers, but fails to decode one first."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[str]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        fut = self.pending[1]
        kind = data.decode()
        {"INTEGER": int}[kind]  # KeyError for a kind it does not know
        fut.set_result(kind)


class Timer:
    def __init__(self) -> None:
        self.due: asyncio.Event = asyncio.Event()

    def fire(self) -> None:
        raise RuntimeError("clock went backwards")


async def _callbacks_that_raise(loop: asyncio.AbstractEventLoop, heard: Any) -> tuple[Poller, Timer]:
    """A protocol's datagram_received and a call_soon callback, each raising once;
    returns once ``heard()`` says both were reported."""
    poller = Poller()
    poller.pending[1] = loop.create_future()
    receiver, _ = await loop.create_datagram_endpoint(lambda: poller, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                   remote_addr=receiver.get_extra_info("sockname"))
    timer = Timer()
    try:
        sender.sendto(b"Opaque")
        loop.call_soon(timer.fire)
        for _ in range(1000):  # the datagram crosses loopback
            await asyncio.sleep(0.01)
            if heard():
                break
    finally:
        sender.close()
        receiver.close()
    return poller, timer


async def test_a_callback_of_the_loop_that_raises_is_logged_with_what_it_was_serving() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    def handler(_loop: Any, context: dict[str, Any]) -> None:
        seen.append(type(context.get("exception")).__name__)
        _loop.default_exception_handler(context)  # logs it: the logger filter must not record it again

    log = DeadTaskLog()
    log.hook_loop(loop)
    log.hook_logger()  # both feeds on: the callback is recorded once
    previous = loop.get_exception_handler()
    loop.set_exception_handler(handler)
    try:
        poller, timer = await _callbacks_that_raise(loop, lambda: len(seen) >= 2)
        assert sorted(seen) == ["KeyError", "RuntimeError"]  # the program's handler still runs, once each
        records = {d.coro: d for d in log.snapshot()}
        assert set(records) == {"Poller.datagram_received", "Timer.fire"}, records
        assert len(log.snapshot()) == 2  # heard by the wrapper; the logger filter let them be
        got = records["Poller.datagram_received"]
        assert (got.how, got.exception, got.id < 0) == ("callback_exception", "KeyError: Opaque", True)
        assert got.name.startswith("Exception in callback")
        assert got.stack[0].function == "Poller.datagram_received"
        assert hex(id(poller.pending[1])) in got.touched and hex(id(poller)) in got.touched
        fired = records["Timer.fire"]
        assert fired.exception == "RuntimeError: clock went backwards" and hex(id(timer)) in fired.touched
        poller.pending[1].cancel()
    finally:
        loop.set_exception_handler(previous)
        log.unhook_all()


def test_on_uvloop_the_asyncio_logger_tells_of_a_callback_that_raised() -> None:
    """uvloop's handler cannot be wrapped: its default handler's log record is the feed."""
    import logging

    uvloop = pytest.importorskip("uvloop")
    log = DeadTaskLog()
    log.hook_logger()
    logger = logging.getLogger("asyncio")
    assert any(type(f).__name__ == "_LoopLogFilter" for f in logger.filters)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logger.addHandler(keep)

    async def main() -> Poller:
        loop = asyncio.get_running_loop()
        log.hook_loop(loop)  # a no-op on uvloop
        poller = Poller()
        poller.pending[1] = loop.create_future()
        receiver, _ = await loop.create_datagram_endpoint(lambda: poller, local_addr=("127.0.0.1", 0))
        sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       remote_addr=receiver.get_extra_info("sockname"))
        sender.sendto(b"Opaque")
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if log.snapshot():
                break
        sender.close()
        receiver.close()
        poller.pending[1].cancel()
        return poller

    try:
        poller = uvloop.run(main())
        (got,) = log.snapshot()
        assert (got.how, got.coro, got.exception) == ("callback_exception", "Poller.datagram_received",
                                                      "KeyError: Opaque")
        assert hex(id(poller)) in got.touched
        assert len(records) == 1 and records[0].exc_info  # the record still went on to the handlers
    finally:
        logger.removeHandler(keep)
        log.unhook_all()
    assert not any(type(f).__name__ == "_LoopLogFilter" for f in logger.filters)


class HandRolled(collections.abc.Coroutine):  # type: ignore[type-arg]
    """A coroutine-like object that is no Python coroutine (as some libraries hand to tasks)."""

    def send(self, value: Any) -> Any:
        raise OSError("link down")

    def throw(self, *args: Any) -> Any:
        raise OSError("link down")

    def close(self) -> None:
        pass

    def __await__(self) -> Any:
        return self


async def test_a_task_running_no_python_coroutine_is_recorded_under_its_class() -> None:
    log = DeadTaskLog()
    task = asyncio.ensure_future(HandRolled())
    await asyncio.wait([task])
    log.note_done(task)
    dead, = log.snapshot()
    assert (dead.coro, dead.exception) == ("HandRolled", "OSError: link down")
    task.exception()
