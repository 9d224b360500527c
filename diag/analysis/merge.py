"""One view of several processes: task groups, primitives and findings merged, each
part still saying which process it came from.  Pure: results in, data out.

Task groups of different processes merge when they tell the same story (state,
coroutine, await stack, wait kind and detail): 3 gunicorn workers with 4 leaked
tasks each read as one group of 12 with a share per process.  Primitives are never
merged across processes: the same address in two processes is two objects.

Usage::

    view = merge_tasks(results, limit=100)
    for group in view.groups:
        print(group.count, [(s.process, s.task.count) for s in group.shares])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from diag.analysis.leak_verdicts import KINDS, Finding, LeakReport
from diag.model.sync_snapshot import PrimitiveState, SyncSnapshot
from diag.model.target_result import TargetResult
from diag.model.task_snapshot import TaskInfo, TaskSnapshot

SCHEMA_NAME = "diag.many"
SCHEMA = f"{SCHEMA_NAME}/1"

_DISTINCT_RX = re.compile(r" \(on (\d+) distinct ([^)]*)\)$")


def process_name(result: TargetResult[Any]) -> str:
    """The process column: the pid once known, else the target as given."""
    value = result.value
    process = getattr(value, "process", None)
    pid = getattr(process, "pid", None) or result.target.pid
    return str(pid) if pid else result.target.target


@dataclass(frozen=True)
class Share:
    """The part of a merged group one process holds: that process's own group or task."""

    process: str
    task: TaskInfo


@dataclass(frozen=True)
class MergedGroup:
    """A group across processes.  ``task`` stands for all of them: counts summed, the
    longest wait, and the primitive only when a single process holds the group."""

    task: TaskInfo
    shares: tuple[Share, ...]

    @property
    def count(self) -> int:
        return self.task.count


@dataclass(frozen=True)
class MergedTasks:
    """The merged task view: per-target results (with each process's own view), the
    merged groups (or, ungrouped, every task with its process) and what was cut."""

    results: tuple[TargetResult[TaskSnapshot], ...]
    groups: tuple[MergedGroup, ...]
    grouped: bool
    total_tasks: int
    notes: tuple[str, ...] = ()

    @property
    def answered(self) -> tuple[tuple[str, TaskSnapshot], ...]:
        return tuple((process_name(r), r.value) for r in self.results if r.value is not None)


def _base_detail(detail: str) -> tuple[str, int, str]:
    """``Event.wait (on 3 distinct events)`` -> ("Event.wait", 3, "events")."""
    m = _DISTINCT_RX.search(detail)
    return (detail[: m.start()], int(m.group(1)), m.group(2)) if m else (detail, 0, "")


def merge_tasks(results: Sequence[TargetResult[TaskSnapshot]], limit: int | None) -> MergedTasks:
    """Merge each process's (already filtered and grouped) task view into one."""
    views = [(process_name(r), r.value) for r in results if r.value is not None]
    grouped = any(v.grouped for _, v in views) if views else True
    total = sum(v.total_tasks for _, v in views)
    groups: list[MergedGroup] = []
    if grouped:
        buckets: dict[tuple[object, ...], list[Share]] = {}
        for process, view in views:
            for task in view.tasks:
                base = _base_detail(task.wait.detail)[0]
                key = (task.state, task.coro, task.stack, task.wait.kind, base)
                buckets.setdefault(key, []).append(Share(process, task))
        for shares in buckets.values():
            groups.append(MergedGroup(_stand_in(shares), tuple(shares)))
        groups.sort(key=lambda g: (-g.count, -(g.task.wait.seconds or 0.0), g.task.coro))
    else:
        groups = [MergedGroup(task, (Share(process, task),)) for process, view in views for task in view.tasks]
    notes: tuple[str, ...] = ()
    if limit is not None and len(groups) > limit:
        notes = (f"showing {limit} of {len(groups)} {'groups' if grouped else 'tasks'} (--limit)",)
        groups = groups[:limit]
    return MergedTasks(tuple(results), tuple(groups), grouped, total, notes)


def _stand_in(shares: Sequence[Share]) -> TaskInfo:
    first = shares[0].task
    if len(shares) == 1:
        return first
    base = _base_detail(first.wait.detail)[0]
    objects, noun = 0, ""
    for share in shares:
        prim = share.task.wait.primitive
        if prim is not None:
            objects, noun = objects + 1, noun or f"{prim.kind}s"
        else:
            _, n, what = _base_detail(share.task.wait.detail)
            objects, noun = objects + n, noun or what
    where = f"in {len(shares)} processes"
    detail = f"{base} (on {objects} distinct {noun} {where})" if objects else f"{base} ({where})"
    longest = max((s.task.wait.seconds for s in shares if s.task.wait.seconds is not None), default=None)
    wait = replace(first.wait, primitive=None, tasks=(), seconds=longest, detail=detail, time_left=None)
    return replace(first, wait=wait, count=sum(s.task.count for s in shares), ids=())


@dataclass(frozen=True)
class ProcessFinding:
    process: str
    finding: Finding


def merge_findings(results: Sequence[TargetResult[LeakReport]]) -> tuple[ProcessFinding, ...]:
    """Every process's findings, most severe kind first, then by process."""
    out = [ProcessFinding(process_name(r), f) for r in results if r.value is not None for f in r.value.findings]
    order = {kind: i for i, kind in enumerate(KINDS)}
    out.sort(key=lambda pf: order.get(pf.finding.kind, len(KINDS)))
    return tuple(out)


@dataclass(frozen=True)
class ProcessPrimitive:
    process: str
    state: PrimitiveState


def merge_primitives(results: Sequence[TargetResult[SyncSnapshot]], show_all: bool) -> tuple[ProcessPrimitive, ...]:
    """Each process's primitives (held, locked or waited on unless ``show_all``), by process."""
    out = []
    for r in results:
        if r.value is None:
            continue
        for state in r.value.primitives:
            if show_all or state.holders or state.waiting_tasks or state.primitive.locked:
                out.append(ProcessPrimitive(process_name(r), state))
    return tuple(out)


def many_document(command: str, taken_at: float, results: Sequence[TargetResult[Any]]) -> dict[str, Any]:
    """The JSON of a several-target command: a ``diag.many/1`` wrapper holding, per target,
    its status and its own document (``diag.tasks/1``, ``diag.sync/1`` or ``diag.leaks/1``)
    exactly as the single-target command prints it."""
    targets = []
    for r in results:
        value = r.value
        targets.append({
            "target": r.target.target, "origin": r.target.origin,
            "pid": getattr(getattr(value, "process", None), "pid", None) or r.target.pid,
            "status": r.status, "error": r.error or None, "seconds": round(r.seconds, 6),
            "document": value.to_dict() if value is not None and hasattr(value, "to_dict") else None,
        })
    answered = sum(1 for r in results if r.ok)
    return {"schema": SCHEMA, "command": command, "taken_at": taken_at, "answered": answered,
            "failed": len(results) - answered, "targets": targets}
