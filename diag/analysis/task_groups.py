"""Pure analysis of task snapshots: filtering, grouping and the awaited-by graph.

Every function here takes snapshots (plain data) and options and returns new data; no
I/O, clocks or asyncio.  Grouping is what makes 100,000 tasks readable: tasks with the
same state, await stack, wait reason and primitive collapse into one entry with a count,
biggest group first, as in ``/debug/pprof/goroutine?debug=1``.

Usage::

    view = task_view(snapshot, TaskQuery(debug=1, min_wait=30))
    for group in view.tasks:
        print(group.count, group.wait.kind)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

from diag.errors import UsageError
from diag.model.task_snapshot import TASK_STATES, TaskInfo, TaskSnapshot

#: Grouped entries keep at most this many member ids; ``count`` still counts them all.
MAX_GROUP_IDS = 1000
DEFAULT_LIMIT = 10_000


@dataclass(frozen=True)
class TaskQuery:
    """What to show: ``debug`` 1 groups identical tasks, 2 lists every task.

    ``pattern`` is a regex matched against task name, coroutine, wait reason, the
    primitive's names and stack functions and files; ``states`` keeps only those states; ``min_wait`` keeps tasks waiting at least
    that many seconds; ``limit`` caps the entries returned (stated in the notes).
    """

    debug: int = 1
    pattern: str | None = None
    states: tuple[str, ...] = ()
    min_wait: float | None = None
    limit: int | None = DEFAULT_LIMIT

    def validate(self) -> None:
        if self.debug not in (1, 2):
            raise UsageError(f"--debug must be 1 or 2, not {self.debug}")
        bad = [s for s in self.states if s not in TASK_STATES]
        if bad:
            raise UsageError(f"unknown state {bad[0]!r}; choose from {', '.join(TASK_STATES)}")
        if self.min_wait is not None and not self.min_wait >= 0:
            raise UsageError("--min-wait must be a number of seconds >= 0")
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")
        compile_pattern(self.pattern)


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """The ``--filter`` regex, compiled; ``UsageError`` with one line for any pattern
    ``re`` refuses (a repeat count past its limit overflows, 500 nested groups recurse)."""
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, MemoryError) as err:
        shown = repr(pattern) if len(pattern) <= 60 else repr(pattern[:56]) + "..."
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"bad --filter regex {shown}: {reason[:200]}") from None


def _matches(task: TaskInfo, rx: re.Pattern[str]) -> bool:
    if rx.search(task.name) or rx.search(task.coro) or rx.search(task.wait.detail):
        return True
    prim = task.wait.primitive
    if prim is not None and any(rx.search(n) for n in prim.names):
        return True
    return any(rx.search(f.function) or rx.search(f.file) for f in task.stack)


def filter_tasks(tasks: tuple[TaskInfo, ...], query: TaskQuery) -> tuple[TaskInfo, ...]:
    rx = compile_pattern(query.pattern)
    states = set(query.states)
    if rx is None and not states and query.min_wait is None:
        return tasks
    out = []
    for task in tasks:
        if states and task.state not in states:
            continue
        if query.min_wait is not None and (task.wait.seconds or 0.0) < query.min_wait:
            continue
        if rx is not None and not _matches(task, rx):
            continue
        out.append(task)
    return tuple(out)


def group_key(task: TaskInfo) -> tuple[object, ...]:
    """Tasks with equal keys are the same story: same state, coroutine, stack and wait."""
    return (task.state, task.coro, task.stack, task.wait.kind, task.wait.detail)


def group_tasks(tasks: tuple[TaskInfo, ...]) -> tuple[TaskInfo, ...]:
    """Collapse identical tasks; each group is its first member with ``count``, ``ids`` and
    the longest wait of the group.  Biggest group first, then longest wait.

    Members waiting on one shared primitive keep it; a group spread over several objects
    of a kind (one Event per request, say) says how many instead, so that 10,000 tasks
    each on its own Event still read as one line.
    """
    groups: dict[tuple[object, ...], list[TaskInfo]] = {}
    # Hashing a stack hashes every frame; tasks collected together share their stack
    # tuples, so each distinct tuple object is turned into a small int once.
    stack_ids: dict[int, int] = {}
    stack_numbers: dict[tuple[object, ...], int] = {}
    for task in tasks:
        number = stack_ids.get(id(task.stack))
        if number is None:
            number = stack_ids[id(task.stack)] = stack_numbers.setdefault(task.stack, len(stack_numbers))
        key = (task.state, task.coro, number, task.wait.kind, task.wait.detail)
        groups.setdefault(key, []).append(task)
    out = []
    for members in groups.values():
        first = members[0]
        count = sum(m.count for m in members)
        ids: list[int] = []
        for m in members:
            ids.extend(m.ids or (m.id,))
            if len(ids) >= MAX_GROUP_IDS:
                break
        longest = max((m.wait.seconds for m in members if m.wait.seconds is not None), default=None)
        wait = replace(first.wait, seconds=longest)
        prims = {m.wait.primitive.id for m in members if m.wait.primitive is not None}
        awaited = {m.wait.tasks for m in members}
        if len(prims) > 1:
            kind = first.wait.primitive.kind if first.wait.primitive is not None else "object"
            wait = replace(wait, primitive=None, detail=f"{wait.detail} (on {len(prims)} distinct {kind}s)")
        elif len(awaited) > 1:
            wait = replace(wait, tasks=(), detail=f"{wait.detail} (on {len(awaited)} distinct task sets)"
                           if wait.kind == "gather" else f"{wait.detail} (on {len(awaited)} distinct tasks)")
        remotes = {(m.wait.remote_loop, m.wait.remote_task) for m in members}
        if len(remotes) > 1:  # coroutines handed to another loop: started there or not yet
            loops = {r[0] for r in remotes}
            started = sum(m.count for m in members if m.wait.remote_task is not None)
            where = f"loop {next(iter(loops))}" if len(loops) == 1 else f"{len(loops)} loops"
            wait = replace(wait, remote_loop="", remote_task=None,
                           detail=f"{wait.detail} (on {where}: {started} started, {count - started} not started)")
        out.append(replace(first, count=count, ids=tuple(ids[:MAX_GROUP_IDS]), wait=wait))
    out.sort(key=lambda g: (-g.count, -(g.wait.seconds or 0.0), g.id))
    return tuple(out)


def task_view(snapshot: TaskSnapshot, query: TaskQuery) -> TaskSnapshot:
    """Filter, group (debug 1) and cap a snapshot as the query asks."""
    query.validate()
    cycles = snapshot.await_cycles or await_cycles(snapshot)
    tasks = filter_tasks(snapshot.tasks, query)
    grouped = snapshot.grouped
    if query.debug == 1:
        tasks = group_tasks(tasks)
        grouped = True
    notes: tuple[str, ...] = ()
    if query.limit is not None and len(tasks) > query.limit:
        notes = (f"showing {query.limit} of {len(tasks)} {'groups' if grouped else 'tasks'} (--limit)",)
        tasks = tasks[: query.limit]
    return snapshot.with_tasks(tasks, grouped=grouped, notes=notes, await_cycles=cycles)


def awaited_by(snapshot: TaskSnapshot) -> dict[int, tuple[int, ...]]:
    """Task id -> ids of the tasks it awaits (directly, or through gather/wait/TaskGroup)."""
    return {t.id: t.wait.tasks for t in snapshot.tasks if t.wait.tasks}


def await_cycles(snapshot: TaskSnapshot) -> tuple[tuple[int, ...], ...]:
    """Cycles in the task -> awaited task graph: tasks that wait for each other forever."""
    return tuple(find_cycles(awaited_by(snapshot)))


def find_cycles(edges: Mapping[int, tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Cycles of a directed graph by depth-first search, each once, from its smallest node."""
    cycles: set[tuple[int, ...]] = set()
    state: dict[int, int] = {}  # 1 = on the current path, 2 = finished
    for root in sorted(edges):
        if state.get(root):
            continue
        path: list[int] = []
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            succ = edges.get(node, ())
            if i < len(succ):
                stack.append((node, i + 1))
                nxt = succ[i]
                if state.get(nxt) == 1:
                    cyc = path[path.index(nxt):]
                    k = cyc.index(min(cyc))
                    cycles.add(tuple(cyc[k:] + cyc[:k]))
                elif not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
    return sorted(cycles)
