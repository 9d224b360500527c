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
from diag.model.task_snapshot import ExecutorInfo, TaskInfo, ThreadInfo

#: Waits a holder's release ends.
HELD_KINDS = frozenset({"lock", "semaphore"})  # Condition.wait waits for a notify, not a release
#: Waits another task's end ends.
AWAIT_KINDS = frozenset({"task", "gather"})


@dataclass(frozen=True)
class Blocker:
    """Why one task is stuck: ``kind`` is ``self`` (waits on a lock it holds), ``holder``
    (waits on a primitive whose holders are all stuck or gone), ``awaits`` (awaits only
    stuck tasks), ``thread`` (its executor call runs in a thread that blocks on a stuck
    task), ``pool`` (its executor call is queued and every worker blocks on a stuck
    task) or ``proven`` (the reachability proof); ``on`` the primitive id, the thread's
    or the pool's name; ``tasks`` the awaited task ids (for ``thread`` and ``pool``, the
    tasks the threads block on); ``holders`` the holders' task ids (None: code outside
    any task)."""

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


#: A wait younger than this (by the agent's sampled clock) is not judged: the snapshot is
#: read while the loop runs on, so a hot lock's waiter can be read waiting on the lock it
#: was just given back (its holder record from a moment later).  A wait the sampler has
#: seen before is a state that held, not an instant.
MIN_JUDGED_WAIT = 0.5


def _has_deadline(task: TaskInfo) -> bool:
    return task.wait.deadline_known and task.wait.deadline is not None


def _too_fresh(task: TaskInfo) -> bool:
    """A wait the sampler has just begun to see (None: no clock, judged as it is)."""
    return task.wait.seconds is not None and task.wait.seconds < MIN_JUDGED_WAIT


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
            if _too_fresh(task) and any(h.task_alive for h in state.holders):
                continue  # a live holder's record may be a moment apart from the wait (a handover)
            candidates[task.id] = task
        elif kind in AWAIT_KINDS and task.wait.tasks and not _too_fresh(task):
            candidates[task.id] = task
    pools = _Pools(snap)
    for task in snap.tasks.tasks:
        if (task.state == "waiting" and task.wait.kind == "executor" and task.id not in proven
                and not _has_deadline(task) and not _too_fresh(task) and pools.blocked_by(task) is not None):
            candidates[task.id] = task
    stuck = set(candidates) | proven

    def can_proceed(task: TaskInfo) -> bool:
        if task.wait.kind == "executor":
            return any(t not in stuck for t in pools.blocked_by(task) or ())
        prim = task.wait.primitive
        if task.wait.kind in HELD_KINDS and prim is not None:
            state = states[prim.id]
            for holder in state.holders:
                if not holder.task_alive or holder.skipped_release:
                    continue  # gone without releasing, or its taker left past its release: never will
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
        if waiting.wait.kind == "executor":
            kind, on = pools.where(waiting)
            reasons[task_id] = Blocker(kind, on, tasks=tuple(pools.blocked_by(waiting) or ()))
            continue
        if waiting.wait.kind in HELD_KINDS and prim is not None:
            holders = tuple(h.task_id for h in states[prim.id].holders)
            gone = tuple(h.task_id for h in states[prim.id].holders if not h.task_alive or h.skipped_release)
            if holders and all(h == task_id for h in holders):
                reasons[task_id] = Blocker("self", prim.id, holders=holders)
            else:
                reasons[task_id] = Blocker("holder", prim.id, holders=holders, gone=gone)
        else:
            reasons[task_id] = Blocker("awaits", tasks=tuple(t for t in waiting.wait.tasks if t in stuck))
    return StuckTasks(reasons)


class _Pools:
    """Thread pools seen from a task's ``run_in_executor`` wait.  Its call either runs in a
    worker thread, which proceeds unless it blocks with no timeout on a task (in the
    ``result()`` of a ``run_coroutine_threadsafe`` future), or waits in the pool's queue,
    which moves once any worker is done; when every worker blocks on a task, the queue
    moves only if one of those tasks ends."""

    def __init__(self, snap: SyncSnapshot) -> None:
        self.running = {t.runs_future: t for t in snap.tasks.threads if t.runs_future}
        threads = {t.id: t for t in snap.tasks.threads}
        # by the executor itself, not its name: two pools may share a thread name prefix
        self.queued: dict[str, tuple[ExecutorInfo, list[ThreadInfo]]] = {}
        for ex in snap.tasks.executors:
            workers = [threads[i] for i in ex.threads if i in threads]
            for fut in ex.queued_futures:
                self.queued[fut] = (ex, workers)

    def blocked_by(self, task: TaskInfo) -> tuple[int, ...] | None:
        """The tasks whose end alone lets ``task``'s call go on; None when something else
        may (a worker running other code, a free worker, a call not found)."""
        fut = task.wait.future_id
        thread = self.running.get(fut)
        if thread is not None:
            return (thread.waits_task,) if thread.waits_task is not None else None
        found = self.queued.get(fut)
        if found is None:
            return None
        ex, workers = found
        if len(workers) < max(1, ex.max_workers) or len(ex.threads) < ex.max_workers:
            return None  # room for another worker
        if any(w.waits_task is None or not w.runs_future for w in workers):
            return None  # a worker idle or running code that may end
        return tuple(dict.fromkeys(w.waits_task for w in workers if w.waits_task is not None))

    def where(self, task: TaskInfo) -> tuple[str, str]:
        """(blocker kind, on): ``thread`` and the worker's name for a call that runs,
        ``pool`` and the executor's name for one that waits in the queue."""
        thread = self.running.get(task.wait.future_id)
        if thread is not None:
            return "thread", thread.name
        found = self.queued.get(task.wait.future_id)
        return "pool", found[0].name if found is not None else ""


def _exhausted(state: PrimitiveState) -> bool:
    """No permit free: a lock locked, a semaphore at zero (free permits wake waiters)."""
    prim = state.primitive
    if prim.kind in ("semaphore", "bounded_semaphore"):
        return prim.value is not None and prim.value <= 0
    return prim.locked is not False
