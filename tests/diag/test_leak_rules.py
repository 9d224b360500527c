"""The verdict rules of ``diag leaks`` on hand-built snapshots: each rule, what makes it
fire, and what keeps it quiet (precision next to recall)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, LeakOptions, LeakReport, leak_report
from diag.analysis.stuck_tasks import stuck_tasks
from diag.model.sync_snapshot import Holder, PrimitiveState, Reachability, SyncSnapshot
from diag.model.task_snapshot import ChildPipe, ChildProcess
from diag.model.task_snapshot import (
    CreatedBy, DeadTask, ExecutorInfo, Frame, Primitive, TaskInfo, TaskSnapshot, ThreadInfo, Traffic, Wait, WriteBacklog,
)
from tests.diag.snapshots import FETCH, snapshot, task

LOCK_AT = Frame("/usr/lib/python3.11/asyncio/locks.py", 114, "Lock.acquire", "await fut")
HANDLER = Frame("/srv/app/handlers.py", 40, "handler", "async with self.lock:")
GATHER = Frame("/srv/app/batch.py", 9, "run_batch", "await asyncio.gather(*jobs)")
QUEUE_PUT = Frame("/usr/lib/python3.11/asyncio/queues.py", 120, "Queue.put", "await putter")
PRODUCE = Frame("/srv/app/pipeline.py", 31, "produce", "await self.queue.put(item)")
REQUEST = Frame("/srv/app/client.py", 77, "Client.request", "return await fut")
LIB_WAIT = Frame("/venv/lib/python3.11/site-packages/aiohttp/web_protocol.py", 600, "RequestHandler.start",
                 "await self._waiter")

OPTIONS = LeakOptions(min_wait=5.0)


def lock(pid: str, label: str, waiters: int = 1) -> Primitive:
    return Primitive("lock", pid, label, locked=True, waiters=waiters)


def sem(pid: str, label: str, value: int = 0) -> Primitive:
    return Primitive("semaphore", pid, label, value=value, locked=value == 0, waiters=1)


def waiting_on(tid: int, prim: Primitive, *, coro: str = "handler", seconds: float = 30.0, **kw: object) -> TaskInfo:
    kind = "lock" if prim.kind == "lock" else "semaphore"
    return task(tid, coro=coro, stack=(LOCK_AT, HANDLER),
                wait=Wait(kind, "Lock.acquire" if kind == "lock" else "Semaphore.acquire", prim, seconds, **kw))  # type: ignore[arg-type]


def held(prim: Primitive, *holders: Holder, waiting: tuple[int, ...] = ()) -> PrimitiveState:
    return PrimitiveState(prim, holders=holders, waiting_tasks=waiting, tracked=True)


def holder(tid: int | None, *, alive: bool = True, state: str = "waiting", held_for: float = 20.0) -> Holder:
    return Holder(tid, f"Task-{tid}", alive, state if alive else "finished", (HANDLER,), held_for)


def sync(tasks: TaskSnapshot, *states: PrimitiveState, proof: Reachability = Reachability(False)) -> SyncSnapshot:
    return SyncSnapshot(tasks.taken_at, tasks.process, tasks, states, proof, holders_tracked=True)


def kinds(report: LeakReport) -> list[str]:
    return [f.kind for f in report.findings]


def ids_of(report: LeakReport, kind: str) -> set[int]:
    return {t.id for f in report.findings if f.kind == kind for t in f.tasks}


# -- the stuck-task fixed point ---------------------------------------------------------------
def test_a_task_waiting_on_a_lock_it_holds_is_a_deadlock_and_its_queue_is_stuck_behind_it() -> None:
    mine = lock("0x1", "Store.lock", waiters=2)
    snap = sync(snapshot(waiting_on(1, mine), waiting_on(2, mine, coro="reader"), waiting_on(3, mine, coro="reader")),
                held(mine, holder(1), waiting=(1, 2, 3)))
    stuck = stuck_tasks(snap)
    assert stuck.reasons[1].kind == "self" and {2, 3} <= set(stuck.reasons)
    report = leak_report(snap, OPTIONS)
    assert kinds(report) == ["deadlock", "stuck_behind"]
    assert "waits for a lock it holds itself" in report.findings[0].title
    behind = report.findings[1]
    assert {t.id for t in behind.tasks} == {2, 3} and "task 1 (handler) waits on a lock it holds itself" in behind.evidence
    assert report.fails(DEFAULT_FAIL_ON)


def test_a_semaphore_with_one_free_holder_is_no_deadlock_even_when_the_others_wait_in_a_cycle() -> None:
    pool = sem("0x2", "Client.pool")
    other = lock("0x3", "Client.lock")
    # 1 waits for the pool, held by 2 (waiting for the lock 1 holds) and by 3, which is running
    tasks = snapshot(waiting_on(1, pool), waiting_on(2, other),
                     task(3, state="running", wait=Wait("running")))
    snap = sync(tasks, held(pool, holder(2), holder(3, state="running"), waiting=(1,)),
                held(other, holder(1), waiting=(2,)))
    assert not stuck_tasks(snap).reasons
    assert "deadlock" not in kinds(leak_report(snap, OPTIONS))


def test_a_lock_order_inversion_is_one_deadlock() -> None:
    a, b = lock("0xa", "a"), lock("0xb", "b")
    snap = sync(snapshot(waiting_on(1, b), waiting_on(2, a)), held(a, holder(1), waiting=(2,)),
                held(b, holder(2), waiting=(1,)))
    report = leak_report(snap, OPTIONS)
    assert kinds(report) == ["deadlock"] and "lock-order inversion" in report.findings[0].title


def test_a_deadline_is_a_way_out() -> None:
    mine = lock("0x1", "Store.lock")
    timed = waiting_on(1, mine, deadline=4.0, deadline_by="asyncio.timeout", deadline_known=True)
    snap = sync(snapshot(timed), held(mine, holder(1), waiting=(1,)))
    assert not stuck_tasks(snap).reasons and leak_report(snap, OPTIONS).findings == ()


def test_a_gather_is_stuck_only_when_every_pending_child_is() -> None:
    mine = lock("0x1", "Store.lock")
    parent = task(10, coro="run_batch", stack=(GATHER,), wait=Wait("gather", "gather", seconds=30.0, tasks=(1, 2)))
    running_child = task(2, state="ready", wait=Wait("ready"))
    snap = sync(snapshot(parent, waiting_on(1, mine), running_child), held(mine, holder(1), waiting=(1,)))
    assert 10 not in stuck_tasks(snap)  # child 2 may still raise and end the gather
    snap = sync(snapshot(parent, waiting_on(1, mine)), held(mine, holder(1), waiting=(1,)))
    report = leak_report(snap, OPTIONS)
    assert ids_of(report, "stuck_behind") == {10}
    assert "they await 1 task that can never finish" in next(f for f in report.findings if f.kind == "stuck_behind").evidence


# -- leaked permits -----------------------------------------------------------------------------
def test_a_leaked_permit_names_a_task_that_died_using_it_after_its_holder_finished() -> None:
    # An async generator dropped inside ``async with lock`` is closed by the loop in a task of
    # its own; a lock only its owner may release refuses there, and that task dies.
    mine = lock("0x3", "TaskLock._lock")
    closer = DeadTask(16, "Task-16", "async_generator_athrow", "exception", 5.0,
                      "RuntimeError: released by a task that does not own it", stack=(REQUEST,), touched=("0x3",))
    tasks = replace(snapshot(waiting_on(1, mine)), dead_tasks=(closer,), destroyed_seen=True)
    snap = sync(tasks, held(mine, holder(9, alive=False), waiting=(1,)))
    (permit,) = [f for f in leak_report(snap, OPTIONS).findings if f.kind == "leaked_permit"]
    assert "task 9 'Task-9' acquired it" in permit.evidence and "finished without releasing it" in permit.evidence
    assert ("the task that used it, async_generator_athrow (task 16), the loop's closing of an async generator "
            "dropped without aclose()") in permit.evidence
    assert "died 5.0s ago with RuntimeError: released by a task that does not own it" in permit.evidence
    unrelated = replace(snap, tasks=replace(tasks, dead_tasks=(replace(closer, touched=("0x4",)),)))
    (permit,) = [f for f in leak_report(unrelated, OPTIONS).findings if f.kind == "leaked_permit"]
    assert "async_generator_athrow" not in permit.evidence


def test_a_leaked_permit_names_every_culprit_and_its_fate_and_lists_the_waiters_apart() -> None:
    pool = sem("0x2", "Client.pool")
    dead = (DeadTask(5, "Task-5", "holder", "destroyed_pending", 2.0, stack=(REQUEST, HANDLER)),
            DeadTask(6, "Task-6", "fetch", "exception", 1.0, "ConnectionResetError: reset"))
    tasks = replace(snapshot(waiting_on(1, pool), waiting_on(2, pool)), dead_tasks=dead, destroyed_seen=True)
    snap = sync(tasks, held(pool, holder(5, alive=False), holder(6, alive=False), holder(7, alive=False),
                            waiting=(1, 2)))
    (permit,) = [f for f in leak_report(snap, OPTIONS).findings if f.kind == "leaked_permit"]
    assert permit.title.startswith("3 permits of semaphore Client.pool")
    assert "task 5 'Task-5' acquired it at handlers.py:40 handler" in permit.evidence
    assert ("destroyed by the GC while still waiting 2.0s ago (it was waiting at client.py:77 Client.request <- "
            "handlers.py:40 handler): it never finished, and never released it") in permit.evidence
    assert "died with ConnectionResetError: reset" in permit.evidence
    assert "task 7 'Task-7' acquired it" in permit.evidence and "finished without releasing it" in permit.evidence
    assert "2 tasks wait for it, and no other holder can release it: they are stuck for good" in permit.evidence
    assert {t.id for t in permit.tasks} == {1, 2}
    assert kinds(leak_report(snap, OPTIONS)) == ["leaked_permit"]  # the waiters are not repeated
    unhooked = replace(snap, tasks=replace(snap.tasks, destroyed_seen=False))  # uvloop: destruction unseen
    (permit,) = [f for f in leak_report(unhooked, OPTIONS).findings if f.kind == "leaked_permit"]
    assert "task 7 'Task-7' acquired it at handlers.py:40 handler 20.0s ago and is gone without releasing it: " \
           "it finished, or the GC destroyed it" in permit.evidence


def test_a_holder_the_proof_found_unreachable_leaks_its_permit_before_any_gc_runs() -> None:
    pool = sem("0x2", "Client.pool")
    lost = task(5, coro="holder", wait=Wait("future", "Future", seconds=30.0))
    snap = sync(snapshot(lost, waiting_on(1, pool)), held(pool, holder(5), waiting=(1,)),
                proof=Reachability(True, unreachable=(5,), blocked=2, objects_marked=10))
    report = leak_report(snap, OPTIONS)
    (permit,) = [f for f in report.findings if f.kind == "leaked_permit"]
    assert "can never be woken (proven leak)" in permit.evidence and {t.id for t in permit.tasks} == {1}
    assert "suspect" not in kinds(report) and "stuck_behind" not in kinds(report)


def test_permits_the_program_hands_on_are_not_lost_when_their_acquirer_ends() -> None:
    """Acquired by submitters that end, released by a consumer or a timer (a rate limit):
    a finished holder may still get its permit back, so no sound verdict says otherwise."""
    pool = sem("0x2", "Client.pool")
    waiters = (waiting_on(1, pool), waiting_on(2, pool))
    gone = held(pool, holder(5, alive=False), holder(6, alive=False), waiting=(1, 2))
    assert kinds(leak_report(sync(snapshot(*waiters), gone), OPTIONS))[0] == "leaked_permit"
    handed_on = replace(gone, handoff_seconds=3.0)
    report = leak_report(sync(snapshot(*waiters), handed_on), OPTIONS)
    assert not report.fails(DEFAULT_FAIL_ON), [(f.kind, f.evidence) for f in report.findings]
    assert not {"leaked_permit", "stuck_behind", "deadlock"} & set(kinds(report))
    # a holder that waits does not keep such permits out either: others release them
    busy = task(7, coro="submit", wait=Wait("future", "Future", seconds=30.0))
    waiting = held(pool, holder(7), waiting=(1, 2))
    plain = leak_report(sync(snapshot(busy, *waiters), waiting), OPTIONS)
    assert any("held by task 7" in f.evidence for f in plain.findings), [(f.kind, f.evidence) for f in plain.findings]
    handed = leak_report(sync(snapshot(busy, *waiters), replace(waiting, handoff_seconds=0.5)), OPTIONS)
    assert not any("held by task 7" in f.evidence for f in handed.findings)
    assert not {1, 2} & ids_of(handed, "suspect") and not {1, 2} & ids_of(handed, "exhausted")
    # the proof still decides: a holder proven leaked keeps its permit whatever the program does
    lost = task(5, coro="holder", wait=Wait("future", "Future", seconds=30.0))
    proven = sync(snapshot(lost, *waiters), replace(held(pool, holder(5), waiting=(1, 2)), handoff_seconds=3.0),
                  proof=Reachability(True, unreachable=(5,), blocked=3, objects_marked=10))
    assert "leaked_permit" in kinds(leak_report(proven, OPTIONS))


def test_a_task_the_proof_found_unreachable_is_no_proven_leak_when_a_timer_ends_its_wait() -> None:
    # `await asyncio.wait_for(event.wait(), 30)` on an Event only this task's frame holds: the
    # Event can never be set, but the timeout wakes the task all the same.
    lost = Primitive("event", "0x7", "", waiters=1)
    def waiter(**kw: object) -> TaskInfo:
        return task(1, coro="poll", wait=Wait("event", "Event.wait", lost, 30.0, deadline_known=True, **kw))  # type: ignore[arg-type]
    proof = Reachability(True, unreachable=(1,), blocked=1, objects_marked=10)
    state = PrimitiveState(lost, waiting_tasks=(1,))
    assert "proven_leak" in kinds(leak_report(sync(snapshot(waiter()), state, proof=proof), OPTIONS))
    timed = leak_report(sync(snapshot(waiter(deadline=20.0, deadline_by="asyncio.timeout")), state, proof=proof), OPTIONS)
    assert "proven_leak" not in kinds(timed)
    # 3.11's wait_for runs the wait in a task of its own, the timer on the outer task's wait
    outer = task(2, coro="poll", wait=Wait("gather", "wait_for", seconds=30.0, tasks=(1,), deadline_known=True,
                                           deadline=20.0, deadline_by="a timer"))
    inner = leak_report(sync(snapshot(waiter(), outer), state, proof=proof), OPTIONS)
    assert "proven_leak" not in kinds(inner)


# -- swallowed cancellation -------------------------------------------------------------------
def test_a_cancel_swallowed_past_the_grace_is_a_verdict_naming_who_waits_for_it() -> None:
    stubborn = task(1, coro="Worker.run", wait=Wait("sleep", "sleep", seconds=3.0))
    stubborn = replace(stubborn, cancelling=True, cancel_seconds=4.0)
    shutdown = task(2, coro="shutdown", wait=Wait("task", "await task", seconds=4.0, tasks=(1,)))
    report = leak_report(sync(snapshot(stubborn, shutdown)), OPTIONS)
    (finding,) = [f for f in report.findings if f.kind == "swallowed_cancel"]
    assert {t.id for t in finding.tasks} == {1, 2} and "task 2 (await task in shutdown)" in finding.evidence
    assert report.fails(DEFAULT_FAIL_ON)


def test_a_cancelled_task_still_cleaning_up_within_the_grace_or_under_a_timeout_is_not_flagged() -> None:
    young = replace(task(1, wait=Wait("event", "Event.wait", seconds=1.0)), cancelling=True, cancel_seconds=1.0)
    timed = replace(task(2, wait=Wait("event", "Event.wait", seconds=9.0, deadline=3.0, deadline_known=True)),
                    cancelling=True, cancel_seconds=9.0, handling_cancel=True)
    assert leak_report(sync(snapshot(young, timed)), OPTIONS).findings == ()


def test_a_cancel_turned_into_another_error_and_caught_is_swallowed_though_each_wait_has_a_timeout() -> None:
    # pymodbus-like: the request code turns CancelledError into an I/O error, the poller's
    # `except Exception` logs it and polls again, each read under a timeout.  Past the
    # except block, a wait with an end is not the end of the task: after min_wait it counts.
    def poller(cancel_seconds: float) -> TaskInfo:
        wait = Wait("future", "Future", seconds=0.5, deadline=2.5, deadline_known=True, deadline_by="asyncio.timeout")
        return replace(task(1, coro="DevicePoller.run", wait=wait), cancelling=True, cancel_seconds=cancel_seconds)
    watchdog = task(2, coro="Supervisor.watchdog", wait=Wait("task", "await task", seconds=6.0, tasks=(1,),
                                                            deadline_known=True))
    report = leak_report(sync(snapshot(poller(6.0), watchdog)), OPTIONS)
    (finding,) = [f for f in report.findings if f.kind == "swallowed_cancel"]
    assert {t.id for t in finding.tasks} == {1, 2}, finding
    assert "that wait has an end, but the task is past any except or finally block" in finding.evidence
    assert "task 2 (await task in Supervisor.watchdog)" in finding.evidence
    # within min_wait of the cancel it may still be a cleanup that ends
    assert "swallowed_cancel" not in kinds(leak_report(sync(snapshot(poller(3.0), watchdog)), OPTIONS))


# -- suspects -----------------------------------------------------------------------------------
def test_the_main_task_is_never_a_suspect_even_when_nothing_else_refers_to_it() -> None:
    main = replace(task(1, coro="main", wait=Wait("event", "Event.wait", seconds=600.0)), main=True)
    proof = Reachability(True, unreferenced=(1,), blocked=1)
    assert leak_report(sync(snapshot(main), proof=proof), OPTIONS).findings == ()


def test_a_waiter_whose_counterpart_died_is_told_who_died_how_and_where() -> None:
    queue = Primitive("queue", "0x9", "Pipeline.queue", size=1, maxsize=1, getters=0, putters=1)
    producer = task(1, coro="produce", stack=(QUEUE_PUT, PRODUCE),
                    wait=Wait("queue_put", "Queue.put", queue, 30.0, deadline_known=True))
    consumer = DeadTask(2, "consumer", "Pipeline.consume", "exception", 31.5, "ConnectionResetError: peer reset",
                        (Frame("/srv/app/pipeline.py", 44, "Pipeline.consume", "raise"),), touched=("0x9",))
    snap = sync(replace(snapshot(producer), dead_tasks=(consumer,)), PrimitiveState(queue, waiting_tasks=(1,)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert finding.kind == "suspect"
    assert finding.evidence.startswith("the task that used queue Pipeline.queue 0x9, Pipeline.consume (task 2), "
                                       "died 31.5s ago with ConnectionResetError: peer reset at pipeline.py:44")
    assert "no timeout or timer covers it" in finding.evidence


def test_a_future_kept_by_an_object_a_dead_thread_served_names_the_thread() -> None:
    waiting = task(1, coro="refresh", stack=(REQUEST,),
                   wait=Wait("future", "Future", None, 20.0, deadline_known=True, future_id="0x5",
                             owner="FeedClient._pending", owner_ids=("0x77",)))
    reader = DeadTask(-1, "quote-feed", "FeedClient._serve", "thread_exception", 21.0, "ValueError: bad line",
                      (Frame("/srv/app/feed.py", 38, "FeedClient._serve", "price = float(raw)"),),
                      touched=("0x77",))
    snap = sync(replace(snapshot(waiting), dead_tasks=(reader,)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert finding.kind == "suspect"
    assert finding.evidence.startswith(
        "the thread that used the object that keeps it (FeedClient._pending, 0x77), 'quote-feed' running "
        "FeedClient._serve, died 21.0s ago with ValueError: bad line at feed.py:38")
    unrelated = replace(reader, touched=("0x78",))
    snap = sync(replace(snapshot(waiting), dead_tasks=(unrelated,)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert "quote-feed" not in finding.evidence and "bare future" in finding.evidence


def test_a_join_is_suspect_when_items_were_never_marked_done_and_every_consumer_is_idle() -> None:
    JOIN = Frame("/usr/lib/python3.11/asyncio/queues.py", 215, "Queue.join", "await self._finished.wait()")
    queue = Primitive("queue", "0x9", "Batch.queue", size=0, maxsize=0, getters=2, putters=0, unfinished=1)
    joiner = task(1, coro="submit", stack=(JOIN,), wait=Wait("event", "Queue.join", queue, 30.0, deadline_known=True))
    idle = [task(i, coro="Runner.run", wait=Wait("queue_get", "Queue.get", queue, 30.0, deadline_known=True))
            for i in (2, 3)]
    snap = sync(snapshot(joiner, *idle), PrimitiveState(queue, waiting_tasks=(2, 3)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert finding.kind == "suspect" and [t.id for t in finding.tasks] == [1]
    assert finding.evidence.startswith(
        "1 item of Batch.queue 0x9 was taken by get() and never marked done: join() returns only after a "
        "task_done() for each; every consumer (2 tasks of Runner.run) is idle in get()")
    # a consumer still at work on an item may yet call task_done(): no claim
    working = task(4, coro="Runner.run", wait=Wait("sleep", "sleep", None, 30.0))
    snap = sync(snapshot(joiner, *idle, working), PrimitiveState(queue, waiting_tasks=(2, 3)))
    assert leak_report(snap, OPTIONS).findings == ()
    # items still queued: join has work to wait for
    queued = replace(queue, size=1, unfinished=1)
    snap = sync(snapshot(replace(joiner, wait=replace(joiner.wait, primitive=queued)), *idle),
                PrimitiveState(queued, waiting_tasks=(2, 3)))
    assert leak_report(snap, OPTIONS).findings == ()


def test_waiters_on_a_lock_are_told_what_its_holder_waits_for() -> None:
    conn = lock("0x1", "Conn.lock")
    reading = task(5, name="client-0", coro="client",
                   wait=Wait("stream_read", "StreamReader.readline", None, 40.0, deadline_known=True))
    queued = [waiting_on(i, conn, coro="client", deadline_known=True) for i in (6, 7)]
    snap = sync(snapshot(reading, *queued), held(conn, holder(5, held_for=41.0), waiting=(6, 7)))
    report = leak_report(snap, OPTIONS)
    (behind,) = [f for f in report.findings if {t.id for t in f.tasks} == {6, 7}]
    assert behind.kind == "suspect"
    assert ("held by task 5 'client-0' (acquired at handlers.py:40 handler 41.0s ago), which waits on "
            "StreamReader.readline for 40s") in behind.evidence
    # a holder that is running, or the waiter itself, is not a wait to point at
    busy = replace(reading, state="running", wait=Wait("running"))
    snap = sync(snapshot(busy, *queued), held(conn, holder(5, state="running"), waiting=(6, 7)))
    assert all("held by" not in f.evidence for f in leak_report(snap, OPTIONS).findings)
    # nor is one waiting a moment on its work (a response on its way: a busy pool); it
    # counts from --min-wait, as the waiters do
    answering = replace(reading, wait=replace(reading.wait, seconds=OPTIONS.min_wait - 0.5))
    snap = sync(snapshot(answering, *queued), held(conn, holder(5, held_for=1.7), waiting=(6, 7)))
    assert leak_report(snap, OPTIONS).findings == ()
    slow = replace(reading, wait=replace(reading.wait, seconds=OPTIONS.min_wait))
    snap = sync(snapshot(slow, *queued), held(conn, holder(5, held_for=1.7), waiting=(6, 7)))
    assert any("held by task 5" in f.evidence for f in leak_report(snap, OPTIONS).findings)


def test_a_holder_whose_acquiring_call_has_returned_is_said_so_and_stays_a_suspect() -> None:
    """A timeout that fires as the acquire completes (3.12's wait_for in the caller's task) leaves
    the permit with a task that has moved on: the function that took it is off the holder's
    stack.  Evidence, not a verdict: connect() may acquire what close() releases."""
    conn = lock("0x1", "Pool.lock")
    campaign = Frame("/srv/app/push.py", 90, "campaign", "await asyncio.sleep(60)")
    sleeping = task(5, name="campaign", coro="campaign", stack=(campaign,),
                    wait=Wait("sleep", "sleep", None, 40.0, deadline_known=True))
    queued = [waiting_on(i, conn, coro="deliver", deadline_known=True) for i in (6, 7)]
    snap = sync(snapshot(sleeping, *queued), held(conn, holder(5, held_for=41.0), waiting=(6, 7)))
    report = leak_report(snap, OPTIONS)
    (behind,) = [f for f in report.findings if {t.id for t in f.tasks} == {6, 7}]
    assert behind.kind == "suspect" and not set(kinds(report)) & set(DEFAULT_FAIL_ON)
    assert ("which waits on sleep for 40s; the call that acquired it (handler) has returned and the permit is "
            "still held") in behind.evidence
    # the acquiring function still on the holder's stack: it holds the lock across its own wait
    inside = replace(sleeping, stack=(campaign, HANDLER))
    snap = sync(snapshot(inside, *queued), held(conn, holder(5, held_for=41.0), waiting=(6, 7)))
    evidence = " ".join(f.evidence for f in leak_report(snap, OPTIONS).findings)
    assert "held by task 5" in evidence and "has returned" not in evidence
    # an elided stack may hide it: no claim
    elided = replace(sleeping, stack=(campaign, Frame("<elided>", 0, "... 40 frames elided ...")))
    snap = sync(snapshot(elided, *queued), held(conn, holder(5, held_for=41.0), waiting=(6, 7)))
    evidence = " ".join(f.evidence for f in leak_report(snap, OPTIONS).findings)
    assert "held by task 5" in evidence and "has returned" not in evidence


def test_a_holder_whose_acquiring_function_left_past_its_own_release_leaks_its_permit() -> None:
    """The function that took the lock releases it on every path by which it returns
    (``skipped_release``), yet has ended with the permit held by its live task: it left by
    an exception, and the waiters are stuck for good.  Permits handed on stay open."""
    conn = lock("0x1", "Pool.lock")
    campaign = Frame("/srv/app/push.py", 90, "campaign", "await asyncio.sleep(60)")
    sleeping = task(5, name="campaign", coro="campaign", stack=(campaign,),
                    wait=Wait("sleep", "sleep", None, 40.0, deadline_known=True))
    queued = [waiting_on(i, conn, coro="deliver") for i in (6, 7)]
    left = replace(holder(5, held_for=41.0), skipped_release=(87, 90))
    report = leak_report(sync(snapshot(sleeping, *queued), held(conn, left, waiting=(6, 7))), OPTIONS)
    assert kinds(report) == ["leaked_permit"], [(f.kind, f.evidence) for f in report.findings]
    (permit,) = report.findings
    assert {t.id for t in permit.tasks} == {6, 7} and report.fails(DEFAULT_FAIL_ON)
    assert ("is alive, but handler, which took it, has ended without releasing it: that function releases it "
            "itself on every path by which it returns (lines 87, 90), so it left by an exception") in permit.evidence
    assert "they are stuck for good" in permit.evidence
    # released elsewhere by design before: its permits may come back by that way
    handed = leak_report(sync(snapshot(sleeping, *queued), replace(held(conn, left, waiting=(6, 7)),
                                                                     handoff_seconds=2.0)), OPTIONS)
    assert "leaked_permit" not in kinds(handed) and not handed.fails(DEFAULT_FAIL_ON)
    # the record survives the wire
    assert Holder.from_dict(left.to_dict()) == left and "skipped_release" not in holder(5).to_dict()


def test_a_process_wait_is_suspect_when_the_child_is_blocked_on_a_pipe_only_the_waiter_serves() -> None:
    def waiting_for(child: ChildProcess) -> SyncSnapshot:
        proc_wait = task(1, coro="run_snippet",
                         wait=Wait("future", "Process.wait", None, 30.0, deadline_known=True, child=child))
        return sync(snapshot(proc_wait))

    full = ChildProcess(42, "python report.py", "S", "anon_pipe_write", False, (ChildPipe("stdout", 196608, True),))
    (finding,) = leak_report(waiting_for(full), OPTIONS).findings
    assert finding.kind == "suspect" and finding.evidence.startswith(
        "child process 42 (python report.py) is blocked writing to its stdout pipe (in anon_pipe_write): the parent "
        "stopped reading it, 196608 bytes wait unread in the buffer")
    uvloop_socket = replace(full, wchan="sock_alloc_send_pskb")  # uvloop gives children a socketpair
    assert "blocked writing to its stdout pipe" in leak_report(waiting_for(uvloop_socket), OPTIONS).findings[0].evidence
    reading = ChildProcess(43, "gzip", "S", "pipe_read", True)
    (finding,) = leak_report(waiting_for(reading), OPTIONS).findings
    assert "is blocked reading its stdin (in pipe_read), which the parent has not closed" in finding.evidence
    # a child busy on its own work, one that has exited, or one whose stdin is closed: nothing to say
    for quiet in (ChildProcess(44, "worker", "S", "hrtimer_nanosleep", True, (ChildPipe("stdout", 10, False),)),
                  replace(full, state="Z"), replace(reading, stdin_open=False)):
        assert leak_report(waiting_for(quiet), OPTIONS).findings == (), quiet


def test_an_idle_consumer_is_quiet_unless_its_producer_died() -> None:
    queue = Primitive("queue", "0x9", "jobs", size=0, maxsize=0, getters=1, putters=0)
    idle = task(1, coro="consume", wait=Wait("queue_get", "Queue.get", queue, 300.0, deadline_known=True))
    snap = sync(snapshot(idle), PrimitiveState(queue, waiting_tasks=(1,)))
    assert leak_report(snap, OPTIONS).findings == ()
    producer = DeadTask(2, "producer", "produce", "exception", 3.0, "ValueError: bad row", touched=("0x9",))
    snap = replace(snap, tasks=replace(snap.tasks, dead_tasks=(producer,)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert finding.kind == "suspect" and "produce (task 2), died 3.0s ago with ValueError: bad row" in finding.evidence


def test_a_future_kept_by_a_closed_connection_is_a_suspect() -> None:
    waiter = task(1, coro="Client.request", stack=(REQUEST,),
                  wait=Wait("future", "Future", seconds=12.0, deadline_known=True, future_id="0x5",
                            owner="Client._pending, its transport is closed", owner_closed=True))
    (finding,) = leak_report(sync(snapshot(waiter)), OPTIONS).findings
    assert "the future it awaits is kept by Client._pending, its transport is closed: nothing is left to wake it" \
        in finding.evidence


def test_a_bare_future_with_no_timeout_in_the_programs_own_code_is_a_suspect_but_not_in_a_library() -> None:
    own = task(1, coro="Client.request", stack=(REQUEST,), wait=Wait("future", "Future", seconds=60.0, deadline_known=True))
    lib = task(2, coro="RequestHandler.start", stack=(LIB_WAIT,),
               wait=Wait("future", "Future", seconds=60.0, deadline_known=True))
    timed = task(3, coro="Client.request", stack=(REQUEST,),
                 wait=Wait("future", "Future", seconds=60.0, deadline=30.0, deadline_by="asyncio.timeout",
                           deadline_known=True))
    report = leak_report(sync(snapshot(own, lib, timed)), OPTIONS)
    assert ids_of(report, "suspect") == {1}
    assert "awaited a bare future for 60s with no timeout" in report.findings[0].evidence


def test_an_executor_call_names_its_worker_thread_and_where_it_is_stuck() -> None:
    call = task(1, coro="to_thread", stack=(FETCH,),
                wait=Wait("executor", "run_in_executor", seconds=40.0, deadline_known=True, future_id="0x77"))
    worker = ThreadInfo(11, "asyncio_0", (Frame("/srv/app/dns.py", 8, "resolve", "sock.recv(512)"),),
                        True, "asyncio", "0x77")
    snap = sync(replace(snapshot(call), threads=(worker,)))
    (finding,) = leak_report(snap, OPTIONS).findings
    assert "the executor call has run for 40s in thread asyncio_0, now at dns.py:8 resolve" in finding.evidence


def test_an_executor_with_every_worker_busy_and_calls_queued_is_exhausted() -> None:
    queued = task(3, coro="to_thread", wait=Wait("executor", "run_in_executor", seconds=20.0, future_id="0x9"))
    busy = [ThreadInfo(i, f"pool_{i}", (Frame("/srv/app/dns.py", 8, "resolve", ""),), True, "pool", f"0x{i}")
            for i in (1, 2)]
    pool = ExecutorInfo("pool", 2, (1, 2), busy=2, queued=1)
    snap = sync(replace(snapshot(queued), threads=tuple(busy), executors=(pool,)))
    found = [f for f in leak_report(snap, OPTIONS).findings if f.kind == "exhausted"]
    assert found and found[0].title == "executor pool is exhausted"
    assert "all 2 workers are busy and 1 call waits in its queue" in found[0].evidence
    idle_pool = replace(pool, busy=1)
    snap = sync(replace(snapshot(queued), threads=tuple(busy), executors=(idle_pool,)))
    assert not [f for f in leak_report(snap, OPTIONS).findings if f.kind == "exhausted"]


def test_a_pool_whose_workers_block_on_tasks_queued_in_it_is_a_deadlock_and_one_worker_free_is_not() -> None:
    # Two workers each block in Future.result() on a task whose call waits in the same
    # pool's queue; a third task awaits a call one of those workers runs.
    queued = [task(i, coro="template", wait=Wait("executor", "run_in_executor", seconds=20.0, deadline_known=True,
                                                 future_id=f"0xq{i}")) for i in (3, 4)]
    page = task(5, coro="render_page", wait=Wait("executor", "run_in_executor", seconds=20.0, deadline_known=True,
                                                 future_id="0xr1"))
    workers = [ThreadInfo(1, "render_0", (Frame("/srv/app/render.py", 9, "render", ""),), True, "render", "0xr1",
                          waits_task=3),
               ThreadInfo(2, "render_1", (Frame("/srv/app/render.py", 9, "render", ""),), True, "render", "0xr2",
                          waits_task=4)]
    pool = ExecutorInfo("render", 2, (1, 2), busy=2, queued=2, queued_futures=("0xq3", "0xq4"))
    snap = sync(replace(snapshot(*queued, page), threads=tuple(workers), executors=(pool,)))
    report = leak_report(snap, OPTIONS)
    kinds = sorted(f.kind for f in report.findings)
    assert kinds == ["deadlock", "stuck_behind"], report.findings
    lock = next(f for f in report.findings if f.kind == "deadlock")
    assert {t.id for t in lock.tasks} == {3, 4}
    assert "thread render_0 (at render.py:9 render) waits in Future.result() for task 3 (template)" in lock.evidence
    behind = next(f for f in report.findings if f.kind == "stuck_behind")
    assert [t.id for t in behind.tasks] == [5] and "running in thread render_0" in behind.evidence
    # One worker blocks on nothing diag can see (it may finish): no verdict, only suspects.
    free = [workers[0], replace(workers[1], waits_task=None)]
    snap = sync(replace(snapshot(*queued, page), threads=tuple(free), executors=(pool,)))
    assert not {"deadlock", "stuck_behind"} & {f.kind for f in leak_report(snap, OPTIONS).findings}
    # Another pool of the same name, with a free worker: its queued call is not judged by the first's.
    other = task(6, coro="report", wait=Wait("executor", "run_in_executor", seconds=20.0, deadline_known=True,
                                            future_id="0xq6"))
    idle = ThreadInfo(9, "render_0", (Frame("/srv/app/report.py", 3, "build", ""),), True, "render", "0xr9")
    twin = ExecutorInfo("render", 2, (9,), busy=1, queued=1, queued_futures=("0xq6",))
    snap = sync(replace(snapshot(*queued, page, other), threads=tuple(workers) + (idle,), executors=(pool, twin)))
    report = leak_report(snap, OPTIONS)
    assert 6 not in {t.id for f in report.findings if f.kind in ("deadlock", "stuck_behind") for t in f.tasks}
    assert {t.id for f in report.findings if f.kind == "deadlock" for t in f.tasks} == {3, 4}
    # A call with a timeout on the thread's side (waits_task None) or a task with a deadline: not stuck.
    timed = [replace(q, wait=replace(q.wait, deadline=5.0)) for q in queued]
    snap = sync(replace(snapshot(*timed, page), threads=tuple(workers), executors=(pool,)))
    assert "deadlock" not in {f.kind for f in leak_report(snap, OPTIONS).findings}


def test_every_new_field_round_trips_through_json() -> None:
    info = replace(task(1, wait=Wait("future", "Future", seconds=2.0, deadline=None, deadline_by="",
                                     deadline_known=True, future_id="0x5", owner="C.pending", owner_closed=True)),
                   main=True, cancel_seconds=3.5, cancelling=True)
    writer = task(3, wait=Wait("future", "StreamWriter.drain", seconds=4.0,
                               backlog=WriteBacklog("127.0.0.1:80", 70_000, 65_536, 2_000_000, True)))
    snap = replace(snapshot(info, writer), dead_tasks=(DeadTask(2, "c", "consume", "exception", 1.0, "E: x",
                                                                (FETCH,), None, ("0x9",)),),
                   threads=(ThreadInfo(7, "w", (FETCH,), True, "pool", "0x5", waits_task=1),),
                   executors=(ExecutorInfo("pool", 4, (7,), 1, 2, "0x1", ("0x6", "0x7")),), destroyed_seen=True)
    back = TaskSnapshot.from_json(snap.to_json())
    assert back.tasks == snap.tasks and back.dead_tasks == snap.dead_tasks
    assert back.threads == snap.threads and back.executors == snap.executors and back.destroyed_seen
    older = TaskSnapshot.from_json(snapshot(task(1)).to_json())  # a file without them reads as before
    assert older.tasks[0].wait.deadline_known is False and older.dead_tasks == ()


def test_a_task_awaited_under_a_deadline_that_cancels_it_has_an_end() -> None:
    # 3.11's wait_for(reader.readline(), 25) runs the read in a task of its own, with the
    # deadline on the outer task's wait: when it expires the inner task is cancelled.
    # asyncio.wait(timeout=) only stops watching: its tasks go on, with no end.
    read = task(2, coro="StreamReader.readline", stack=(Frame("/srv/app/cfg.py", 12, "watch", ""),),
                wait=Wait("stream_read", "StreamReader.readuntil", seconds=60.0, deadline_known=True,
                          stream_side="client"))

    def outer(detail: str, deadline: float | None) -> TaskInfo:
        return task(1, coro="watch", wait=Wait("gather", detail, seconds=60.0, tasks=(2,), deadline_known=True,
                                               deadline=deadline, deadline_by="a timer"))

    assert 2 not in ids_of(leak_report(sync(snapshot(outer("wait_for", 20.0), read)), OPTIONS), "suspect")
    assert 2 in ids_of(leak_report(sync(snapshot(outer("wait_for", None), read)), OPTIONS), "suspect")
    assert 2 in ids_of(leak_report(sync(snapshot(outer("wait", 20.0), read)), OPTIONS), "suspect")


@pytest.mark.parametrize(("traffic", "suspect", "words"), [
    # sent a question 30 s ago, the answer's last byte came 40 s ago: unanswered
    (Traffic(30.0, 40.0, 0, 10, 90), True, "the peer has sent nothing since this end sent data 30s ago"),
    # question and answer in one clock tick (loopback): the bytes tell; none came back
    (Traffic(50.0, 50.0, 0, 8, 0), True, "and nothing at all on this connection"),
    (Traffic(50.0, 50.0, 0, 8, 9), False, ""),
    # the peer answered last: a subscription's reader waiting for the next push
    (Traffic(50.0, 20.0, 0, 8, 900), False, ""),
    # ... unless it holds half a message
    (Traffic(50.0, 20.0, 12, 8, 900), True, "after part of a message (12 bytes read, the rest awaited)"),
    # nothing either way since it opened (waiting for a greeting that never comes)
    (Traffic(45.0, 45.0, 0, 0, 0), True, "since the connection opened 45s ago, and this end nothing either"),
])
def test_a_clients_read_is_judged_by_which_end_sent_last(traffic: Traffic, suspect: bool, words: str) -> None:
    reader = task(1, coro="read_loop", stack=(Frame("/srv/app/client.py", 12, "read_loop", ""),),
                  wait=Wait("stream_read", "StreamReader.readuntil", seconds=60.0, deadline_known=True,
                            stream_side="client", traffic=traffic))
    report = leak_report(sync(snapshot(reader)), OPTIONS)
    assert (ids_of(report, "suspect") == {1}) is suspect, report.findings
    if suspect:
        assert words in report.findings[0].evidence, report.findings[0].evidence


def test_a_clients_read_served_in_this_process_is_judged_by_the_task_serving_the_other_end() -> None:
    """A watch request to a server this same process runs: the client heard nothing at all
    since it asked.  The answer comes from the handler task at the other end; a handler
    waiting under a timeout (a long poll's hold) or at work makes the wait one with an end.
    A handler that waits with nothing to end it leaves the client a suspect, and named."""
    asked = Traffic(40.0, 40.0, 0, 12, 0, "127.0.0.1:50412", "127.0.0.1:8500")
    client = task(1, coro="watch_key", stack=(Frame("/srv/app/watch.py", 30, "watch_key", ""),),
                  wait=Wait("stream_read", "StreamReader.readuntil", seconds=40.0, deadline_known=True,
                            stream_side="client", traffic=asked, peer_tasks=(2,)))

    def handler(**kw: object) -> TaskInfo:
        wait = Wait("event", "Event.wait", seconds=40.0, deadline_known=True, **kw)  # type: ignore[arg-type]
        return task(2, coro="ConfigServer.handle", stack=(Frame("/srv/app/server.py", 50, "ConfigServer.handle", ""),),
                    wait=wait)

    held = handler(deadline=20.0, deadline_by="asyncio.timeout")
    assert 1 not in ids_of(leak_report(sync(snapshot(client, held)), OPTIONS), "suspect")
    at_work = replace(handler(), state="running", wait=Wait("running"))
    assert 1 not in ids_of(leak_report(sync(snapshot(client, at_work)), OPTIONS), "suspect")
    report = leak_report(sync(snapshot(client, handler())), OPTIONS)
    (finding,) = [f for f in report.findings if 1 in {t.id for t in f.tasks}]
    assert finding.kind == "suspect"
    assert ("the other end is served in this process by ConfigServer.handle (task 2), which has waited 40s on "
            "Event.wait with nothing to end its wait") in finding.evidence, finding.evidence
    # the handler reads the next request while a task it started to answer this one sleeps
    # before writing (a slow backend): an answer is on its way
    reading = task(2, coro="ToolServer.handle", wait=Wait("stream_read", "StreamReader.readuntil", seconds=40.0,
                                                          deadline_known=True, stream_side="server"))
    answer = task(3, coro="ToolServer.answer", wait=Wait("sleep", "sleep", seconds=3.0, time_left=1.0))
    both = replace(client, wait=replace(client.wait, peer_tasks=(2, 3)))
    assert 1 not in ids_of(leak_report(sync(snapshot(both, reading, answer)), OPTIONS), "suspect")
    report = leak_report(sync(snapshot(replace(client, wait=replace(client.wait, peer_tasks=(2,))), reading)), OPTIONS)
    assert ("served in this process by ToolServer.handle (task 2), which waits for this end's next message "
            "(StreamReader.readuntil) with nothing to end its wait") in report.findings[0].evidence, report.findings
    # a subscription: the handler reads the next command, a pump holding the writer waits
    # on Queue.get for messages to push
    pump = task(4, coro="Broker.pump", wait=Wait("queue_get", "Queue.get", seconds=40.0, deadline_known=True))
    subscribed = replace(client, wait=replace(client.wait, peer_tasks=(2, 4)))
    assert 1 not in ids_of(leak_report(sync(snapshot(subscribed, reading, pump)), OPTIONS), "suspect")
    # the server end found nowhere (another process): judged on the traffic alone, as before
    alone = replace(client, wait=replace(client.wait, peer_tasks=()))
    assert 1 in ids_of(leak_report(sync(snapshot(alone, held)), OPTIONS), "suspect")
    # the field round-trips, and so do the addresses
    back = TaskSnapshot.from_json(snapshot(client).to_json()).tasks[0].wait
    assert back.peer_tasks == (2,) and (back.traffic.local, back.traffic.peer) == ("127.0.0.1:50412", "127.0.0.1:8500")


def test_a_pools_unused_connection_is_idle_when_a_sibling_has_talked_with_the_peer() -> None:
    """Readers of one coroutine, one per pooled connection: the connection in use has been
    answered, the spare ones have carried nothing either way since they opened.  Nothing was
    asked on those: idle.  Alone (no sibling ever heard its peer), or awaited by a task that
    needs what it reads, a silent connection is a greeting that never came: a suspect."""
    def reader(tid: int, traffic: Traffic, coro: str = "PooledConnection._read_loop") -> TaskInfo:
        return task(tid, coro=coro, stack=(Frame("/srv/app/pool.py", 30, coro, "await self.reader.readline()"),),
                    wait=Wait("stream_read", "StreamReader.readuntil", seconds=60.0, deadline_known=True,
                              stream_side="client", traffic=traffic))

    used = reader(1, Traffic(50.0, 49.0, 0, 120, 900))
    spare = [reader(i, Traffic(60.0, 60.0, 0, 0, 0)) for i in (2, 3)]
    assert leak_report(sync(snapshot(used, *spare)), OPTIONS).findings == ()
    # no sibling has talked: each silent connection is a suspect
    report = leak_report(sync(snapshot(*spare)), OPTIONS)
    assert ids_of(report, "suspect") == {2, 3}
    assert "since the connection opened 60s ago, and this end nothing either" in report.findings[0].evidence
    # a sibling of another coroutine does not count
    other = reader(4, Traffic(50.0, 49.0, 0, 120, 900), coro="Feed.read_loop")
    assert ids_of(leak_report(sync(snapshot(other, *spare)), OPTIONS), "suspect") == {2, 3}
    # a task awaiting the silent reader needs what it reads (a handshake)
    handshake = task(5, coro="connect", wait=Wait("task", "await task", seconds=60.0, tasks=(2,), deadline_known=True))
    report = leak_report(sync(snapshot(used, *spare, handshake)), OPTIONS)
    assert 2 in ids_of(report, "suspect") and 3 not in ids_of(report, "suspect")


def test_a_futures_evidence_names_the_keepers_own_task_when_it_waits_too() -> None:
    """Requests wait on futures in Client.pending; the Client's reader loop (found running a
    method of it) is where an answer would come from: named when it waits as long as a wait
    must be to count; another request on the same keeper, or a sleeper, is not."""
    at = (Frame("/srv/app/client.py", 20, "Client.call", "return await fut"),)
    def request(tid: int, **kw: object) -> TaskInfo:
        return task(tid, coro="request", stack=at, wait=Wait("future", "Future", seconds=30.0, deadline_known=True,
                                                             owner="Client.pending", owner_ids=("0xc",), **kw))  # type: ignore[arg-type]
    reader = task(5, coro="Client.read_loop", stack=(Frame("/srv/app/client.py", 9, "Client.read_loop"),),
                  wait=Wait("stream_read", "StreamReader.readuntil", seconds=30.0, deadline_known=True,
                            stream_side="client", owner="StreamReader._waiter", owner_ids=("0xa", "0xc")))
    other = request(7)
    report = leak_report(sync(snapshot(request(6, owner_tasks=(5, 7)), reader, other)), OPTIONS)
    (found,) = [f for f in report.findings if 6 in {t.id for t in f.tasks}]
    assert ("Client.read_loop (task 5), a task of the Client that keeps it, has itself waited 30s on "
            "StreamReader.readuntil") in found.evidence, found.evidence
    assert "(task 7)" not in found.evidence  # another request on Client.pending
    for idle in (replace(reader, wait=Wait("sleep", "sleep", seconds=30.0)),
                 replace(reader, wait=replace(reader.wait, seconds=OPTIONS.min_wait - 0.5))):
        report = leak_report(sync(snapshot(request(6, owner_tasks=(5,)), idle)), OPTIONS)
        assert all("a task of the Client" not in f.evidence for f in report.findings), report.findings


def test_a_keepers_worker_waiting_in_its_loop_on_the_keepers_future_is_idle() -> None:
    """The collection puts the waiting task first in ``owner_tasks`` when it runs a method of
    the keeper and waits inside a loop of it (a pool's idle worker): no bare-future suspect.
    Stronger evidence (the keeper's connection closed) still makes one."""
    at = (Frame("/srv/app/pool.py", 20, "Pool.worker", "await wake"),)
    def worker(owner: str = "Pool.idle", **kw: object) -> TaskInfo:
        return task(3, coro="Pool.worker", stack=at, wait=Wait("future", "Future", seconds=30.0, deadline_known=True,
                                                              owner=owner, owner_ids=("0xp",), **kw))  # type: ignore[arg-type]
    assert leak_report(sync(snapshot(worker(owner_tasks=(3, 4)))), OPTIONS).findings == ()
    assert ids_of(leak_report(sync(snapshot(worker(owner_tasks=(4,)))), OPTIONS), "suspect") == {3}
    closed = worker(owner_tasks=(3,), owner="Pool.idle, its transport is closed", owner_closed=True)
    assert ids_of(leak_report(sync(snapshot(closed)), OPTIONS), "suspect") == {3}


def test_a_servers_end_of_a_stream_waiting_for_a_request_is_idle_a_clients_is_not() -> None:
    def reader(tid: int, side: str) -> TaskInfo:
        return task(tid, coro="handle", stack=(Frame("/srv/app/api.py", 12, "handle", "await reader.readline()"),),
                    wait=Wait("stream_read", "StreamReader.readline", seconds=60.0, deadline_known=True,
                              stream_side=side))

    report = leak_report(sync(snapshot(reader(1, "server"), reader(2, "client"))), OPTIONS)
    assert ids_of(report, "suspect") == {2}
    assert "the peer has sent nothing for 60s" in report.findings[0].evidence


def test_a_condition_waiter_with_a_predicate_cannot_miss_a_notify_one_without_can() -> None:
    cond = Primitive("condition", "0xc", "Batcher.ready", locked=False, waiters=2)
    bare = task(1, coro="check_then_wait", stack=(Frame("/usr/lib/python3.11/asyncio/locks.py", 270, "Condition.wait"),
                                                   Frame("/srv/app/batch.py", 20, "check_then_wait")),
                wait=Wait("condition", "Condition.wait", cond, 30.0, deadline_known=True))
    predicate = task(2, coro="flush", stack=(Frame("/usr/lib/python3.11/asyncio/locks.py", 270, "Condition.wait"),
                                              Frame("/usr/lib/python3.11/asyncio/locks.py", 300, "Condition.wait_for"),
                                              Frame("/srv/app/batch.py", 40, "flush")),
                     wait=Wait("condition", "Condition.wait", cond, 30.0, deadline_known=True))
    state = PrimitiveState(cond, waiting_tasks=(1, 2), idle_seconds=31.0, tracked=True)
    report = leak_report(sync(snapshot(bare, predicate), state), OPTIONS)
    assert ids_of(report, "suspect") == {1}
    assert "no acquire or release on Batcher.ready 0xc since the wait began" in report.findings[0].evidence


WAIT_FOR_STACK = (Frame("/usr/lib/python3.11/asyncio/locks.py", 270, "Condition.wait"),
                  Frame("/usr/lib/python3.11/asyncio/locks.py", 300, "Condition.wait_for"),
                  Frame("/srv/app/channel.py", 81, "Channel.call"))


@pytest.mark.parametrize(("woken", "own", "deadline", "suspect"), [
    (2, ("failed_on",), None, True),   # woken, sent back, its own value in the predicate: the state moves past it
    (2, (), None, False),              # a predicate on shared state alone: an idle worker, woken for work another took
    (0, ("failed_on",), None, False),  # never woken: waiting for its first notify
    (2, ("failed_on",), 30.0, False),  # woken and sent back, but its wait has an end
])
def test_a_wait_for_woken_and_sent_back_on_its_own_value_is_a_suspect(
        woken: int, own: tuple[str, ...], deadline: float | None, suspect: bool) -> None:
    cond = Primitive("condition", "0xc", "Channel.changed", locked=False, waiters=2)
    predicate = "Channel.call.<locals>.<lambda> at channel.py:81: failed_on=1, self.seq=1"
    retry = task(1, coro="export_report", stack=WAIT_FOR_STACK,
                 wait=Wait("condition", "Condition.wait", cond, 30.0, deadline=deadline, deadline_known=True,
                           predicate=predicate, predicate_own=own, woken=woken, woken_seconds=4.0))
    state = PrimitiveState(cond, waiting_tasks=(1,), idle_seconds=0.5, tracked=True)
    report = leak_report(sync(snapshot(retry), state), OPTIONS)
    assert ids_of(report, "suspect") == ({1} if suspect else set()), report.findings
    if suspect:
        assert report.findings[0].evidence.startswith(
            "a notify has woken this wait_for 2 times since it began (the last 4.0s ago) and it went back to "
            "waiting: its predicate, which compares with failed_on of the waiting call's own, is still false "
            f"({predicate}); nothing can end the wait on its own"), report.findings[0].evidence
        assert not report.fails(DEFAULT_FAIL_ON)
    back = TaskSnapshot.from_json(snapshot(retry).to_json()).tasks[0].wait
    assert (back.woken, back.woken_seconds, back.predicate_own) == (woken, 4.0 if woken else None, own)


def test_an_event_set_before_the_wait_and_never_since_is_a_missed_wake_up_a_never_set_one_is_not() -> None:
    pulse = Primitive("event", "0xe1", "Store.changed", is_set=False, waiters=1)
    stop = Primitive("event", "0xe2", "stop", is_set=False, waiters=1)
    missed = task(1, coro="rollout", wait=Wait("event", "Event.wait", pulse, 20.0, deadline_known=True))
    watcher = task(2, coro="watch_shutdown", wait=Wait("event", "Event.wait", stop, 600.0, deadline_known=True))
    snap = sync(snapshot(missed, watcher), PrimitiveState(pulse, waiting_tasks=(1,), idle_seconds=21.5),
                PrimitiveState(stop, waiting_tasks=(2,)))
    report = leak_report(snap, OPTIONS)
    assert ids_of(report, "suspect") == {1}
    assert "Store.changed 0xe1 was last set 21.5s ago, before this wait began, and not since" in \
        report.findings[0].evidence


def test_an_event_the_waiting_side_cleared_after_its_last_set_waits_for_the_next_one() -> None:
    # clear(); await wait() by the waiter (or by a task awaiting it) re-arms the event: a
    # last set before the wait is no missed wake-up.  A pulse (set(); clear()) by the
    # signalling side, here the task that started the waiter, still is.
    event = Primitive("event", "0xe1", "Channel.added", is_set=False, waiters=1)
    waiter = task(1, coro="Channel.added_wait", wait=Wait("event", "Event.wait", event, 20.0, deadline_known=True),
                  created=CreatedBy(3, "receive", "/srv/app/chan.py", 40, "receive"))
    receive = task(3, coro="receive", wait=Wait("gather", "wait", seconds=20.0, tasks=(1,), deadline_known=True))
    main = task(4, coro="main", wait=Wait("sleep", "sleep", seconds=20.0))

    def report(cleared_by: int, cleared: float = 20.5) -> set[int]:
        state = PrimitiveState(event, waiting_tasks=(1,), idle_seconds=21.5, cleared_seconds=cleared,
                               cleared_by=cleared_by)
        return ids_of(leak_report(sync(snapshot(waiter, receive, main), state), OPTIONS), "suspect")

    assert 1 not in report(cleared_by=1)  # the waiter itself
    assert 1 not in report(cleared_by=3)  # the task awaiting it
    assert 1 in report(cleared_by=4)  # someone else: a pulse the waiter missed
    assert 1 in report(cleared_by=1, cleared=22.0)  # cleared before the last set: that set was missed


def test_an_event_never_set_while_others_of_its_name_were_is_a_suspect() -> None:
    def ready(pid: str, is_set: bool) -> Primitive:
        return Primitive("event", pid, "Shard.ready", is_set=is_set, waiters=0 if is_set else 1)

    shards = [PrimitiveState(ready(f"0x{i}", True), idle_seconds=40.0) for i in range(1, 4)]
    stuck = ready("0x9", False)
    waiter = task(1, coro="Shard.wait_ready", wait=Wait("event", "Event.wait", stuck, 30.0, deadline_known=True))
    report = leak_report(sync(snapshot(waiter), *shards, PrimitiveState(stuck, waiting_tasks=(1,))), OPTIONS)
    (finding,) = report.findings
    assert "3 other events named Shard.ready are set; this one never was" in finding.evidence
    alone = leak_report(sync(snapshot(waiter), PrimitiveState(stuck, waiting_tasks=(1,))), OPTIONS)
    assert alone.findings == ()
    # set once and cleared since (a client's `disconnected`, re-armed on reconnect): a signal
    # that fired for another client says nothing of this one's
    rearmed = [PrimitiveState(ready(f"0x{i}", False), idle_seconds=40.0, cleared_seconds=39.0) for i in range(1, 4)]
    again = leak_report(sync(snapshot(waiter), *rearmed, PrimitiveState(stuck, waiting_tasks=(1,))), OPTIONS)
    assert again.findings == ()


def test_verdicts_on_a_cut_snapshot_say_so_and_fail_by_default() -> None:
    idle = task(1, coro="consume", wait=Wait("queue_get", "Queue.get", None, 300.0, deadline_known=True))
    cut = replace(snapshot(idle), total_tasks=200_002, notes=("cut: kept 1 of 200002 primitives and tasks",))
    report = leak_report(sync(cut), OPTIONS)
    (finding,) = report.findings
    assert finding.kind == "incomplete" and finding.title == "the verdicts cover 1 of 200,002 pending tasks"
    assert "200,001 tasks were not judged (cut: kept 1 of 200002 primitives and tasks)" in finding.evidence
    assert report.fails(DEFAULT_FAIL_ON)  # never "clean" on partial data
    assert leak_report(sync(snapshot(idle)), OPTIONS).findings == ()  # the whole process: nothing to say


def test_an_http_request_with_no_answer_and_no_timeout_is_a_suspect_and_with_a_timeout_is_not() -> None:
    site = Frame("/srv/app/client.py", 15, "fetch")
    awaiting = (Frame("/venv/lib/python3.11/site-packages/aiohttp/streams.py", 716, "DataQueue.read"),
                Frame("/venv/lib/python3.11/site-packages/aiohttp/client_reqrep.py", 745, "ClientResponse.start"),
                site)
    body = (Frame("/venv/lib/python3.11/site-packages/aiohttp/streams.py", 380, "StreamReader.read"), site)
    open_ended = Wait("future", "Future", seconds=40.0, deadline_known=True)
    report = leak_report(sync(snapshot(task(1, stack=awaiting, wait=open_ended),
                                       task(2, stack=body, wait=open_ended))))
    (found,) = report.findings
    assert found.kind == "suspect" and [t.id for t in found.tasks] == [1]
    assert "the server has not answered this HTTP request for 40s" in found.evidence
    assert "nothing can end the wait on its own" in found.evidence
    timed = replace(open_ended, deadline=250.0, deadline_by="aiohttp's ClientTimeout")
    assert leak_report(sync(snapshot(task(1, stack=awaiting, wait=timed)))).findings == ()


def test_a_watch_younger_than_min_wait_says_why_no_wait_counts_yet() -> None:
    from diag.model.task_snapshot import LoopInfo

    def notes(window: float, *tasks: TaskInfo) -> list[str]:
        loop = LoopInfo("0x7f00l", 1, "MainThread", True, 0.0002, stall_window=window)
        report = leak_report(sync(snapshot(*tasks, loops=(loop,))), OPTIONS)
        return [n for n in report.notes if n.startswith("diag has watched")]

    idle = task(1, coro="consume", wait=Wait("queue_get", "Queue.get", None, 0.3, deadline_known=True))
    (note,) = notes(0.4, idle)
    assert "watched this process for 0.4s" in note and "--min-wait (5s)" in note
    assert notes(6.0, idle) == []  # watched longer than --min-wait: waits are judged as they are
    assert notes(0.4) == []  # nothing waits: nothing is held back


def _consumer_died(*, users: tuple[int, ...] | None, others: tuple[TaskInfo, ...] = ()) -> SyncSnapshot:
    queue = Primitive("queue", "0x9", "Pipeline.queue", size=1, maxsize=1, getters=0, putters=1)
    producer = task(1, coro="produce", stack=(QUEUE_PUT, PRODUCE),
                    wait=Wait("queue_put", "Queue.put", queue, 30.0, deadline_known=True, users=users))
    consumer = DeadTask(2, "consumer", "Pipeline.consume", "exception", 31.5, "ConnectionResetError: peer reset",
                        (Frame("/srv/app/pipeline.py", 44, "Pipeline.consume", "raise"),), touched=("0x9",))
    return sync(replace(snapshot(producer, *others), dead_tasks=(consumer,)), PrimitiveState(queue, waiting_tasks=(1,)))


def test_a_wait_whose_other_side_died_and_that_no_other_task_can_reach_is_orphaned() -> None:
    report = leak_report(_consumer_died(users=()), OPTIONS)
    (finding,) = report.findings
    assert finding.kind == "orphaned" and report.fails(DEFAULT_FAIL_ON)
    assert finding.title == "1 task of produce waits 30s on Queue.put whose other side is gone"
    assert finding.evidence.startswith("the task that used queue Pipeline.queue 0x9, Pipeline.consume (task 2), died")
    assert "no other task refers to it or reaches for it through what keeps it" in finding.evidence
    # the only other task that refers to it waits itself, with no end, on this process's own event
    main = replace(task(3, coro="main", wait=Wait("event", "Event.wait", seconds=40.0, deadline_known=True)),
                   main=True)
    (finding,) = leak_report(_consumer_died(users=(3,), others=(main,)), OPTIONS).findings
    assert finding.kind == "orphaned" and "task 3 (main on Event.wait)" in finding.evidence
    # any other task waiting on an event or a queue may be a dispatcher woken by work
    inbox = Primitive("queue", "0xc", "inbox")
    dispatcher = task(3, coro="dispatch", wait=Wait("queue_get", "Queue.get", inbox, 40.0, deadline_known=True))
    assert kinds(leak_report(_consumer_died(users=(3,), others=(dispatcher,)), OPTIONS)) == ["suspect"]


def test_a_dead_connection_handler_or_a_callback_that_raised_plays_its_part_again() -> None:
    # a server's handler of one connection (made by asyncio's streams from a callback) died
    # using the queue: the next connection gets a handler of its own
    handler = CreatedBy(None, None, "/usr/lib/python3.11/asyncio/streams.py", 242, "connection_made")
    snap = _consumer_died(users=())
    (dead,) = snap.tasks.dead_tasks
    served = replace(snap, tasks=replace(snap.tasks, dead_tasks=(replace(dead, created_by=handler),)))
    assert kinds(leak_report(served, OPTIONS)) == ["suspect"]
    spawned = CreatedBy(1, "main", "/srv/app/pipeline.py", 12, "main")  # the program's own consumer
    snap = replace(snap, tasks=replace(snap.tasks, dead_tasks=(replace(dead, created_by=spawned),)))
    assert kinds(leak_report(snap, OPTIONS)) == ["orphaned"]
    # a protocol's callback that raised runs again at the next packet: not for a queue
    raised = replace(dead, id=-1, how="callback_exception", coro="Proto.datagram_received")
    snap = replace(snap, tasks=replace(snap.tasks, dead_tasks=(raised,)))
    assert kinds(leak_report(snap, OPTIONS)) == ["suspect"]


@pytest.mark.parametrize("user", [
    task(3, coro="refill", state="running", wait=Wait("running")),
    task(3, coro="refill", wait=Wait("sleep", "sleep", seconds=1.0, time_left=0.5)),
    task(3, coro="refill", wait=Wait("event", "Event.wait", seconds=40.0, deadline=5.0, deadline_known=True)),
    task(3, coro="refill", wait=Wait("stream_read", "StreamReader.read", seconds=40.0, deadline_known=True)),
    task(3, coro="refill", wait=Wait("future", "Future", seconds=40.0, deadline_known=True)),
])
def test_a_wait_another_task_may_still_reach_stays_a_suspect(user: TaskInfo) -> None:
    # at work, asleep, under a timeout, or waiting for I/O: it may yet get from the queue
    (finding,) = [f for f in leak_report(_consumer_died(users=(3,), others=(user,)), OPTIONS).findings
                  if f.tasks[0].id == 1]
    assert finding.kind == "suspect"
    # so does a task made since the tasks were read (not in the snapshot), and users not looked for
    assert kinds(leak_report(_consumer_died(users=(4,)), OPTIONS)) == ["suspect"]
    assert kinds(leak_report(_consumer_died(users=None), OPTIONS)) == ["suspect"]
    # a loop callback or a thread holds it (a reconnect timer): it runs without any task
    from diag.collect.sync_collector import OUTSIDE_TASKS
    assert kinds(leak_report(_consumer_died(users=(OUTSIDE_TASKS,)), OPTIONS)) == ["suspect"]


def test_requests_beside_each_other_on_a_closed_connection_are_orphaned_together() -> None:
    def request(tid: int, users: tuple[int, ...]) -> TaskInfo:
        return task(tid, coro="worker", stack=(REQUEST,),
                    wait=Wait("future", "Future", seconds=12.0, deadline_known=True, future_id=f"0x{tid}",
                              owner="RpcClient._pending, its stream's reader is at EOF", owner_closed=True,
                              owner_ids=("0x77",), users=users))
    # each refers to the client the other's future is kept by: a future wait may be I/O's,
    # but theirs are on the same closed connection
    report = leak_report(sync(snapshot(request(1, (2,)), request(2, (1,)))), OPTIONS)
    assert kinds(report) == ["orphaned"] and {t.id for t in report.findings[0].tasks} == {1, 2}
    # a reader of that client still at work may yet answer them
    reader = task(3, coro="RpcClient.read_loop", wait=Wait("stream_read", "StreamReader.readline", seconds=12.0,
                                                           deadline_known=True))
    report = leak_report(sync(snapshot(request(1, (2, 3)), request(2, (1, 3)), reader)), OPTIONS)
    assert "orphaned" not in kinds(report)
    # with a timeout, the wait ends on its own
    timed = replace(request(1, ()), wait=replace(request(1, ()).wait, deadline=20.0))
    assert leak_report(sync(snapshot(timed)), OPTIONS).findings == ()


def test_an_idle_worker_whose_keeper_was_used_by_a_dead_task_is_no_orphan() -> None:
    # a request handler died using the App; the App's idle worker waits for jobs on its own
    # queue: only a dead task that used that very queue makes it one
    queue = Primitive("queue", "0x9", "App.jobs", size=0, maxsize=0, getters=1, putters=0)
    idle = task(1, coro="App.worker", wait=Wait("queue_get", "Queue.get", queue, 300.0, deadline_known=True,
                                                owner="App.jobs", owner_ids=("0x70",), users=()))
    handler = DeadTask(2, "handler", "App.handle", "exception", 3.0, "KeyError: 'id'", touched=("0x70",))
    snap = sync(replace(snapshot(idle), dead_tasks=(handler,)), PrimitiveState(queue, waiting_tasks=(1,)))
    assert "orphaned" not in kinds(leak_report(snap, OPTIONS))
    fed = replace(handler, touched=("0x9",))
    snap = sync(replace(snapshot(idle), dead_tasks=(fed,)), PrimitiveState(queue, waiting_tasks=(1,)))
    assert kinds(leak_report(snap, OPTIONS)) == ["orphaned"]


def test_users_cross_the_wire() -> None:
    wait = Wait("future", "Future", seconds=3.0, users=(4, 5))
    assert Wait.from_dict(wait.to_dict()).users == (4, 5)
    assert Wait.from_dict(Wait("future").to_dict()).users is None
    assert Wait.from_dict({**Wait("future").to_dict(), "users": []}).users == ()


def test_a_party_left_at_a_barrier_by_one_that_died_is_orphaned() -> None:
    WAIT_FOR = Frame("/usr/lib/python3.11/asyncio/locks.py", 300, "Condition.wait_for", "await self.wait()")
    BARRIER = Frame("/usr/lib/python3.11/asyncio/locks.py", 470, "Barrier.wait", "await self._block()")
    RUN = Frame("/srv/app/shard.py", 52, "Shard.run", "await self.barrier.wait()")
    cond = Primitive("condition", "0x9", "Barrier._cond")

    def party(*stack: Frame) -> SyncSnapshot:
        waiting = task(1, coro="Shard.run", stack=stack,
                       wait=Wait("condition", "Condition.wait", cond, 30.0, deadline_known=True,
                                 owner="Barrier._cond", owner_ids=("0x70", "0x71"), users=()))
        # the party that died used its own Shard, which keeps the barrier
        died = DeadTask(2, "orders", "Shard.run", "exception", 31.0, "ValueError: NaN", touched=("0x71",))
        return sync(replace(snapshot(waiting), dead_tasks=(died,)), PrimitiveState(cond, waiting_tasks=(1,)))

    assert kinds(leak_report(party(WAIT_FOR, BARRIER, RUN), OPTIONS)) == ["orphaned"]
    # a worker waiting for work in Condition.wait_for, whose keeper a dead task used: a suspect
    assert kinds(leak_report(party(WAIT_FOR, RUN), OPTIONS)) == ["suspect"]


def test_a_join_no_task_can_ever_end_is_orphaned() -> None:
    JOIN = Frame("/usr/lib/python3.11/asyncio/queues.py", 215, "Queue.join", "await self._finished.wait()")
    queue = Primitive("queue", "0x9", "Batch.queue", size=0, maxsize=0, getters=2, putters=0, unfinished=1)

    def join(users: tuple[int, ...], *others: TaskInfo) -> SyncSnapshot:
        joiner = task(1, coro="submit", stack=(JOIN,),
                      wait=Wait("event", "Queue.join", queue, 30.0, deadline_known=True, users=users))
        idle = [task(i, coro="Runner.run", wait=Wait("queue_get", "Queue.get", queue, 30.0, deadline_known=True))
                for i in (2, 3)]
        return sync(snapshot(joiner, *idle, *others), PrimitiveState(queue, waiting_tasks=(2, 3)))

    (finding,) = leak_report(join(()), OPTIONS).findings
    assert finding.kind == "orphaned" and "a task_done() was skipped" in finding.evidence
    # a task that holds the queue and may still act (a producer between batches): a suspect
    producer = task(4, coro="feed", wait=Wait("sleep", "sleep", seconds=1.0, time_left=2.0))
    assert kinds(leak_report(join((4,), producer), OPTIONS)) == ["suspect"]
    # a consumer of the same kind at work on an item: its task_done() may come
    busy = task(5, coro="Runner.run", state="running", wait=Wait("running"))
    assert leak_report(join((), busy), OPTIONS).findings == ()


def test_a_dead_consumer_restarted_by_a_supervisor_leaves_no_orphan() -> None:
    # the new consumer (same coroutine) is idle on another queue of the pipeline, say: its
    # part is played again, so the wait is judged a suspect at most
    restarted = task(3, coro="Pipeline.consume",
                     wait=Wait("queue_get", "Queue.get", Primitive("queue", "0xa", "Pipeline.inbox"), 30.0,
                               deadline_known=True))
    assert kinds(leak_report(_consumer_died(users=(), others=(restarted,)), OPTIONS)) == ["suspect"]
    # one of that coroutine waiting beside the producer on the same queue replaces nothing
    beside = replace(restarted, wait=replace(restarted.wait, kind="queue_put", detail="Queue.put",
                                             primitive=Primitive("queue", "0x9", "Pipeline.queue")))
    assert "orphaned" in kinds(leak_report(_consumer_died(users=(), others=(beside,)), OPTIONS))


def test_a_user_queued_on_a_lock_acts_once_it_gets_it_unless_the_lock_is_stuck() -> None:
    guard = lock("0xb", "Pipeline.guard")
    user = waiting_on(3, guard, coro="rebalance")
    at_work = task(5, coro="compact", state="running", wait=Wait("running"))
    snap = _consumer_died(users=(3,), others=(user, at_work))
    held_now = replace(snap, primitives=snap.primitives + (held(guard, holder(5, state="running"), waiting=(3,)),))
    assert kinds(leak_report(held_now, OPTIONS)) == ["suspect"]  # task 3 gets the lock, then may get from the queue
    # its holder finished without releasing it: task 3 can never act
    leaked = replace(snap, tasks=replace(snap.tasks, tasks=tuple(t for t in snap.tasks.tasks if t.id != 5)),
                     primitives=snap.primitives + (held(guard, holder(5, alive=False), waiting=(3,)),))
    assert "orphaned" in kinds(leak_report(leaked, OPTIONS))


def _missed_pulse(*, users: tuple[int, ...] | None, unreached: bool = True, idle: float | None = 40.0,
                  others: tuple[TaskInfo, ...] = ()) -> SyncSnapshot:
    """A rollout waiting once on an event last set before its wait began (``idle`` seconds
    ago), with no sign of a gone side; ``unreached``: nothing outside the tasks reaches it."""
    changed = Primitive("event", "0x5", "Store.changed", waiters=1)
    rollout = task(1, coro="rollout", wait=Wait("event", "Event.wait", changed, 30.0, deadline_known=True,
                                                owner_ids=("0x6",), users=users, unreached=unreached))
    return sync(snapshot(rollout, *others), PrimitiveState(changed, waiting_tasks=(1,), idle_seconds=idle))


def test_a_wait_nothing_outside_the_tasks_reaches_and_no_task_can_end_is_orphaned() -> None:
    report = leak_report(_missed_pulse(users=()), OPTIONS)
    (finding,) = report.findings
    assert finding.kind == "orphaned" and report.fails(DEFAULT_FAIL_ON)
    assert finding.title == "1 task of rollout waits 30s on Event.wait that nothing left can end"
    assert finding.evidence.startswith("Store.changed 0x5 was last set 40.0s ago, before this wait began")
    assert "nothing outside the tasks can reach it" in finding.evidence
    assert "in code still to run" in finding.evidence
    # the main task whose code still to run names it may act on it, once its own wait ends
    main = replace(task(3, coro="main", wait=Wait("event", "Event.wait", seconds=40.0, deadline_known=True)),
                   main=True)
    assert kinds(leak_report(_missed_pulse(users=(3,), others=(main,)), OPTIONS)) == ["suspect"]
    # something outside the tasks reaches it, or that could not be told: a suspect
    from diag.collect.sync_collector import OUTSIDE_TASKS
    assert kinds(leak_report(_missed_pulse(users=(OUTSIDE_TASKS,), unreached=False), OPTIONS)) == ["suspect"]
    assert kinds(leak_report(_missed_pulse(users=None, unreached=False), OPTIONS)) == ["suspect"]
    # unreached by itself is no sign of a leak: a program at rest waits so everywhere
    assert leak_report(_missed_pulse(users=(), idle=None), OPTIONS).findings == ()


def _idle_worker(tid: int, *, users: tuple[int, ...] | None, unreached: bool = True, relay: bool = True,
                 deadline: float | None = None) -> TaskInfo:
    """A worker idle on its jobs queue, asked who could hand it work (``relay``)."""
    jobs = Primitive("queue", "0x9", "jobs", waiters=1)
    return task(tid, coro="worker", wait=Wait("queue_get", "Queue.get", jobs, 30.0, deadline_known=True,
                                              deadline=deadline, owner_ids=("0x8",), users=users,
                                              unreached=unreached, relay=relay))


def test_a_user_waiting_for_work_nobody_left_can_hand_it_cannot_act() -> None:
    from diag.collect.sync_collector import OUTSIDE_TASKS
    # the rollout's only other user is an idle worker; whoever could feed the worker's queue
    # is the rollout itself (waiting), or nobody
    for fed_by in ((), (1,)):
        (finding,) = leak_report(_missed_pulse(users=(2,), others=(_idle_worker(2, users=fed_by),)), OPTIONS).findings
        assert finding.kind == "orphaned", finding
        assert "task 2 (worker on Queue.get, for work that no task left can hand it" in finding.evidence
    # the worker itself is no finding: waiting for work is what it does
    report = leak_report(_missed_pulse(users=(2,), others=(_idle_worker(2, users=()),)), OPTIONS)
    assert [[t.id for t in f.tasks] for f in report.findings] == [[1]]
    sleeper = task(3, coro="feeder", wait=Wait("sleep", "sleep", seconds=0.1, time_left=0.1))
    main = replace(task(4, coro="main", wait=Wait("event", "Event.wait", seconds=40.0, deadline_known=True)), main=True)
    for worker, others in (
            (_idle_worker(2, users=(3,)), (sleeper,)),        # a task that may act can feed it
            (_idle_worker(2, users=(4,)), (main,)),           # so can main, whose code still to run names it
            (_idle_worker(2, users=(OUTSIDE_TASKS,), unreached=False), ()),  # or something outside the tasks
            (_idle_worker(2, users=None, unreached=False), ()),              # or that was not told
            (_idle_worker(2, users=(), deadline=5.0), ()),    # its wait ends on its own
            (_idle_worker(2, users=(), relay=False), ())):    # not asked as a relay: a worker that may be fed
        assert kinds(leak_report(_missed_pulse(users=(2,), others=(worker,) + others), OPTIONS)) == ["suspect"], worker


@pytest.mark.parametrize(("child_wait", "suspect"), [(30.0, True), (0.2, False)])
def test_a_gather_beside_an_ended_task_counts_only_children_that_have_waited_long(child_wait: float,
                                                                                    suspect: bool) -> None:
    """The children left of a gather whose other task has ended: waiting long with no end,
    evidence; one that began its wait a moment ago (reading a stream line by line, each
    line a new wait) is at work."""
    from diag.model.task_snapshot import FinishedChild
    read = Frame("/usr/lib/python3.11/asyncio/streams.py", 560, "StreamReader.readuntil", "await self._wait_for_data")
    child = task(7, coro="LlmClient.complete", stack=(read,),
                 wait=Wait("stream_read", "StreamReader.readuntil", seconds=child_wait, deadline_known=True))
    parent = task(3, coro="Worker.run", stack=(GATHER,),
                  wait=Wait("gather", "gather", seconds=30.0, tasks=(5, 7), deadline_known=True,
                            finished=(FinishedChild(5, "LlmClient.complete", "returned"),)))
    report = leak_report(sync(snapshot(parent, child)), OPTIONS)
    evidence = " ".join(f.evidence for f in report.findings if any(t.id == 3 for t in f.tasks))
    assert ("gather returns only once the other" in evidence) == suspect, report.findings
