"""Count live objects by type and find why one object of a type is alive.

This is the only module that walks ``gc`` for ``diag objects``.  Both walks are heavy
(the whole heap, and a breadth-first search over ``gc.get_referrers``, itself a heap
walk per step), so each has a time budget checked while it runs; a cut-short result
says so instead of stalling the target.  The counts are those of
``objgraph.typestats`` (GC-tracked objects by type), computed here so the walk can
stop on time.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

from diag.collect.safe_read import clip, instance_dict, is_a, quoted, task_name
from diag.collect.task_collector import process_info
from diag.model.heap_snapshot import BackrefChain, ChainLink, HeapSnapshot, TypeCount

#: Most distinct types a snapshot lists (the biggest); the rest are counted in ``types_total``.
MAX_TYPES = 5000
DEFAULT_BUDGET = 3.0
DEFAULT_MAX_DEPTH = 12
MAX_DEPTH = 30
_CHECK_EVERY = 8192  # objects between clock checks
_MAX_DICT_SCAN = 100_000  # items scanned to name a dict link


@dataclass(frozen=True)
class HeapOptions:
    """``budget``: seconds each walk may take; ``type_name``: find a back-reference chain
    to one object of this type (``Name`` or ``module.Name``), at most ``max_depth`` links."""

    budget: float = DEFAULT_BUDGET
    type_name: str | None = None
    max_depth: int = DEFAULT_MAX_DEPTH


def type_name(t: type) -> str:
    """``module.Qualname`` of a class, read through ``type``'s own descriptors."""
    module = type.__dict__["__module__"].__get__(t)
    qual = type.__dict__["__qualname__"].__get__(t)
    return qual if module in (None, "builtins") else f"{module}.{qual}"


def _matches(name: str, wanted: str) -> bool:
    return name == wanted or name.rsplit(".", 1)[-1] == wanted


def collect_heap(options: HeapOptions = HeapOptions()) -> HeapSnapshot:
    """Count GC-tracked objects by type; with ``type_name``, also a back-reference chain."""
    started = time.monotonic()
    taken_at = time.time()
    deadline = started + options.budget
    counts: dict[type, int] = {}
    wanted: dict[type, bool] = {}
    sample: Any = None
    matched = 0
    objs = gc.get_objects()
    total = len(objs)
    walked = 0
    complete = True
    for i, obj in enumerate(objs):
        if i % _CHECK_EVERY == 0 and i and time.monotonic() > deadline:
            complete = False
            break
        t = type(obj)
        counts[t] = counts.get(t, 0) + 1
        walked += 1
        if options.type_name is not None:
            hit = wanted.get(t)
            if hit is None:
                hit = wanted[t] = _matches(type_name(t), options.type_name)
            if hit:
                matched += 1
                if sample is None:
                    sample = obj
    del objs, obj
    by_name: dict[str, int] = {}
    for t, n in counts.items():
        name = type_name(t)
        by_name[name] = by_name.get(name, 0) + n
    ranked = sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0]))
    notes: list[str] = []
    if not complete:
        notes.append(f"cut short after {options.budget:g}s: counted {walked} of {total} objects")
    if len(ranked) > MAX_TYPES:
        notes.append(f"listing the {MAX_TYPES} most common of {len(ranked)} types")
    backrefs = None
    if options.type_name is not None:
        backrefs = _backrefs(sample, options, matched, complete)
        del sample
    return HeapSnapshot(
        taken_at=taken_at, process=process_info(), objects=walked,
        types=tuple(TypeCount(name, n) for name, n in ranked[:MAX_TYPES]), types_total=len(ranked),
        complete=complete, collect_seconds=time.monotonic() - started, notes=tuple(notes), backrefs=backrefs)


def _is_root(obj: Any) -> bool:
    """A module in ``sys.modules`` or a task (tested by type: the object is not asked)."""
    if is_a(obj, types.ModuleType):
        namespace = instance_dict(obj)
        name = namespace.get("__name__") if namespace is not None else None
        return type(name) is str and sys.modules.get(name) is obj
    return is_a(obj, asyncio.Task)


