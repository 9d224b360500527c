"""Collect a ``SyncSnapshot``: every live asyncio primitive, its holders and waiters.

Primitives are found without the program's help, by one pass over the objects the GC
tracks (bounded in time).  Holders come from ``diag.collect.holders`` (Lock and
Semaphore, and so Condition and BoundedSemaphore); Events and Queues need none: their
state is read.  The reachability proof runs only when asked for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dis
import functools
import gc
import inspect
import itertools
import sys
import threading
import time
import types
from typing import Any

from dataclasses import replace

from diag.collect import event_activity, holders, queue_pools, reach, reachability, task_origins, wait_evidence
from diag.collect.loop_watch import LoopWatch, iter_all_tasks
from diag.collect.safe_read import (_class_dict, _class_mro, clip, future_done, future_field, instance_dict, is_a,
                                    read_attr, task_coroutine, task_name)
from diag.collect.task_collector import (
    MAX_HOLDER_SCAN, CollectOptions, _FrameCache, collect_tasks, describe_primitive, holder_labels, process_info,
    process_notes,
)
from diag.model.sync_snapshot import Holder, PrimitiveState, Reachability, SyncSnapshot
from diag.model.task_snapshot import TaskInfo, TaskSnapshot

#: Only futures awaited at least this long have their owners looked up (a heap scan).
OWNER_MIN_WAIT = 1.0

_PRIMITIVE_TYPES = (asyncio.Lock, asyncio.Semaphore, asyncio.Condition, asyncio.Event, asyncio.Queue)
#: The search for primitives stops after this long (and the snapshot says so).
FIND_BUDGET = 2.0
#: Primitives beyond this many are counted but not listed.
MAX_PRIMITIVES = 5_000
#: Times one collection reads the tasks again to name a holder too new to be among them
#: (a task made while it ran): each read walks every task.  Past that, such a holder is
#: still told alive, unnamed.
MAX_TASK_REREADS = 3


def _live_tasks() -> dict[int, Any]:
    """Every pending task by its diag id, as it is now."""
    return {task_origins.task_seq(t): t for t in iter_all_tasks() if not future_done(t)}


def find_primitives(budget: float = FIND_BUDGET) -> tuple[list[Any], bool]:
    """Every live asyncio primitive the GC tracks; (found, complete)."""
    deadline = time.monotonic() + budget
    found = []
    objects = gc.get_objects()
    for i, obj in enumerate(objects):
        if issubclass(type(obj), _PRIMITIVE_TYPES):  # isinstance would ask every object its __class__
            found.append(obj)
        if i % 65536 == 0 and time.monotonic() > deadline:
            return found, False
    return found, True


def _holder_source(obj: Any) -> Any:
    """A Condition's permits live on its lock."""
    if is_a(obj, asyncio.Condition):
        lock = read_attr(obj, "_lock")
        return lock if is_a(lock, asyncio.Lock) else obj
    return obj


def collect_sync(watch: LoopWatch | None, *, proof: bool = False, exclude: frozenset[int] = frozenset(),
                 proof_budget: float = reachability.DEFAULT_BUDGET,
                 collect_budget: float | None = None) -> SyncSnapshot:
    """Primitives and tasks now, plus the reachability proof when ``proof`` is set;
    ``collect_budget`` bounds the task walk (see ``CollectOptions.budget``)."""
    started = time.monotonic()
    tasks: TaskSnapshot = collect_tasks(watch, CollectOptions(exclude=exclude, budget=collect_budget))
    read_at = time.monotonic()
    live = _live_tasks()
    by_id = {t.id: t for t in tasks.tasks}
    waiting: dict[str, list[tuple[int, float | None]]] = {}
    for info in tasks.tasks:
        prim = info.wait.primitive
        if prim is not None:
            waiting.setdefault(prim.id, []).append((info.id, info.wait.seconds))
    objects, complete = find_primitives()
    notes: list[str] = []
    if not complete:
        notes.append(f"the search for primitives was cut short after {FIND_BUDGET:g}s; some may be missing")
    # Primitives nobody holds or waits on are noise at scale: list the interesting ones first.
    objects.sort(key=lambda o: (not holders.records(_holder_source(o)), hex(id(o)) not in waiting))
    if len(objects) > MAX_PRIMITIVES:
        notes.append(f"showing {MAX_PRIMITIVES} of {len(objects)} primitives")
        objects = objects[:MAX_PRIMITIVES]
    interesting = [o for o in objects if holders.records(_holder_source(o)) or hex(id(o)) in waiting]
    try:
        tasks = with_owners(tasks, live, {hex(id(o)): o for o in interesting})
    except Exception:
        pass
    try:
        tasks = with_peer_ends(tasks, live)
    except Exception:
        pass
    lost: dict[str, tuple[tuple[str, str, int, int], object]] = {}
    try:
        lost = _lost_pool_items(tasks, live, {hex(id(o)): o for o in interesting})
        if lost:
            tasks = _with_pool_keepers(tasks, lost)
    except Exception:
        pass
    try:
        tasks = with_users(tasks, live, also=frozenset(q for q, (found, _) in lost.items() if found[2] == found[3]))
    except Exception:
        pass
    labels = holder_labels(objects if len(objects) <= MAX_HOLDER_SCAN else interesting)
    # the names the tasks' own frames use for what they wait on (see Primitive.aliases)
    named = {p.id: p for p in (info.wait.primitive for info in tasks.tasks) if p is not None and p.names}
    frames = _FrameCache(True)
    now = time.monotonic()
    states = []
    refreshes = MAX_TASK_REREADS
    for obj in objects:
        prim = describe_primitive(obj, labels.get(id(obj), ""))
        if prim is None:
            continue
        known = named.get(prim.id)
        if known is not None:
            label = prim.label or known.label
            prim = replace(prim, label=label, aliases=tuple(n for n in known.names if n != label))
        source = _holder_source(obj)
        records = holders.records(source)
        if refreshes and any(rec.task_id is not None and rec.task_id not in live and rec.since >= read_at
                             for rec in records):
            # A permit taken since the tasks were read, by a task they were read without:
            # one made meanwhile (the program runs on).  Read the tasks again, to name it,
            # then the records: one that released and ended since is gone from them.
            refreshes -= 1
            read_at = time.monotonic()
            live = _live_tasks()
            records = holders.records(source)
        held = []
        skipped = _skipped_releases(records, live, source)
        for n, rec in enumerate(records):
            task = live.get(rec.task_id) if rec.task_id is not None else None
            holder_info = by_id.get(rec.task_id) if rec.task_id is not None else None
            # Not among the tasks, and took the permit after they were read: a task too new
            # to have been seen, not one that ended (that would be a leaked permit).
            newer = task is None and rec.task_id is not None and rec.since >= read_at
            held.append(Holder(
                task_id=rec.task_id,
                task_name=None if task is None else clip(task_name(task)),
                task_alive=task is not None or newer,
                task_state=(holder_info.state if holder_info is not None
                            else ("finished" if task is None and not newer else "waiting")),
                site=tuple(frames.get(code, _line(code, offset)) for code, offset in rec.site),
                held_seconds=max(0.0, now - rec.since),
                skipped_release=skipped.get(n, ()),
            ))
        waiters = waiting.get(prim.id, [])
        longest = max((s for _, s in waiters if s is not None), default=None)
        activity = holders.last_activity(source)
        if activity is None and is_a(obj, asyncio.Event):  # an event's activity is its last set()
            last = event_activity.last_set(obj)
            activity = None if last is None else last[1]
        handoff = holders.last_handoff(source)
        cleared = event_activity.last_clear(obj) if is_a(obj, asyncio.Event) else None
        states.append(PrimitiveState(
            primitive=prim, holders=tuple(held), waiting_tasks=tuple(sorted(t for t, _ in waiters)),
            longest_wait=longest, idle_seconds=None if activity is None else max(0.0, now - activity),
            tracked=holders.installed() and is_a(source, (asyncio.Lock, asyncio.Semaphore)),
            handoff_seconds=None if handoff is None else max(0.0, now - handoff),
            cleared_seconds=None if cleared is None else max(0.0, now - cleared[0]),
            cleared_by=None if cleared is None else cleared[1],
            lost=lost[prim.id][0] if prim.id in lost else None,
        ))
    with watch.own_work() if watch is not None else contextlib.nullcontext():
        proof_result = reachability.prove(budget=proof_budget) if proof else Reachability(False)
    del live, objects, interesting, lost
    return SyncSnapshot(
        taken_at=tasks.taken_at, process=process_info(), tasks=tasks, primitives=tuple(states),
        reachability=proof_result, holders_tracked=holders.installed(),
        notes=process_notes() + tuple(notes) + (f"collected in {time.monotonic() - started:.3f}s",),
    )


