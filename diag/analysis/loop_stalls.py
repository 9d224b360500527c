"""Why an event loop stalled, and what its recent stalls add up to.  Pure.

A stall is the time between the agent's heartbeat being sent to a loop and its run.
The loop thread spends it in one of four ways: running code (CPU time), runnable but
waiting for a CPU (run-queue time, which includes a cgroup's throttling), or asleep,
either in a call of the program's own (``time.sleep``, a socket read: its sampled stack
is user code) or, woken from the loop's poll, waiting for the GIL (its stack is the
loop's own poll).  ``classify`` weighs the first and third (the loop's own code: the
loop is **blocked**) against the rest (the loop was ready but got no CPU or GIL: it is
**starved**).

Usage::

    cause, reason = classify(0.6, cpu=0.55, runqueue=0.02, throttled=0.0, others_cpu=0.0,
                             samples=4, own_wait_samples=0)      # ("blocked", "cpu")
    summary = window_summary(loop, "blocked", window=60.0, now=snap.taken_at)
"""

from __future__ import annotations

from dataclasses import dataclass

from diag.model.task_snapshot import Frame, LoopInfo, Stall, StallStack

#: The loop's own code taking this long within a stall makes it a blocked stall, however
#: long the loop also waited for a CPU: on an idle machine it would have been a stall by
#: itself, and one a heartbeat sent at a random moment in it would almost surely catch
#: (``loop_watch.STALL_THRESHOLD`` is the least stall recorded; a shorter own part in a
#: stall stretched by a loaded machine is starvation's doing more than the loop's).
BLOCKED_OWN_SECONDS = 0.25
#: "Mostly": the share of a stall a figure must reach to explain it on its own.
MOSTLY = 0.5


def classify(seconds: float, *, cpu: float | None, runqueue: float | None, throttled: float | None,
             others_cpu: float | None, samples: int, own_wait_samples: int,
             lock_wait_samples: int = 0) -> tuple[str, str]:
    """(cause, reason) of one stall from its figures; see ``diag.model.task_snapshot.Stall``.

    ``lock_wait_samples`` are samples in the program's code with the thread in a futex
    wait: a thread forced to hand the GIL over mid-callback waits for it there, as it
    would for a lock.  While other threads ran for most of the time it slept they count
    as waits for the GIL (starved), otherwise as the program's own lock (blocked).
    Without CPU figures (not Linux) the sampled stacks decide alone: the loop's own poll
    means it was ready to turn (starved), anything else that it was busy (blocked).
    """
    if seconds <= 0:
        return "unknown", ""
    if cpu is None or runqueue is None:
        if not samples:
            return "unknown", ""
        return ("starved", "poll") if 2 * own_wait_samples > samples else ("blocked", "stack")
    asleep = max(0.0, seconds - cpu - runqueue)
    if not samples:
        # The watchdog could not run either: some thread held the GIL throughout.
        if cpu >= MOSTLY * seconds:
            return "blocked", "cpu"
        if others_cpu is not None and others_cpu >= MOSTLY * seconds:
            return "starved", "gil"
        if cpu >= BLOCKED_OWN_SECONDS:
            return "blocked", "cpu"
        if runqueue >= MOSTLY * seconds:
            return _starved_by_cpu(runqueue, throttled)
        return "unknown", ""  # nothing ran: the process was stopped, or a call held the GIL
    gil_like = own_wait_samples
    if lock_wait_samples and others_cpu is not None and others_cpu >= MOSTLY * asleep:
        gil_like += lock_wait_samples
    user_share = 1.0 - min(gil_like, samples) / samples
    own = cpu + asleep * user_share
    lost = runqueue + asleep * (1.0 - user_share)
    if own >= lost or own >= BLOCKED_OWN_SECONDS:
        return "blocked", "cpu" if cpu >= asleep * user_share else "call"
    if runqueue >= asleep * (1.0 - user_share):
        return _starved_by_cpu(runqueue, throttled)
    return "starved", "gil"


def _starved_by_cpu(runqueue: float, throttled: float | None) -> tuple[str, str]:
    if throttled is not None and throttled > 0 and throttled >= MOSTLY * runqueue:
        return "starved", "throttled"
    return "starved", "runqueue"


#: What each reason means, for evidence lines.
REASONS = {
    "cpu": "the loop thread ran code",
    "call": "the loop thread slept in a call of the program's (not the loop's poll)",
    "stack": "the loop thread was in the program's code",
    "runqueue": "the loop thread was ready but waited for a CPU",
    "throttled": "the cgroup's CPU quota throttled the process",
    "gil": "the loop thread was woken but waited for the GIL while other threads ran",
    "poll": "the loop thread sat in the loop's own poll: ready to turn, not given a CPU or the GIL",
    "diag": "diag's own dump or proof held the loop: it held the GIL, or ran on the loop thread (diag's endpoints "
            "served by the program's own server)",
}
#: Stalls diag caused itself: shown, never a verdict on the program.
OWN_REASONS = frozenset({"diag"})


@dataclass(frozen=True)
class StallSite:
    """Stalls that share their innermost sampled frame outside the loop's poll."""

    frames: tuple[Frame, ...]
    count: int
    seconds: float
    longest: float
    #: no sample was taken in these stalls: ``frames`` is where the loop thread was as they
    #: ended (see ``ended_stack``)
    at_end: bool = False


