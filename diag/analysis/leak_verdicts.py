"""Verdicts on a sync snapshot: which waits will never end, and why.  Pure.

``leak_report(snapshot, LeakOptions()) -> LeakReport``.  Kinds:

- ``leaked_permit``: a Lock/Semaphore permit held by a task that has finished, was
  destroyed while pending, or can never be woken (the proof);
- ``exhausted``: a semaphore at zero with waiters, whose holders are stuck themselves
  or have held it longer than ``held_threshold``; an executor whose workers are all
  busy while calls wait in its queue;
- ``deadlock``: a cycle of tasks each waiting on a primitive another one holds, a task
  waiting on a lock it holds itself, or a cycle of tasks awaiting each other;
- ``stuck_behind``: tasks queued behind one of those: every way out of their wait
  leads to a task that can never proceed (``diag.analysis.stuck_tasks``);
- ``swallowed_cancel``: a task asked to cancel that is still waiting after
  ``cancel_grace``: its code caught the ``CancelledError`` and went on;
- ``proven_leak``: blocked tasks that nothing reachable can wake (the proof);
- ``suspect``: long waits on things that are still reachable, each with a reason;
- ``loop_blocked``: an event loop its own code kept from turning: stalled now for
  ``stall_threshold``, or in the last ``stall_window`` seconds once that long,
  ``stall_repeats`` times (every recorded stall is at least 0.1 s), or twice or more with
  one stall of a fifth of ``stall_threshold``;
- ``loop_starved``: the same thresholds, for stalls in which the loop was ready to turn
  but got no CPU or GIL (a loaded machine, a CPU quota, another thread holding the GIL).

Usage::

    report = leak_report(snapshot, LeakOptions(min_wait=30))
    failed = report.fails(options.fail_on)
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Any, Mapping

from diag.analysis.loop_stalls import OWN_REASONS, REASONS, WindowSummary, reasons_text, site_text, window_summary
from diag.analysis.stuck_tasks import StuckTasks, stuck_tasks
from diag.analysis.task_groups import find_cycles, group_tasks
from diag.documents import finite_float, require, timestamp
from diag.errors import TargetError, UsageError
from diag.model.sync_snapshot import Holder, PrimitiveState, SyncSnapshot
from diag.model.task_snapshot import (
    MALFORMED, ChildProcess, ConnectionPool, DeadTask, FinishedChild, Frame, LoopInfo, Primitive, ProcessInfo, TaskInfo, Wait,
    WriteBacklog,
    check_schema,
)
from diag.wording import agree, also_named, byte_count
from diag.wording import plural as _plural

SCHEMA_NAME = "diag.leaks"
SCHEMA = f"{SCHEMA_NAME}/1"
KINDS = ("proven_leak", "leaked_permit", "deadlock", "stuck_behind", "swallowed_cancel", "orphaned", "loop_blocked",
         "lost_wakeup", "exhausted", "suspect", "loop_starved", "incomplete")
DEFAULT_FAIL_ON = frozenset({"proven_leak", "leaked_permit", "deadlock", "stuck_behind", "swallowed_cancel",
                             "orphaned", "loop_blocked", "lost_wakeup", "incomplete"})
#: Waits that are normal when long: idle consumers and periodic sleepers.
_IDLE_KINDS = frozenset({"queue_get", "sleep", "running", "ready"})
#: Tasks listed per finding; ``task_count`` still counts them all.
MAX_TASKS_PER_FINDING = 20


#: Two stalls or more, one of them at least this share of ``stall_threshold``, make a
#: verdict: a 0.27 s ``json.dumps`` every 3 s reads as stalls of 0.14-0.27 s (a call that
#: holds the GIL is timed from the watchdog's first late turn, up to a heartbeat interval
#: after it began).
REPEAT_SHARE = 0.2


@dataclass(frozen=True)
class LeakOptions:
    """``min_wait``: seconds before a reachable wait is a suspect; ``held_threshold``:
    seconds a permit may be held before an exhausted semaphore is reported;
    ``stall_threshold``: seconds a loop may go without turning; ``stall_window``: seconds
    of stall history judged; ``stall_repeats``: stalls in that window that make a verdict
    however short; ``cancel_grace``: seconds a cancelled task may go on waiting (cleaning
    up) before its cancellation counts as swallowed; ``fail_on``: kinds that make the
    check fail (exit 1)."""

    min_wait: float = 10.0
    held_threshold: float = 60.0
    stall_threshold: float = 1.0
    stall_window: float = 60.0
    stall_repeats: int = 3
    fail_on: frozenset[str] = DEFAULT_FAIL_ON
    cancel_grace: float = 2.0

    def validate(self) -> None:
        for name in ("min_wait", "held_threshold", "stall_threshold", "stall_window", "cancel_grace"):
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
                   tuple(Frame.from_dict(f) for f in d.get("site") or ()), finite_float(d.get("score") or 0.0, "score"))


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
        require(d, ("taken_at", "findings"), "diag leak report")
        try:
            return cls(timestamp(d.get("taken_at")), ProcessInfo.from_dict(d.get("process") or {}),
                       tuple(Finding.from_dict(f) for f in d.get("findings") or ()), str(d.get("proof") or ""),
                       tuple(str(n) for n in d.get("notes") or ()))
        except MALFORMED as err:
            raise TargetError(f"malformed diag leak report: {err.__class__.__name__}: {err}") from None


def _where(prim: Primitive, name: str = "") -> str:
    """``pool 0x7f..``; ``name`` is what the waiting code calls it, shown first, with the
    primitive's other names after it: ``second (also: first) 0x7f..``."""
    shown, others = prim.named_by(name)
    return f"{shown}{' ' + also_named(others) if others else ''} {prim.id}"


def _site_text(site: tuple[Frame, ...]) -> str:
    return " <- ".join(f"{f.file.rsplit('/', 1)[-1]}:{f.line} {f.function}" for f in site) or "an unknown site"


def _ago(seconds: float) -> str:
    return f"{seconds:.1f}s ago"


def _dead_by_id(snap: SyncSnapshot) -> dict[int, DeadTask]:
    return {d.id: d for d in snap.tasks.dead_tasks}


def _holder_fate(holder: Holder, dead: Mapping[int, DeadTask], unreachable: set[int], destroyed_seen: bool) -> str:
    """What became of a holder that will never release: finished, died, destroyed, or
    unreachable (the proof: the GC will destroy it, still holding the permit)."""
    if holder.task_alive and holder.skipped_release and holder.task_id not in unreachable:
        lines = ", ".join(str(n) for n in holder.skipped_release)
        function = holder.site[0].function if holder.site else "the acquiring function"
        which = f"line{'s' if len(holder.skipped_release) > 1 else ''} {lines}"
        return (f"is alive, but {function}, which took it, has ended without releasing it: that function "
                f"releases it itself on every path by which it returns ({which}), so it left by an exception "
                f"past its release (a timeout's cancel, an error), and no code the task still runs releases it")
    if holder.task_alive:
        return "can never be woken (proven leak): nothing reachable can end its wait, so it will never release it"
    record = dead.get(holder.task_id) if holder.task_id is not None else None
    if record is not None and record.how == "destroyed_pending":
        where = f" (it was waiting at {_site_text(record.stack[:3])})" if record.stack else ""
        return (f"was destroyed by the GC while still waiting {_ago(record.ended_seconds)}{where}: it never "
                "finished, and never released it")
    if record is not None and record.exception:
        return f"died with {record.exception} {_ago(record.ended_seconds)} without releasing it"
    if not destroyed_seen:
        return ("is gone without releasing it: it finished, or the GC destroyed it while it was still waiting "
                "(this loop does not report which)")
    return "finished without releasing it"