def _lost_pool_items(tasks: TaskSnapshot, live: dict[int, Any],
                     queues: dict[str, Any]) -> dict[str, tuple[tuple[str, str, int, int], object]]:
    """For the empty queues that tasks have waited on in ``get()`` for a while, with no end:
    what each one's keeper keeps besides, and how much of it nothing else holds
    (``queue_pools.lost_items``)."""
    waits = []
    labels = {}
    for info in tasks.tasks:
        prim = info.wait.primitive
        if (info.wait.kind != "queue_get" or prim is None or prim.size != 0 or info.state != "waiting"
                or (info.wait.seconds or 0.0) < OWNER_MIN_WAIT or info.wait.deadline is not None
                or prim.id not in queues or info.id not in live):
            continue
        waits.append((live[info.id], queues[prim.id], prim.id))
        labels[prim.id] = prim.label
    return queue_pools.lost_items(waits, labels) if waits else {}


def _with_pool_keepers(tasks: TaskSnapshot, lost: dict[str, tuple[tuple[str, str, int, int], object]]) -> TaskSnapshot:
    """The waits on those queues with the pool that keeps each among their keepers."""
    out = []
    for info in tasks.tasks:
        prim = info.wait.primitive
        found = lost.get(prim.id) if prim is not None and info.wait.kind == "queue_get" else None
        if found is not None and hex(id(found[1])) not in info.wait.owner_ids:
            info = replace(info, wait=replace(info.wait, owner_ids=(hex(id(found[1])),) + info.wait.owner_ids))
        out.append(info)
    return replace(tasks, tasks=tuple(out))


def _line(code: Any, offset: int) -> int:
    return task_origins.origin_line(code, offset)


#: Awaits followed down a holder's coroutine chain, at most.
_CHAIN_DEPTH = 64
#: Holders of one primitive whose acquiring function is looked at, at most.
MAX_RELEASE_CHECKS = 64


_TYPE_NAME = type.__dict__["__name__"].__get__
_TYPE_MODULE = type.__dict__["__module__"].__get__
#: The Python ``Future.__await__`` (a generator: what awaiting a pure-Python future suspends on).
_PY_AWAIT_CODE = getattr(getattr(getattr(asyncio.futures, "_PyFuture", None), "__await__", None), "__code__", None)


def _future_end(node: object) -> bool:
    """Whether ``node`` is what awaiting an asyncio future suspends on: the C future's
    iterator (``_asyncio.FutureIter``), or the pure-Python ``Future.__await__``."""
    kind = type(node)
    if kind is types.GeneratorType:
        return _PY_AWAIT_CODE is not None and node.gi_code is _PY_AWAIT_CODE  # type: ignore[attr-defined]
    try:  # read through type's own descriptors: a metaclass may trap the attributes
        return bool(_TYPE_NAME(kind) == "FutureIter" and _TYPE_MODULE(kind) == "_asyncio")
    except Exception:
        return False


