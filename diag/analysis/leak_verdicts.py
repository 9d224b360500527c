"""Verdicts on a sync snapshot: which waits will never end, and why.  Pure.

``leak_report(snapshot, LeakOptions()) -> LeakReport``.  Kinds:

- ``leaked_permit``: a Lock/Semaphore permit held by a task that has finished;
- ``exhausted``: a semaphore at zero with waiters, whose holders are stuck themselves
  or have held it longer than ``held_threshold``;
- ``deadlock``: a cycle of tasks each waiting on a primitive another one holds, or a
  cycle of tasks awaiting each other;
- ``proven_leak``: blocked tasks that nothing reachable can wake (the proof);
- ``suspect``: long waits on things that are still reachable, each with a reason;
- ``loop_blocked``: an event loop its own code kept from turning: stalled now for
  ``stall_threshold``, or in the last ``stall_window`` seconds once that long or
  ``stall_repeats`` times (every recorded stall is at least 0.25 s);
- ``loop_starved``: the same thresholds, for stalls in which the loop was ready to turn
  but got no CPU or GIL (a loaded machine, a CPU quota, another thread holding the GIL).

Usage::

    report = leak_report(snapshot, LeakOptions(min_wait=30))
    failed = report.fails(options.fail_on)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from diag.analysis.loop_stalls import REASONS, WindowSummary, reasons_text, site_text, window_summary
from diag.analysis.task_groups import find_cycles, group_tasks
from diag.errors import UsageError
from diag.sync_snapshot import PrimitiveState, SyncSnapshot
from diag.task_snapshot import Frame, LoopInfo, Primitive, ProcessInfo, TaskInfo, check_schema

SCHEMA_NAME = "diag.leaks"
SCHEMA = f"{SCHEMA_NAME}/1"
KINDS = ("proven_leak", "leaked_permit", "deadlock", "loop_blocked", "exhausted", "suspect", "loop_starved")
DEFAULT_FAIL_ON = frozenset({"proven_leak", "leaked_permit", "deadlock", "loop_blocked"})
#: Waits that are normal when long: idle consumers and periodic sleepers.
_IDLE_KINDS = frozenset({"queue_get", "sleep", "running", "ready"})
#: Tasks listed per finding; ``task_count`` still counts them all.
MAX_TASKS_PER_FINDING = 20


@dataclass(frozen=True)
class LeakOptions:
    """``min_wait``: seconds before a reachable wait is a suspect; ``held_threshold``:
    seconds a permit may be held before an exhausted semaphore is reported;
    ``stall_threshold``: seconds a loop may go without turning; ``stall_window``: seconds
    of stall history judged; ``stall_repeats``: stalls in that window that make a verdict
    however short; ``fail_on``: kinds that make the check fail (exit 1)."""

    min_wait: float = 10.0
    held_threshold: float = 60.0
    stall_threshold: float = 1.0
    stall_window: float = 60.0
    stall_repeats: int = 3
    fail_on: frozenset[str] = DEFAULT_FAIL_ON

    def validate(self) -> None:
        for name in ("min_wait", "held_threshold", "stall_threshold", "stall_window"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
        if not self.stall_repeats >= 1:
            raise UsageError("--stall-repeats must be >= 1")
        bad = sorted(set(self.fail_on) - set(KINDS))
        if bad:
            raise UsageError(f"unknown finding kind {bad[0]!r} in --fail-on; choose from {', '.join(KINDS)}")


@dataclass(frozen=True)
class Finding:
    """One verdict: what leaked (``title``), the ``evidence`` in words, where to look
    (``site``, innermost first), the tasks involved and the primitives, if any."""

    kind: str
    title: str
    evidence: str
    tasks: tuple[TaskInfo, ...] = ()
    task_count: int = 0
    primitives: tuple[Primitive, ...] = ()
    site: tuple[Frame, ...] = ()
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "evidence": self.evidence,
                "task_count": self.task_count, "tasks": [t.to_dict() for t in self.tasks],
                "primitives": [p.to_dict() for p in self.primitives],
                "primitive": self.primitives[0].to_dict() if self.primitives else None,
                "site": [f.to_dict() for f in self.site], "score": self.score}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(str(d.get("kind")), str(d.get("title") or ""), str(d.get("evidence") or ""),
                   tuple(TaskInfo.from_dict(t) for t in d.get("tasks") or ()), int(d.get("task_count") or 0),
                   tuple(Primitive.from_dict(p) for p in d.get("primitives") or ()),
                   tuple(Frame.from_dict(f) for f in d.get("site") or ()), float(d.get("score") or 0.0))


@dataclass(frozen=True)
class LeakReport:
    """All findings of one snapshot, most severe kind first."""

    taken_at: float
    process: ProcessInfo
    findings: tuple[Finding, ...]
    proof: str = ""
    notes: tuple[str, ...] = field(default=())

    def fails(self, fail_on: frozenset[str]) -> bool:
        return any(f.kind in fail_on for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "taken_at": self.taken_at, "process": self.process.to_dict(),
                "proof": self.proof, "notes": list(self.notes), "findings": [f.to_dict() for f in self.findings]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> LeakReport:
        check_schema(d.get("schema") if isinstance(d, Mapping) else None, SCHEMA_NAME, 1)
        return cls(float(d.get("taken_at") or 0.0), ProcessInfo.from_dict(d.get("process") or {}),
                   tuple(Finding.from_dict(f) for f in d.get("findings") or ()), str(d.get("proof") or ""),
                   tuple(str(n) for n in d.get("notes") or ()))


def _where(prim: Primitive) -> str:
    return f"{prim.label or prim.kind} {prim.id}"


def _site_text(site: tuple[Frame, ...]) -> str:
    return " <- ".join(f"{f.file.rsplit('/', 1)[-1]}:{f.line} {f.function}" for f in site) or "an unknown site"


def leaked_permits(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo]) -> list[Finding]:
    out = []
    for state in snap.primitives:
        dead = [h for h in state.holders if not h.task_alive]
        if not dead:
            continue
        prim = state.primitive
        first = dead[0]
        waiters = tuple(by_id[t] for t in state.waiting_tasks if t in by_id)
        noun = "permit" if len(dead) == 1 else "permits"
        who = f"task {first.task_id}" if first.task_id is not None else "code outside any task"
        out.append(Finding(
            kind="leaked_permit",
            title=f"{len(dead)} {noun} of {prim.kind} {_where(prim)} held by finished tasks",
            evidence=(f"{who} acquired it at {_site_text(first.site)} {first.held_seconds:.1f}s ago and finished "
                      f"without releasing it; {len(state.waiting_tasks)} tasks wait for it"
                      + (f"; value is {prim.value}" if prim.value is not None else "")),
            tasks=waiters[:MAX_TASKS_PER_FINDING], task_count=len(waiters), primitives=(prim,), site=first.site,
        ))
    return out


def exhausted(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions,
              already: set[str]) -> list[Finding]:
    out = []
    for state in snap.primitives:
        prim = state.primitive
        if prim.kind not in ("semaphore", "bounded_semaphore") or prim.value != 0 or not state.waiting_tasks:
            continue
        if prim.id in already or not state.holders:
            continue
        stuck = [h for h in state.holders if h.task_state == "waiting"]
        long_held = [h for h in state.holders if h.held_seconds >= options.held_threshold]
        if len(stuck) < len(state.holders) and not long_held:
            continue
        reason = (f"all {len(state.holders)} holders are themselves waiting" if len(stuck) == len(state.holders)
                  else f"{len(long_held)} permits held for over {options.held_threshold:g}s")
        waiters = tuple(by_id[t] for t in state.waiting_tasks if t in by_id)
        out.append(Finding(
            kind="exhausted", title=f"semaphore {_where(prim)} is exhausted",
            evidence=f"value 0 with {len(state.waiting_tasks)} waiters; {reason}",
            tasks=waiters[:MAX_TASKS_PER_FINDING], task_count=len(waiters), primitives=(prim,),
            site=state.holders[0].site,
        ))
    return out


def deadlocks(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo]) -> list[Finding]:
    """Task -> primitive it waits on -> task holding it, and task -> awaited task."""
    held_by: dict[str, list[int]] = {}
    prims: dict[str, Primitive] = {}
    for state in snap.primitives:
        prims[state.primitive.id] = state.primitive
        held_by[state.primitive.id] = [h.task_id for h in state.holders if h.task_alive and h.task_id is not None]
    edges: dict[int, tuple[int, ...]] = {}
    via: dict[tuple[int, int], str] = {}
    for task in snap.tasks.tasks:
        prim = task.wait.primitive
        targets: list[int] = []
        if prim is not None and prim.id in held_by:
            for holder in held_by[prim.id]:
                if holder != task.id:
                    targets.append(holder)
                    via[(task.id, holder)] = prim.id
        targets.extend(task.wait.tasks if task.wait.kind in ("task", "gather") else ())
        if targets:
            edges[task.id] = tuple(targets)
    out = []
    for cycle in find_cycles(edges):
        members = tuple(by_id[t] for t in cycle if t in by_id)
        hops = []
        locks: list[Primitive] = []
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            pid = via.get((a, b))
            if pid is not None:
                locks.append(prims[pid])
                hops.append(f"task {a} waits for {_where(prims[pid])} held by task {b}")
            else:
                hops.append(f"task {a} awaits task {b}")
        kind_text = "lock-order inversion" if locks else "await cycle"
        out.append(Finding(
            kind="deadlock", title=f"deadlock ({kind_text}) between tasks {', '.join(map(str, cycle))}",
            evidence="; ".join(hops), tasks=members, task_count=len(members), primitives=tuple(locks),
            site=members[0].stack if members else (),
        ))
    return out


def proven_leaks(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo]) -> list[Finding]:
    proof = snap.reachability
    if not proof.ran or not proof.complete:
        return []
    members = tuple(by_id[t] for t in proof.unreachable if t in by_id)
    out = []
    for group in group_tasks(members):
        tasks = tuple(by_id[i] for i in group.ids if i in by_id)
        what = group.wait.primitive
        on = f"{group.wait.detail or group.wait.kind}" + (f" {_where(what)}" if what is not None else "")
        out.append(Finding(
            kind="proven_leak",
            title=f"{group.count} task{'s' if group.count != 1 else ''} of {group.coro} can never be woken",
            evidence=(f"they wait on {on}, which nothing outside these tasks can reach: no module global, "
                      f"thread, loop callback, I/O callback or live task refers to it"),
            tasks=tasks[:MAX_TASKS_PER_FINDING], task_count=len(tasks),
            primitives=(what,) if what is not None else (), site=group.stack,
        ))
    return out


def suspects(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions,
             excluded: set[int]) -> list[Finding]:
    unreferenced = set(snap.reachability.unreferenced)
    idle_since = {s.primitive.id: s.idle_seconds for s in snap.primitives}
    getters = {s.primitive.id: s.primitive.getters for s in snap.primitives}
    reasons: dict[int, list[str]] = {}
    for task in snap.tasks.tasks:
        seconds = task.wait.seconds or 0.0
        if task.id in excluded or task.state != "waiting" or seconds < options.min_wait:
            continue
        if task.wait.kind in _IDLE_KINDS:
            continue
        why = []
        if task.id in unreferenced:
            why.append("nothing holds a reference to the task (fire-and-forget)")
        prim = task.wait.primitive
        if prim is not None:
            idle = idle_since.get(prim.id)
            if idle is not None and idle >= seconds:
                why.append(f"no acquire or release on {_where(prim)} since the wait began")
            if task.wait.kind == "queue_put" and not getters.get(prim.id):
                why.append("no task is waiting to get from this queue")
        if task.wait.kind == "stream_read":
            why.append(f"the peer has sent nothing for {seconds:.0f}s")
        if task.wait.kind == "executor":
            why.append(f"the executor call has run for {seconds:.0f}s")
        if why:
            reasons[task.id] = why
    members = tuple(by_id[t] for t in sorted(reasons))
    out = []
    for group in group_tasks(members):
        tasks = tuple(by_id[i] for i in group.ids if i in by_id)
        why = sorted({r for t in tasks for r in reasons[t.id]})
        longest = max((t.wait.seconds or 0.0) for t in tasks)
        out.append(Finding(
            kind="suspect",
            title=f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} of {group.coro} waiting {longest:.0f}s "
                  f"on {group.wait.detail or group.wait.kind}",
            evidence="; ".join(why) + " (still reachable: not proven)",
            tasks=tasks[:MAX_TASKS_PER_FINDING], task_count=len(tasks),
            primitives=(group.wait.primitive,) if group.wait.primitive is not None else (),
            site=group.stack, score=longest * len(why) * len(tasks),
        ))
    out.sort(key=lambda f: -f.score)
    return out


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "?"


def _stall_summary(loop: LoopInfo, cause: str, snap: SyncSnapshot, options: LeakOptions) -> WindowSummary | None:
    """The loop's ``cause`` stalls in the window when they make a verdict, else None."""
    summary = window_summary(loop, cause, window=options.stall_window, now=snap.taken_at)
    threshold = max(options.stall_threshold, 1e-9)
    if summary.longest >= threshold or summary.count >= options.stall_repeats:
        return summary
    return None