def leaked_permits(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], stuck: StuckTasks | None = None) -> list[Finding]:
    """Permits that will never be released: their holders are gone, or proven leaked.
    Every culprit is named with its acquire site; the waiters are listed apart."""
    unreachable = set(snap.reachability.unreachable) if snap.reachability.complete else set()
    dead_log = _dead_by_id(snap)
    touched: dict[str, list[DeadTask]] | None = None
    out = []
    for state in snap.primitives:
        # A holder the proof found unreachable counts when it keeps out a task that is not
        # itself unreachable (the GC would destroy it holding the permit); between proven
        # tasks only, the proof's own finding says it all.
        outsiders = any(t not in unreachable for t in state.waiting_tasks)
        # A holder that ended without releasing has lost its permit, unless the program
        # hands permits on (acquired by one task, released by another or by a timer): then
        # its permit may yet come back, and only the proof can tell.
        handed_on = state.handoff_seconds is not None
        culprits = [h for h in state.holders if ((not h.task_alive or h.skipped_release) and not handed_on)
                    or (outsiders and h.task_id is not None and h.task_id in unreachable)]
        if not culprits:
            continue
        prim = state.primitive
        first = culprits[0]
        waiters = tuple(by_id[t] for t in state.waiting_tasks if t in by_id)
        parts = []
        for holder in culprits[:5]:
            who = f"task {holder.task_id}" if holder.task_id is not None else "code outside any task"
            name = f" {holder.task_name!r}" if holder.task_name else ""
            parts.append(f"{who}{name} acquired it at {_site_text(holder.site)} {_ago(holder.held_seconds)} and "
                         f"{_holder_fate(holder, dead_log, unreachable, snap.tasks.destroyed_seen)}")
        if len(culprits) > 5:
            parts.append(f"and {len(culprits) - 5} more")
        if touched is None:
            touched = _touched_index(snap)
        others = [d for d in touched.get(prim.id, ()) if d.id not in {h.task_id for h in culprits}]
        if others:  # a release tried elsewhere, and refused, say
            parts.append(_dead_text(others, "it"))
        waiting = (f"{_plural(len(state.waiting_tasks), 'task')} "
                   f"{agree(len(state.waiting_tasks), 'waits', 'wait')} for it")
        if stuck is not None and waiters and all(w.id in stuck for w in waiters):
            waiting += ", and no other holder can release it: they are stuck for good"
        out.append(Finding(
            kind="leaked_permit",
            title=f"{_plural(len(culprits), 'permit')} of {prim.kind} {_where(prim)} will never be released",
            evidence="; ".join(parts) + f"; {waiting}" + (f"; value is {prim.value}" if prim.value is not None else ""),
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
        if prim.id in already or not state.holders or state.handoff_seconds is not None:
            continue  # permits handed on: who releases them is not who holds them
        stuck = [h for h in state.holders if h.task_state == "waiting"]
        long_held = [h for h in state.holders if h.held_seconds >= options.held_threshold]
        if len(stuck) < len(state.holders) and not long_held:
            continue
        reason = (("its only holder is itself waiting" if len(state.holders) == 1
                   else f"all {len(state.holders)} holders are themselves waiting") if len(stuck) == len(state.holders)
                  else f"{_plural(len(long_held), 'permit')} held for over {options.held_threshold:g}s")
        waiters = tuple(by_id[t] for t in state.waiting_tasks if t in by_id)
        out.append(Finding(
            kind="exhausted", title=f"semaphore {_where(prim)} is exhausted",
            evidence=f"value 0 with {_plural(len(state.waiting_tasks), 'waiter')}; {reason}",
            tasks=waiters[:MAX_TASKS_PER_FINDING], task_count=len(waiters), primitives=(prim,),
            site=state.holders[0].site,
        ))
    return out


def executors_exhausted(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions,
                        explained: set[int] | frozenset[int] = frozenset()) -> list[Finding]:
    """Thread pools whose every worker is busy while calls wait in their queue: the tasks
    awaiting those calls wait for a worker, not for their own work.  Calls a sound verdict
    already explains (a pool deadlocked on itself) are left to it."""
    out = []
    threads = {t.id: t for t in snap.tasks.threads}
    running = {t.runs_future for t in snap.tasks.threads if t.runs_future}
    for ex in snap.tasks.executors:
        if not ex.queued or ex.busy < max(1, ex.max_workers) or ex.busy < len(ex.threads):
            continue
        mine = set(ex.queued_futures)
        queued = [t for t in by_id.values() if t.wait.kind == "executor" and t.wait.future_id
                  and t.wait.future_id not in running and (not mine or t.wait.future_id in mine)
                  and (t.wait.seconds or 0.0) >= options.min_wait]
        if not queued or all(t.id in explained for t in queued):
            continue
        longest = max(t.wait.seconds or 0.0 for t in queued)
        sites = []
        for ident in ex.threads[:3]:
            thread = threads.get(ident)
            top = _user_frame(thread.stack) if thread is not None else None
            if thread is not None and top is not None:
                sites.append(f"{thread.name} at {top.file.rsplit('/', 1)[-1]}:{top.line} {top.function}")
        out.append(Finding(
            kind="exhausted", title=f"executor {ex.name} is exhausted",
            evidence=(("its only worker is busy" if ex.max_workers == 1 else f"all {ex.max_workers} workers are busy")
                      + f" and {_plural(ex.queued, 'call')} {agree(ex.queued, 'waits', 'wait')} in its queue, "
                      f"the oldest for {longest:.0f}s" + (f"; workers are at: {'; '.join(sites)}" if sites else "")),
            tasks=tuple(queued[:MAX_TASKS_PER_FINDING]), task_count=len(queued),
            site=queued[0].stack if queued else (),
        ))
    return out


def _user_frame(stack: tuple[Frame, ...]) -> Frame | None:
    """The innermost frame of a thread's stack that is not the thread pool's machinery."""
    for frame in stack:
        if "/concurrent/futures/" not in frame.file and "/threading.py" not in frame.file:
            return frame
    return stack[0] if stack else None


def deadlocks(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], stuck: StuckTasks | None = None) -> list[Finding]:
    """Task -> primitive it waits on -> task holding it, and task -> awaited task, among
    the tasks that can never proceed (a cycle through a semaphore whose other holder is
    still running is no deadlock); and a task waiting on a lock it holds itself."""
    if stuck is None:
        stuck = stuck_tasks(snap)
    held_by: dict[str, list[int]] = {}
    prims: dict[str, Primitive] = {}
    for state in snap.primitives:
        prims[state.primitive.id] = state.primitive
        held_by[state.primitive.id] = [h.task_id for h in state.holders if h.task_alive and h.task_id is not None]
    edges: dict[int, tuple[int, ...]] = {}
    via: dict[tuple[int, int], str] = {}
    out = []
    for task in snap.tasks.tasks:
        if task.id not in stuck:
            continue
        prim = task.wait.primitive
        targets: list[int] = []
        if prim is not None and prim.id in held_by:
            for holder in held_by[prim.id]:
                if holder != task.id and holder in stuck:
                    targets.append(holder)
                    via[(task.id, holder)] = prim.id
        targets.extend(t for t in (task.wait.tasks if task.wait.kind in ("task", "gather") else ()) if t in stuck)
        if targets:
            edges[task.id] = tuple(targets)
        why = stuck.reasons.get(task.id)
        if why is not None and why.kind == "self" and prim is not None:
            noun = "lock" if prim.kind == "lock" else prim.kind
            out.append(Finding(
                kind="deadlock", title=f"deadlock: task {task.id} waits for a {noun} it holds itself",
                evidence=(f"task {task.id} {task.name!r} holds {_where(prim, task.wait.frame_label)} and waits to acquire it again; "
                          f"asyncio's {prim.kind.replace('_', ' ')} is not reentrant, so the wait can never end"),
                tasks=(task,), task_count=1, primitives=(prim,), site=task.stack,
            ))
    out.extend(_pool_deadlocks(snap, by_id, stuck))
    for cycle in find_cycles(edges):
        members = tuple(by_id[t] for t in cycle if t in by_id)
        hops = []
        locks: list[Primitive] = []
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            pid = via.get((a, b))
            if pid is not None:
                locks.append(prims[pid])
                waiter = by_id.get(a)
                name = waiter.wait.frame_label if waiter is not None else ""
                hops.append(f"task {a} waits for {_where(prims[pid], name)} held by task {b}")
            else:
                hops.append(f"task {a} awaits task {b}")
        kind_text = "lock-order inversion" if locks else "await cycle"
        out.append(Finding(
            kind="deadlock", title=f"deadlock ({kind_text}) between tasks {', '.join(map(str, cycle))}",
            evidence="; ".join(hops), tasks=members, task_count=len(members), primitives=tuple(locks),
            site=members[0].stack if members else (),
        ))
    return out


def _pool_deadlocks(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], stuck: StuckTasks) -> list[Finding]:
    """Thread pools whose every worker blocks, with no timeout, on a task whose own call
    waits in the same pool's queue: no worker is free to run it, and none will be."""
    threads = {t.id: t for t in snap.tasks.threads}
    out = []
    for ex in snap.tasks.executors:  # matched by its queued calls, not its name (names may repeat)
        mine = set(ex.queued_futures)
        members = sorted((by_id[t] for t, why in stuck.reasons.items()
                          if why.kind == "pool" and t in by_id and by_id[t].wait.future_id in mine), key=lambda t: t.id)
        workers = [threads[i] for i in ex.threads if i in threads]
        waited = [w.waits_task for w in workers]
        if not members or not waited or not all(
                t is not None and t in by_id and (r := stuck.reasons.get(t)) is not None and r.kind == "pool"
                and by_id[t].wait.future_id in mine for t in waited):
            continue  # its workers wait on tasks stuck elsewhere: stuck_behind tells that chain
        hops = []
        for w in workers[:4]:
            task = by_id.get(w.waits_task) if w.waits_task is not None else None
            top = _user_frame(w.stack)
            at = f" (at {top.file.rsplit('/', 1)[-1]}:{top.line} {top.function})" if top is not None else ""
            hops.append(f"thread {w.name}{at} waits in Future.result() for task {w.waits_task}"
                        + (f" ({task.coro})" if task is not None else ""))
        n = len(workers)
        out.append(Finding(
            kind="deadlock",
            title=f"deadlock: every thread of executor {ex.name} waits for a call queued behind it",
            evidence=(f"{'its only worker blocks' if n == 1 else f'all {n} workers block'} with no timeout on tasks "
                      f"(run_coroutine_threadsafe(...).result()) whose own run_in_executor calls wait in the queue "
                      f"of this same executor: {'; '.join(hops)}; {_plural(ex.queued, 'call')} "
                      f"{agree(ex.queued, 'waits', 'wait')} for a free worker, and none will be free"),
            tasks=tuple(members[:MAX_TASKS_PER_FINDING]), task_count=len(members),
            site=members[0].stack,
        ))
    return out


def stuck_behind(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], stuck: StuckTasks,
                 explained: set[int]) -> list[Finding]:
    """Tasks that can never proceed because what they wait for is held by, or is, a task
    that can never proceed; one finding per thing they wait on, naming the chain."""
    states = {s.primitive.id: s for s in snap.primitives}
    groups: dict[tuple[str, str, tuple[int | None, ...]], list[TaskInfo]] = {}
    for task_id, why in stuck.reasons.items():
        task = by_id.get(task_id)
        if task is None or task_id in explained or why.kind not in ("holder", "awaits", "thread", "pool"):
            continue
        groups.setdefault((why.kind, why.on, why.holders if why.kind == "holder" else why.tasks), []).append(task)
    out = []
    for (kind, on, others), members in groups.items():
        members.sort(key=lambda t: t.id)
        first = members[0]
        if kind in ("thread", "pool"):
            chain = "; ".join(_chain_text(t, True, by_id, stuck) for t in others[:4])
            if kind == "thread":
                evidence = (f"they wait for their call running in thread {on}, which blocks with no timeout "
                            f"(Future.result()) on a task that can never finish: {chain}")
            else:
                evidence = (f"their calls wait in the queue of executor {on}, whose every worker blocks with no "
                            f"timeout on a task that can never finish: {chain}")
            prims: tuple[Primitive, ...] = ()
        elif on:
            state = states.get(on)
            prim = state.primitive if state is not None else first.wait.primitive
            holders = [h for h in state.holders] if state is not None else []
            chain = "; ".join(_chain_text(h.task_id, h.task_alive, by_id, stuck) for h in holders[:4])
            what = f"{prim.kind} {_where(prim, first.wait.frame_label)}" if prim is not None else "a primitive"
            evidence = f"they wait for {what}, whose every holder can never release it: {chain}"
            prims = (prim,) if prim is not None else ()
        else:
            chain = "; ".join(_chain_text(t, True, by_id, stuck) for t in others[:4])
            evidence = f"they await {_plural(len(others), 'task')} that can never finish: {chain}"
            prims = ()
        out.append(Finding(
            kind="stuck_behind",
            title=f"{_plural(len(members), 'task')} of {first.coro} can never proceed",
            evidence=evidence, tasks=tuple(members[:MAX_TASKS_PER_FINDING]), task_count=len(members),
            primitives=prims, site=first.stack,
        ))
    return out