def _chain_frames(task: object) -> list[tuple[types.CodeType, int]] | None:
    """(code, byte offset it is suspended at, -1 if unknown) of every coroutine (or
    generator) in ``task``'s await chain, outermost first, when the task is suspended on
    an awaitable at its end; None when it is running (a running coroutine shows no more of
    its chain) or the chain cannot be read to its end."""
    node = task_coroutine(future_field(task, "_coro"))
    out: list[tuple[types.CodeType, int]] = []
    for _ in range(_CHAIN_DEPTH):
        kind = type(node)
        if _future_end(node):
            return out if out else None  # a future: the chain's end
        if kind is types.CoroutineType:
            code, frame, nxt, running = node.cr_code, node.cr_frame, node.cr_await, node.cr_running  # type: ignore[attr-defined]
        elif kind is types.GeneratorType:
            code, frame, nxt, running = node.gi_code, node.gi_frame, node.gi_yieldfrom, node.gi_running  # type: ignore[attr-defined]
        elif kind is types.AsyncGeneratorType:
            code, frame, nxt, running = node.ag_code, node.ag_frame, node.ag_await, node.ag_running  # type: ignore[attr-defined]
        else:
            # running or not started (None), or an awaitable that does not show what it
            # runs (an async generator's ``asend``): the chain is not all there
            return None
        if running:
            return None
        out.append((code, frame.f_lasti if type(frame) is types.FrameType else -1))
        node = nxt
    return None


def _skipped_releases(records: list[holders.HolderRecord], live: dict[int, Any],
                      source: object) -> dict[int, tuple[int, ...]]:
    """For the records of permits held by live tasks (by index in ``records``): the lines
    where the function that took the permit releases it on every path by which it returns
    (``reach.release_lines``), when that function is no longer in the holder's await chain
    and no code still to run in the chain names a ``release``: it left by an exception
    past them, and nothing the task still runs will give the permit back.  The records
    are read again at the end: a permit released since (its function then returned) is
    no such case.  At most ``MAX_RELEASE_CHECKS`` holders of one primitive are looked at."""
    found: dict[int, tuple[int, ...]] = {}
    looked = 0
    for n, rec in enumerate(records):
        task = live.get(rec.task_id) if rec.task_id is not None else None
        if task is None or not rec.site:
            continue
        looked += 1
        if looked > MAX_RELEASE_CHECKS:
            break
        code, offset = rec.site[0]
        if type(code) is not types.CodeType or not code.co_flags & inspect.CO_COROUTINE:
            continue  # (an async generator's frame leaves the chain at each yield, alive)
        try:
            lines = reach.release_lines(code, offset)
            if not lines:
                continue  # (most: an ``async with``, a helper's acquire; read once per site)
            chain = _chain_frames(task)
            if chain is None or any(c is code for c, _ in chain):
                continue
            if any("release" in reach.names_ahead(c, lasti) for c, lasti in chain):
                continue  # code still to run in the task may give it back
        except Exception:
            continue
        found[n] = lines
    if found:
        still = set(holders.records(source))
        found = {n: lines for n, lines in found.items() if records[n] in still}
    return found


#: Waits on primitives whose keeper may be a closed connection (a stream's data event).
OWNER_KINDS = frozenset({"event", "condition", "queue_get", "queue_put"})


#: Tasks looked at for methods of the objects keeping awaited futures (each a look at its
#: coroutine's references: about a microsecond).
MAX_RUNNER_SCAN = 50_000
#: Tasks named per waiting task (after the task itself, when it is one of the keeper's).
MAX_RUNNERS = 8


_LOOP_JUMPS: dict[types.CodeType, tuple[tuple[int, int], ...]] = {}


def _waits_in_a_loop(coro: Any) -> bool:
    """Whether a suspended coroutine waits inside a loop of its own code (a backward jump
    from after its current instruction to before it): a worker or reader waiting for its
    next item, not a one-shot call waiting for its answer.  An ``await`` is a small loop of
    its own (``JUMP_BACKWARD_NO_INTERRUPT`` back to its ``SEND``), and 3.12's handler of a
    ``throw()`` into it jumps back after ``CLEANUP_THROW``: neither is counted."""
    frame = getattr(coro, "cr_frame", None)
    if type(frame) is not types.FrameType:
        return False
    code = frame.f_code
    jumps = _LOOP_JUMPS.get(code)
    if jumps is None:
        try:
            found, before = [], ""
            for i in dis.get_instructions(code):
                if i.opname == "JUMP_BACKWARD" and before != "CLEANUP_THROW" and isinstance(i.argval, int):
                    found.append((int(i.argval), i.offset))
                before = i.opname
            jumps = tuple(found)
        except Exception:
            jumps = ()
        if len(_LOOP_JUMPS) >= 1024:
            _LOOP_JUMPS.clear()
        _LOOP_JUMPS[code] = jumps
    at = frame.f_lasti
    return any(target <= at < offset for target, offset in jumps)


def owner_tasks(owner_ids: set[int], live: dict[int, Any]) -> tuple[dict[int, list[int]], set[int]]:
    """Keeping object's id -> the tasks whose coroutine is one of its methods:
    code whose first argument is ``self``, of a function defined on the object's class,
    that refers to the object.  Read from the coroutine's references, never its
    ``f_locals``.  A client's reader loop is so found for the requests whose futures it
    keeps.  Also returns those of the tasks that wait inside a loop of their coroutine's own
    code (``_waits_in_a_loop``): a keeper's workers."""
    if not owner_ids:
        return {}, set()
    found: dict[int, list[int]] = {}
    looping: set[int] = set()
    for n, (tid, task) in enumerate(live.items()):
        if n >= MAX_RUNNER_SCAN:
            break
        coro = task_coroutine(future_field(task, "_coro"))
        code = getattr(coro, "cr_code", None) if type(coro) is types.CoroutineType else None
        if code is None or code.co_argcount < 1 or code.co_varnames[:1] != ("self",) or "." not in code.co_qualname:
            continue
        if coro.cr_running:  # type: ignore[attr-defined]  # the loop thread's own step, mid-way: left alone
            continue
        try:
            refs = gc.get_referents(coro)
        except Exception:
            continue
        for ref in refs:
            if id(ref) in owner_ids and any(code.co_qualname.startswith(k.__qualname__ + ".")
                                            for k in type(ref).__mro__[:-1]):
                found.setdefault(id(ref), []).append(tid)
                if _waits_in_a_loop(coro):
                    looping.add(tid)
                break
        del refs, coro
    return found, looping