def _history_text(summary: WindowSummary) -> str:
    noun = "stall" if summary.count == 1 else "stalls"
    sites = "; ".join(f"{site.count}x at {site_text(site.frames)} (longest {site.longest:.1f}s)"
                      for site in summary.sites[:4])
    return (f"{summary.count} {noun} in the last {summary.window:.0f}s, {summary.seconds:.1f}s in all "
            f"({_pct(summary.seconds, summary.window)} of the time), longest {summary.longest:.1f}s; "
            f"by site: {sites}")


def _reasons(summary: WindowSummary) -> str:
    """What the loop thread did: the one reason in words, or each reason's count."""
    reasons = {s.reason for s in summary.stalls}
    if len(reasons) == 1:
        return REASONS.get(next(iter(reasons)), "cause not measured")
    return f"reasons: {reasons_text(summary)}"


def _figures_text(summary: WindowSummary) -> str:
    parts = []
    if summary.cpu_seconds is not None:
        parts.append(f"on CPU {_pct(summary.cpu_seconds, summary.seconds)} of the stalled time")
    if summary.runqueue_seconds is not None:
        parts.append(f"waiting for a CPU {_pct(summary.runqueue_seconds, summary.seconds)}")
    if summary.throttled_seconds:
        parts.append(f"the cgroup throttled the process {summary.throttled_seconds:.2f}s")
    if summary.others_cpu_seconds is not None and summary.others_cpu_seconds >= 0.1 * summary.seconds:
        parts.append(f"other threads ran {summary.others_cpu_seconds:.2f}s of CPU")
    return ", ".join(parts)