def _chain_text(task_id: int | None, alive: bool, by_id: Mapping[int, TaskInfo], stuck: StuckTasks) -> str:
    if task_id is None:
        return "code outside any task"
    if not alive:
        return f"task {task_id} is gone without releasing it"
    why = stuck.reasons.get(task_id)
    task = by_id.get(task_id)
    name = f"task {task_id}" + (f" ({task.coro})" if task is not None else "")
    if why is None:
        return name
    if why.kind == "proven":
        return f"{name} can never be woken (proven leak)"
    if why.kind == "self":
        return f"{name} waits on a lock it holds itself (deadlock)"
    if why.kind == "holder":
        prim = task.wait.primitive if task is not None else None
        what = _where(prim, task.wait.frame_label if task is not None else "") if prim is not None else "a primitive"
        return f"{name} waits for {what}, held by tasks that can never proceed"
    if why.kind == "thread":
        return f"{name} waits for its call in thread {why.on}, which blocks on a task that can never finish"
    if why.kind == "pool":
        return f"{name} waits for a free worker of executor {why.on}, whose every worker blocks on such a task"
    return f"{name} awaits tasks that can never finish"


def swallowed_cancels(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions) -> list[Finding]:
    """Tasks asked to cancel (``cancelling()`` above 0) and still waiting past ``cancel_grace``:
    their code caught the ``CancelledError`` and went on.  One cleaning up under a timeout
    (inside the block handling the cancel) ends on its own; one past that block but in a
    wait with an end (a poll with a timeout) is given ``min_wait`` too before it
    counts, then it does: the end of that wait is not the end of the task.  Whoever
    awaits them (``await task``, ``gather``, a ``TaskGroup`` exit, ``wait_for``) waits too."""
    awaited_by: dict[int, list[TaskInfo]] = {}
    for task in snap.tasks.tasks:
        if task.wait.kind in ("task", "gather"):
            for t in task.wait.tasks:
                awaited_by.setdefault(t, []).append(task)
    out = []
    for task in snap.tasks.tasks:
        seconds = task.cancel_seconds
        # A task still inside the except/finally block handling its CancelledError is
        # cleaning up (a graceful drain) and may yet re-raise: judged after --min-wait.
        grace = max(options.cancel_grace, options.min_wait) if task.handling_cancel else options.cancel_grace
        if seconds is None or seconds < grace or task.state != "waiting":
            continue
        timed = task.wait.deadline_known and task.wait.deadline is not None
        if timed and task.handling_cancel:
            continue  # cleaning up under a timeout: it ends on its own
        if timed and seconds < max(options.cancel_grace, options.min_wait):
            continue  # past its except block, but in a wait with an end: may be a cleanup yet, for a while
        waiting = awaited_by.get(task.id, [])
        who = ""
        if waiting:
            names = ", ".join(f"task {w.id} ({w.wait.detail or w.wait.kind} in {w.coro})" for w in waiting[:4])
            who = f"; {_plural(len(waiting), 'task')} {agree(len(waiting), 'waits', 'wait')} for it to end: {names}"
        if task.handling_cancel:
            title = f"task {task.id} {task.name!r} ({task.coro}) has not finished handling its cancellation"
            how = (f"it was asked to cancel at least {seconds:.1f}s ago (cancelling() > 0) and is still in the except "
                   f"or finally block handling the CancelledError, waiting on {task.wait.detail or task.wait.kind} "
                   f"with no timeout: a cleanup that has not ended in {seconds:.0f}s, and nothing ends it, so the "
                   f"cancel has not completed")
        else:
            title = f"task {task.id} {task.name!r} ({task.coro}) swallowed its cancellation"
            how = (f"it was asked to cancel at least {seconds:.1f}s ago (cancelling() > 0) and is still running, "
                   f"now waiting on {task.wait.detail or task.wait.kind}: its code caught CancelledError and "
                   f"carried on instead of re-raising it (or calling uncancel())")
            if timed:
                how += ("; that wait has an end, but the task is past any except or finally block handling the "
                        "cancel: it goes on with its work (a CancelledError turned into another exception, "
                        "and that one caught?)")
        out.append(Finding(
            kind="swallowed_cancel",
            title=title,
            evidence=f"{how}; where the cancel came from is not recorded{who}",
            tasks=(task,) + tuple(waiting[:MAX_TASKS_PER_FINDING - 1]), task_count=1 + len(waiting),
            site=task.stack,
        ))
    # a task that waits for one of these to end is told in its finding, not again on its own
    told = {t.id for f in out for t in f.tasks[1:]}
    return [f for f in out if f.tasks[0].id not in told]


def proven_leaks(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], told: frozenset[int] | set[int] = frozenset()) -> list[Finding]:
    """Blocked tasks the proof found unreachable, but for those a deadlock already tells, and
    those a timer will wake all the same (a ``wait_for`` or ``asyncio.timeout`` around the
    wait, or around a wait on them that cancels them when it expires)."""
    proof = snap.reachability
    if not proof.ran or not proof.complete:
        return []
    timed = _ended_by_awaiters(snap.tasks.tasks)
    members = tuple(by_id[t] for t in proof.unreachable
                    if t in by_id and t not in told and t not in timed and not _has_deadline(by_id[t]))
    out = []
    for group in group_tasks(members):
        tasks = tuple(by_id[i] for i in group.ids if i in by_id)
        what = group.wait.primitive
        on = f"{group.wait.detail or group.wait.kind}" + (f" {_where(what, group.wait.frame_label)}" if what is not None else "")
        out.append(Finding(
            kind="proven_leak",
            title=f"{_plural(group.count, 'task')} of {group.coro} can never be woken",
            evidence=(f"they wait on {on}, which nothing outside these tasks can reach: no module global, "
                      f"thread, loop callback, I/O callback or live task refers to it"),
            tasks=tasks[:MAX_TASKS_PER_FINDING], task_count=len(tasks),
            primitives=(what,) if what is not None else (), site=group.stack,
        ))
    return out


#: Files of the standard library and installed packages: a library awaiting its own
#: future (a server's keep-alive, ``serve_forever``) is its business, not a suspect.
_LIBRARY_RX = re.compile(r".*/(?:site-packages|dist-packages)/|.*/lib/python3\.\d+/")


def _touched_index(snap: SyncSnapshot) -> dict[str, list[DeadTask]]:
    """Primitive or future id -> the dead tasks whose last frames referred to it."""
    out: dict[str, list[DeadTask]] = {}
    for dead in snap.tasks.dead_tasks:
        for obj in dead.touched:
            out.setdefault(obj, []).append(dead)
    return out


def _dead_text(deads: list[DeadTask], what: str) -> str:
    dead = deads[-1]
    how = (f"was destroyed while pending {_ago(dead.ended_seconds)}" if dead.how == "destroyed_pending"
           else f"died {_ago(dead.ended_seconds)} with {dead.exception}")
    at = f" at {dead.stack[0].file.rsplit('/', 1)[-1]}:{dead.stack[0].line}" if dead.stack else ""
    if dead.how == "thread_exception":
        others = sum(1 for d in deads[:-1] if d.how == "thread_exception")
        more = f" ({_plural(others, 'more dead thread')} used it too)" if others else ""
        return f"the thread that used {what}, {dead.name!r} running {dead.coro}, {how}{at}{more}"
    if dead.how == "callback_exception":
        others = sum(1 for d in deads[:-1] if d.how == "callback_exception")
        more = f" (and {_plural(others, 'earlier time')})" if others else ""
        return (f"the loop's callback {dead.coro}, which used {what}, raised {dead.exception} "
                f"{_ago(dead.ended_seconds)}{at}{more}: the loop logged it and went on, and the callback never "
                f"got to what it was to do")
    more = f" ({_plural(len(deads) - 1, 'more dead task')} used it too)" if len(deads) > 1 else ""
    who = f" (task {dead.id})" if dead.id > 0 else ""
    if dead.coro in _GENERATOR_FINALIZERS:
        who += (", the loop's closing of an async generator dropped without aclose(), run in a task of its "
                "own: code after its yield ran there, not in the task that started it")
    return f"the task that used {what}, {dead.coro}{who}, {how}{at}{more}"


#: The coroutine of the task a loop runs to close an async generator the program dropped
#: (``loop._asyncgen_finalizer_hook``): ``aclose()``'s awaitable.
_GENERATOR_FINALIZERS = frozenset({"async_generator_athrow"})


def _dead_counterpart(task: TaskInfo, touched: Mapping[str, list[DeadTask]], name: str = "") -> str:
    """Names the dead task or thread that used what ``task`` waits on, or the object that
    keeps it (``Device.pending``: the thread reading for that Device died)."""
    prim = task.wait.primitive
    target = task.wait.target
    if target and target in touched:
        what = (("" if prim.label in ("", prim.kind) else f"{prim.kind} ") + _where(prim, name) if prim is not None
                else "the future it awaits")
        return _dead_text(touched[target], what)
    for owner_id in task.wait.owner_ids:
        if owner_id in touched:
            keeper = task.wait.owner.split(", ", 1)[0] or "its keeper"
            what = f"the object that keeps {'it' if prim is None else _where(prim, name)} ({keeper}, {owner_id})"
            return _dead_text(touched[owner_id], what)
    return ""


