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

import heapq
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from diag.errors import UsageError
from diag.model.task_snapshot import TASK_STATES, Sketch, TaskInfo, TaskSnapshot, Wait

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
    groups = GroupBuilder()
    for task in tasks:
        key = groups.key(task.state, task.coro, task.stack, task.wait)
        if not groups.join(key, task.id, task.wait, task.count, task.ids):
            groups.start(key, task)
    return groups.finish()


class GroupBuilder:
    """Groups built one task at a time, for ``group_tasks`` and for dumps that describe
    only the first task of each group in full: ``key`` says which group a task is in,
    ``join`` adds it to a group already started (False if there is none yet), ``start``
    begins one with its first member's whole record, ``finish`` gives the groups.

    Usage::

        groups = GroupBuilder()
        key = groups.key(state, coro, stack, wait)
        if not groups.join(key, task_id, wait):
            groups.start(key, describe(task))
        return groups.finish()
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[object, ...], _Group] = {}
        # Hashing a stack hashes every frame; tasks collected together share their stack
        # tuples, so each distinct tuple object is turned into a small int once.
        self._stack_ids: dict[int, tuple[int, tuple[object, ...]]] = {}
        self._stack_numbers: dict[tuple[object, ...], int] = {}

    def key(self, state: str, coro: str, stack: tuple[object, ...], wait: Wait) -> tuple[object, ...]:
        """Tasks with equal keys are the same story (see ``group_key``)."""
        known = self._stack_ids.get(id(stack))
        if known is None or known[1] is not stack:
            known = self._stack_ids[id(stack)] = (self._stack_numbers.setdefault(stack, len(self._stack_numbers)), stack)
        return (state, coro, known[0], wait.kind, wait.detail)

    def join(self, key: tuple[object, ...], task_id: int, wait: Wait, count: int = 1,
             ids: tuple[int, ...] = ()) -> bool:
        group = self.groups.get(key)
        if group is None:
            return False
        group.add(task_id, wait, count, ids)
        return True

    def start(self, key: tuple[object, ...], first: TaskInfo) -> None:
        group = self.groups[key] = _Group(first)
        group.add(first.id, first.wait, first.count, first.ids)

    def finish(self, firsts: list[TaskInfo] | None = None) -> tuple[TaskInfo, ...]:
        """The groups, biggest first; ``firsts`` gives the first members' records (in the
        order the groups were started) where they were not given to ``start``."""
        out = []
        for i, g in enumerate(self.groups.values()):
            first = firsts[i] if firsts is not None else g.first
            if first is not None:  # every group has its first member by now
                out.append(g.result(first))
        out.sort(key=lambda g: (-g.count, -(g.wait.seconds or 0.0), g.id))
        return tuple(out)


class _Group:
    """One group as it is built; ``every_id`` keeps every member's id (members come in any
    order: the lowest are kept at the end), else the first ``MAX_GROUP_IDS`` as they come."""

    __slots__ = ("first", "count", "ids", "longest", "prims", "awaited", "remotes", "started", "every_id")

    def __init__(self, first: TaskInfo | None, every_id: bool = False) -> None:
        self.first = first
        self.every_id = every_id
        self.count = 0
        self.ids: list[int] = []
        self.longest: float | None = None
        self.prims: set[str] = set()
        self.awaited: set[tuple[int, ...]] = set()
        self.remotes: set[tuple[str, int | None]] = set()
        self.started = 0

    def add(self, task_id: int, wait: Wait, count: int, ids: tuple[int, ...]) -> None:
        self.count += count
        if self.every_id or len(self.ids) < MAX_GROUP_IDS:
            self.ids.extend(ids or (task_id,))
        seconds = wait.seconds
        if seconds is not None and (self.longest is None or seconds > self.longest):
            self.longest = seconds
        if wait.primitive is not None:
            self.prims.add(wait.primitive.id)
        self.awaited.add(wait.tasks)
        self.remotes.add((wait.remote_loop, wait.remote_task))
        if wait.remote_task is not None:
            self.started += count

    def result(self, first: TaskInfo) -> TaskInfo:
        count = self.count
        wait = replace(first.wait, seconds=self.longest)
        if len(self.prims) > 1:
            kind = first.wait.primitive.kind if first.wait.primitive is not None else "object"
            wait = replace(wait, primitive=None, detail=f"{wait.detail} (on {len(self.prims)} distinct {kind}s)")
        elif len(self.awaited) > 1:
            wait = replace(wait, tasks=(), detail=f"{wait.detail} (on {len(self.awaited)} distinct task sets)"
                           if wait.kind == "gather" else f"{wait.detail} (on {len(self.awaited)} distinct tasks)")
        if len(self.remotes) > 1:  # coroutines handed to another loop: started there or not yet
            loops = {r[0] for r in self.remotes}
            where = f"loop {next(iter(loops))}" if len(loops) == 1 else f"{len(loops)} loops"
            wait = replace(wait, remote_loop="", remote_task=None,
                           detail=f"{wait.detail} (on {where}: {self.started} started, "
                                  f"{count - self.started} not started)")
        ids = heapq.nsmallest(MAX_GROUP_IDS, self.ids) if self.every_id else self.ids[:MAX_GROUP_IDS]
        return replace(first, count=count, ids=tuple(ids), wait=wait)


def task_view(snapshot: TaskSnapshot, query: TaskQuery) -> TaskSnapshot:
    """Filter, group (debug 1) and cap a snapshot as the query asks."""
    query.validate()
    cycles = snapshot.await_cycles or await_cycles(snapshot)
    tasks = filter_tasks(snapshot.tasks, query)
    grouped = snapshot.grouped
    if query.debug == 1:
        tasks = group_tasks(tasks)
        grouped = True
    return _capped(snapshot, tasks, grouped, cycles, query)


def _capped(snapshot: TaskSnapshot, tasks: tuple[TaskInfo, ...], grouped: bool,
            cycles: tuple[tuple[int, ...], ...], query: TaskQuery) -> TaskSnapshot:
    notes: tuple[str, ...] = ()
    if query.limit is not None and len(tasks) > query.limit:
        notes = (f"showing {query.limit} of {len(tasks)} {'groups' if grouped else 'tasks'} (--limit)",)
        tasks = tasks[: query.limit]
    return snapshot.with_tasks(tasks, grouped=grouped, notes=notes, await_cycles=cycles)


def sketch_query(query: TaskQuery) -> bool:
    """Whether ``grouped_view`` can answer ``query``: a grouped one without ``--filter``
    (which reads every task's name and frames)."""
    return query.debug == 1 and not query.pattern


def grouped_view(sketches: Iterable[Sketch], describe: Callable[[Sketch], TaskInfo],
                 finish: Callable[[list[TaskInfo]], tuple[TaskSnapshot, list[TaskInfo]]],
                 query: TaskQuery) -> TaskSnapshot:
    """``task_view`` of a grouped query (``sketch_query``) from sketches of the tasks
    (id, state, coroutine, stack, wait, ...; in any order), of which ``describe`` makes
    the whole record of the first (lowest id) of each group only; ``finish`` turns those
    records into the snapshot and their final form.  The same answer as ``task_view`` of
    the whole snapshot, for a fraction of its work when many tasks share a story."""
    query.validate()
    states = set(query.states)
    min_wait = query.min_wait
    groups = GroupBuilder()
    firsts: dict[tuple[object, ...], Sketch] = {}  # each group's lowest-id sketch
    edges: dict[int, tuple[int, ...]] = {}
    # Tasks stuck together mostly come one after another with the same wait (one object):
    # the group of the last task takes them without a look-up.
    last: tuple[object, ...] = ()
    group: _Group | None = None
    key: tuple[object, ...] = ()
    for sketch in sketches:
        task_id, state, coro, stack, wait = sketch[:5]
        if wait.tasks:
            edges[task_id] = wait.tasks
        if states and state not in states:
            continue
        if min_wait is not None and (wait.seconds or 0.0) < min_wait:
            continue
        if group is not None and wait is last[0] and stack is last[1] and coro == last[2] and state == last[3]:
            group.count += 1  # what add() does for a wait the group has taken already
            group.ids.append(task_id)
        else:
            key = groups.key(state, coro, stack, wait)
            group = groups.groups.get(key)
            if group is None:
                group = groups.groups[key] = _Group(None, every_id=True)
                firsts[key] = sketch
            group.add(task_id, wait, 1, ())
            last = (wait, stack, coro, state)
        if task_id < firsts[key][0]:
            firsts[key] = sketch
    # described in id order, as a whole collection would meet them
    records = {k: describe(firsts[k]) for k in sorted(firsts, key=lambda k: firsts[k][0])}
    snapshot, final = finish([records[k] for k in groups.groups])
    cycles = tuple(find_cycles(edges))
    return _capped(snapshot, groups.finish(final), True, cycles, query)


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
