"""Holder tracking and await-chain walking: the C accelerator and the Python path agree.

With ``diag._origins`` built, asyncio's Lock and Semaphore methods are replaced by C
wrappers (an acquire returns an ``Acquiring`` awaitable instead of a coroutine) and the
task dump reads await chains without making frame objects.  These tests hold both to
what the Python path does, and the wrappers to what asyncio's own methods do.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import sys
import textwrap
import types
import warnings
from unittest import mock
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator

import pytest

from diag.collect import holders, task_collector, task_origins
from diag.collect.loop_watch import LoopWatch
from diag.collect.task_collector import collect_tasks
from tests.support.programs import run_python

needs_accelerator = pytest.mark.skipif(not holders.accelerated(), reason="diag._origins is not built here")

PROGRAM = textwrap.dedent('''
    import asyncio, json, weakref
    from diag.collect import holders, task_origins
    holders.install()

    def show(prim):
        return [[rec.task_id, [[c.co_name, task_origins.origin_line(c, off)] for c, off in rec.site]]
                for rec in holders.records(prim)]

    async def inner(lock):
        await lock.acquire()                      # LINE inner

    async def outer(lock):
        await inner(lock)                         # LINE outer

    async def with_block(sem, ev):
        async with sem:                           # LINE with
            await ev.wait()

    async def main():
        lock, sem, cond = asyncio.Lock(), asyncio.Semaphore(2), asyncio.Condition()
        bsem, ev = asyncio.BoundedSemaphore(1), asyncio.Event()
        out = {"me": task_origins.task_seq(asyncio.current_task())}
        await outer(lock)                         # LINE main
        t1 = asyncio.create_task(with_block(sem, ev))
        t2 = asyncio.create_task(with_block(sem, ev))
        await asyncio.sleep(0)
        out.update(lock=show(lock), sem=show(sem), t1=task_origins.task_seq(t1), t2=task_origins.task_seq(t2))
        lock.release()
        out["lock_after"] = show(lock)
        ev.set()
        await asyncio.gather(t1, t2)
        out["sem_after"] = show(sem)
        out["own_releases_handed_on"] = [holders.last_handoff(p) is not None for p in (lock, sem)]
        async with cond:                          # LINE cond
            out["cond"] = show(cond._lock)
        log = weakref.WeakSet()
        holders.add_acquire_log(log)
        async with bsem:                          # LINE bsem
            out["bsem"] = show(bsem)
        holders.remove_acquire_log(log)
        out["logged"] = sorted(type(p).__name__ for p in log)
        await lock.acquire()
        async def release_for_me():
            lock.release()
        await asyncio.create_task(release_for_me())
        out["released_on_behalf"] = show(lock)
        out["handed_on"] = holders.last_handoff(lock) is not None
        out["activity"] = holders.last_activity(lock) is not None
        out["ok_from_wait_for"] = await asyncio.wait_for(sem.acquire(), 5)
        out["after_wait_for"] = len(holders.records(sem))
        sem.release()
        out["wait_for_handed_on"] = holders.last_handoff(sem) is not None  # 3.11: acquired by wait_for's task
        timed, signal = asyncio.Semaphore(1), asyncio.Semaphore(0)
        await timed.acquire()
        asyncio.get_running_loop().call_soon(timed.release)  # a rate limit's idiom: a timer gives it back
        await asyncio.sleep(0)
        signal.release()                                     # a release with no acquire recorded
        out["timer_and_signal_handed_on"] = [holders.last_handoff(p) is not None for p in (timed, signal)]
        out["accelerated"] = holders.accelerated()
        print(json.dumps(out))

    asyncio.run(main())
''')


def _lines() -> dict[str, int]:
    return {line.split("# LINE ")[1].strip(): n
            for n, line in enumerate(PROGRAM.splitlines(), start=1) if "# LINE " in line}


def _run(python_path: bool) -> dict[str, Any]:
    proc = run_python(PROGRAM, python_path=python_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no "never awaited" or other warnings from the wrappers
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_the_holder_wrappers_are_built_in_ci() -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("only required where CI=true")
    assert holders.accelerated()


def test_both_paths_record_the_same_holders_and_sites() -> None:
    fast, slow = _run(python_path=False), _run(python_path=True)
    assert slow["accelerated"] is False
    if not os.environ.get("DIAG_ORIGINS"):
        assert fast["accelerated"] is holders.accelerated()
    lines = _lines()
    for result in (fast, slow):
        me = result["me"]
        assert result["lock"] == [[me, [["inner", lines["inner"]], ["outer", lines["outer"]], ["main", lines["main"]]]]]
        assert result["sem"] == [[result["t1"], [["with_block", lines["with"]]]],
                                 [result["t2"], [["with_block", lines["with"]]]]]
        assert result["lock_after"] == [] and result["sem_after"] == []
        assert result["cond"] == [[me, [["main", lines["cond"]]]]]
        assert result["bsem"] == [[me, [["main", lines["bsem"]]]]]
        assert result["logged"] == ["BoundedSemaphore"]
        assert result["released_on_behalf"] == []
        # releases by the acquirer are not hand-offs; one by another task, a timer, or with no
        # acquire recorded is (a holder that ends without releasing may not have lost its permit)
        assert result["own_releases_handed_on"] == [False, False]
        assert result["handed_on"] is True
        assert result["wait_for_handed_on"] is False
        assert result["timer_and_signal_handed_on"] == [True, True]
        assert result["activity"] is True
        assert result["ok_from_wait_for"] is True and result["after_wait_for"] == 1
    assert {k: v for k, v in fast.items() if k != "accelerated"} == {k: v for k, v in slow.items() if k != "accelerated"}


@contextmanager
def tracking() -> Iterator[None]:
    was = holders.installed()
    holders.install()
    try:
        yield
    finally:
        if not was:
            holders.uninstall()


@needs_accelerator
async def test_the_c_wrappers_keep_asyncios_behaviour() -> None:
    with tracking():
        assert type(asyncio.Lock.__dict__["acquire"]).__name__ == "HeldMethod"
        lock, sem = asyncio.Lock(), asyncio.Semaphore(1)
        assert asyncio.Lock.acquire.__wrapped__ is holders._originals[(asyncio.Lock, "acquire")]
        assert lock.acquire.__qualname__ == "Lock.acquire" and asyncio.Semaphore.release.__name__ == "release"
        assert asyncio.iscoroutinefunction(lock.acquire) and not asyncio.iscoroutinefunction(lock.release)
        assert inspect.iscoroutinefunction(lock.acquire) and not inspect.iscoroutinefunction(lock.release)
        # a test suite's autospec of a Lock still awaits a mocked acquire
        assert type(mock.create_autospec(asyncio.Lock).acquire).__name__ == "AsyncMock"
        assert await lock.acquire() is True
        assert lock.locked() and len(holders.records(lock)) == 1

        # a waiter cancelled while queued: CancelledError reaches it, nothing is recorded
        waiter = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(holders.records(lock)) == 1
        lock.release()
        assert not lock.locked() and holders.records(lock) == []

        # a timeout while queued on a semaphore: the permit count is left as it was
        await sem.acquire()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sem.acquire(), 0.01)
        sem.release()
        assert not sem.locked() and holders.records(sem) == []

        # handed over: a waiter woken by a release holds the permit, recorded as its own
        await sem.acquire()
        async def take() -> int:
            await sem.acquire()
            return task_origins.task_seq(asyncio.current_task())  # type: ignore[arg-type]
        taker = asyncio.create_task(take())
        await asyncio.sleep(0)
        sem.release()
        seq = await taker
        assert [r.task_id for r in holders.records(sem)] == [seq]
        sem.release()

        # Condition built on a tracked Lock still waits and wakes
        cond = asyncio.Condition()
        async def wait_for_it() -> str:
            async with cond:
                await cond.wait()
                return "woken"
        sleeper = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0)
        async with cond:
            cond.notify_all()
        assert await sleeper == "woken"

        # an acquire never awaited warns as asyncio's own does, naming asyncio's method
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lock.acquire()
            gc.collect()
        assert any("Lock.acquire" in str(w.message) and "never awaited" in str(w.message) for w in caught)
    if not holders.installed():
        assert type(asyncio.Lock.__dict__["acquire"]).__name__ == "function"


OBSERVED = textwrap.dedent('''
    import asyncio, sys
    from diag.collect import holders
    holders.install()

    class Log:  # an acquire log whose add raises what argv[1] names
        def add(self, primitive):
            raise {"interrupt": KeyboardInterrupt, "error": ValueError}[sys.argv[1]]()

    async def main():
        lock = asyncio.Lock()
        holders.add_acquire_log(Log())
        try:
            await lock.acquire()
        except KeyboardInterrupt:
            print("KeyboardInterrupt reached the program")
            return
        print("acquired", lock.locked())

    asyncio.run(main())
''')


@pytest.mark.parametrize("python_path", [False, True])
def test_bookkeeping_errors_are_dropped_but_an_interrupt_reaches_the_program(python_path: bool) -> None:
    outs = {}
    for what in ("error", "interrupt"):
        proc = run_python(OBSERVED, what, python_path=python_path)
        assert proc.returncode == 0, proc.stderr
        outs[what] = proc.stdout.strip()
    assert outs == {"error": "acquired True", "interrupt": "KeyboardInterrupt reached the program"}


def test_the_c_wrappers_do_not_need_the_holders_module() -> None:
    # Used straight from the extension, before holders.py configured it: no records, no crash.
    code = textwrap.dedent('''
        import asyncio
        from diag import _origins
        if not hasattr(_origins, "HeldMethod"):
            raise SystemExit(0)
        class Lock(asyncio.Lock):
            pass
        Lock.acquire = _origins.HeldMethod(asyncio.Lock.acquire, False)
        Lock.release = _origins.HeldMethod(asyncio.Lock.release, True)
        async def main():
            lock = Lock()
            assert await lock.acquire() is True
            lock.release()
            assert not lock.locked() and not hasattr(lock, "_diag_holders")
        asyncio.run(main())
        print("ok")
    ''')
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("ok", "")


# -- the await chain: read in C, read in Python, same dump -----------------------------------

@asynccontextmanager
async def slot(sem: asyncio.Semaphore) -> AsyncIterator[None]:
    async with sem:
        yield


async def test_the_c_and_python_chain_walks_give_the_same_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    if task_collector._c_await_chain is None:
        pytest.skip("diag._origins is not built here")
    loop = asyncio.get_running_loop()
    watch = LoopWatch()
    watch.add_loop(loop)
    stop = asyncio.Event()
    sem, lock, cond = asyncio.Semaphore(1), asyncio.Lock(), asyncio.Condition()
    queue: asyncio.Queue[int] = asyncio.Queue()

    @types.coroutine
    def gen_based() -> Any:  # a generator in the chain (yield from)
        yield from asyncio.sleep(30)  # type: ignore[misc]

    async def through_gen() -> None:
        await gen_based()

    async def nested(depth: int) -> None:
        if depth:
            await nested(depth - 1)
        else:
            await stop.wait()

    async def in_slot() -> None:
        async with slot(sem):  # an asend in the chain when blocked entering
            await stop.wait()

    async def cond_wait() -> None:
        async with cond:
            await cond.wait()

    async def agen_consumer() -> None:
        async def ticks() -> AsyncIterator[int]:
            while True:
                yield await queue.get()
        async for _ in ticks():
            pass

    async def gathered() -> None:
        await asyncio.gather(stop.wait(), asyncio.sleep(30))

    with tracking():
        tasks = [asyncio.create_task(c, name=n) for n, c in [
            ("nested", nested(5)), ("holder", in_slot()), ("blocked", in_slot()),
            ("lock", lock.acquire()), ("wait_for", asyncio.wait_for(lock.acquire(), 30)),
            ("cond", cond_wait()), ("agen", agen_consumer()), ("gen", through_gen()),
            ("gather", gathered()),
        ]]
        await lock.acquire()
        for _ in range(5):
            await asyncio.sleep(0)
        try:
            fast = collect_tasks(watch)
            monkeypatch.setattr(task_collector, "_c_await_chain", None)
            slow = collect_tasks(watch)
        finally:
            stop.set()
            lock.release()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            watch.stop()

    me = task_origins.task_seq(asyncio.current_task())  # type: ignore[arg-type]

    def view(snap: Any) -> dict[int, Any]:  # every task but this one, which ran on meanwhile
        return {t.id: (t.name, t.coro, t.stack, t.wait.kind, t.wait.detail,
                       t.wait.primitive.id if t.wait.primitive else None, t.wait.tasks)
                for t in snap.tasks if t.id != me}

    assert view(fast) == view(slow)
    kinds = {t.name: t.wait.kind for t in fast.tasks}
    assert kinds["blocked"] == "semaphore" and kinds["lock"] == "lock" and kinds["wait_for"] == ("gather" if sys.version_info < (3, 12) else "lock")
    assert kinds["cond"] == "condition" and kinds["agen"] == "queue_get" and kinds["nested"] == "event"
    assert kinds["gen"] == "sleep" and kinds["gather"] == "gather"
    nested_stack = next(t.stack for t in fast.tasks if t.name == "nested")
    assert sum(f.function.endswith("nested") for f in nested_stack) == 6


#: What the proof's test program keeps (a module global: a root).
_HELD: dict[str, Any] = {}


class _Keeper:
    """Holds a future; reached only through a weak reference (as asyncio's stream
    protocols hold their readers)."""

    fut: "asyncio.Future[None]"


def test_the_c_marking_and_the_python_marking_prove_the_same_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reachability proof marks in C when the accelerator is built; both markings
    reach a module's namespace and a weak reference's live referent, pass over diag's own
    objects, and prove the same tasks leaked."""
    import threading

    from diag.collect import reachability

    if reachability._c_mark() is None:
        pytest.skip("diag._origins is not built here")
    loop = asyncio.new_event_loop()
    names: dict[int, str] = {}
    ready = threading.Event()

    async def wait_on(fut: "asyncio.Future[None]") -> None:
        await fut

    async def wait_on_keeper(keeper: _Keeper) -> None:
        await keeper.fut

    async def main() -> None:
        namespace = types.ModuleType("diag_test_proof_namespace")  # a module, reached through a dict
        namespace.fut = loop.create_future()  # type: ignore[attr-defined]
        keeper = _Keeper()
        keeper.fut = loop.create_future()
        mine = type("Mine", (), {"__module__": "diag.test_fixture"})()  # one of diag's own objects
        mine.fut = loop.create_future()
        _HELD.update(namespace=namespace, keeper=__import__("weakref").ref(keeper), mine=mine)
        tasks = {
            "lost": asyncio.create_task(wait_on(loop.create_future())),
            "in a module": asyncio.create_task(wait_on(namespace.fut)),  # type: ignore[attr-defined]
            "weakly kept": asyncio.create_task(wait_on_keeper(keeper)),
            "only diag holds it": asyncio.create_task(wait_on(mine.fut)),
        }
        del keeper
        _HELD["tasks"] = list(tasks.values())
        asyncio.create_task(wait_on(loop.create_future()), name="fire and forget")  # nothing keeps it
        names.update({task_origins.task_seq(t): name for name, t in tasks.items()})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, name="proof-loop", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(main(), loop).result(30)
        assert ready.wait(30)
        forgotten = [t for t in asyncio.all_tasks(loop) if t.get_name() == "fire and forget"]
        names[task_origins.task_seq(forgotten[0])] = "fire and forget"
        del forgotten
        me = frozenset({threading.get_ident()})
        fast = reachability._prove(me, 30.0)
        monkeypatch.setattr(reachability, "_c_mark", lambda: None)
        slow = reachability._prove(me, 30.0)
        for run in (fast, slow):
            assert run.reach.complete and not run.ran, run
            assert sorted(names[seq] for seq in run.reach.unreachable) == [
                "fire and forget", "lost", "only diag holds it"]
            assert [names[seq] for seq in run.reach.unreferenced] == ["fire and forget"]
        assert abs(fast.reach.objects_marked - slow.reach.objects_marked) < 100
    finally:
        async def cancel_all() -> None:
            others = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        _HELD.clear()
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