def _executor_text(task: TaskInfo, threads: Mapping[str, Any], by_id: Mapping[int, TaskInfo] | None = None) -> str:
    thread = threads.get(task.wait.future_id)
    seconds = task.wait.seconds or 0.0
    if task.wait.remote_loop:
        where = f"loop {task.wait.remote_loop}"
        remote = (by_id or {}).get(task.wait.remote_task) if task.wait.remote_task is not None else None
        if task.wait.remote_task is None:
            return f"the coroutine it handed {where} (run_coroutine_threadsafe) has not started there in {seconds:.0f}s"
        if remote is None:
            return f"the coroutine it handed {where} (run_coroutine_threadsafe) runs there as task {task.wait.remote_task}"
        now = f"waiting on {_wait_text(remote)}" if remote.state == "waiting" else f"{remote.state} now"
        return (f"the coroutine it handed {where} (run_coroutine_threadsafe) runs there as task {remote.id} "
                f"({remote.coro}), {now}")
    if thread is None:
        return f"the executor call has waited {seconds:.0f}s (queued, or its worker is not visible)"
    top = _user_frame(thread.stack)
    at = f", now at {top.file.rsplit('/', 1)[-1]}:{top.line} {top.function}" if top is not None else ""
    return f"the executor call has run for {seconds:.0f}s in thread {thread.name}{at}"


def _wait_text(task: TaskInfo) -> str:
    wait = task.wait
    what = wait.detail or wait.kind
    if wait.primitive is not None:
        what += f" {_where(wait.primitive)}"
    return f"{what} for {wait.seconds or 0.0:.0f}s"


def _acquiring_call_returned(holder: Holder, info: TaskInfo) -> str:
    """``the call that acquired it (Pool.send)`` when the function that took a permit is no
    longer on its holder's stack: an acquire whose call ended by an exception (a timeout
    that fired as the acquire completed, say) and left the release to nobody.  Released by
    design elsewhere (``connect()`` acquires, ``close()`` releases) reads the same, so this
    is evidence, never a verdict.  Empty when the stack is elided or the site unknown."""
    if not holder.site or not info.stack or any(f.file == "<elided>" for f in info.stack):
        return ""
    site = holder.site[0]
    if any(f.file == site.file and f.function == site.function for f in info.stack):
        return ""
    return f"the call that acquired it ({site.function})"


def _held_by_waiting(holders: tuple[Holder, ...], by_id: Mapping[int, TaskInfo], waiter: int,
                     min_wait: float) -> str:
    """Who holds the primitive a task waits for, when the holder is itself waiting, as
    long as a wait must be to count (``min_wait``): the wait the queue behind it depends
    on (``held by task 5 ... which waits on StreamReader.readline for 30s``).  A holder
    waiting a moment on its work (a response on its way) is a busy pool, not a stuck one."""
    parts = []
    for holder in holders:
        info = by_id.get(holder.task_id) if holder.task_id is not None else None
        if info is None or info.id == waiter or not holder.task_alive or info.state != "waiting":
            continue
        if info.wait.seconds is not None and info.wait.seconds < min_wait:
            continue
        name = f" {info.name!r}" if info.name else ""
        returned = _acquiring_call_returned(holder, info)
        parts.append(f"task {info.id}{name} (acquired at {_site_text(holder.site[:1])} "
                     f"{_ago(holder.held_seconds)}), which waits on {_wait_text(info)}"
                     + (f"; {returned} has returned and the permit is still held: nothing on "
                        f"the holder's stack is in the code that took it" if returned else ""))
        if len(parts) == 3:
            break
    if not parts:
        return ""
    more = len([h for h in holders if h.task_alive]) - len(parts)
    return "held by " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


#: Kernel wait channels of a process blocked writing to a full pipe (asyncio's loop gives a
#: child pipes) or a full socket (uvloop gives it a socketpair), and reading an empty one.
_WRITE_WCHANS = ("pipe_write", "sock_alloc_send", "unix_stream_sendmsg")
_READ_WCHANS = ("pipe_read", "unix_stream_read", "unix_stream_recvmsg")


def _child_evidence(child: ChildProcess) -> list[str]:
    """Why a child that ``Process.wait()`` waits for will not exit: it is blocked on a pipe
    only the waiting program could serve."""
    name = f"child process {child.pid}" + (f" ({child.command})" if child.command else "")
    if child.state == "Z":
        return []  # it has exited; the wait ends as soon as the loop reaps it
    where = f" (in {child.wchan})" if child.wchan else ""
    paused = [p for p in child.outputs if p.paused]
    if paused and (not child.wchan or any(w in child.wchan for w in _WRITE_WCHANS)):
        pipe = paused[0]
        return [f"{name} is blocked writing to its {pipe.name} pipe{where}: the parent stopped reading it, "
                f"{pipe.buffered} bytes wait unread in the buffer, and this task waits for the child to exit "
                f"instead of reading: wait() with {pipe.name}=PIPE deadlocks once the pipe fills (read the "
                f"output while waiting: communicate())"]
    if child.stdin_open and any(w in child.wchan for w in _READ_WCHANS):
        return [f"{name} is blocked reading its stdin{where}, which the parent has not closed, while this task "
                f"waits for it to exit (close stdin, or use communicate())"]
    return []


def child_deadlocks(snap: SyncSnapshot, options: LeakOptions, explained: set[int]) -> list[Finding]:
    """A task in ``Process.wait()`` with no timeout, for a child blocked writing to a pipe
    whose reading the parent paused because nothing reads it, when no other task can read
    it either (``Wait.users`` known and empty: none refers to the pipe's reader, or to the
    process in code still to run that reaches for it): the child exits only once the
    parent reads, the parent reads only once the child exits.  Judged after ``min_wait``,
    and only where the kernel says where the child sleeps."""
    out = []
    for task in snap.tasks.tasks:
        child = task.wait.child
        if (child is None or task.id in explained or task.state != "waiting" or child.state == "Z"
                or (task.wait.seconds or 0.0) < options.min_wait or _has_deadline(task)
                or not task.wait.deadline_known or not any(w in child.wchan for w in _WRITE_WCHANS)
                or task.wait.users != ()):
            continue
        if not any(p.paused for p in child.outputs):
            continue
        out.append(Finding(
            kind="deadlock",
            title=f"task {task.id} {task.name!r} ({task.coro}) and its child process {child.pid} wait on each other",
            evidence="; ".join(_child_evidence(child) + [
                "no other task refers to that pipe, or to the process in code still to run that reads it: nothing "
                "else will read it", "nothing can end the wait on its own: no timeout or timer covers it"]),
            tasks=(task,), task_count=1, site=task.stack,
        ))
    return out


def _pool_evidence(pool: ConnectionPool) -> list[str]:
    """Why a wait for a free connection of a client pool may never end: every connection
    is in use, and some are held by responses that no task is reading, which keep their
    connection until their body is read to the end or they are released."""
    limits = [n for n in (pool.limit, pool.limit_per_host) if n]
    if not limits or pool.in_use < min(limits):
        return []
    unread = [lease for lease in pool.leases if lease.holder and not lease.reading]
    if not unread:
        return []  # each connection serves a request in flight or a body being read: busy, not lost
    holder = unread[0].holder
    requests = sorted({lease.request for lease in unread if lease.request})
    shown = ", ".join(requests[:3]) + (", ..." if len(requests) > 3 else "")
    statuses = sorted({lease.status for lease in unread if lease.status})
    return [f"every connection of {pool.kind} {pool.id} is in use ({pool.in_use}, limit {min(limits)}) and "
            f"{len(unread)} {agree(len(unread), 'is', 'are')} held by {_plural(len(unread), holder)} that no task reads "
            f"or releases" + (f" ({shown}" + (f", status {', '.join(map(str, statuses))}" if statuses else "") + ")"
                              if shown else "")
            + f": a response keeps its connection until its body is read to the end or it is released "
              f"(async with, release()); {_plural(pool.waiting, 'request')} {agree(pool.waiting, 'waits', 'wait')} "
              f"for one"]


def _queue_consumers(tasks: tuple[TaskInfo, ...]) -> dict[str, tuple[tuple[TaskInfo, ...], bool]]:
    """Queue id -> (the tasks waiting in its ``get()``, whether a task of their coroutine
    is elsewhere: at work on an item), in one pass over the tasks."""
    getters: dict[str, list[TaskInfo]] = {}
    for t in tasks:
        if t.wait.kind == "queue_get" and t.wait.primitive is not None:
            getters.setdefault(t.wait.primitive.id, []).append(t)
    by_coro: dict[str, int] = {}
    for t in tasks:
        by_coro[t.coro] = by_coro.get(t.coro, 0) + t.count
    out = {}
    for queue_id, waiting in getters.items():
        idle: dict[str, int] = {}
        for t in waiting:
            idle[t.coro] = idle.get(t.coro, 0) + t.count
        out[queue_id] = (tuple(waiting), any(by_coro[c] > n for c, n in idle.items()))
    return out


def _join_evidence(queue: Primitive, consumers: tuple[tuple[TaskInfo, ...], bool]) -> list[str]:
    """Why a ``Queue.join()`` may never return: items taken by ``get()`` and never marked
    done, while every task of the consumers' kind sits idle in ``get()`` (none of them is
    working on an item, so no ``task_done()`` is coming)."""
    if queue.kind != "queue" or queue.unfinished is None or queue.size is None:
        return []
    taken = queue.unfinished - queue.size
    if queue.size or taken <= 0:
        return []  # items still queued: join has work to wait for
    getters, busy = consumers
    if busy:
        return []  # a consumer is at work: its task_done() may still come
    kinds = sorted({t.coro for t in getters})
    count = sum(t.count for t in getters)
    text = (f"{_plural(taken, 'item')} of {_where(queue)} {'was' if taken == 1 else 'were'} taken by get() and "
            f"never marked done: join() returns only after a task_done() for each")
    if getters:
        text += (f"; every consumer ({_plural(count, 'task')} of {', '.join(kinds)}) is idle in "
                 f"get(), so none is working on one: a task_done() was skipped (an exception path?)")
    return [text]


