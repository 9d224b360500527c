"""``diag.collect.reach``: the names a suspended coroutine may still read, whether it waits
inside a loop of its own code, and what can be reached from outside the tasks."""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import threading
import types
from typing import Any

import pytest

from diag.collect import reach

pytestmark = pytest.mark.skipif(sys.version_info[:2] not in reach._TESTED, reason="bytecode read on 3.11-3.13 only")


class Box:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.count = 0

    def poke(self) -> None:
        self.ready.set()


def _helper(box: Box) -> None:
    box.poke()


async def once(box: Box) -> None:
    box.count += 1                 # before the wait only
    await box.ready.wait()
    _helper(box)                   # after it: its names, and those of the module function


async def looped(box: Box) -> None:
    while True:
        box.count += 1             # before the wait, in the loop around it: read again
        await box.ready.wait()


async def guarded(box: Box) -> None:
    try:
        await box.ready.wait()
    except ValueError:
        box.poke()                 # a handler after the wait may run


async def under_lock(box: Box, lock: asyncio.Lock) -> None:
    async with lock:
        await box.ready.wait()


def _suspended(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` to its first real suspension and hand back the coroutine (closed by
    the caller's loop at its end)."""
    async def main() -> Any:
        task = asyncio.ensure_future(fn(*args))
        await asyncio.sleep(0)
        return task

    loop = asyncio.new_event_loop()
    try:
        task = loop.run_until_complete(main())
        coro = task.get_coro()
        return loop, task, coro
    except BaseException:
        loop.close()
        raise


@pytest.fixture
def box() -> Box:
    return Box()


def _close(loop: asyncio.AbstractEventLoop, task: Any) -> None:
    task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def test_names_still_to_run_are_read_from_where_the_coroutine_waits(box: Box) -> None:
    loop, task, coro = _suspended(once, box)
    try:
        names = reach.coroutine_names(coro)
        assert names is not None
        assert {"_helper", "poke"} <= names           # _helper's own code: box.poke()
        assert "count" not in names and "ready" not in names
        assert reach.in_loop(coro) is False
    finally:
        _close(loop, task)


def test_a_loop_around_the_wait_counts_whole_and_is_a_workers_wait(box: Box) -> None:
    loop, task, coro = _suspended(looped, box)
    try:
        assert {"count", "ready", "wait"} <= (reach.coroutine_names(coro) or set())
        assert reach.in_loop(coro) is True
    finally:
        _close(loop, task)


def test_a_handler_after_the_wait_counts_and_an_async_with_is_no_loop(box: Box) -> None:
    loop, task, coro = _suspended(guarded, box)
    try:
        assert "poke" in (reach.coroutine_names(coro) or set())
        assert reach.in_loop(coro) is False
    finally:
        _close(loop, task)
    loop, task, coro = _suspended(under_lock, box, asyncio.Lock())
    try:
        assert reach.in_loop(coro) is False
    finally:
        _close(loop, task)


def test_names_of_callables_held() -> None:
    box = Box()
    out: set[str] = set()
    reach.callable_names(box.poke, out)
    assert out == {"ready", "set"}
    out = set()
    reach.callable_names(functools.partial(_helper, box), out)
    assert out == {"poke"}
    out = set()
    reach.callable_names(lambda: [x.count for x in (box,)], out)  # a comprehension's own code too
    assert "count" in out
    out = set()
    reach.callable_names(print, out)
    assert out == set()


def test_what_outside_the_tasks_reaches(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test runner's own threads and signal handlers (a timeout's SIGALRM) reach its whole
    # session: more than the walk's bound.  Only this loop's roots are asked about here.
    monkeypatch.setattr(reach.threading, "enumerate", lambda: [threading.current_thread()])
    monkeypatch.setattr(reach.signal, "valid_signals", lambda: {signal.SIGUSR2})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        timed, signalled, hidden, by_callback, pending = Box(), Box(), Box(), Box(), Box()
        handle = loop.call_later(60, timed.poke)
        loop.add_signal_handler(signal.SIGUSR2, functools.partial(_helper, signalled))
        fut = loop.create_future()  # awaited by a task: when it is resolved, its callback runs
        fut.add_done_callback(lambda f: by_callback.poke())
        lone = loop.create_future()  # held by nothing that can resolve it: its callback never runs
        lone.add_done_callback(lambda f: hidden.poke())
        targets = {id(b.ready): name for name, b in
                   [("timed", timed), ("signalled", signalled), ("hidden", hidden), ("by_callback", by_callback)]}
        task = asyncio.create_task(pending.ready.wait())  # a task holds it: the tasks' own scan judges that
        await asyncio.sleep(0)
        targets[id(pending.ready)] = "pending"
        try:
            answer = reach.outside_reach([loop], set(targets), set(), awaited=[fut])
            assert answer is not None
            found, read = answer
            assert {targets[i] for i in found} == {"timed", "signalled", "by_callback"}
            assert {"poke", "ready", "set"} <= read  # the code those callbacks run (_helper, Box.poke)
        finally:
            handle.cancel()
            loop.remove_signal_handler(signal.SIGUSR2)
            task.cancel()
            fut.cancel()
            lone.cancel()

    asyncio.run(main())


def test_a_search_cut_short_has_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        kept = [Box() for _ in range(50)]
        handle = loop.call_later(60, lambda: kept)
        monkeypatch.setattr(reach, "MAX_REACH", 20)
        try:
            assert reach.outside_reach([loop], {id(lost)}, set()) is None
        finally:
            handle.cancel()

    asyncio.run(main())


def test_a_thread_in_the_programs_code_is_busy_an_idle_pool_worker_is_not() -> None:
    import concurrent.futures

    stop = threading.Event()
    gate = threading.Event()

    def spin() -> None:
        gate.set()
        while not stop.wait(0.01):
            pass

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="idle-pool") as pool:
        pool.submit(lambda: None).result()  # a worker now idle on the pool's queue
        before = reach.busy_threads({threading.get_ident()})  # (a test runner's own threads, if any)
        assert not [name for name in before if name.startswith("idle-pool")], before
        thread = threading.Thread(target=spin, name="spinner", daemon=True)
        thread.start()
        try:
            gate.wait(10)
            assert sorted(reach.busy_threads({threading.get_ident()})) == sorted(before + ["spinner"])
        finally:
            stop.set()
            thread.join(10)


def test_on_an_untested_interpreter_the_whole_code_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reach, "_TESTED", ())
    code: types.CodeType = once.__code__
    assert reach.names_ahead(code, 10**6) == frozenset(code.co_names)
    assert reach.in_loop(object()) is None


def test_a_far_await_earlier_in_the_code_is_no_loop(box: Box) -> None:
    # An await early in a long coroutine: the handler of a throw into it sits at the end of
    # the code and jumps far back to just after it (with a prefix for the long jump, 3.12+).
    source = ("async def far(box):\n    await asyncio.sleep(0)\n" + "    box.count += 1\n" * 300
              + "    await box.ready.wait()\n    box.poke()\n")
    namespace: dict[str, Any] = {"asyncio": asyncio}
    exec(compile(source, "far.py", "exec"), namespace)
    loop, task, coro = _suspended(namespace["far"], box)
    try:
        loop.run_until_complete(asyncio.sleep(0))  # past the early await, to the event
        names = reach.coroutine_names(coro) or set()
        assert "poke" in names and "count" not in names and "sleep" not in names, names
        assert reach.in_loop(coro) is False
    finally:
        _close(loop, task)


async def holds_locals(box: Box, spare: asyncio.Event) -> None:
    before = box.count             # read before the wait only
    event = box.ready
    shared = spare
    nudge = lambda: shared.set()  # noqa: E731  (a closure that keeps its cell alive)
    await event.wait()
    event.clear()                  # read after it
    event = None                   # a store reads nothing
    nudge()


def test_locals_still_to_run_are_read_from_where_the_coroutine_waits(box: Box) -> None:
    loop, task, coro = _suspended(holds_locals, box, asyncio.Event())
    try:
        frame = coro.cr_frame
        read = reach.locals_ahead(frame.f_code, frame.f_lasti)
        assert read is not None and {"event", "nudge"} <= read
        assert "before" not in read and "box" not in read and "spare" not in read
    finally:
        _close(loop, task)


def test_frame_locals_reads_the_slots_of_a_suspended_coroutine_only(box: Box) -> None:
    from diag.collect import task_origins

    frame_locals = getattr(task_origins._fast, "frame_locals", None)
    if frame_locals is None:
        pytest.skip("without the C accelerator")
    spare = asyncio.Event()
    loop, task, coro = _suspended(holds_locals, box, spare)
    try:
        slots = {name: (value, shared) for name, value, shared in frame_locals(coro)}
        assert slots["box"] == (box, False) and slots["event"] == (box.ready, False)
        assert slots["before"] == (0, False)
        cell, shared = slots["shared"]
        assert type(cell) is types.CellType and cell.cell_contents is spare and shared  # the lambda holds it
        assert frame_locals(object()) is None and frame_locals(len) is None
    finally:
        _close(loop, task)
    assert frame_locals(coro) is None  # ended


def test_a_cell_no_live_function_shares_is_the_frames_own() -> None:
    from diag.collect import task_origins

    frame_locals = getattr(task_origins._fast, "frame_locals", None)
    if frame_locals is None:
        pytest.skip("without the C accelerator")

    async def gen_expr_then_wait(event: asyncio.Event) -> None:
        items = [1, 2]
        total = sum(x for x in items if event)  # the generator expression closes over event, and ends
        await event.wait()
        del total

    event = asyncio.Event()
    loop, task, coro = _suspended(gen_expr_then_wait, event)
    try:
        slots = {name: (value, shared) for name, value, shared in frame_locals(coro)}
        cell, shared = slots["event"]
        assert type(cell) is types.CellType and cell.cell_contents is event and not shared
    finally:
        _close(loop, task)


RELEASES = '''
import asyncio, json
from diag.collect import holders, reach
holders.install()

class Boom(Exception):
    pass

async def step(fail):
    await asyncio.sleep(0)
    if fail:
        raise Boom()

async def releases_on_every_return(lock, fail):
    await lock.acquire()
    try:
        await step(fail)
    except ConnectionError:
        lock.release()                            # LINE handler
        raise
    lock.release()                                # LINE normal
    return 1

async def hands_it_to_the_caller(lock, fail):
    await lock.acquire()
    try:
        await step(fail)
    except BaseException:
        lock.release()
        raise
    return 1                                      # (the caller releases it)

async def keeps_it_on_one_branch(lock, fail):
    await lock.acquire()
    if fail:
        return 0
    lock.release()
    return 1

async def swallows_and_returns(lock, fail):
    await lock.acquire()
    try:
        await step(fail)
    except Boom:
        return None
    lock.release()

async def releases_another(lock, fail):
    await lock.acquire()
    other = asyncio.Lock()
    await other.acquire()
    other.release()
    return 1

async def in_a_block(lock, fail):
    async with lock:
        await step(fail)

async def main():
    out = {}
    for fn in (releases_on_every_return, hands_it_to_the_caller, keeps_it_on_one_branch,
               swallows_and_returns, releases_another, in_a_block):
        lock = asyncio.Lock()
        try:
            await fn(lock, fn is not hands_it_to_the_caller)  # each left with the lock held, but the block
        except Boom:
            pass
        (rec,) = holders.records(lock) or [None] if lock.locked() else [None]
        out[fn.__name__] = None if rec is None else list(reach.release_lines(*rec.site[0]))
    print(json.dumps(out))

asyncio.run(main())
'''


@pytest.mark.parametrize("python_path", [False, True], ids=["accelerator", "python"])
def test_an_acquire_released_on_every_return_names_its_releases(python_path: bool) -> None:
    """``release_lines``, at the site the holder records keep: the lines of the acquiring
    function's own releases, only when every path by which it returns passes one (a
    function that hands the permit to its caller, or keeps it on one branch, has none)."""
    import json

    from tests.support.programs import run_python

    done = run_python(RELEASES, python_path=python_path)
    assert done.returncode == 0, done.stderr
    lines = {n: i for i, text in enumerate(RELEASES.splitlines(), 1) for n in ("handler", "normal")
             if text.rstrip().endswith(f"# LINE {n}")}
    assert json.loads(done.stdout) == {
        "releases_on_every_return": [lines["handler"], lines["normal"]],
        "hands_it_to_the_caller": [],
        "keeps_it_on_one_branch": [],
        "swallows_and_returns": [],
        "releases_another": [],
        "in_a_block": None,            # (released by the block on the way out)
    }