def _backref_chain(sample: Any, stop_here: Callable[[Any], bool], max_depth: int) -> list[Any]:
    """``[root, ..., sample]``: a shortest chain of referrers from ``sample`` to the first
    object ``stop_here`` accepts, by breadth-first search over ``gc.get_referrers``;
    ``[sample]`` when none is found.  As objgraph's ``find_backref_chain``, without the
    ``gc.collect()`` it starts with: a collection runs the program's finalizers on this
    thread, even in a program that turned the GC off."""
    queue: collections.deque[Any] = collections.deque([sample])
    depth = {id(sample): 0}
    parent: dict[int, Any] = {id(sample): None}
    ignore = {id(queue), id(depth), id(parent)}
    frame: types.FrameType | None = sys._getframe()
    while frame is not None:  # this thread's frames hold the search's own references
        ignore.add(id(frame))
        frame = frame.f_back
    ignore.add(id(ignore))
    try:
        while queue:
            target = queue.popleft()
            if stop_here(target):
                chain = [target]
                while True:
                    up = parent[id(chain[-1])]
                    if up is None:
                        return chain
                    chain.append(up)
            level = depth[id(target)]
            if level >= max_depth:
                continue
            referrers = gc.get_referrers(target)
            ignore.add(id(referrers))
            source = None
            for source in referrers:
                key = id(source)
                if key in ignore or key in depth:
                    continue
                depth[key] = level + 1
                parent[key] = target
                queue.append(source)
            del referrers, source
        return [sample]
    finally:
        queue.clear()
        parent.clear()


def _backrefs(sample: Any, options: HeapOptions, matched: int, complete: bool) -> BackrefChain:
    wanted = str(options.type_name)
    depth = max(1, min(options.max_depth, MAX_DEPTH))
    if sample is None:
        return BackrefChain(wanted, False, matched=matched, max_depth=depth)
    started = time.monotonic()
    deadline = started + options.budget
    cut = [False]

    def stop_here(obj: Any) -> bool:
        # Returning True ends the search: past the budget, the chain found so far is
        # returned and reported as cut short instead of running on.
        if _is_root(obj):
            return True
        if time.monotonic() > deadline:
            cut[0] = True
            return True
        return False

    chain = _backref_chain(sample, stop_here, depth)
    found = bool(chain) and _is_root(chain[0])
    links = tuple(_link(obj, chain[i - 1] if i else None) for i, obj in enumerate(chain))
    return BackrefChain(wanted, found, links, matched, depth, time.monotonic() - started, cut[0])


def _label(obj: Any) -> str:
    if is_a(obj, types.ModuleType):
        namespace = instance_dict(obj)
        return clip(namespace.get("__name__") if namespace is not None else "?")
    if is_a(obj, asyncio.Task):
        return clip(task_name(obj))
    if type(obj) is dict:
        name = obj.get("__name__")
        if type(name) is str and instance_dict(sys.modules.get(name)) is obj:
            return f"{clip(name)}.__dict__"
        return ""
    if type(obj) is types.FunctionType:
        return clip(obj.__qualname__)
    if is_a(obj, type):
        return clip(type.__dict__["__qualname__"].__get__(obj))
    return ""


def _via(parent: Any, child: Any) -> tuple[str, str]:
    """How ``parent`` holds ``child``: (kind, key or attribute name or index)."""
    try:
        if is_a(parent, dict):
            for n, (k, v) in enumerate(dict.items(parent)):  # dict's own items(), not an override
                if n >= _MAX_DICT_SCAN:
                    break
                if v is child:
                    return "key", _short_repr(k)
                if k is child:
                    return "key", "(the key itself)"
        elif is_a(parent, (list, tuple)):
            items = list.__getitem__(parent, slice(0, _MAX_DICT_SCAN)) if is_a(parent, list) else \
                tuple.__getitem__(parent, slice(0, _MAX_DICT_SCAN))
            for n, v in enumerate(items):
                if v is child:
                    return "index", str(n)
        elif is_a(parent, (set, frozenset)):
            return "item", ""
        else:
            if instance_dict(parent) is child:
                return "attr", "__dict__"
            for klass in type(parent).__mro__:
                for slot in klass.__dict__.get("__slots__", ()) or ():
                    member = klass.__dict__.get(slot) if type(slot) is str else None
                    # Read a slot through its member descriptor: the object's own code never runs.
                    if type(member) is types.MemberDescriptorType and member.__get__(parent, klass) is child:
                        return "attr", slot
    except Exception:
        pass
    return "referent", ""


def _short_repr(value: Any, limit: int = 80) -> str:
    """A dict key as text; only plain builtin values are formatted (see safe_read)."""
    return quoted(value, limit)


def _link(obj: Any, parent: Any) -> ChainLink:
    size: int | None = None
    bases: tuple[Any, ...] = (dict, list, tuple, set, frozenset)
    for base in bases:
        if is_a(obj, base):
            size = base.__len__(obj)  # the builtin's own length, not a subclass's __len__
            break
    kind, via = ("root", "") if parent is None else _via(parent, obj)
    return ChainLink(type_name(type(obj)), hex(id(obj)), _label(obj), size, kind, via)


__all__ = ["MAX_TYPES", "DEFAULT_BUDGET", "DEFAULT_MAX_DEPTH", "MAX_DEPTH", "HeapOptions", "collect_heap",
           "type_name"]