@dataclass(frozen=True)
class WindowSummary:
    """One cause's stalls in the last ``window`` seconds; ``share`` is their time over the window."""

    cause: str
    window: float
    stalls: tuple[Stall, ...]
    count: int
    seconds: float
    longest: float
    share: float
    cpu_seconds: float | None
    runqueue_seconds: float | None
    throttled_seconds: float | None
    others_cpu_seconds: float | None
    sites: tuple[StallSite, ...]


def loop_stalls(loop: LoopInfo) -> tuple[Stall, ...]:
    """The loop's stalls; an older snapshot's current stall (no history) as an ongoing one."""
    if loop.stalled_seconds > 0 and not any(s.ongoing for s in loop.stalls):
        return loop.stalls + (Stall(0.0, loop.stalled_seconds, "unknown", "", True),)
    return loop.stalls


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def stall_frames(loop: LoopInfo, stall: Stall) -> tuple[Frame, ...]:
    """The stall's most sampled stack outside the loop's poll (else its most sampled one);
    for an older snapshot's current stall, the blocking stack."""
    stacks = [(loop.stall_stacks[i], n) for i, n in stall.stacks if 0 <= i < len(loop.stall_stacks)]
    if not stacks:
        return loop.blocking_stack if stall.ongoing else ()
    busy = [(s, n) for s, n in stacks if not s.own_wait]
    best: StallStack = max(busy or stacks, key=lambda sn: sn[1])[0]
    return best.frames


def ended_stack(stall: Stall) -> bool:
    """True when the stall's stack was not sampled in it but read as it ended: one call held
    the GIL throughout, and the loop thread gave it up just after that call returned."""
    return stall.samples == 0 and bool(stall.stacks)


def start_up(stall: Stall) -> bool:
    """True for a stall of the program's start-up that has ended: it began as the loop first
    ran, before the loop ever went idle (loading, seeding, connecting before serving).
    Shown, but no verdict: a start-up that stays stuck is a current stall, and counts."""
    return stall.at_start and not stall.ongoing


def window_summary(loop: LoopInfo, cause: str, *, window: float | None = None, now: float | None = None,
                   exclude_reasons: frozenset[str] = frozenset(), min_ongoing: float = 0.0,
                   exclude_start: bool = False) -> WindowSummary:
    """The stalls of ``cause`` in the last ``window`` seconds before ``now`` (both default to
    the agent's: its whole window), but those of ``exclude_reasons``, a current one
    shorter than ``min_ongoing`` and, with ``exclude_start``, the start-up's (``start_up``).
    An ``unknown`` current stall counts as ``blocked``: a loop that has not turned says so
    even where its cause cannot be measured."""
    span = loop.stall_window if window is None else (min(window, loop.stall_window) if loop.stall_window else window)
    picked = []
    for stall in loop_stalls(loop):
        c = "blocked" if stall.cause == "unknown" and stall.ongoing else stall.cause
        if c != cause or stall.reason in exclude_reasons or (stall.ongoing and stall.seconds < min_ongoing):
            continue
        if exclude_start and start_up(stall):
            continue
        if not stall.ongoing and now is not None and window is not None and stall.started_at + stall.seconds < now - window:
            continue
        picked.append(stall)
    total = sum(s.seconds for s in picked)
    groups: dict[tuple[str, int, str, bool], list[tuple[Stall, tuple[Frame, ...]]]] = {}
    for stall in picked:
        frames = stall_frames(loop, stall)
        top = frames[0] if frames else Frame("?", 0, "?")
        groups.setdefault((top.file, top.line, top.function, ended_stack(stall)), []).append((stall, frames))
    sites = sorted((StallSite(members[0][1], len(members), sum(s.seconds for s, _ in members),
                              max(s.seconds for s, _ in members), key[3]) for key, members in groups.items()),
                   key=lambda site: (-site.count, -site.seconds))
    return WindowSummary(
        cause=cause, window=span, stalls=tuple(picked), count=len(picked), seconds=total,
        longest=max((s.seconds for s in picked), default=0.0), share=total / span if span > 0 else 0.0,
        cpu_seconds=_sum([s.cpu_seconds for s in picked]), runqueue_seconds=_sum([s.runqueue_seconds for s in picked]),
        throttled_seconds=_sum([s.throttled_seconds for s in picked]),
        others_cpu_seconds=_sum([s.others_cpu_seconds for s in picked]), sites=tuple(sites),
    )


def site_text(frames: tuple[Frame, ...], at_end: bool = False, short: bool = False) -> str:
    """``file:line function`` of a stall site's innermost frame; ``at_end``: read as the
    stall ended, said so (in brief with ``short``)."""
    if not frames:
        return "no stack (one call held the GIL throughout, so none could be sampled)"
    top = frames[0]
    where = f"{top.file.rsplit('/', 1)[-1]}:{top.line} {top.function}"
    if at_end:
        return where + (" (as it ended)" if short else
                        " (read as the stall ended: one call held the GIL throughout, so none could be sampled in "
                        "it; the thread had just returned from a call at this line)")
    return where


def reasons_text(summary: WindowSummary) -> str:
    """The reasons of a summary's stalls, most frequent first: ``runqueue 3, gil 1``."""
    counts: dict[str, int] = {}
    for stall in summary.stalls:
        counts[stall.reason or "unmeasured"] = counts.get(stall.reason or "unmeasured", 0) + 1
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


__all__ = ["BLOCKED_OWN_SECONDS", "ended_stack", "start_up", "MOSTLY", "REASONS", "OWN_REASONS", "StallSite", "WindowSummary", "classify", "loop_stalls",
           "stall_frames", "window_summary", "site_text", "reasons_text"]