def with_peer_ends(tasks: TaskSnapshot, live: dict[int, Any]) -> TaskSnapshot:
    """``tasks`` with ``Wait.peer_tasks`` set for long client stream reads whose other end
    this process serves itself: the tasks that can answer there (``wait_evidence.server_ends``)."""
    wanted: dict[tuple[str, str], list[int]] = {}
    for info in tasks.tasks:
        traffic = info.wait.traffic
        if (info.wait.kind == "stream_read" and info.wait.stream_side == "client" and traffic is not None
                and traffic.local and traffic.peer and (info.wait.seconds or 0.0) >= OWNER_MIN_WAIT):
            wanted.setdefault((traffic.peer, traffic.local), []).append(info.id)  # as the server end sees it
    if not wanted:
        return tasks
    ends = wait_evidence.server_ends(live, set(wanted), MAX_RUNNER_SCAN)
    peers_of = {tid: tuple(ends[key][:MAX_RUNNERS]) for key, tids in wanted.items() if ends.get(key) for tid in tids}
    if not peers_of:
        return tasks
    return replace(tasks, tasks=tuple(replace(info, wait=replace(info.wait, peer_tasks=peers_of[info.id]))
                                      if info.id in peers_of else info for info in tasks.tasks))


#: Users listed per wait: a thing more tasks refer to is in common use, and left unjudged.
MAX_USERS = 32
#: Coroutines followed down each task's await chain when looking for users.
USER_DEPTH = 16
#: Looks again at a task the loop thread is stepping, after a pause that lets it finish.
RUNNING_RETRIES = 3
RUNNING_PAUSE = 0.002


#: Items of a keeper's containers looked at for what it keeps.
MAX_KEPT_ITEMS = 256


_SEQUENCES = (list, tuple, set, frozenset, collections.deque)
_MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict)


def _items(value: object) -> list[Any] | None:
    """The first ``MAX_KEPT_ITEMS`` + 1 items of a plain container (a dict's values), or
    None for anything else (types compared by identity: no metaclass runs)."""
    kind = type(value)
    if any(kind is k for k in _SEQUENCES):
        return list(itertools.islice(value, MAX_KEPT_ITEMS + 1))  # type: ignore[call-overload]
    if any(kind is k for k in _MAPPINGS):
        return list(itertools.islice(dict.values(value), MAX_KEPT_ITEMS + 1))  # type: ignore[arg-type]
    return None


def _holds(value: object, inner: set[int]) -> bool:
    if id(value) in inner:
        return True
    items = _items(value)
    return items is not None and any(id(v) in inner for v in items)


#: What ``keeper_names`` says of a container that holds the awaited thing itself: whoever
#: holds the container reaches it by indexing, with no name to tell.
ANY_NAME = "*"


def keeper_names(keeper: object, inner: set[int], target: int, depth: int = 2) -> frozenset[str]:
    """The names code uses to reach, from ``keeper``, what it keeps (``inner``: the ids of the
    awaited thing, ``target``, and of the keepers between): the attributes holding it,
    directly or in a container, and the methods of its class whose code reads one of them.
    A plain container (a list of shards) is reached through its items: their names, or
    ``ANY_NAME`` when it holds the awaited thing itself (a dict of pending futures)."""
    items = _items(keeper)
    if items is not None:
        if len(items) > MAX_KEPT_ITEMS:
            return frozenset({ANY_NAME})  # not read to the end: any holder may reach it
        out: set[str] = set()
        for item in items:
            if id(item) == target:
                return frozenset({ANY_NAME})
            if id(item) in inner and depth > 0:
                out |= keeper_names(item, inner - {id(item)}, target, depth - 1)
        return frozenset(out)
    attrs = instance_dict(keeper)
    if attrs is None:
        return frozenset({ANY_NAME})  # slots, or a class of its own: what reaches it cannot be told
    names = {name for name, value in list(attrs.items()) if type(name) is str and _holds(value, inner)}
    if not names:
        return frozenset({ANY_NAME})
    codes: dict[str, types.CodeType] = {}
    try:
        for klass in _class_mro(type(keeper))[:-1]:
            for name, fn in list(_class_dict(klass).items()):
                if type(fn) is types.FunctionType and type(name) is str and not name.startswith("__"):
                    codes.setdefault(name, fn.__code__)  # (not __init__ and its kind: they set it up)
    except Exception:
        return frozenset({ANY_NAME})
    # the methods that read one of them, and those that call such a method (self.close()
    # calling self._finish(), which sets the event), to a fixed point
    reach_names = set(names)
    grew = True
    while grew:
        grew = False
        for name, code in codes.items():
            if name not in reach_names and reach_names.intersection(code.co_names):
                reach_names.add(name)
                grew = True
    return frozenset(reach_names)


def keeper_levels(keeper: object, inner: set[int], target: int, depth: int = 4) -> tuple[frozenset[str], ...]:
    """The names code must use, level by level, to get from ``keeper`` down to what it keeps
    (``inner``: the ids of the awaited thing, ``target``, and of the keepers between): at
    each object, one of its ``keeper_names``; a plain container is indexed, with no name.
    A cache holding shards holding the awaited event: (``shards``...), (``ready``...)."""
    levels: list[frozenset[str]] = []
    obj = keeper
    for _ in range(depth + 1):
        if id(obj) == target:
            break
        items = _items(obj)
        if items is not None:
            nxt = next((i for i in items if id(i) in inner), None) if len(items) <= MAX_KEPT_ITEMS else None
            if nxt is None:
                levels.append(frozenset({ANY_NAME}))
                break
            obj = nxt
            continue
        names = keeper_names(obj, inner, target, 0)
        levels.append(names)
        attrs = instance_dict(obj)
        if ANY_NAME in names or attrs is None:
            break
        nxt = next((v for v in list(attrs.values()) if _holds(v, inner)), None)
        if nxt is None:
            break
        obj = nxt
    return tuple(levels)


def _reaches(levels: tuple[frozenset[str], ...], chain: set[str]) -> bool:
    return all(ANY_NAME in names or not names.isdisjoint(chain) for names in levels)