def loops_blocked(snap: SyncSnapshot, options: LeakOptions) -> list[Finding]:
    """Loops kept from turning by their own code, now or repeatedly in the recent window."""
    out = []
    for loop in snap.tasks.loops:
        summary = _stall_summary(loop, "blocked", snap, options)
        if summary is None:
            continue
        thread = loop.thread_name or loop.thread_id
        current = next((s for s in summary.stalls if s.ongoing), None)
        if current is not None and current.seconds >= max(options.stall_threshold, 1e-9):
            title = f"event loop {loop.id} has not turned for {current.seconds:.1f}s"
            site = loop.blocking_stack or summary.sites[0].frames
            top = site[0] if site else None
            at = f" at {top.file.rsplit('/', 1)[-1]}:{top.line} {top.function}" if top is not None else ""
            evidence = f"thread {thread} is running{at}; every task on this loop waits"
            if summary.count > 1:
                evidence += f"; {_history_text(summary)}"
        else:
            title = (f"event loop {loop.id} was blocked {summary.count} time{'s' if summary.count != 1 else ''} "
                     f"in the last {summary.window:.0f}s, longest {summary.longest:.1f}s")
            site = summary.sites[0].frames
            evidence = f"thread {thread}: {_history_text(summary)}; every task on this loop waited"
        evidence += f"; {_reasons(summary)}"
        figures = _figures_text(summary)
        out.append(Finding(kind="loop_blocked", title=title,
                           evidence=evidence + (f"; {figures}" if figures else ""), site=site,
                           score=summary.seconds))
    return out