def _lost_items_text(queue: str, lost: tuple[str, str, int, int]) -> tuple[str, bool]:
    """What the keeper of an empty queue keeps besides, out of the queue and held by
    nothing else (``PrimitiveState.lost``); True when that is every one of them: no
    ``put()`` can come from a task that holds one."""
    where, cls, kept, unheld = lost
    if unheld == kept:
        every = "the one" if kept == 1 else f"all {kept}"
        return (f"{queue} is empty, and {every} {cls} its keeper keeps in {where} {'is' if kept == 1 else 'are'} out of "
                f"it with nothing else referring to {'it' if kept == 1 else 'any of them'}: taken with get() and never "
                f"put back, so no task holding one will put it back"), True
    return (f"{queue} is empty, and {unheld} of the {kept} {cls} its keeper keeps in {where} "
            f"{'is' if unheld == 1 else 'are'} out of it with nothing else referring to "
            f"{'it' if unheld == 1 else 'them'}: taken with get() and never put back"), False


def _awaits_response(task: TaskInfo) -> bool:
    """A client request waiting for its answer's head: aiohttp's ``ClientResponse.start``
    near the top of the stack (the body, a websocket's next message, are other waits)."""
    return any(f.function == "ClientResponse.start" and "aiohttp" in f.file for f in task.stack[:4])


def _idle_by_design(task: TaskInfo) -> bool:
    """A worker waiting for work: on ``Queue.get``, asleep, the server's end of a stream
    waiting for a client's next request, or ``Condition.wait_for`` (which re-checks its
    predicate under the lock, so it cannot miss a notify: a bare ``Condition.wait`` can)."""
    wait = task.wait
    if wait.kind in _IDLE_KINDS or wait.stream_side == "server":
        return True
    if wait.kind == "stream_read" and wait.traffic is not None and wait.traffic.answered:
        return True  # a client's reader with nothing asked and unanswered: waits for what the peer pushes
    return wait.kind == "condition" and any(f.function.endswith("Condition.wait_for") for f in task.stack)


#: Waits a task cannot leave by itself: on another task of this process, with no deadline.
#: A future may be an I/O operation's, a stream read waits for a peer: those may end.
_DORMANT_KINDS = frozenset({"semaphore", "lock", "condition", "event", "queue_get", "queue_put", "task", "gather"})


def _relay(task: TaskInfo | None) -> bool:
    """A task waiting for work (``Wait.relay``) that nothing outside the tasks can hand it."""
    return (task is not None and task.wait.relay and task.wait.unreached and task.wait.users is not None
            and task.state == "waiting" and not task.main and not _has_deadline(task))


def _may_act(task: TaskInfo | None, stuck: StuckTasks, left: set[int]) -> bool:
    """The task may yet run on its own: it is at work, its wait has an end, it waits for
    something from outside (I/O, a thread), or for a lock or a task that is not stuck
    (``stuck_tasks``) nor among the waits judged orphaned (``left``); unknown tasks (made
    since) may."""
    if task is None or task.state != "waiting" or _has_deadline(task):
        return True
    kind = task.wait.kind
    if kind not in _DORMANT_KINDS:
        return True
    if kind in ("task", "gather") and task.wait.tasks:
        waited = set(task.wait.tasks) - {f.id for f in task.wait.finished}  # (those ended are not waited for)
        if waited and waited <= left:
            return False
    if kind in ("lock", "semaphore", "task", "gather"):
        return task.id not in stuck.reasons
    # on an event, a condition or a queue: set or fed by whoever; the main task waits so for
    # the program's lifetime (its stop event), any other may be a dispatcher woken by work
    return not task.main


def _dead_users(task: TaskInfo, touched: Mapping[str, list[DeadTask]]) -> list[DeadTask]:
    """The dead that used what ``task`` waits on, else the nearest keeper of it (as
    ``_dead_counterpart`` names them)."""
    target = task.wait.target
    if target and target in touched:
        return touched[target]
    return next((touched[o] for o in task.wait.owner_ids if o in touched), [])


def _replaced(task: TaskInfo, deads: list[DeadTask], running: Mapping[str, list[TaskInfo]]) -> bool:
    """The dead one's part is played again: a task running the same coroutine is alive and
    not waiting beside ``task`` on the same thing (a supervisor restarted the consumer), or
    it was a server's handler of one connection (made by library code from a callback),
    and the next connection gets one of its own."""
    key = task.wait.target
    for d in deads:
        made = d.created_by
        if (d.how == "exception" and made is not None and made.task_id is None
                and _LIBRARY_RX.match(made.file)):
            return True
        if d.how != "thread_exception" and any(t.id != task.id and t.wait.target != key
                                               for t in running.get(d.coro, ())):
            return True
    return False


def _side_gone(task: TaskInfo, dead: str, touched: Mapping[str, list[DeadTask]], skipped_done: bool,
               running: Mapping[str, list[TaskInfo]]) -> bool:
    """The other side of ``task``'s wait is gone (the task or thread that used what it waits
    on died, the keeper's connection is closed, or, for a ``Queue.join()``, the consumers
    that took the items left are all idle in ``get()``: ``skipped_done``) and no timeout
    covers it; the users of what it waits on are known (``Wait.users``).  A wait of a worker idle by design counts
    only when the dead one used the very thing it waits on, not merely an object keeping it."""
    wait = task.wait
    if wait.users is None or not wait.deadline_known or wait.deadline is not None or wait.pool is not None:
        return False
    target = wait.target
    # a party at an asyncio.Barrier (a Condition.wait_for inside) waits for the other parties,
    # not for work: one that died used the barrier's keeper, its party
    at_barrier = any(f.function == "Barrier.wait" for f in task.stack)
    if wait.owner_closed or skipped_done:
        return True
    if not dead or not (target in touched or at_barrier or not _idle_by_design(task)):
        return False
    # a loop callback that raised runs again at the next packet or call: it is gone only for
    # the one future it was to resolve
    deads = [d for d in _dead_users(task, touched)
             if d.how != "callback_exception" or (wait.primitive is None and target in d.touched)]
    return bool(deads) and not _replaced(task, deads, running)


_UNREACHED_TEXT = ("nothing outside the tasks can reach it: no loop callback, transport or server, pending "
                   "future's callback, signal handler or thread refers to it or runs code naming a global that "
                   "keeps it")


def _orphaned(candidates: set[int], by_id: Mapping[int, TaskInfo], stuck: StuckTasks,
              quiet: AbstractSet[int] = frozenset()) -> dict[int, str]:
    """Of the waits whose other side is gone (``candidates``), those no other task can end:
    every task whose code refers to what they wait on (or reaches for it through a keeper)
    waits itself, with no end, on this process's own tasks and primitives, or is such a
    wait too (a request beside it on the same closed connection).  The largest such set,
    found by taking out, until none is left to take, any wait a user of which may act.
    For the ``quiet`` ones (no sign of a gone side, only nothing outside the tasks that
    reaches them), the main task counts as able to act: its code still to run names them.
    Task id -> the words for its users."""
    # Users that wait for work themselves, with nothing outside the tasks to hand it to them
    # (``Wait.relay``): each may act only once one of its own users does.
    relays = {u for tid in candidates for u in by_id[tid].wait.users or ()
              if u not in candidates and _relay(by_id.get(u))}
    left = set(candidates) | relays
    changed = True
    while changed:
        changed = False
        for tid in sorted(left):
            for u in by_id[tid].wait.users or ():
                user = by_id.get(u)
                if u not in left and (_may_act(user, stuck, left)
                                      or (tid in quiet or tid in relays) and user is not None and user.main):
                    left.discard(tid)
                    changed = True
                    break
    out = {}
    for tid in left - relays:
        users = [by_id[u] for u in by_id[tid].wait.users or () if u in by_id]
        if not users:
            out[tid] = ("no other task refers to it or reaches for it through what keeps it, in code still to run"
                        if tid not in quiet else
                        "no other task refers to it, or reaches for it through what keeps it in code still to run")
            continue
        listed = ", ".join(f"task {u.id} ({u.coro} on {u.wait.detail or u.wait.kind}"
                           + (", for work that no task left can hand it, nor anything outside the tasks)"
                              if u.id in relays else ")") for u in users[:4])
        who = ("the one other task that refers to it or reaches for it waits" if len(users) == 1 else
               f"the {len(users)} other tasks that refer to it or reach for it wait")
        out[tid] = (f"{who} too, with no end, on this process's own tasks and primitives or on a side as gone: "
                    f"{listed}")
    return out


def _runners_text(task: TaskInfo, by_id: Mapping[int, TaskInfo], min_wait: float) -> list[str]:
    """The tasks of the object that keeps a waited-for future (its reader loop, say) that are
    themselves waiting as long as a wait must be to count: where the wake-up would come from."""
    keeper = task.wait.owner.split(", ", 1)[0].split(".", 1)[0] or "object"
    out = []
    for tid in task.wait.owner_tasks:
        runner = by_id.get(tid)
        if runner is None or runner.id == task.id or runner.state != "waiting":
            continue
        if task.wait.owner_ids[:1] == runner.wait.owner_ids[:1]:
            continue  # waiting on the same keeper's futures: another request, not what answers them
        if runner.wait.kind == "sleep" or (runner.wait.seconds or 0.0) < min_wait:
            continue
        wait = runner.wait
        what = (wait.detail or wait.kind) + (f" {_where(wait.primitive)}" if wait.primitive is not None else "")
        inner = next((f.function for f in runner.stack if "/asyncio/" not in f.file), "")
        at = f" in {inner}" if inner and inner not in what and inner != runner.coro else ""
        out.append(f"{runner.coro} (task {runner.id}), a task of the {keeper} that keeps it, has itself waited "
                   f"{wait.seconds or 0.0:.0f}s on {what}{at}")
    return out[:2]