def _chain_names(task: Any) -> set[str]:
    """The names the code of ``task``'s await chain may still read: each coroutine's code
    from where it is suspended on (``reach.names_ahead``: a loop around the await counts
    whole), and the module functions it calls by name."""
    first = task_coroutine(future_field(task, "_coro"))
    chain: list[Any] = []
    coro = first
    for _ in range(USER_DEPTH):
        if type(coro) is not types.CoroutineType and type(coro) is not types.GeneratorType:
            break
        chain.append(coro)
        coro = coro.cr_await if type(coro) is types.CoroutineType else coro.gi_yieldfrom
    # the functions whose calls are running in this chain (a coroutine's own, or the main()
    # a wrapper holds and awaits): their code still to run is read where it is suspended
    running = {id(getattr(c, "cr_code", None) or getattr(c, "gi_code", None)) for c in chain}
    names: set[str] = set()
    for coro in chain:
        found = reach.coroutine_names(coro)
        if found is None:
            break
        names |= found
        # a function or bound method it holds (a callback in a local) may be called later
        try:
            refs = gc.get_referents(coro)
        except Exception:
            refs = []
        for ref in refs:
            if type(ref) is types.CellType:
                try:
                    ref = ref.cell_contents
                except ValueError:
                    continue
            if type(ref) is types.FunctionType and id(ref.__code__) in running:
                continue
            reach.callable_names(ref, names)
        del refs
    del chain, coro, first
    return names


def _referred(task: Any, wanted: dict[int, list[int]]) -> dict[int, object] | None:
    """The objects of ``wanted`` (by id) that the coroutines of ``task``'s await chain refer
    to (their locals and arguments, read through their references, never ``f_locals``);
    None for a task the loop thread is stepping now, which is left alone."""
    coro = task_coroutine(future_field(task, "_coro"))
    found: dict[int, object] = {}
    kept: set[int] = set()  # found where a coroutine of the chain can still use it
    for _ in range(USER_DEPTH):
        if type(coro) is types.CoroutineType:
            if coro.cr_running:
                return None
            nxt = coro.cr_await
        elif type(coro) is types.GeneratorType:
            if coro.gi_running:
                return None
            nxt = coro.gi_yieldfrom
        else:
            break
        try:
            refs = gc.get_referents(coro)
        except Exception:
            refs = []
        seen: dict[int, int] = {}  # id -> how many of the coroutine's references lead to it
        for ref in refs:
            if type(ref) is types.CellType:  # a closure's variable: what it holds
                try:
                    ref = ref.cell_contents
                except ValueError:  # empty
                    continue
            if id(ref) in wanted:
                found.setdefault(id(ref), ref)
                seen[id(ref)] = seen.get(id(ref), 0) + 1
        ref = None
        del refs  # (held here, a cell would look shared to _unread_locals)
        if seen:
            for oid in _unread_locals(coro, seen):
                if found.get(oid) is not None and oid not in kept:
                    del found[oid]
            kept.update(oid for oid in seen if oid in found)
        coro = nxt
    return found


#: ``_origins.frame_locals(coro)``: a suspended coroutine's local slots by name; None
#: without the accelerator (then every local a coroutine holds counts as read).
_frame_locals = getattr(task_origins._fast, "frame_locals", None)


def _unread_locals(coro: Any, seen: dict[int, int]) -> set[int]:
    """Of the objects ``coro`` refers to (``seen``: id -> how many of its references lead
    there), those it holds only in local variables that its code still to run never reads:
    it cannot use them.  Read through ``_origins.frame_locals`` (no ``f_locals``); a
    closure's cell that a live function shares counts as read (that function may run), and
    so does an object the frame also holds elsewhere (on its value stack)."""
    if _frame_locals is None or sys.version_info[:2] not in reach._TESTED:
        return set()
    try:
        slots = _frame_locals(coro)
    except Exception:
        return set()
    if not slots:
        return set()
    names: dict[int, list[str]] = {}
    for name, value, shared in slots:
        if shared:
            continue
        if type(value) is types.CellType:  # a cell only this frame holds: its own code reads it
            try:
                value = value.cell_contents
            except ValueError:
                continue
        if id(value) in seen:
            names.setdefault(id(value), []).append(name)
    only_locals = {oid for oid, held in names.items() if seen[oid] <= len(held)}
    if not only_locals:
        return set()
    frame = coro.cr_frame if type(coro) is types.CoroutineType else coro.gi_frame
    if frame is None:
        return set()
    read = reach.locals_ahead(frame.f_code, frame.f_lasti)
    del frame
    if read is None:
        return set()
    return {oid for oid in only_locals if read.isdisjoint(names[oid])}


#: Stands in ``Wait.users`` for a loop callback (a timer, a ready handle) or a thread whose
#: function or arguments hold what is awaited or its keeper: it runs without any task.
OUTSIDE_TASKS = -1
#: Handles of each loop looked at for such callbacks.
MAX_HANDLES = 10_000


def _callable_refs(fn: object, args: object) -> list[object]:
    """What a scheduled callable holds: a bound method's object, a ``functools.partial``'s
    function and arguments, and the call's own arguments."""
    out: list[object] = []
    if type(fn) is types.MethodType:
        out.append(fn.__self__)
    elif type(fn) is functools.partial:
        out.append(fn.func)
        out.extend(fn.args)
        if type(fn.func) is types.MethodType:
            out.append(fn.func.__self__)
    if type(args) is tuple:
        out.extend(args)
    return out


def _outside_users(live: dict[int, Any], wanted: dict[int, list[int]]) -> set[int]:
    """The ids in ``wanted`` that a loop callback (asyncio's timers and ready handles) or a
    live thread's function or arguments hold."""
    found: set[int] = set()
    loops = {id(loop): loop for loop in (future_field(t, "_loop") for t in itertools.islice(live.values(), 1000))
             if loop is not None}
    for loop in loops.values():
        for field in ("_scheduled", "_ready"):
            handles = read_attr(loop, field)
            if type(handles) is not list and type(handles) is not collections.deque:
                continue  # uvloop's are C
            for handle in itertools.islice(list(handles), MAX_HANDLES):
                if type(handle) is not asyncio.Handle and type(handle) is not asyncio.TimerHandle:
                    continue
                for ref in _callable_refs(read_attr(handle, "_callback"), read_attr(handle, "_args")):
                    if id(ref) in wanted:
                        found.add(id(ref))
    for thread in threading.enumerate():
        for ref in _callable_refs(read_attr(thread, "_target"), read_attr(thread, "_args")):
            if id(ref) in wanted:
                found.add(id(ref))
    return found


