"""Stall history, blocked versus starved: the pure rules on hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace

import json
import threading
import time

import pytest

from diag.analysis.leak_verdicts import DEFAULT_FAIL_ON, KINDS, LeakOptions, leak_report
from diag.analysis.loop_stalls import classify, window_summary
from diag.analysis.metrics_model import MetricsInputs, metric_families
from diag.collect.loop_watch import LoopWatch, _Beat, _Figures
from diag.errors import UsageError
from diag.render.tasks_text import loop_line
from diag.render.top_view import loop_line as top_loop_line
from diag.model.sync_snapshot import SyncSnapshot
from diag.model.task_snapshot import Frame, LoopInfo, Stall, StallStack, TaskInfo, TaskSnapshot, Wait
from tests.diag.snapshots import snapshot, task

NOW = 1_800_000_000.0  # the hand-built snapshots' taken_at
FETCH_SYNC = Frame("/srv/app/app.py", 12, "fetch_sync", "time.sleep(0.4)")
HANDLER = Frame("/srv/app/app.py", 30, "handler", "fetch_sync()")
CRUNCH = Frame("/srv/app/app.py", 44, "crunch", "while time.perf_counter() < end:")
SELECT = Frame("/usr/lib/python3.11/selectors.py", 468, "EpollSelector.select", "fd_event_list = self._selector.poll(timeout, max_ev)")
RUN_ONCE = Frame("/usr/lib/python3.11/asyncio/base_events.py", 1898, "BaseEventLoop._run_once", "event_list = self._selector.select(timeout)")
STACKS = (StallStack((FETCH_SYNC, HANDLER)), StallStack((CRUNCH,)), StallStack((SELECT, RUN_ONCE), own_wait=True))


def blocked(ago: float, seconds: float = 0.4, stack: int = 0, **kw: object) -> Stall:
    figures: dict[str, object] = {"cpu_seconds": 0.0, "runqueue_seconds": 0.0, "others_cpu_seconds": 0.0}
    figures.update(kw)
    return Stall(NOW - ago, seconds, "blocked", "call", samples=3, stacks=((stack, 3),), **figures)  # type: ignore[arg-type]


def starved(ago: float, seconds: float = 0.4, reason: str = "runqueue", **kw: object) -> Stall:
    figures: dict[str, object] = {"cpu_seconds": 0.01, "runqueue_seconds": seconds - 0.02, "others_cpu_seconds": 0.0}
    figures.update(kw)
    return Stall(NOW - ago, seconds, "starved", reason, samples=2, stacks=((2, 2),), **figures)  # type: ignore[arg-type]


def loop_with(*stalls: Stall, stalled: float = 0.0, blocking: tuple[Frame, ...] = ()) -> LoopInfo:
    return LoopInfo("0x7f00l", 1, "MainThread", True, 0.0004, stalled, blocking, stall_window=60.0, stalls=stalls,
                    stall_stacks=STACKS, stalls_total=len(stalls) + 7, stall_seconds_total=9.5,
                    starved_total=sum(1 for s in stalls if s.cause == "starved"),
                    starved_seconds_total=sum(s.seconds for s in stalls if s.cause == "starved"))


def sync(*loops: LoopInfo) -> SyncSnapshot:
    tasks: TaskSnapshot = snapshot(loops=loops)
    return SyncSnapshot(taken_at=NOW, process=tasks.process, tasks=tasks, primitives=())


def kinds(snap: SyncSnapshot, options: LeakOptions = LeakOptions()) -> list[str]:
    return [f.kind for f in leak_report(snap, options).findings]


# -- classify: one stall's figures -> (cause, reason) ----------------------------------------
@pytest.mark.parametrize("figures, want", [
    # the loop thread ran code for most of the stall: a busy loop on the loop
    ({"seconds": 0.42, "cpu": 0.41, "runqueue": 0.005, "samples": 4, "own_wait_samples": 0}, ("blocked", "cpu")),
    # off-CPU, not waiting for a CPU, and the stack is the program's: time.sleep, a socket read
    ({"seconds": 0.4, "cpu": 0.0, "runqueue": 0.001, "samples": 3, "own_wait_samples": 0}, ("blocked", "call")),
    # a busy loop of 0.4 s on a loaded machine: its own CPU alone is longer than a stall
    ({"seconds": 1.0, "cpu": 0.4, "runqueue": 0.6, "samples": 9, "own_wait_samples": 0}, ("blocked", "cpu")),
    # a 0.3 s callback stretched to 0.9 s by a loaded machine: a stall on an idle one too
    ({"seconds": 0.9, "cpu": 0.3, "runqueue": 0.6, "samples": 5, "own_wait_samples": 0}, ("blocked", "cpu")),
    # the same in one C call holding the GIL throughout (a big json.dumps): nothing sampled
    ({"seconds": 0.9, "cpu": 0.3, "runqueue": 0.6, "others_cpu": 0.0, "samples": 0, "own_wait_samples": 0},
     ("blocked", "cpu")),
    # 0.15 s of its own, under the stall threshold, stretched to 0.6 s: the wait for a CPU made it
    ({"seconds": 0.6, "cpu": 0.15, "runqueue": 0.45, "samples": 5, "own_wait_samples": 0}, ("starved", "runqueue")),
    # nothing sampled, another thread held the GIL for most of it: the loop's 0.3 s is not the cause
    ({"seconds": 2.0, "cpu": 0.3, "runqueue": 0.0, "others_cpu": 1.7, "samples": 0, "own_wait_samples": 0},
     ("starved", "gil")),
    # runnable for most of the stall but given no CPU, even though preempted in the program's code
    ({"seconds": 0.5, "cpu": 0.02, "runqueue": 0.47, "samples": 4, "own_wait_samples": 0}, ("starved", "runqueue")),
    ({"seconds": 0.6, "cpu": 0.05, "runqueue": 0.55, "others_cpu": 0.0, "samples": 0, "own_wait_samples": 0},
     ("starved", "runqueue")),
    # the same, and the cgroup's quota throttled the process
    ({"seconds": 0.5, "cpu": 0.02, "runqueue": 0.47, "throttled": 0.4, "samples": 4, "own_wait_samples": 4},
     ("starved", "throttled")),
    # woken from its poll, asleep: waiting for the GIL while another thread ran
    ({"seconds": 0.5, "cpu": 0.0, "runqueue": 0.0, "others_cpu": 0.5, "samples": 4, "own_wait_samples": 4},
     ("starved", "gil")),
    # the watchdog could not sample (the GIL was held throughout): by another thread ...
    ({"seconds": 0.5, "cpu": 0.0, "runqueue": 0.01, "others_cpu": 0.49, "samples": 0, "own_wait_samples": 0},
     ("starved", "gil")),
    # ... or by the loop thread itself in a long C call
    ({"seconds": 0.5, "cpu": 0.49, "runqueue": 0.0, "others_cpu": 0.0, "samples": 0, "own_wait_samples": 0},
     ("blocked", "cpu")),
    # nothing of the process ran and nothing was sampled: stopped, or a call holding the GIL asleep
    ({"seconds": 0.5, "cpu": 0.0, "runqueue": 0.0, "others_cpu": 0.0, "samples": 0, "own_wait_samples": 0},
     ("unknown", "")),
    # no scheduler figures (not Linux): the stacks decide
    ({"seconds": 0.5, "cpu": None, "runqueue": None, "samples": 4, "own_wait_samples": 3}, ("starved", "poll")),
    ({"seconds": 0.5, "cpu": None, "runqueue": None, "samples": 4, "own_wait_samples": 1}, ("blocked", "stack")),
    ({"seconds": 0.5, "cpu": None, "runqueue": None, "samples": 0, "own_wait_samples": 0}, ("unknown", "")),
])
def test_classify(figures: dict[str, float | None], want: tuple[str, str]) -> None:
    args: dict[str, float | None] = {"throttled": None, "others_cpu": None}
    args.update(figures)
    seconds = args.pop("seconds")
    assert seconds is not None
    assert classify(seconds, **args) == want  # type: ignore[arg-type]


# -- verdicts ---------------------------------------------------------------------------------
def test_repeated_short_blocks_make_loop_blocked_while_the_loop_turns() -> None:
    loop = loop_with(blocked(50), blocked(30, 0.6), blocked(10, stack=1, cpu_seconds=0.4), blocked(2))
    report = leak_report(sync(loop))
    assert [f.kind for f in report.findings] == ["loop_blocked"]
    f = report.findings[0]
    assert f.title == "event loop 0x7f00l was blocked 4 times in the last 60s, longest 0.6s"
    assert "4 stalls in the last 60s, 1.8s in all (3% of the time), longest 0.6s" in f.evidence
    assert "by site: 3x at app.py:12 fetch_sync (longest 0.6s); 1x at app.py:44 crunch (longest 0.4s)" in f.evidence
    assert f.site == (FETCH_SYNC, HANDLER)  # the most frequent blocking site
    assert "the loop thread slept in a call of the program's (not the loop's poll)" in f.evidence
    assert report.fails(DEFAULT_FAIL_ON)


def test_one_long_stall_in_the_window_is_enough() -> None:
    report = leak_report(sync(loop_with(blocked(40, 1.2))))
    assert [f.kind for f in report.findings] == ["loop_blocked"]
    assert report.findings[0].title == "event loop 0x7f00l was blocked 1 time in the last 60s, longest 1.2s"


def test_below_the_thresholds_or_outside_the_window_no_verdict() -> None:
    assert kinds(sync(loop_with(blocked(20, 0.15), blocked(5, 0.15)))) == []  # two short ones
    assert kinds(sync(loop_with(blocked(300), blocked(200, 2.0), blocked(100)))) == []  # all older than 60 s
    # the options move the thresholds
    assert kinds(sync(loop_with(blocked(20, 0.15), blocked(5, 0.15))), LeakOptions(stall_repeats=2)) == ["loop_blocked"]
    assert kinds(sync(loop_with(blocked(50), blocked(30), blocked(2))), LeakOptions(stall_window=20)) == []
    assert kinds(sync(loop_with(blocked(40, 0.6))), LeakOptions(stall_threshold=0.5)) == ["loop_blocked"]


def test_two_stalls_one_of_a_fifth_of_the_threshold_are_a_pattern() -> None:
    """A json.dumps of a big table every 3 s blocks the loop 0.27 s each time, timed as
    stalls of 0.14-0.27 s (from the watchdog's first late turn): asked about before the
    third, two stalls, one of them 0.2 s or longer, already make the verdict."""
    report = leak_report(sync(loop_with(blocked(6, 0.14, cpu_seconds=0.14), blocked(3, 0.25, cpu_seconds=0.25))))
    assert [f.kind for f in report.findings] == ["loop_blocked"] and report.fails(DEFAULT_FAIL_ON)
    assert report.findings[0].title == "event loop 0x7f00l was blocked 2 times in the last 60s, longest 0.2s"
    # one such stall, or two short ones, are not
    assert kinds(sync(loop_with(blocked(3, 0.45)))) == []
    assert kinds(sync(loop_with(blocked(6, 0.15), blocked(3, 0.19)))) == []
    # the same figures, starved: a loop_starved (not failed on by default), never blocked
    assert kinds(sync(loop_with(starved(6, 0.3), starved(3, 0.3)))) == ["loop_starved"]
    # a fifth of the threshold the caller sets
    assert kinds(sync(loop_with(blocked(6, 0.3), blocked(3, 0.3))), LeakOptions(stall_threshold=2.0)) == []
    assert kinds(sync(loop_with(blocked(6, 0.3), blocked(3, 0.3))), LeakOptions(stall_threshold=1.4)) == ["loop_blocked"]


def test_a_loop_blocked_now_is_reported_with_its_current_stack() -> None:
    now = Stall(NOW - 1.4, 1.4, "blocked", "call", ongoing=True, cpu_seconds=0.0, runqueue_seconds=0.0,
                samples=11, stacks=((0, 11),))
    report = leak_report(sync(loop_with(blocked(30), now, stalled=1.4, blocking=(FETCH_SYNC, HANDLER))))
    (f,) = report.findings
    assert f.kind == "loop_blocked" and f.title == "event loop 0x7f00l has not turned for 1.4s"
    assert f.evidence.startswith("thread MainThread is running at app.py:12 fetch_sync; every task on this loop waits")
    assert "2 stalls in the last 60s" in f.evidence


def test_a_short_stall_still_going_on_waits_for_its_end_to_count() -> None:
    # judged while the query is answered (on a starved machine, mostly the query's doing):
    # not a verdict until the watchdog has judged it whole, unless it is long enough alone
    options = LeakOptions(stall_repeats=1)
    now = replace(blocked(0.4), ongoing=True)
    assert kinds(sync(loop_with(now, stalled=0.4)), options) == []
    assert kinds(sync(loop_with(blocked(1.0))), options) == ["loop_blocked"]  # the same stall, ended
    long = replace(blocked(1.2, 1.2), ongoing=True)
    assert kinds(sync(loop_with(long, stalled=1.2)), options) == ["loop_blocked"]


def test_an_older_snapshot_without_history_still_gives_loop_blocked() -> None:
    old = LoopInfo.from_dict({"id": "0x7f00l", "thread_id": 1, "thread_name": "MainThread", "running": True,
                              "stalled_seconds": 3.5, "blocking_stack": [FETCH_SYNC.to_dict()]})
    assert old.stalls == () and old.stall_window == 0.0 and old.stalls_total == 0
    (f,) = leak_report(sync(old)).findings
    assert f.kind == "loop_blocked" and f.title == "event loop 0x7f00l has not turned for 3.5s"
    assert f.site == (FETCH_SYNC,)


def test_starved_stalls_are_loop_starved_not_loop_blocked_and_do_not_fail_by_default() -> None:
    loop = loop_with(starved(40), starved(20, 0.7), starved(3))
    report = leak_report(sync(loop))
    assert [f.kind for f in report.findings] == ["loop_starved"]
    f = report.findings[0]
    assert f.title == "event loop 0x7f00l was starved 3 times in the last 60s, longest 0.7s: ready to turn, not run"
    assert "the loop thread was ready but waited for a CPU" in f.evidence
    assert "on CPU 2% of the stalled time, waiting for a CPU 96%" in f.evidence
    assert "loop_starved" in KINDS and "loop_starved" not in DEFAULT_FAIL_ON
    assert not report.fails(DEFAULT_FAIL_ON)
    assert report.fails(frozenset({"loop_starved"}))


def test_a_loop_starved_now_is_not_called_blocked() -> None:
    now = Stall(NOW - 2.0, 2.0, "starved", "gil", ongoing=True, cpu_seconds=0.0, runqueue_seconds=0.0,
                others_cpu_seconds=1.9, samples=4, stacks=((2, 4),))
    (f,) = leak_report(sync(loop_with(now, stalled=2.0, blocking=(SELECT, RUN_ONCE)))).findings
    assert f.kind == "loop_starved"
    assert "waited for the GIL while other threads ran" in f.evidence and "other threads ran 1.90s of CPU" in f.evidence


def test_blocked_and_starved_are_counted_apart() -> None:
    loop = loop_with(starved(50), blocked(40, 0.15), starved(30), blocked(20, 0.15), starved(10))
    assert kinds(sync(loop)) == ["loop_starved"]  # two short blocked stalls only
    summary = window_summary(loop, "starved", window=60, now=NOW)
    assert (summary.count, round(summary.seconds, 3), summary.longest) == (3, 1.2, 0.4)
    assert round(summary.share, 3) == 0.02


def test_stall_options_are_checked() -> None:
    with pytest.raises(UsageError, match="--stall-repeats must be >= 1"):
        LeakOptions(stall_repeats=0).validate()
    with pytest.raises(UsageError, match="--stall-window must be >= 0"):
        LeakOptions(stall_window=-1).validate()


# -- data, rendering and metrics ----------------------------------------------------------------
def test_loop_history_round_trips_through_json() -> None:
    loop = loop_with(blocked(30, throttled_seconds=0.0), starved(10, reason="gil", others_cpu_seconds=0.38))
    back = LoopInfo.from_dict(json.loads(json.dumps(loop.to_dict())))
    assert back == loop
    odd = LoopInfo.from_dict({"id": "x", "stalls": [{"seconds": 0.5, "cause": "sleepy"}]})
    assert odd.stalls[0].cause == "unknown" and odd.stalls[0].cpu_seconds is None


def test_loop_lines_say_how_often_how_long_and_where() -> None:
    loop = loop_with(blocked(50), blocked(30, 0.8), blocked(10), starved(5))
    want = ("; 4 stalls in the last 60s: 3 blocked, longest 0.8s at app.py:12 fetch_sync; "
            "1 starved (runqueue), longest 0.4s")
    assert loop_line(loop) == "loop 0x7f00l on thread MainThread: turning (heartbeat lag 0.4ms)" + want
    assert top_loop_line(loop) == "loop 0x7f00l on MainThread: turning, lag 0.4ms" + want
    assert loop_line(loop_with()) == "loop 0x7f00l on thread MainThread: turning (heartbeat lag 0.4ms)"


def test_metrics_count_stalls_by_cause() -> None:
    loop = loop_with(blocked(20), starved(10, 0.5))
    got = {f.name: f for f in metric_families(MetricsInputs(sync(loop)))}
    stalls, seconds = got["diag_loop_stalls_total"], got["diag_loop_stall_seconds_total"]
    assert stalls.kind == "counter" and stalls.value(thread="MainThread", cause="blocked") == 8
    assert stalls.value(thread="MainThread", cause="starved") == 1
    assert seconds.value(thread="MainThread", cause="starved") == 0.5
    assert seconds.value(thread="MainThread", cause="blocked") == 9.0


def test_stalls_diag_caused_itself_are_shown_but_never_a_verdict() -> None:
    own = [Stall(NOW - ago, 0.6, "starved", "diag", cpu_seconds=0.0, runqueue_seconds=0.0, others_cpu_seconds=0.58,
                 samples=0) for ago in (40, 20, 5)]
    loop = loop_with(*own)
    assert kinds(sync(loop)) == []
    assert loop_line(loop).endswith("; 3 stalls in the last 60s: 3 starved (diag), longest 0.6s")


def test_a_gil_wait_during_the_agents_own_collection_is_the_agents() -> None:
    watch = LoopWatch(install_factories=False)
    beat = _Beat()
    idle: _Figures = (1.0, 0.5, 2.0, None)  # the loop thread neither ran nor waited for a CPU
    busy: _Figures = (1.0, 0.5, 2.5, None)  # ... while another thread ran 0.5 s
    start = time.monotonic()
    assert watch._judge(beat, 0.5, idle, busy, None, start)[:2] == ("starved", "gil")
    with watch.own_work():
        assert watch._judge(beat, 0.5, idle, busy, None, time.monotonic())[:2] == ("starved", "diag")
        assert watch._judge(beat, 0.5, idle, idle, None, time.monotonic())[:2] == ("starved", "diag")
    assert watch._judge(beat, 0.5, idle, idle, None, time.monotonic() + 10)[:2] == ("unknown", "")


def test_the_agents_collection_run_on_the_loop_thread_is_the_agents_not_the_programs() -> None:
    # diag.aiohttp mounts the endpoints in the program's own server: a dump or a proof then
    # runs on the loop thread, which is busy, not starved, and it is diag's doing.
    watch = LoopWatch(install_factories=False)
    beat = _Beat()
    beat.thread_id = threading.get_ident()
    start: _Figures = (1.0, 0.5, 2.0, None)
    ran: _Figures = (1.4, 0.5, 2.4, None)  # the loop thread ran 0.4 s of the 0.5 s
    assert watch._judge(beat, 0.5, start, ran, None, time.monotonic())[:2] == ("blocked", "cpu")
    with watch.own_work():
        with watch.own_work():  # a proof inside a sync collection: one span
            assert watch._judge(beat, 0.5, start, ran, None, time.monotonic())[:2] == ("starved", "diag")
    # A collection on another thread while the loop thread ran the program's own code
    # leaves the program's stall the program's.
    entered, done = threading.Event(), threading.Event()

    def collect() -> None:
        with watch.own_work():
            entered.set()
            done.wait(30)

    other = threading.Thread(target=collect)
    other.start()
    try:
        assert entered.wait(30)
        now = time.monotonic()
        assert watch._own_overlap(now - 0.5, now) > 0
        assert watch._judge(beat, 0.5, start, ran, None, now - 0.5)[:2] == ("blocked", "cpu")
    finally:
        done.set()
        other.join(30)


def test_the_part_of_a_stall_from_before_the_watch_crosses_the_wire_and_garbage_is_refused() -> None:
    stall = Stall(1_800_000_000.0, 42.0, "blocked", "call", True, 0.0, 0.0, None, 0.0, 3, (), before_watch=41.5)
    assert Stall.from_dict(stall.to_dict()) == stall
    assert Stall.from_dict({"seconds": 1.0}).before_watch == 0.0  # an older agent's answer
    with pytest.raises(ValueError, match="before_watch"):
        Stall.from_dict({**stall.to_dict(), "before_watch": float("nan")})


def test_a_stack_read_as_the_call_began_is_not_where_it_ended() -> None:
    # The watchdog asked at 10.0 and got the GIL at 10.40, 0.38 s late.  A read at 10.399
    # (just before the GIL came: the call returned then) names the call; one at 10.001 was
    # made as the loop woke into the call, and the watchdog waited out the call after it.
    from diag.collect.loop_watch import _read_as_call_ended

    assert _read_as_call_ended(10.399, 10.0, 10.40, 0.38)
    assert not _read_as_call_ended(10.001, 10.0, 10.40, 0.38)
    assert not _read_as_call_ended(9.9, 10.0, 10.40, 0.38)  # an older read, from before the request


def test_a_start_up_stall_that_ended_is_shown_but_no_verdict() -> None:
    """Loading or seeding before the first await blocks the loop once as it starts: shown
    in the loop line, no verdict; a start-up still stuck, or stalls after it, still count."""
    seeding = replace(blocked(7, 1.1, stack=1, cpu_seconds=1.1), at_start=True)
    loop = loop_with(seeding)
    assert kinds(sync(loop)) == []
    assert loop_line(loop).endswith("; 1 stall in the last 60s: 1 at start-up (no verdict), 1.1s at app.py:44 crunch")
    # the same stall once the loop had gone idle before it: a verdict
    assert kinds(sync(loop_with(replace(seeding, at_start=False)))) == ["loop_blocked"]
    # a start-up still stuck now is a loop blocked now
    stuck = replace(seeding, seconds=1.4, ongoing=True)
    assert kinds(sync(loop_with(stuck, stalled=1.4, blocking=(CRUNCH,)))) == ["loop_blocked"]
    # stalls after the start-up are judged without it: two of 0.3 s make the verdict, and
    # its evidence counts only them
    report = leak_report(sync(loop_with(seeding, blocked(4, 0.3), blocked(2, 0.3))))
    (f,) = report.findings
    assert f.kind == "loop_blocked" and f.title == "event loop 0x7f00l was blocked 2 times in the last 60s, longest 0.3s"
    assert "crunch" not in f.evidence
    # and it crosses the wire (an older agent's answer has none)
    assert Stall.from_dict(seeding.to_dict()) == seeding
    assert Stall.from_dict({"seconds": 1.0}).at_start is False


def test_only_a_loop_seen_as_it_began_to_run_has_a_start_up_beat() -> None:
    import asyncio

    watch = LoopWatch(install_factories=False)
    loop = asyncio.new_event_loop()
    other = asyncio.new_event_loop()
    try:
        watch.add_loop(loop, starting=True)
        watch.add_loop(other)  # found already running (an attach, diag.start() inside a loop)
        watch.add_loop(loop)  # seen again: stays a loop watched from its start
        assert watch._beats[loop].from_start and not watch._beats[other].from_start
    finally:
        loop.close()
        other.close()


# -- tasks of another loop waiting on a blocked loop's work ----------------------------------

def _handed(tid: int, remote_task: int | None, **wait: object) -> TaskInfo:
    return replace(task(tid, coro="AgentServer.handle", stack=(FETCH_SYNC,),
                        wait=Wait("executor", "run_coroutine_threadsafe", seconds=6.0, deadline_known=True,
                                  remote_loop="0x7f01l", remote_task=remote_task, **wait)),  # type: ignore[arg-type]
                   loop="0x7f00l")


def test_tasks_waiting_on_coroutines_handed_to_a_blocked_loop_are_named_in_its_verdict() -> None:
    worker = replace(loop_with(blocked(0, 6.0), stalled=6.0, blocking=(FETCH_SYNC,)), id="0x7f01l",
                     thread_name="agent-worker-loop")
    waiting = (_handed(4, None), _handed(10, 23), _handed(11, None, deadline=30.0))  # the last has an end
    tasks = replace(snapshot(*waiting, loops=(loop_with(), worker)))
    report = leak_report(SyncSnapshot(taken_at=NOW, process=tasks.process, tasks=tasks, primitives=()),
                         LeakOptions(min_wait=2.0))
    (finding,) = [f for f in report.findings if f.kind == "loop_blocked"]
    assert finding.title == "event loop 0x7f01l has not turned for 6.0s"
    assert [t.id for t in finding.tasks] == [4, 10] and finding.task_count == 2
    assert ("2 tasks of another loop wait, with no timeout, on coroutines handed to this one with "
            "run_coroutine_threadsafe, which it cannot run: AgentServer.handle (task 4, its coroutine not started), "
            "AgentServer.handle (task 10, its coroutine is task 23 there)") in finding.evidence, finding.evidence
    assert not [f for f in report.findings if f.kind == "suspect" and {t.id for t in f.tasks} & {4, 10}]
    # a loop that blocked before and turns now: its verdict names no task of another loop
    turning = replace(loop_with(blocked(10, 1.5)), id="0x7f01l")
    tasks = snapshot(*waiting, loops=(loop_with(), turning))
    report = leak_report(SyncSnapshot(taken_at=NOW, process=tasks.process, tasks=tasks, primitives=()))
    (finding,) = [f for f in report.findings if f.kind == "loop_blocked"]
    assert finding.tasks == () and "run_coroutine_threadsafe" not in finding.evidence