def _talking_readers(tasks: tuple[TaskInfo, ...]) -> frozenset[str]:
    """Coroutines with a client's stream read whose connection has carried data both ways:
    their peer answers when asked."""
    return frozenset(t.coro for t in tasks if t.wait.kind == "stream_read" and t.wait.traffic is not None
                     and t.wait.traffic.bytes_sent and t.wait.traffic.bytes_received)


def _unused_connection(task: TaskInfo, talking: frozenset[str], awaiters: Mapping[int, set[int]]) -> bool:
    """A reader on a connection nothing has crossed either way since it opened, while a
    reader of the same coroutine on another connection has talked with its peer: a pool's
    spare connection that nothing was asked on, idle by design.  One whose peer is to speak
    first (a greeting that never comes) has no talking sibling, or a task waiting on it."""
    traffic = task.wait.traffic
    return (task.wait.kind == "stream_read" and traffic is not None and traffic.silent
            and task.coro in talking and not awaiters.get(task.id))


def suspects(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions,
             excluded: set[int], stuck: StuckTasks | None = None) -> list[Finding]:
    unreferenced = set(snap.reachability.unreferenced)
    idle_since = {s.primitive.id: s.idle_seconds for s in snap.primitives}
    states = {s.primitive.id: s for s in snap.primitives}
    awaiters: dict[int, set[int]] = {}  # task id -> the tasks that await it
    for t in snap.tasks.tasks:
        if t.wait.kind in ("task", "gather"):
            for awaited in t.wait.tasks:
                awaiters.setdefault(awaited, set()).add(t.id)
    getters = {s.primitive.id: s.primitive.getters for s in snap.primitives}
    touched = _touched_index(snap)
    # a primitive whose permits are handed on is released by others than its holders
    holders = {s.primitive.id: s.holders for s in snap.primitives if s.holders and s.handoff_seconds is None}
    consumers: dict[str, tuple[tuple[TaskInfo, ...], bool]] | None = None  # made at the first Queue.join
    threads = {t.runs_future: t for t in snap.tasks.threads if t.runs_future}
    # event label -> how many events of that name are set now: a state their owners reached
    # (ready, loaded).  One set and cleared again is a signal re-armed for its next time (a
    # client's `disconnected`, cleared on reconnect): that it fired once says nothing of others.
    fired: dict[str, int] = {}
    for state in snap.primitives:
        event = state.primitive
        if event.kind == "event" and event.label and event.is_set:
            fired[event.label] = fired.get(event.label, 0) + 1
    timed = _ended_by_awaiters(snap.tasks.tasks)
    talking = _talking_readers(snap.tasks.tasks)
    gathered: dict[int, TaskInfo] = {}  # a task -> the task gathering it, when others it gathers have ended
    for t in snap.tasks.tasks:
        if t.wait.kind == "gather" and t.wait.detail == "gather" and t.wait.finished:
            for child in t.wait.tasks:
                gathered[child] = t
    reasons: dict[int, list[str]] = {}
    candidates: set[int] = set()  # tasks whose wait's other side is gone
    quiet: set[int] = set()  # ... of them, those with no sign of it but that nothing outside the tasks reaches
    running: collections.defaultdict[str, list[TaskInfo]] | None = None  # coroutine -> live tasks running it
    gone: set[int] = set()  # ... and that no other task can wake: orphaned, not suspects
    for task in snap.tasks.tasks:
        seconds = task.wait.seconds or 0.0
        if task.id in excluded or task.state != "waiting" or seconds < options.min_wait or task.main:
            continue
        if task.id in timed:
            continue  # a task awaiting it under a deadline cancels it then (3.11's wait_for runs its own)
        pooled = _pool_evidence(task.wait.pool) if task.wait.pool is not None else []
        if task.wait.deadline_known and task.wait.deadline is not None and not pooled:
            continue  # something ends this wait on its own (a lost connection stays lost after it)
        answering = [by_id[t] for t in task.wait.peer_tasks if t in by_id]
        if any(t.state != "waiting" or _has_deadline(t) or (t.wait.kind != "stream_read" and _idle_by_design(t))
               for t in answering):
            # its answer comes from a task of this process that is at work, whose own wait has an
            # end, or that waits for work to send (a subscription's pump on Queue.get)
            continue
        server = answering[0] if answering else None
        why = pooled
        if pooled and task.wait.deadline is not None:
            why.append(f"{task.wait.deadline_by or 'a timeout'} ends this wait in {task.wait.deadline:.0f}s with an error, "
                       f"but leaves the connections held: every later request waits the same")
        prim = task.wait.primitive
        name = task.wait.frame_label
        dead = _dead_counterpart(task, touched, name)
        skipped_done = False
        if dead:
            why.append(dead)
        if task.wait.owner_closed:
            what = "the future it awaits" if prim is None else _where(prim, name)
            why.append(f"{what} is kept by {task.wait.owner}: nothing is left to wake it")
        gathering = gathered.get(task.id)
        if gathering is not None and not _has_deadline(task):
            why.append(f"{_ended_text(gathering.wait.finished)}, gathered with it by {gathering.coro} (task "
                       f"{gathering.id}): gather returns only once every task it runs has ended, and this one "
                       f"waits with nothing to end it; what the ended one fed it may never come")
        if task.wait.kind == "gather" and task.wait.detail == "gather" and task.wait.finished:
            left = [by_id[c] for c in task.wait.tasks if c in by_id]
            # (each waiting as long as a wait must to count: a child reading a stream line by
            # line waits anew for each line, at work)
            if left and all(t.state == "waiting" and not _has_deadline(t) and (t.wait.seconds or 0.0) >= options.min_wait
                            for t in left):
                why.append(f"{_ended_text(task.wait.finished)}; gather returns only once the other "
                           f"{_plural(len(left), 'task')} {'ends' if len(left) == 1 else 'end'} too, and "
                           f"{'it waits' if len(left) == 1 else 'they wait'} with nothing to end "
                           f"{'its' if len(left) == 1 else 'their'} wait: "
                           + ", ".join(f"{t.coro} on {t.wait.detail or t.wait.kind}" for t in left[:4]))
        if task.wait.woken and task.wait.predicate_own and not _has_deadline(task):
            why.append(_rewoken_text(task.wait))
        queue_state = states.get(prim.id) if prim is not None and task.wait.kind == "queue_get" else None
        if queue_state is not None and queue_state.lost is not None and queue_state.lost[3]:
            text, all_lost = _lost_items_text(_where(queue_state.primitive, name), queue_state.lost)
            why.append(text)
            skipped_done = all_lost
        if _idle_by_design(task) and not why:
            continue
        if _unused_connection(task, talking, awaiters) and not why:
            continue
        if prim is not None:
            idle = idle_since.get(prim.id)
            if idle is not None and idle >= seconds:
                if prim.kind == "event" and _rearmed_by_waiter(states.get(prim.id), task, idle, awaiters):
                    pass  # cleared by the waiting side after the last set: it waits for the next one
                elif prim.kind == "event":
                    why.append(f"{_where(prim, name)} was last set {idle:.1f}s ago, before this wait began, and not since: "
                               f"a wake-up this task missed, or a signal that stopped coming")
                else:
                    why.append(f"no acquire or release on {_where(prim, name)} since the wait began")
            elif (prim.kind == "event" and idle is None and not prim.is_set and prim.label
                  and fired.get(prim.label)):
                n = fired[prim.label]
                why.append(f"{_plural(n, 'other event')} named {prim.label} {'is' if n == 1 else 'are'} set; "
                           f"this one never was")
            if task.wait.kind == "queue_put" and not getters.get(prim.id):
                why.append("no task is waiting to get from this queue")
            if task.wait.detail == "Queue.join":
                if consumers is None:
                    consumers = _queue_consumers(snap.tasks.tasks)
                joined = _join_evidence(prim, consumers.get(prim.id, ((), False)))
                why.extend(joined)
                skipped_done = bool(joined) and bool(consumers.get(prim.id, ((), False))[0])
            held = _held_by_waiting(holders.get(prim.id, ()), by_id, task.id, options.min_wait)
            if held:
                why.append(held)
        if task.wait.child is not None:
            why.extend(_child_evidence(task.wait.child))
        if task.wait.backlog is not None:
            why.extend(_backlog_evidence(task.wait.backlog, seconds))
        if task.wait.kind == "stream_read":
            why.append(_silence_text(task, seconds))
            if server is not None:
                why.append(_server_end_text(server, len(answering) - 1))
        elif task.wait.kind == "future" and _awaits_response(task):
            why.append(f"the server has not answered this HTTP request for {seconds:.0f}s")
        if task.wait.kind == "executor":
            why.append(_executor_text(task, threads, by_id))
        if task.id in unreferenced:
            why.append("nothing holds a reference to the task (fire-and-forget)")
        if (not why and task.wait.kind == "future" and task.wait.deadline_known
                and task.stack and not _LIBRARY_RX.match(task.stack[0].file)
                and task.id not in task.wait.owner_tasks):  # a keeper's own worker, idle until handed work
            why.append(f"its own code has awaited a bare future for {seconds:.0f}s with no timeout: only the "
                       f"code that holds the future can end the wait")
        if why and task.wait.owner_tasks:
            why.extend(_runners_text(task, by_id, options.min_wait))
        elif why and task.wait.deadline_known and task.wait.deadline is None:
            why.append("nothing can end the wait on its own: no timeout or timer covers it")
        if (why and task.wait.unreached and task.wait.users is not None and not task.wait.relay
                and not _has_deadline(task)):
            # (by itself no sign of a leak: a program at rest has many such waits)
            why.append(_UNREACHED_TEXT)
        if why:
            if running is None:
                running = collections.defaultdict(list)
                for t in snap.tasks.tasks:
                    running[t.coro].append(t)
            if _side_gone(task, dead, touched, skipped_done, running):
                candidates.add(task.id)
            elif _UNREACHED_TEXT in why:
                candidates.add(task.id)
                quiet.add(task.id)
            reasons[task.id] = why
    found = (_orphaned(candidates, by_id, stuck_tasks(snap) if stuck is None else stuck, quiet)
             if candidates else {})
    for tid, users_text in found.items():
        reasons[tid].append(users_text)
        gone.add(tid)
    out = []
    for orphaned in (True, False):
        members = tuple(by_id[t] for t in sorted(reasons) if (t in gone) == orphaned)
        out.extend(_suspect_findings(members, reasons, by_id, orphaned))
    out.sort(key=lambda f: (f.kind != "orphaned", -f.score))
    return out