ENDED_STACK = textwrap.dedent('''
    import json, threading, time
    from diag import _origins

    def long_call(n):
        return sum(range(n))          # one C call holding the GIL throughout

    def outer(n):
        return long_call(n)

    n = 20_000_000
    results = []
    _origins.set_arming(True)
    for attempt in range(20):
        armed = []
        sleeper = threading.Thread(target=lambda: armed.append(_origins.sleep_arming(0.05, True)))
        sleeper.start()
        before = time.monotonic()
        outer(n)
        after = time.monotonic()
        sleeper.join()
        (armed_at, fresh), = armed
        read = _origins.ended_stack()
        if fresh and before < armed_at < after:   # asked for while the call held the GIL
            results.append([read[0] >= armed_at, [(code.co_name, line) for code, line in read[1][:2]]])
            if len(results) == 3:
                break
        else:
            n *= 2 if armed_at >= after else 1
    print(json.dumps(results))
''')


@needs_accelerator
def test_a_long_call_s_stack_is_read_on_its_own_thread_as_it_returns() -> None:
    # Asked for from another thread, without the GIL, while the main thread is in one long
    # C call: the main thread reads its own stack as the call returns, before any other
    # thread can run, so it is the function that made the call, on the call's line.
    proc = run_python(ENDED_STACK, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    line = next(i for i, text in enumerate(ENDED_STACK.splitlines(), 1) if "return sum(range(n))" in text)
    outer_line = next(i for i, text in enumerate(ENDED_STACK.splitlines(), 1) if "return long_call(n)" in text)
    assert results == [[True, [["long_call", line], ["outer", outer_line]]]] * 3, results


@needs_accelerator
def test_the_watchdog_sleep_refuses_a_nonsense_duration() -> None:
    from diag import _origins  # type: ignore[attr-defined]
    for seconds in (-1.0, float("nan"), 1e9):
        with pytest.raises(ValueError):
            _origins.sleep_arming(seconds, False)
    assert _origins.sleep_arming(0.0, False) == (-1.0, 0)


ARMING_CLOSED = textwrap.dedent('''
    import atexit
    from diag import _origins
    from diag.collect import loop_watch
    assert loop_watch._arming_opened()
    armed_at, fresh = _origins.sleep_arming(0.0, True)
    assert armed_at >= 0, armed_at
    atexit._run_exitfuncs()   # what the interpreter runs first as it exits
    assert _origins.sleep_arming(0.0, True) == (-1.0, 0)
    print("closed")
''')


@needs_accelerator
def test_no_stack_is_asked_for_once_the_interpreter_exits() -> None:
    # From atexit on, the interpreter tears down its pending-call queue: a daemon watchdog
    # still sleeping then must not ask for anything.
    proc = run_python(ARMING_CLOSED)
    assert proc.returncode == 0 and proc.stdout.strip() == "closed", proc.stderr


STOPPED_LOOP = textwrap.dedent('''
    import asyncio, time
    import diag.agent
    from diag import _origins

    agent = diag.agent.start("127.0.0.1:0")

    async def idle():
        await asyncio.sleep(1.0)      # idle in its poll on the main thread: stacks are asked for

    asyncio.run(idle())
    assert _origins.ended_stack() is not None, "no stack was read while the loop idled"
    reads = set()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:     # plain Python: a pending call runs between bytecodes
        reads.add(_origins.ended_stack()[0])
    # the read asked for before the loop stopped may run here; none is asked for after
    print(len(reads))
    agent.stop()
''')


@needs_accelerator
def test_no_stack_is_asked_for_a_loop_that_has_stopped() -> None:
    # Once asyncio.run has returned, the main thread runs the program's own code: the
    # watchdog no longer asks it for its stack (ten times a second, for nothing).
    proc = run_python(STOPPED_LOOP, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) <= 2, proc.stdout  # the last read before, the one asked for before the stop