def _unfinished_join(info: TaskInfo) -> bool:
    """A ``Queue.join()`` on an empty queue with items taken and not marked done."""
    prim = info.wait.primitive
    return (info.wait.detail == "Queue.join" and prim is not None and prim.size == 0
            and (prim.unfinished or 0) > 0)


def with_users(tasks: TaskSnapshot, live: dict[int, Any], also: frozenset[str] = frozenset()) -> TaskSnapshot:
    """``tasks`` with ``Wait.users`` set for long waits whose other side may be gone: what
    they wait on (or a keeper of it) was used by a task or thread that died, the keeper's
    connection is closed, a ``Queue.join()`` waits for items taken and never marked done,
    or a gather runs the task beside one that has ended, or it waits on a queue of ``also``
    (a pool's, whose items all left it and nothing holds).  Each live task's await chain is looked at once, for references to what they
    wait on and to its keepers; a task the loop is stepping now, or more tasks than
    ``MAX_RUNNER_SCAN``, leave the answer unknown (None).  A user that itself waits for
    work (on a queue, an event, a condition) is asked the same question, once: whoever
    could hand it work (``Wait.relay``)."""
    touched = {obj for dead in tasks.dead_tasks for obj in dead.touched}
    # the tasks a gather runs beside one that has ended already: what the ended one fed them
    # may never come
    beside_ended = {child for t in tasks.tasks if t.wait.kind == "gather" and t.wait.detail == "gather"
                    and t.wait.finished for child in t.wait.tasks}
    ask = _Asked()
    quiet: set[int] = set()  # waits with no sign of a gone side, asked whether anything can still act
    piped: set[int] = set()  # Process.wait()s for a child blocked on a pipe: can another task read it?
    for info in tasks.tasks:
        key = info.wait.target
        if not key or info.main or info.state != "waiting" or (info.wait.seconds or 0.0) < OWNER_MIN_WAIT:
            continue
        pipe = _paused_pipe(info, live.get(info.id))
        if pipe is not None:
            process, reader = pipe
            piped.add(info.id)
            ask.targets[info.id] = hex(id(reader))
            ask.target_of[info.id] = id(reader)
            ask.wanted.setdefault(id(reader), []).append(info.id)
            # what keeps the pipe's reader: the process, and what keeps that (a list of them,
            # an object of the program's)
            ask.wanted.setdefault(id(process), []).append(info.id)
            ask.inner[(info.id, id(process))] = {id(reader)}
            for keeper in _holders_of(process):
                ask.wanted.setdefault(keeper, []).append(info.id)
                ask.inner[(info.id, keeper)] = {id(reader), id(process)}
            del pipe, process, reader
            continue
        if not (info.wait.owner_closed or key in touched or any(o in touched for o in info.wait.owner_ids)
                or _unfinished_join(info) or info.id in beside_ended or key in also):
            task = live.get(info.id)
            if not _quiet_candidate(info) or task is None or reach.in_loop(task_coroutine(future_field(task, "_coro"))) is not False:
                continue  # (a wait inside a loop is a worker's, for its next piece of work)
            quiet.add(info.id)
        ask.add(info)
    if not ask.targets or len(live) > MAX_RUNNER_SCAN:
        return tasks
    users: dict[int, set[int] | None] = {tid: set() for tid in ask.targets}
    if not _ask_users(tasks, live, ask, users):
        return tasks
    relays = _relays(tasks, ask, users)
    if relays:
        more = _Asked()
        for info in relays:
            more.add(info)
        relay_users: dict[int, set[int] | None] = {tid: set() for tid in more.targets}
        if _ask_users(tasks, live, more, relay_users):
            users.update(relay_users)
            ask.merge(more)
        else:
            relays = []
    unreached: set[int] = set()
    if piped and reach.busy_threads({loop.thread_id for loop in tasks.loops if loop.thread_id is not None}):
        for tid in piped:
            users[tid] = None  # a thread busy in the program's code may read it
    relayed = {info.id for info in relays}
    beside = beside_ended.intersection(ask.targets)  # (a weak sign by itself: asked as the quiet ones)
    if quiet or relayed or beside:
        asked = {tid for tid in quiet | relayed | beside
                 if users.get(tid) is not None and OUTSIDE_TASKS not in (users[tid] or ())}
        if asked:
            unreached = _unreached(asked, tasks, live, ask.target_of, ask.wanted, users)
    del ask
    return replace(tasks, tasks=tuple(
        replace(info, wait=replace(info.wait, users=tuple(sorted(listed)), unreached=info.id in unreached,
                                   relay=info.id in relayed))
        if (listed := users.get(info.id, None)) is not None
        else info for info in tasks.tasks))


class _Asked:
    """The waits whose users are looked for, and what to look for: what each waits on and
    its keepers (``wanted``: object id -> the waiting tasks), what each keeper keeps."""

    def __init__(self) -> None:
        self.targets: dict[int, str] = {}  # waiting task id -> what it waits on
        self.wanted: dict[int, list[int]] = {}  # object id -> the waiting tasks it is the target or a keeper of
        self.inner: dict[tuple[int, int], set[int]] = {}  # (waiting task, keeper id) -> ids of what that keeper keeps
        self.target_of: dict[int, int] = {}  # waiting task -> the id of what it waits on

    def add(self, info: TaskInfo) -> None:
        self.targets[info.id] = info.wait.target
        path: set[int] = set()
        for obj in (info.wait.target,) + info.wait.owner_ids:
            try:
                oid = int(obj, 16)
            except ValueError:
                continue
            self.wanted.setdefault(oid, []).append(info.id)
            if path:
                self.inner[(info.id, oid)] = set(path)
            else:
                self.target_of[info.id] = oid
            path.add(oid)

    def merge(self, other: _Asked) -> None:
        self.targets.update(other.targets)
        for oid, waiters in other.wanted.items():
            self.wanted.setdefault(oid, []).extend(waiters)
        self.inner.update(other.inner)
        self.target_of.update(other.target_of)