def _suspect_findings(members: tuple[TaskInfo, ...], reasons: Mapping[int, list[str]],
                      by_id: Mapping[int, TaskInfo], orphaned: bool) -> list[Finding]:
    out = []
    for group in group_tasks(members):
        tasks = tuple(by_id[i] for i in group.ids if i in by_id)
        why = list(dict.fromkeys(r for t in tasks for r in reasons[t.id]))  # strongest first, once each
        longest = max((t.wait.seconds or 0.0) for t in tasks)
        on = group.wait.detail or group.wait.kind
        unreached = all(_UNREACHED_TEXT in reasons[t.id] for t in tasks)
        if not orphaned:
            footer = " (still reachable: not proven)"
        elif unreached:
            footer = " (still reachable, but only from tasks that cannot act or whose code still to run never reaches it)"
        else:
            footer = (" (still reachable, but only from tasks that cannot act; no timer or thread holds it either; "
                      "a protocol's callbacks were not looked at)")
        out.append(Finding(
            kind="orphaned" if orphaned else "suspect",
            title=(f"{_plural(len(tasks), 'task')} of {group.coro} {agree(len(tasks), 'waits', 'wait')} "
                   f"{longest:.0f}s on {on} " + ("that nothing left can end" if unreached else "whose other side is gone")
                   if orphaned else f"{_plural(len(tasks), 'task')} of {group.coro} waiting {longest:.0f}s on {on}"),
            evidence="; ".join(why) + footer,
            tasks=tasks[:MAX_TASKS_PER_FINDING], task_count=len(tasks),
            primitives=(group.wait.primitive,) if group.wait.primitive is not None else (),
            site=group.stack, score=longest * len(why) * len(tasks),
        ))
    return out


#: Waits whose cancellation cancels what they await: ``await task``, ``gather``, 3.11's
#: ``wait_for`` (which runs the awaitable in a task of its own) and a ``TaskGroup``'s exit.
#: ``asyncio.wait`` and ``as_completed`` only stop watching.
_CANCEL_PROPAGATES = frozenset({"await task", "gather", "wait_for", "TaskGroup"})


def _rewoken_text(wait: Wait) -> str:
    """A ``Condition.wait_for`` that notifies woke and sent back to waiting, on a predicate
    comparing with values of the waiting call's own: the condition's state moves, and
    not to where this waiter waits for it."""
    n = wait.woken
    times = "once" if n == 1 else f"{n} times"
    own = ", ".join(wait.predicate_own)
    return (f"a notify has woken this wait_for {times} since it began (the last {wait.woken_seconds or 0.0:.1f}s "
            f"ago) and it went back to waiting: its predicate, which compares with {own} of the waiting "
            f"call's own, is still false ({wait.predicate})")


def _has_deadline(task: TaskInfo) -> bool:
    """Something ends the task's wait on its own (a timeout, a timer, a sleep)."""
    return task.wait.kind == "sleep" or (task.wait.deadline_known and task.wait.deadline is not None)


def _ended_text(finished: tuple[FinishedChild, ...]) -> str:
    """``StationClient.read_loop (task 11) returned``, for the ended tasks of a gather."""
    return "; ".join(f"{f.coro or 'a task'} (task {f.id}) already {f.outcome}" for f in finished[:3]) + (
        f" and {len(finished) - 3} more ended" if len(finished) > 3 else "")


def _ended_by_awaiters(tasks: tuple[TaskInfo, ...]) -> set[int]:
    """Tasks awaited, through a wait whose cancellation reaches them, by a task whose wait
    has a deadline: when it expires they are cancelled too, so their own wait has an end."""
    ended: set[int] = set()
    for t in tasks:
        if (t.wait.kind in ("task", "gather") and t.wait.deadline_known and t.wait.deadline is not None
                and (t.wait.kind == "task" or t.wait.detail in _CANCEL_PROPAGATES)):
            ended.update(t.wait.tasks)
    return ended


def _rearmed_by_waiter(state: PrimitiveState | None, task: TaskInfo, idle: float,
                       awaiters: Mapping[int, set[int]]) -> bool:
    """An Event cleared after its last ``set()`` by the waiting side (the waiting task, or
    a task that awaits it): ``clear(); await event.wait()`` waits for the next signal, so
    a last set before the wait is no missed wake-up.  A pulse (``set(); clear()`` by the
    signalling side, even the task that started the waiter) before the wait still is."""
    if state is None or state.cleared_seconds is None or state.cleared_by is None or state.cleared_seconds > idle:
        return False
    return state.cleared_by == task.id or state.cleared_by in awaiters.get(task.id, ())


def _server_end_text(server: TaskInfo, others: int) -> str:
    """Where the answer to a client's read would come from: the task of this process that
    serves the connection's other end, and what it waits on (``others`` more tasks that
    hold that end's writer wait with nothing to end their wait either)."""
    wait = server.wait
    what = (wait.detail or wait.kind) + (f" {_where(wait.primitive)}" if wait.primitive is not None else "")
    also = f"; so do {_plural(others, 'other task')} holding its writer" if others else ""
    if wait.kind == "stream_read" and wait.stream_side == "server":
        return (f"the other end is served in this process by {server.coro} (task {server.id}), which waits for this "
                f"end's next message ({what}) with nothing to end its wait{also}")
    return (f"the other end is served in this process by {server.coro} (task {server.id}), which has waited "
            f"{wait.seconds or 0.0:.0f}s on {what} with nothing to end its wait{also}")


def _silence_text(task: TaskInfo, seconds: float) -> str:
    """A stream read's peer silence, with the connection's last data each way when known."""
    t = task.wait.traffic
    if t is None:
        return f"the peer has sent nothing for {seconds:.0f}s"
    if t.unanswered:
        return (f"the peer has sent nothing since this end sent data {t.sent_ago:.0f}s ago"
                + ("" if t.bytes_received != 0 else ", and nothing at all on this connection"))
    if t.silent:
        return (f"the peer has sent nothing since the connection opened {t.received_ago:.0f}s ago, and this end "
                f"nothing either")
    if t.unread:
        return (f"the peer has sent nothing for {t.received_ago:.0f}s after part of a message "
                f"({byte_count(t.unread)} read, the rest awaited)")
    if t.answered:
        return f"the peer has sent nothing for {t.received_ago:.0f}s, after answering what this end last sent"
    return f"the peer has sent nothing for {seconds:.0f}s"


def _backlog_evidence(backlog: WriteBacklog, seconds: float) -> list[str]:
    """A write wait (``drain()``, or ``wait_closed()`` on a closing connection) that has
    bytes in front of it: the peer is not taking them."""
    peer = f" to {backlog.peer}" if backlog.peer else ""
    if not backlog.buffered and not backlog.in_kernel:
        return []
    queued = [f"{byte_count(backlog.buffered)} in the transport's buffer"] if backlog.buffered else []
    if backlog.in_kernel:
        queued.append(f"{byte_count(backlog.in_kernel)} in the socket's send queue that the peer has not acknowledged")
    have = " and ".join(queued)
    if backlog.closing:
        return [f"the connection{peer} is closing, but {have} still wait to be sent: it closes (and wait_closed() "
                f"returns) only once the peer has read them, and in {seconds:.0f}s it has not"]
    mark = f" (the pause mark is {byte_count(backlog.high_water)})" if backlog.high_water else ""
    return [f"the peer{peer} is not reading: {have}{mark}; drain() returns only once it has read enough, and in "
            f"{seconds:.0f}s it has not"]


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "?"


def _stall_summary(loop: LoopInfo, cause: str, snap: SyncSnapshot, options: LeakOptions) -> WindowSummary | None:
    """The loop's ``cause`` stalls in the window when they make a verdict, else None.  A
    stall still going on counts once it is as long as ``stall_threshold``, a verdict by
    itself; a shorter one is judged on figures that are not final (read while the query
    itself was being answered, and on a starved machine mostly its doing), so it counts
    once it has ended and the watchdog has judged it whole.  A stall of the program's
    start-up that has ended (``loop_stalls.start_up``) makes none: loading before serving."""
    threshold = max(options.stall_threshold, 1e-9)
    summary = window_summary(loop, cause, window=options.stall_window, now=snap.taken_at, exclude_reasons=OWN_REASONS,
                             min_ongoing=threshold, exclude_start=True)
    if summary.longest >= threshold or summary.count >= options.stall_repeats:
        return summary
    if summary.count >= 2 and summary.longest >= REPEAT_SHARE * threshold:
        return summary  # again, and once for a fifth of the threshold: a pattern, not a hiccup
    return None


