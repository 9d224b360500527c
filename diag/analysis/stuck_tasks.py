"""Which tasks can never proceed, by what they wait for and who could end the wait.  Pure.

A task waiting on a held Lock or Semaphore can be woken only by a holder's release; a
task awaiting other tasks (``await task``, ``gather``, a ``TaskGroup``, ``wait_for``)
only by one of them finishing.  Starting from every such task, drop the ones that can
still proceed (a holder that is alive and not itself stuck, a free permit, an awaited
task that is not stuck, a deadline that ends the wait) until nothing changes: what is
left can never proceed.  Tasks the reachability proof found unreachable, and holders
that are gone (finished or destroyed without releasing), count as stuck for good.

The greatest fixed point finds deadlocks of any length, a task waiting on a lock it
holds itself, and every task queued behind one of them, without guessing: each
remaining task's every way out leads back into the set.  What it assumes is said in
docs/leaks.md: permits are released by their holders (asyncio allows any code to call
``release()``; code that hands permits around that way is rare, and such a semaphore
is usually not tracked as held).

Usage::

    stuck = stuck_tasks(sync_snapshot)
    for task_id, why in stuck.reasons.items():
        print(task_id, why.kind, why.blocker)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from diag.model.sync_snapshot import PrimitiveState, SyncSnapshot
from diag.model.task_snapshot import TaskInfo

#: Waits a holder's release ends.
HELD_KINDS = frozenset({"lock", "semaphore"})  # Condition.wait waits for a notify, not a release
#: Waits another task's end ends.
AWAIT_KINDS = frozenset({"task", "gather"})


@dataclass(frozen=True)
class Blocker:
    """Why one task is stuck: ``kind`` is ``self`` (waits on a lock it holds), ``holder``
    (waits on a primitive whose holders are all stuck or gone), ``awaits`` (awaits only
    stuck tasks) or ``proven`` (the reachability proof); ``on`` the primitive id or the
    awaited task ids; ``holders`` the holders' task ids (None: code outside any task)."""

    kind: str
    on: str = ""
    tasks: tuple[int, ...] = ()
    holders: tuple[int | None, ...] = ()
    gone: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class StuckTasks:
    """The tasks that can never proceed, each with its ``Blocker``."""

    reasons: Mapping[int, Blocker] = field(default_factory=dict)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.reasons


def _has_deadline(task: TaskInfo) -> bool:
    return task.wait.deadline_known and task.wait.deadline is not None


def stuck_tasks(snap: SyncSnapshot) -> StuckTasks:
    """The greatest set of tasks none of which can proceed (see the module docstring)."""
    states: dict[str, PrimitiveState] = {s.primitive.id: s for s in snap.primitives}
    pending = {t.id: t for t in snap.tasks.tasks}
    proven = set(snap.reachability.unreachable) if snap.reachability.complete else set()
    candidates: dict[int, TaskInfo] = {}
    for task in snap.tasks.tasks:
        if task.state != "waiting" or task.id in proven or _has_deadline(task):
            continue
        kind = task.wait.kind
        prim = task.wait.primitive
        if kind in HELD_KINDS and prim is not None:
            state = states.get(prim.id)
            if state is None or not state.holders or not _exhausted(state):
                continue
            if state.handoff_seconds is not None:
                continue  # its permits are handed on: other code than the holders may release them
            candidates[task.id] = task
        elif kind in AWAIT_KINDS and task.wait.tasks:
            candidates[task.id] = task
    stuck = set(candidates) | proven

    def can_proceed(task: TaskInfo) -> bool:
        prim = task.wait.primitive
        if task.wait.kind in HELD_KINDS and prim is not None:
            state = states[prim.id]
            for holder in state.holders:
                if not holder.task_alive:
                    continue  # gone without releasing: never will
                if holder.task_id is None or (holder.task_id not in stuck and holder.task_id != task.id):
                    return True
            return False
        awaited = [t for t in task.wait.tasks if t in pending]
        return not awaited or any(t not in stuck for t in awaited)

    changed = True
    while changed:
        changed = False
        for task_id in list(stuck):
            candidate = candidates.get(task_id)
            if candidate is not None and can_proceed(candidate):
                stuck.discard(task_id)
                changed = True
    reasons: dict[int, Blocker] = {}
    for task_id in stuck:
        if task_id in proven:
            reasons[task_id] = Blocker("proven")
            continue
        waiting = candidates[task_id]
        prim = waiting.wait.primitive
        if waiting.wait.kind in HELD_KINDS and prim is not None:
            holders = tuple(h.task_id for h in states[prim.id].holders)
            gone = tuple(h.task_id for h in states[prim.id].holders if not h.task_alive)
            if holders and all(h == task_id for h in holders):
                reasons[task_id] = Blocker("self", prim.id, holders=holders)
            else:
                reasons[task_id] = Blocker("holder", prim.id, holders=holders, gone=gone)
        else:
            reasons[task_id] = Blocker("awaits", tasks=tuple(t for t in waiting.wait.tasks if t in stuck))
    return StuckTasks(reasons)


def _exhausted(state: PrimitiveState) -> bool:
    """No permit free: a lock locked, a semaphore at zero (free permits wake waiters)."""
    prim = state.primitive
    if prim.kind in ("semaphore", "bounded_semaphore"):
        return prim.value is not None and prim.value <= 0
    return prim.locked is not False