def loops_starved(snap: SyncSnapshot, options: LeakOptions) -> list[Finding]:
    """Loops that were ready to turn but got no CPU or GIL: the machine's or another thread's doing."""
    out = []
    for loop in snap.tasks.loops:
        summary = _stall_summary(loop, "starved", snap, options)
        if summary is None:
            continue
        why = _reasons(summary)
        figures = _figures_text(summary)
        noun = "time" if summary.count == 1 else "times"
        out.append(Finding(
            kind="loop_starved",
            title=(f"event loop {loop.id} was starved {summary.count} {noun} in the last {summary.window:.0f}s, "
                   f"longest {summary.longest:.1f}s: ready to turn, not run"),
            evidence=(f"thread {loop.thread_name or loop.thread_id}: {summary.count} stalls, {summary.seconds:.1f}s "
                      f"in all ({_pct(summary.seconds, summary.window)} of the time); {why}"
                      + (f"; {figures}" if figures else "") + "; not the loop's own code: look at the machine's load, "
                      "the CPU quota or the process's other threads"),
            site=summary.sites[0].frames if summary.sites else (), score=summary.seconds,
        ))
    return out


def leak_report(snap: SyncSnapshot, options: LeakOptions = LeakOptions()) -> LeakReport:
    """Every verdict on ``snap``, in the order of ``KINDS``."""
    options.validate()
    by_id = {t.id: t for t in snap.tasks.tasks}
    permits = leaked_permits(snap, by_id)
    locks = deadlocks(snap, by_id)
    proven = proven_leaks(snap, by_id)
    explained = {t.id for f in permits + locks + proven for t in f.tasks}
    explained |= set(snap.reachability.unreachable)
    findings = (proven + permits + locks + loops_blocked(snap, options)
                + exhausted(snap, by_id, options, {p.id for f in permits for p in f.primitives})
                + suspects(snap, by_id, options, explained) + loops_starved(snap, options))
    if snap.reachability.ran:
        proof = snap.reachability
        proof_text = (f"reachability proof: {proof.blocked} blocked tasks, {proof.objects_marked} objects marked "
                      f"in {proof.seconds:.2f}s" + ("" if proof.complete else f" ({proof.note})"))
    else:
        proof_text = "reachability proof not run: no proven_leak verdicts"
    return LeakReport(snap.taken_at, snap.process, tuple(findings), proof_text, snap.notes)


def states_by_id(snap: SyncSnapshot) -> dict[str, PrimitiveState]:
    return {s.primitive.id: s for s in snap.primitives}