def _history_text(summary: WindowSummary) -> str:
    noun = "stall" if summary.count == 1 else "stalls"
    sites = "; ".join(f"{site.count}x at {site_text(site.frames, site.at_end)} (longest {site.longest:.1f}s)"
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
    # the part of a stall from before the watch began has no figures
    watched = summary.seconds - sum(s.before_watch for s in summary.stalls)
    if summary.cpu_seconds is not None:
        parts.append(f"on CPU {_pct(summary.cpu_seconds, watched)} of the stalled time"
                     + (" diag watched" if watched < summary.seconds else ""))
    if summary.runqueue_seconds is not None:
        parts.append(f"waiting for a CPU {_pct(summary.runqueue_seconds, watched)}")
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
        handed: list[TaskInfo] = []
        if current is not None and current.seconds >= max(options.stall_threshold, 1e-9):
            title = f"event loop {loop.id} has not turned for {current.seconds:.1f}s"
            site = loop.blocking_stack or summary.sites[0].frames
            at = f" at {site_text(site, not loop.blocking_stack and summary.sites[0].at_end)}" if site else ""
            evidence = f"thread {thread} is running{at}; every task on this loop waits"
            handed = _waiting_on_loop(snap, loop.id)
            if handed:
                evidence += f"; {_handed_text(handed, loop.id)}"
            if current.before_watch > 0:
                evidence += (f"; it had not turned for {current.before_watch:.1f}s when diag began watching it "
                             f"(its earliest timer was that late)")
            if summary.count > 1:
                evidence += f"; {_history_text(summary)}"
        else:
            title = (f"event loop {loop.id} was blocked {_plural(summary.count, 'time')} "
                     f"in the last {summary.window:.0f}s, longest {summary.longest:.1f}s")
            site = summary.sites[0].frames
            evidence = f"thread {thread}: {_history_text(summary)}; every task on this loop waited"
        evidence += f"; {_reasons(summary)}"
        figures = _figures_text(summary)
        out.append(Finding(kind="loop_blocked", title=title,
                           evidence=evidence + (f"; {figures}" if figures else ""), site=site,
                           score=summary.seconds, tasks=tuple(handed[:MAX_TASKS_PER_FINDING]) if current is not None else (),
                           task_count=len(handed) if current is not None else 0))
    return out


def _waiting_on_loop(snap: SyncSnapshot, loop_id: str) -> list[TaskInfo]:
    """Tasks of other loops waiting, with no end, on coroutines ``run_coroutine_threadsafe``
    handed the loop ``loop_id``: a blocked loop runs none of them."""
    return [t for t in snap.tasks.tasks if t.wait.remote_loop == loop_id and t.loop != loop_id
            and t.state == "waiting" and not _has_deadline(t)]


def _handed_text(tasks: list[TaskInfo], loop_id: str) -> str:
    listed = ", ".join(f"{t.coro} (task {t.id}, " + (f"its coroutine is task {t.wait.remote_task} there)"
                                                       if t.wait.remote_task is not None else "its coroutine not started)")
                       for t in tasks[:4]) + (f" and {len(tasks) - 4} more" if len(tasks) > 4 else "")
    return (f"{_plural(len(tasks), 'task')} of another loop {'waits' if len(tasks) == 1 else 'wait'}, with no timeout, "
            f"on coroutines handed to this one with run_coroutine_threadsafe, which it cannot run: {listed}")


def lost_wakeups(snap: SyncSnapshot, by_id: Mapping[int, TaskInfo], options: LeakOptions) -> list[Finding]:
    """Loops that slept in their selector with callbacks ready and their thread not woken:
    code in another thread scheduled them without ``call_soon_threadsafe``.  A loop asleep
    with work to do is the proof; the callbacks say what waited."""
    out = []
    for loop in snap.tasks.loops:
        episodes = [u for u in loop.unwoken if snap.taken_at - (u.started_at + u.seconds) <= options.stall_window]
        if not episodes:
            continue
        longest = max(episodes, key=lambda u: u.seconds)
        current = next((u for u in episodes if u.ongoing), None)
        task_ids = list(dict.fromkeys(t for u in episodes for t in u.task_ids))
        tasks = tuple(by_id[t] for t in task_ids if t in by_id)
        callbacks = list(dict.fromkeys(c for u in (current or longest,) for c in u.callbacks))
        if current is not None:
            title = (f"event loop {loop.id} has slept {current.seconds:.1f}s with "
                     f"{_plural(len(current.callbacks), 'callback')} ready: a wake-up was lost")
        else:
            title = (f"event loop {loop.id} slept with callbacks ready {_plural(len(episodes), 'time')} in the "
                     f"last {options.stall_window:.0f}s, longest {longest.seconds:.1f}s: wake-ups were lost")
        evidence = (f"thread {loop.thread_name or loop.thread_id} sat in its poll while its ready queue held "
                    f"{', '.join(callbacks)}; nothing woke it: a Future.set_result, Event.set, Queue.put_nowait or "
                    f"loop.call_soon made in a thread other than the loop's, or in a handler installed with "
                    f"signal.signal, queues the callback without waking the loop, which then sleeps until some I/O "
                    f"or timer happens to wake it (or for good): call it through loop.call_soon_threadsafe (or "
                    f"asyncio.run_coroutine_threadsafe; for a signal, loop.add_signal_handler)")
        if len(episodes) > 1:
            evidence += f"; {_plural(len(episodes), 'episode')} in the last {options.stall_window:.0f}s"
        out.append(Finding(kind="lost_wakeup", title=title, evidence=evidence,
                           tasks=tasks[:MAX_TASKS_PER_FINDING], task_count=len(tasks),
                           score=sum(u.seconds for u in episodes)))
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
            evidence=(f"thread {loop.thread_name or loop.thread_id}: {_plural(summary.count, 'stall')}, {summary.seconds:.1f}s "
                      f"in all ({_pct(summary.seconds, summary.window)} of the time); {why}"
                      + (f"; {figures}" if figures else "") + "; not the loop's own code: look at the machine's load, "
                      "the CPU quota or the process's other threads"),
            site=summary.sites[0].frames if summary.sites else (), score=summary.seconds,
        ))
    return out


def leak_report(snap: SyncSnapshot, options: LeakOptions = LeakOptions()) -> LeakReport:
    """Every verdict on ``snap``, in the order of ``KINDS``.  A task explained by a sound
    verdict is not repeated as a suspect (one finding per cause)."""
    options.validate()
    by_id = {t.id: t for t in snap.tasks.tasks}
    stuck = stuck_tasks(snap)
    permits = leaked_permits(snap, by_id, stuck)
    locks = deadlocks(snap, by_id, stuck)
    in_deadlock = {t.id for f in locks for t in f.tasks}
    locks += child_deadlocks(snap, options, in_deadlock)
    in_deadlock.update(t.id for f in locks for t in f.tasks)
    proven = proven_leaks(snap, by_id, in_deadlock)  # one finding per cause: the deadlock says it
    unreachable = set(snap.reachability.unreachable) if snap.reachability.complete else set()
    locks = [replace(f, evidence=f.evidence + "; the proof confirms it: nothing outside these tasks can reach "
                                               "what they wait on")
             if f.tasks and all(t.id in unreachable for t in f.tasks) else f for f in locks]
    explained = set(snap.reachability.unreachable) if snap.reachability.complete else set()
    for f in locks:
        explained.update(t.id for t in f.tasks)
    permit_ids = {p.id for f in permits for p in f.primitives}
    for state in snap.primitives:  # a leaked permit's waiters are told in its finding
        if state.primitive.id in permit_ids:
            explained.update(t for t in state.waiting_tasks if t in stuck)
    behind = stuck_behind(snap, by_id, stuck, explained)
    explained.update(stuck.reasons)
    cancels = swallowed_cancels(snap, by_id, options)
    explained.update(f.tasks[0].id for f in cancels)
    wakeups = lost_wakeups(snap, by_id, options)
    explained.update(t.id for f in wakeups for t in f.tasks)
    blocked = loops_blocked(snap, options)
    explained.update(t.id for f in blocked for t in f.tasks)  # waiting on a blocked loop's work
    pools = executors_exhausted(snap, by_id, options, explained)
    maybe = suspects(snap, by_id, options, explained, stuck)
    orphans = [f for f in maybe if f.kind == "orphaned"]
    findings = (proven + permits + locks + behind + cancels + orphans + blocked + wakeups
                + exhausted(snap, by_id, options, permit_ids | {p.id for f in behind for p in f.primitives})
                + pools + [f for f in maybe if f.kind != "orphaned"] + loops_starved(snap, options) + incomplete(snap))
    if snap.reachability.ran:
        proof = snap.reachability
        proof_text = (f"reachability proof: {_plural(proof.blocked, 'blocked task')}, {_plural(proof.objects_marked, 'object')} marked "
                      f"in {proof.seconds:.2f}s" + ("" if proof.complete else f" ({proof.note})"))
    else:
        proof_text = "reachability proof not run: no proven_leak verdicts"
    return LeakReport(snap.taken_at, snap.process, tuple(findings), proof_text, snap.notes + _young_watch(snap, options))


def _young_watch(snap: SyncSnapshot, options: LeakOptions) -> tuple[str, ...]:
    """A note when diag has watched the loops for less than ``--min-wait`` (just attached, or
    the program just started): waits are timed from diag's first look, so none can count yet."""
    windows = [loop.stall_window for loop in snap.tasks.loops if loop.running and loop.stall_window > 0]
    if not windows or max(windows) >= min(options.min_wait, 59.0):
        return ()
    if not any(t.state == "waiting" and t.wait.seconds is not None for t in snap.tasks.tasks):
        return ()
    return (f"diag has watched this process for {max(windows):.1f}s and times each wait from its first look, so no "
            f"task has waited --min-wait ({options.min_wait:g}s) yet: the suspects come once one has (proven "
            f"leaks, deadlocks and a blocked loop need no wait)",)


def incomplete(snap: SyncSnapshot) -> list[Finding]:
    """The verdicts saw only part of the tasks (the agent cut its answer to fit its budget,
    or its walk stopped at its time budget): a run that cannot say the process is clean."""
    tasks = snap.tasks
    judged = len(tasks.tasks)
    if tasks.grouped or tasks.total_tasks <= judged:
        return []
    why = "; ".join(n for n in (*snap.notes, *tasks.notes) if n.startswith("cut")) or "the snapshot was cut"
    return [Finding(
        kind="incomplete",
        title=f"the verdicts cover {judged:,} of {tasks.total_tasks:,} pending tasks",
        evidence=(f"{tasks.total_tasks - judged:,} tasks were not judged ({why}): a leak among them would go "
                  f"unreported, so this run cannot say the process is clean; judge fewer at a time "
                  f"(diag tasks --debug 1 groups them all)"),
    )]


def states_by_id(snap: SyncSnapshot) -> dict[str, PrimitiveState]:
    return {s.primitive.id: s for s in snap.primitives}