#: Waits of a user that, woken, might pass work on: asked who can wake it in turn.
RELAY_KINDS = frozenset({"queue_get", "event", "condition"})
#: Users so asked about, at most, in one snapshot.
MAX_RELAYS = 64


def _relays(tasks: TaskSnapshot, ask: _Asked, users: dict[int, set[int] | None]) -> list[TaskInfo]:
    """The users of the asked waits that wait themselves for work or a signal, with no
    deadline (an idle worker on its queue): only once woken could they act, so who can
    wake them is the next question."""
    wanted = {u for mine in users.values() if mine for u in mine if u != OUTSIDE_TASKS and u not in ask.targets}
    out = []
    for info in tasks.tasks:
        wait = info.wait
        if (info.id in wanted and not info.main and info.state == "waiting" and wait.kind in RELAY_KINDS
                and wait.target and wait.deadline_known and wait.deadline is None
                and (wait.seconds or 0.0) >= OWNER_MIN_WAIT):
            out.append(info)
            if len(out) >= MAX_RELAYS:
                break
    return out


def _ask_users(tasks: TaskSnapshot, live: dict[int, Any], ask: _Asked, users: dict[int, set[int] | None]) -> bool:
    """Fill ``users`` (waiting task id -> the other live tasks whose code may use what it
    waits on, ``OUTSIDE_TASKS`` for a loop callback or thread; None: too many, or unknown)
    for ``ask``'s waits; False when a task the loop is stepping now leaves it unknown."""
    targets, wanted, inner, target_of = ask.targets, ask.wanted, ask.inner, ask.target_of
    # A module global is reached through the module's namespace, never a frame's own
    # references: code that names it uses it.
    globals_of: dict[str, list[int]] = {}  # global name -> the waiting tasks whose target it is
    for info in tasks.tasks:
        prim = info.wait.primitive
        if info.id in targets and prim is not None and "." in prim.label:
            module, _, name = prim.label.rpartition(".")
            namespace = instance_dict(sys.modules.get(module))
            if namespace is not None and name.isidentifier() and hex(id(namespace.get(name))) == prim.id:
                globals_of.setdefault(name, []).append(info.id)
    on_same: dict[str, set[int]] = {}
    keys = set(targets.values())
    for info in tasks.tasks:
        key = info.wait.target
        if key in keys:
            on_same.setdefault(key, set()).add(info.id)
    for ref in _outside_users(live, wanted):
        for waiter in wanted[ref]:
            mine = users[waiter]
            if mine is not None:
                mine.add(OUTSIDE_TASKS)
    names_of: dict[tuple[int, int], tuple[frozenset[str], ...]] = {}
    # Served on the program's own loop (diag.aiohttp), the tasks this loop is stepping now are
    # diag's own request and those it runs in (an eager task runs inside its creator's step).
    try:
        own_loop: object = asyncio.get_running_loop()
    except RuntimeError:
        own_loop = None
    for tid, task in live.items():
        if own_loop is not None and future_field(task, "_loop") is own_loop and _referred(task, {}) is None:
            continue
        hits = _referred(task, wanted)
        for _ in range(RUNNING_RETRIES):
            if hits is not None:
                break
            time.sleep(RUNNING_PAUSE)  # gives the GIL back: the loop thread may end its step
            hits = _referred(task, wanted)
        if hits is None:
            return False  # the loop is mid-step in this task: it may be using any of them
        chain: set[str] | None = None
        if globals_of:
            chain = _chain_names(task)
            for name in chain.intersection(globals_of):
                for waiter in globals_of[name]:
                    mine = users[waiter]
                    if mine is not None and tid != waiter and tid not in on_same.get(targets[waiter], ()):
                        mine.add(tid)
                        if len(mine) > MAX_USERS:
                            users[waiter] = None
        for ref, found in hits.items():
            for waiter in wanted[ref]:
                mine = users[waiter]
                if mine is None or tid == waiter or tid in on_same.get(targets[waiter], ()):
                    continue  # (a wait with too many users is judged no further)
                kept = inner.get((waiter, ref))
                if kept is not None:
                    # It holds an object that keeps the awaited thing: a user only when its
                    # code reaches for that (the attribute, or a method reading it).
                    levels = names_of.get((waiter, ref))
                    if levels is None:
                        levels = names_of[(waiter, ref)] = keeper_levels(found, kept, target_of.get(waiter, 0))
                    if chain is None:
                        chain = _chain_names(task)
                    if not _reaches(levels, chain):
                        continue
                mine.add(tid)
                if len(mine) > MAX_USERS:
                    users[waiter] = None
                    for oid, waiters in wanted.items():
                        if waiter in waiters:
                            wanted[oid] = [w for w in waiters if w != waiter]
        del hits
    return True


def _holders_of(obj: object) -> list[int]:
    """The ids of what holds ``obj`` directly, frames and asyncio's own objects aside: the
    program's containers, and the objects whose attributes hold it (one pass over the heap)."""
    out: list[int] = []
    dicts: list[object] = []
    referrers = gc.get_referrers(obj)
    try:
        for ref in referrers:
            kind = type(ref)
            if (kind is types.FrameType or kind is types.CoroutineType or issubclass(kind, asyncio.BaseProtocol)
                    or issubclass(kind, asyncio.BaseTransport)):
                continue
            out.append(id(ref))  # (a dict may be an instance's attributes: its owner is added below)
            if kind is dict:
                dicts.append(ref)
            if len(out) >= MAX_USERS:
                break
    finally:
        del referrers
    if dicts:
        ids = {id(d) for d in dicts}
        owners = gc.get_referrers(*dicts)  # one more pass: the instances those dicts belong to
        try:
            out.extend(id(o) for o in owners if id(instance_dict(o)) in ids)
        finally:
            del owners, dicts
    return out


def _paused_pipe(info: TaskInfo, task: Any) -> tuple[object, object] | None:
    """For a ``Process.wait()`` whose child has an output pipe the parent stopped reading
    (``Wait.child``), the ``Process`` (from the waiting coroutine's own references) and
    that pipe's ``StreamReader``; None otherwise."""
    child = info.wait.child
    if child is None or task is None or not any(p.paused for p in child.outputs):
        return None
    name = next(p.name for p in child.outputs if p.paused)
    coro = task_coroutine(future_field(task, "_coro"))
    for _ in range(USER_DEPTH):
        if type(coro) is not types.CoroutineType:
            return None
        for ref in gc.get_referents(coro):
            if is_a(ref, asyncio.subprocess.Process) and read_attr(ref, "pid") == child.pid:
                reader = read_attr(ref, name)
                return (ref, reader) if is_a(reader, asyncio.StreamReader) else None
        coro = coro.cr_await
    return None


