"""What ``diag top`` shows, computed from one sample and the one before it.

Pure: samples in, a frozen ``TopSummary`` out; no I/O, no clock (times come from the
samples).  Rates need two consecutive samples of the same process: the first frame,
a restarted target or a counter that went backwards give "no rate" with a reason,
never a made-up number.

Usage::

    summary = summarize("http://127.0.0.1:8080", sample, previous, TopOptions(limit=5))
    print(summary.requests.per_second, [g.count for g in summary.groups])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from diag.analysis.task_groups import await_cycles, group_tasks
from diag.model.sync_snapshot import PrimitiveState
from diag.model.task_snapshot import TASK_STATES, LoopInfo, TaskInfo
from diag.model.top_sample import REQUESTS_METRIC, TopSample

DEFAULT_LIMIT = 5
#: Waits that are a task's normal rest, not a sign of trouble: left out of the groups
#: unless asked for (they are still counted by wait reason).
IDLE_WAITS = ("sleep", "queue_get")


@dataclass(frozen=True)
class TopOptions:
    """``limit``: how many task groups and primitives to list; ``min_wait``: tasks that
    have waited less are left out of the groups (seconds); ``idle``: also group tasks
    that sleep or wait on ``Queue.get``."""

    limit: int = DEFAULT_LIMIT
    min_wait: float = 0.0
    idle: bool = False


@dataclass(frozen=True)
class Outage:
    """The target has not answered since ``since`` (Unix time); ``reason`` is the latest
    failure, ``attempts`` how many fetches failed in a row."""

    since: float
    reason: str
    attempts: int = 1


@dataclass(frozen=True)
class RequestRate:
    """Requests per second between two samples, overall and per series (status class).

    ``per_second`` is ``None`` when there is no rate to give; ``note`` says why.
    ``total`` is the counter's latest value when known.
    """

    per_second: float | None
    by_series: tuple[tuple[str, float], ...] = ()
    total: float | None = None
    note: str = ""


@dataclass(frozen=True)
class PrimitiveLine:
    """A primitive tasks wait on.  ``in_use``/``capacity``: permits taken and available
    in all (semaphores, locks), or items queued and room (queues); ``None`` when unknown."""

    state: PrimitiveState
    waiters: int
    in_use: int | None
    capacity: int | None
    leaked: int


@dataclass(frozen=True)
class TopSummary:
    """One frame of ``diag top``.  ``outage`` is set while the target does not answer;
    the rest then describes the last sample that did arrive (``stale``)."""

    target: str
    pid: int
    python: str
    taken_at: float
    total_tasks: int
    tasks_delta: int | None
    states: tuple[tuple[str, int], ...]
    waits: tuple[tuple[str, int], ...]
    groups: tuple[TaskInfo, ...]
    groups_total: int
    primitives: tuple[PrimitiveLine, ...]
    primitives_total: int
    loops: tuple[LoopInfo, ...]
    requests: RequestRate
    await_cycles: tuple[tuple[int, ...], ...] = ()
    outage: Outage | None = None
    #: per loop (as ``loops``): the worst heartbeat lag since the previous sample, or
    #: ``None`` on the first frame, for another process, or a loop the previous sample lacked
    worst_lags: tuple[float | None, ...] = ()

    @property
    def stale(self) -> bool:
        return self.outage is not None


def summarize(target: str, sample: TopSample, previous: TopSample | None = None,
              options: TopOptions = TopOptions(), outage: Outage | None = None) -> TopSummary:
    """The frame for ``sample``; ``previous`` (the sample before it) gives the rates.
    With ``outage`` the frame says the target is unreachable and gives no rate."""
    tasks = sample.sync.tasks
    same_process = previous is not None and previous.sync.process.pid == sample.sync.process.pid
    states = Counter({s: 0 for s in TASK_STATES})
    waits: Counter[str] = Counter()
    if tasks.totals:  # the answer was cut to fit: the agent counted every task before
        for key, count in tasks.totals:
            if key.startswith("wait:"):
                waits[key[5:]] += count
            else:
                states[key] += count
    else:
        for task in tasks.tasks:
            states[task.state] += task.count
            if task.state == "waiting":
                waits[task.wait.kind] += task.count
    waiting = tuple(t for t in tasks.tasks if t.state == "waiting"
                    and (options.idle or t.wait.kind not in IDLE_WAITS)
                    and (t.wait.seconds or 0.0) >= options.min_wait)
    groups = group_tasks(waiting)
    lines = sorted((line for line in map(primitive_line, sample.sync.primitives) if line.waiters),
                   key=lambda ln: (-ln.waiters, -(ln.state.longest_wait or 0.0), ln.state.primitive.label,
                                   ln.state.primitive.id))
    if outage is not None:
        requests = RequestRate(None, note="target unreachable")
    else:
        requests = request_rate(sample, previous if same_process else None,
                                restarted=previous is not None and not same_process)
    return TopSummary(
        target=target, pid=sample.sync.process.pid, python=sample.sync.process.python,
        taken_at=sample.sync.taken_at or sample.wall, total_tasks=tasks.total_tasks or sum(states.values()),
        tasks_delta=(tasks.total_tasks - previous.sync.tasks.total_tasks)
        if same_process and previous is not None and outage is None else None,
        states=tuple(states.items()),
        waits=tuple(sorted(waits.items(), key=lambda kv: (-kv[1], kv[0]))),
        groups=groups[: options.limit], groups_total=len(groups),
        primitives=tuple(lines[: options.limit]), primitives_total=len(lines),
        loops=tasks.loops, requests=requests, await_cycles=tasks.await_cycles or await_cycles(tasks), outage=outage,
        worst_lags=tuple(worst_lag(loop, previous.sync.taken_at if same_process and previous is not None
                                   and outage is None else None) for loop in tasks.loops),
    )


def worst_lag(loop: LoopInfo, since: float | None) -> float | None:
    """The worst heartbeat lag of ``loop`` measured after ``since`` (Unix time, the previous
    sample's), the latest beat's included; ``None`` without a previous sample."""
    if since is None:
        return None
    lags = [lag for at, lag in loop.lag_peaks if at > since]
    if loop.lag_seconds is not None:
        lags.append(loop.lag_seconds)
    return max(lags) if lags else None


def primitive_line(state: PrimitiveState) -> PrimitiveLine:
    """Waiters, permits in use and capacity of one primitive, from whatever it reports."""
    p = state.primitive
    waiters = max(len(state.waiting_tasks), p.waiters or 0, (p.getters or 0) + (p.putters or 0))
    in_use: int | None = None
    capacity: int | None = None
    if p.kind in ("semaphore", "bounded_semaphore"):
        if p.capacity is not None and p.value is not None:
            capacity, in_use = p.capacity, p.capacity - p.value
        elif state.tracked:
            in_use = len(state.holders)
            # A plain Semaphore does not know its size: what is free plus what is held.
            capacity = None if p.value is None else p.value + in_use
    elif p.kind in ("lock", "condition"):
        in_use = None if p.locked is None else int(p.locked)
        capacity = 1
    elif p.kind == "queue":
        in_use = p.size
        capacity = p.maxsize or None
    # a finished holder of permits the program hands on has not lost them
    leaked = 0 if state.handoff_seconds is not None else sum(1 for h in state.holders
                                                          if not h.task_alive or h.skipped_release)
    return PrimitiveLine(state, waiters, in_use, capacity, leaked)


def request_rate(sample: TopSample, previous: TopSample | None, *, restarted: bool = False) -> RequestRate:
    """Requests per second from the counter's change between two samples."""
    now = sample.metrics
    if now.requests is None:
        return RequestRate(None, note=now.note or f"no {REQUESTS_METRIC}")
    total = sum(v for _, v in now.requests)
    if restarted:
        return RequestRate(None, total=total, note="the target restarted")
    if previous is None or previous.metrics.requests is None:
        return RequestRate(None, total=total, note="needs two samples")
    elapsed = now.fetched_at - previous.metrics.fetched_at
    if not elapsed > 0:
        return RequestRate(None, total=total, note="needs two samples")
    before = dict(previous.metrics.requests)
    prev_total = sum(before.values())
    if total < prev_total:
        return RequestRate(None, total=total, note="the counter went back (reset)")
    by_series = tuple((key, max(0.0, value - before.get(key, 0.0)) / elapsed) for key, value in now.requests)
    return RequestRate((total - prev_total) / elapsed, by_series, total)


__all__ = ["DEFAULT_LIMIT", "IDLE_WAITS", "TopOptions", "Outage", "RequestRate", "PrimitiveLine", "TopSummary", "summarize",
           "primitive_line", "request_rate", "worst_lag"]
