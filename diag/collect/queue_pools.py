"""A pool kept in an ``asyncio.Queue`` whose items were taken and never put back.

Many pools keep their free items (connections, sessions, workers' slots) in a queue:
``acquire`` is ``await queue.get()``, ``release`` is ``queue.put_nowait(item)``, and the
pool often keeps every item in a list besides (asyncpg's ``Pool._holders``).  A release
skipped on some path (a ``__aenter__`` that fails after it took the item, so that no
``__aexit__`` runs) loses the item: the queue empties, and the tasks that wait in
``get()`` look like idle workers waiting for work.

What tells them apart: an item in use is held by whoever uses it (a local of a task's
coroutine, a transaction object it holds); a lost one is kept by the pool's list alone.
``lost_items`` finds, for a queue with tasks waiting in ``get()``, empty, the object
that keeps it (a local of the coroutine that called ``get()``, whose attribute holds the
queue), a collection of that object's holding objects of one class of the program's
own, and how many of them nothing but that collection refers to (one pass over the heap
for every queue of a snapshot, ``gc.get_referrers``: run by ``diag leaks`` only, beside
its reachability proof).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import types
from typing import Any, Iterable, Mapping

from diag.collect.safe_read import builtin_items, future_field, instance_dict, task_coroutine

#: Queues looked at per snapshot, at most.
MAX_QUEUES = 4
#: Items of one keeper's collection, at most (a pool's size).
MAX_ITEMS = 64
#: Coroutines followed down a waiting task's await chain to its ``get()``.
MAX_DEPTH = 32

_GET_CODE = asyncio.Queue.get.__code__
_COLLECTIONS = (list, tuple, set, frozenset, collections.deque)
#: Modules whose objects are no pool items of the program's own.
_FOREIGN = ("builtins", "asyncio", "_asyncio", "uvloop", "concurrent", "threading", "diag")


def _chain(task: object) -> list[object]:
    node: Any = task_coroutine(future_field(task, "_coro"))
    out: list[object] = []
    for _ in range(MAX_DEPTH):
        if type(node) is not types.CoroutineType:
            break
        out.append(node)
        node = node.cr_await
    return out


def _caller_of_get(task: object) -> object:
    """The coroutine that awaits ``Queue.get()`` in ``task``'s chain, or None."""
    chain: list[Any] = _chain(task)
    for n, node in enumerate(chain):
        if node.cr_code is _GET_CODE:
            return chain[n - 1] if n else None
    return None


def keeper_of(task: object, queue: object) -> tuple[object, str] | None:
    """The object whose attribute holds ``queue``, among the values of the coroutine that
    awaits its ``get()`` in ``task`` (its ``self``, say), and that attribute's name."""
    caller = _caller_of_get(task)
    if caller is None:
        return None
    for ref in gc.get_referents(caller):
        attrs = instance_dict(ref)
        if not attrs:
            continue
        for name, value in list(attrs.items()):
            if value is queue and type(name) is str:
                return ref, name
    return None


#: A class's own ``__module__`` and ``__qualname__``, read through ``type``'s descriptors: no
#: metaclass of the program's runs.
_TYPE_MODULE = type.__dict__["__module__"].__get__
_TYPE_QUALNAME = type.__dict__["__qualname__"].__get__


def _program_class(cls: type) -> bool:
    try:
        module = _TYPE_MODULE(cls)
    except Exception:
        return False
    return type(module) is str and module.split(".", 1)[0] not in _FOREIGN


def kept_items(keeper: object, queue: object) -> tuple[str, list[object]] | None:
    """(attribute name, items) of a collection the keeper holds besides the queue: 1 to
    ``MAX_ITEMS`` objects, all of one class of the program's own."""
    attrs = instance_dict(keeper) or {}
    for name, value in list(attrs.items()):
        if type(value) not in _COLLECTIONS or type(name) is not str:
            continue
        items = builtin_items(value)
        if not 1 <= len(items) <= MAX_ITEMS:
            continue
        cls = type(items[0])
        if not _program_class(cls) or any(type(i) is not cls for i in items):
            continue
        return name, items
    return None


def unheld(groups: list[tuple[object, list[object]]], waiting: Iterable[object] = ()) -> list[int]:
    """For each (collection, items): how many of its items nothing but the collection
    refers to, nor any coroutine of the ``waiting`` tasks (those waiting to ``get()`` one:
    a local left over from their previous item is no hold on it, they cannot put anything
    back before they get).  One pass over the heap for all of them."""
    everything = [item for _, items in groups for item in items]
    if not everything:
        return [0] * len(groups)
    wanted = {id(item) for item in everything}
    skip = {id(everything), id(groups)} | {id(container) for container, _ in groups}
    skip.update(id(node) for task in waiting for node in _chain(task))
    skip.update(id(items) for _, items in groups)
    held: set[int] = set()
    # one tuple of them, given as the call's own arguments (a ``*list`` would make another
    # tuple, which the heap then holds while the call looks)
    args = tuple(everything)
    skip.add(id(args))
    referrers = gc.get_referrers(*args)
    try:
        for ref in referrers:
            if id(ref) in skip or (type(ref) is types.FrameType and ref.f_code in _OWN_CODES):
                continue
            for value in gc.get_referents(ref):
                if id(value) in wanted:
                    held.add(id(value))
    finally:
        referrers.clear()
        del referrers
    return [sum(1 for item in items if id(item) not in held) for _, items in groups]


def lost_items(waits: list[tuple[object, object, str]],
               labels: Mapping[str, str]) -> dict[str, tuple[tuple[str, str, int, int], object]]:
    """``waits``: (a task waiting in ``get()``, its queue, the queue's id) for empty queues.
    Queue id -> ((where, class name, kept, unheld), the keeper) for those whose keeper
    keeps a collection of the program's objects besides.  ``labels``: a queue's label
    (``Pool._queue``), for the collection's name beside it."""
    found: dict[str, tuple[object, str, list[object], object]] = {}
    for task, queue, qid in waits:
        if qid in found or len(found) >= MAX_QUEUES:
            continue
        held_by = keeper_of(task, queue)
        if held_by is None:
            continue
        kept = kept_items(held_by[0], queue)
        if kept is None:
            continue
        container = (instance_dict(held_by[0]) or {}).get(kept[0])
        found[qid] = (held_by[0], kept[0], kept[1], container)
    if not found:
        return {}
    counts = unheld([(container, items) for _, _, items, container in found.values()],
                    [task for task, _, qid in waits if qid in found])
    out: dict[str, tuple[tuple[str, str, int, int], object]] = {}
    for (qid, (keeper, name, items, _container)), count in zip(found.items(), counts):
        label = labels.get(qid, "")
        owner = label.rsplit(".", 1)[0] if "." in label else str(_TYPE_QUALNAME(type(keeper)))
        out[qid] = ((f"{owner}.{name}", str(_TYPE_QUALNAME(type(items[0]))), len(items), count), keeper)
    return out


#: This module's functions: their frames, if any is made, hold the items as they look.
_OWN_CODES = frozenset(f.__code__ for f in (unheld, lost_items, kept_items, keeper_of, _chain))