#: Waits asked whether anything at all can still end them, with no sign that their other
#: side is gone: an event, a condition, a full queue's put and a plain future, each kept
#: by an object (an anonymous one, ``await asyncio.Event().wait()``, is a wait forever by
#: design), with no deadline, awaited once (not inside a loop of the program's code: a
#: worker waiting for its next piece of work, which may never come in a program at rest).
#: A worker idle on ``Queue.get`` is not asked.
QUIET_KINDS = frozenset({"event", "condition", "queue_put", "future"})


def _quiet_candidate(info: TaskInfo) -> bool:
    wait = info.wait
    if wait.kind not in QUIET_KINDS or not wait.owner_ids or not wait.deadline_known or wait.deadline is not None:
        return False
    return wait.pool is None and (wait.kind != "future" or wait.primitive is None)


def _global_names(ids: set[int]) -> dict[str, set[int]]:
    """Module globals that hold one of ``ids``: name -> those ids (code anywhere reaches
    them by that name)."""
    out: dict[str, set[int]] = {}
    for module in list(sys.modules.values()):
        namespace = instance_dict(module)
        if namespace is None:
            continue
        for name, value in list(namespace.items()):
            if id(value) in ids and type(name) is str and type(value) is not types.ModuleType:
                out.setdefault(name, set()).add(id(value))  # (a module: a keeper only as all of them are)
    return out


def _unreached(asked: set[int], tasks: TaskSnapshot, live: dict[int, Any], target_of: dict[int, int],
               wanted: dict[int, list[int]], users: dict[int, set[int] | None]) -> set[int]:
    """Of the ``asked`` waits, those whose awaited thing nothing outside the tasks can reach
    (``reach.outside_reach``: by reference, or by the name of a module global holding it or
    a keeper of it, in code reached so); the others get ``OUTSIDE_TASKS`` among their users,
    or no answer (None) when that cannot be told: a thread busy in the program's code, or a
    search cut short."""
    loop_threads = {loop.thread_id for loop in tasks.loops if loop.thread_id is not None}
    if reach.busy_threads(loop_threads):
        for tid in asked:
            users[tid] = None
        return set()
    ask = {tid: target_of[tid] for tid in asked if tid in target_of}
    path = {tid: {oid for oid, waiters in wanted.items() if tid in waiters} for tid in ask}
    named = _global_names(set().union(*path.values())) if path else {}
    loops = {id(loop): loop for loop in (future_field(t, "_loop") for t in live.values()) if loop is not None}
    targets = set(ask.values())
    awaited = [w for w in (wait_evidence.fut_waiter(t) for t in live.values()) if w is not None]
    answer = reach.outside_reach(loops.values(), targets, targets, awaited)
    del awaited
    out = set()
    for tid in asked:
        mine = users[tid]
        oid = ask.get(tid)
        if answer is None or mine is None or oid is None:
            users[tid] = None
            continue
        found, read = answer
        if oid in found or any(path[tid] & named[name] for name in read.intersection(named)):
            mine.add(OUTSIDE_TASKS)
        else:
            out.add(tid)
    return out


def with_owners(tasks: TaskSnapshot, live: dict[int, Any], primitives: dict[str, Any]) -> TaskSnapshot:
    """``tasks`` with ``Wait.owner`` set for long waits on plain futures and on events,
    conditions and queues: which object keeps the awaited thing, and whether it (or what
    keeps it) has a closed connection (``wait_evidence.closed_owners``)."""
    wanted: dict[str, Any] = {}
    for info in tasks.tasks:
        if (info.wait.seconds or 0.0) < OWNER_MIN_WAIT or info.main:
            continue
        prim = info.wait.primitive
        if prim is not None and info.wait.kind in OWNER_KINDS:
            if prim.id not in wanted and prim.id in primitives:
                wanted[prim.id] = primitives[prim.id]
        elif info.wait.future_id and info.wait.future_id not in wanted:
            task = live.get(info.id)
            waiter = wait_evidence.fut_waiter(task) if task is not None else None
            if waiter is not None and hex(id(waiter)) == info.wait.future_id and type(waiter) is asyncio.Future:
                wanted[info.wait.future_id] = waiter
        if len(wanted) >= wait_evidence.MAX_OWNER_SCAN:
            break
    if not wanted:
        return tasks
    objects = list(wanted.values())
    owners = wait_evidence.closed_owners(objects)
    del objects
    if not owners:
        return tasks
    by_key = {key: owners[id(obj)] for key, obj in wanted.items() if id(obj) in owners}
    wanted.clear()
    runners, looping = owner_tasks({i for _, _, ids in by_key.values() for i in ids[:1]}, live)
    runner_sets: dict[int, frozenset[int]] = {}
    out: list[TaskInfo] = []
    for info in tasks.tasks:
        prim = info.wait.primitive
        key = prim.id if prim is not None and info.wait.kind in OWNER_KINDS else info.wait.future_id
        found = by_key.get(key) if key else None
        if found is not None:
            label, closed, ids = found
            owner = f"{label}, {closed}" if closed else label
            keeper_tasks = runners.get(ids[0], ()) if ids else ()
            own: tuple[int, ...] = ()
            if ids and info.id in looping:
                members = runner_sets.get(ids[0])
                if members is None:
                    members = runner_sets[ids[0]] = frozenset(keeper_tasks)
                own = (info.id,) if info.id in members else ()
            info = replace(info, wait=replace(info.wait, owner=owner, owner_closed=bool(closed),
                                              owner_ids=tuple(hex(i) for i in ids),
                                              owner_tasks=own + tuple(itertools.islice(
                                                  (t for t in keeper_tasks if t != info.id), MAX_RUNNERS))))
        out.append(info)
    return replace(tasks, tasks=tuple(out))
