"""Collect a ``TaskSnapshot``: every pending task, its await stack and what it waits on.

This is the only module that reads asyncio's task internals.  ``Task.get_stack()``
shows only the outermost frame of a suspended task, so the await chain is followed
through each coroutine's ``cr_await`` link down to the awaited future.  The innermost
frame that belongs to a known asyncio primitive (``Semaphore.acquire``, ``Queue.put``,
``sleep``...) names the wait and gives the primitive itself (its ``self``); otherwise
the awaited future (``Task._fut_waiter``) is classified.  Shapes not recognised degrade
to ``unknown``, never to an exception.  It runs on any thread: the agent calls it from
its own thread so that a blocked event loop can still be dumped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import linecache
import os
import sys
import threading
import time
import traceback
import types
import weakref
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator

import diag
from diag.collect import condition_activity, holders, task_origins, wait_evidence
from diag.collect.safe_read import (
    _C_TASK, COROUTINE_WRAPPER, MISSING, builtin_items, builtin_len, class_attr, clip, future_done, future_field, instance_dict,
    is_a, plain_attr, quoted, read_attr, task_cancelling, task_coroutine, task_name, type_name, wrapped_coroutine,
)
from diag.collect.loop_watch import LoopWatch, StallHistory, iter_all_tasks
from diag.model.task_snapshot import (
    ConnectionPool, CreatedBy, FinishedChild, Frame, LoopInfo, Primitive, ProcessInfo, Sketch, TaskInfo,
    TaskSnapshot, ThreadInfo, Wait,
)

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_PENDING = "PENDING"
_RUNNING = Wait("running")
_READY = Wait("ready")
_CoroutineType = types.CoroutineType
#: asyncio's own task's methods, called on the class (an instance may shadow them)
_task_cancelling: Any = getattr(_C_TASK, "cancelling", None)
_task_get_name: Any = getattr(_C_TASK, "get_name", None)
_GeneratorType = types.GeneratorType
_AsyncGeneratorType = types.AsyncGeneratorType
_GENERIC_GETATTR = object.__getattribute__
_FIELDS = (types.MemberDescriptorType, types.GetSetDescriptorType)


def _async_gen_awaitable_types() -> tuple[type, ...]:
    async def agen() -> Any:
        yield
    gen = agen()
    asend, athrow = gen.asend(None), gen.athrow(GeneratorExit)
    found = (type(asend), type(athrow))
    asend.close()
    athrow.close()
    return found


_ASYNC_GEN_AWAITABLE_TYPES = _async_gen_awaitable_types()
_ACQUIRING = getattr(task_origins._fast, "Acquiring", None)


#: Waits for a connection's writes to go: a ``drain()`` (asyncio's streams, aiohttp's
#: protocols) and a stream's ``wait_closed()``.
DRAIN_WAIT = "StreamWriter.drain"
CLOSE_WAIT = "StreamWriter.wait_closed"


def _known_codes() -> dict[int, tuple[str, str]]:
    """Code objects of asyncio functions that mean "waiting on X", for this Python."""
    from asyncio import locks, queues, streams, tasks

    table: dict[int, tuple[str, str]] = {}  # keyed by id: these code objects live for good

    def add(fn: Any, kind: str, detail: str) -> None:
        code = getattr(fn, "__code__", None)
        if code is not None:
            table[id(code)] = (kind, detail)

    add(locks.Lock.acquire, "lock", "Lock.acquire")
    add(locks.Semaphore.acquire, "semaphore", "Semaphore.acquire")
    add(locks.Condition.wait, "condition", "Condition.wait")
    add(locks.Condition.wait_for, "condition", "Condition.wait_for")
    add(locks.Event.wait, "event", "Event.wait")
    add(queues.Queue.get, "queue_get", "Queue.get")
    add(queues.Queue.put, "queue_put", "Queue.put")
    add(queues.Queue.join, "event", "Queue.join")
    add(asyncio.subprocess.Process.wait, "future", "Process.wait")
    add(tasks.sleep, "sleep", "sleep")
    add(tasks.wait, "gather", "wait")
    add(getattr(tasks, "_wait", None), "gather", "wait")
    add(tasks.wait_for, "gather", "wait_for")
    add(getattr(tasks, "as_completed", None), "gather", "as_completed")
    add(getattr(streams.StreamReader, "_wait_for_data", None), "stream_read", "StreamReader.read")
    add(getattr(streams.StreamWriter, "drain", None), "unknown", DRAIN_WAIT)
    add(getattr(streams.StreamWriter, "wait_closed", None), "unknown", CLOSE_WAIT)
    try:
        from asyncio import taskgroups

        add(taskgroups.TaskGroup.__aexit__, "gather", "TaskGroup")
        add(getattr(taskgroups.TaskGroup, "_aexit", None), "gather", "TaskGroup")
    except ImportError:  # pragma: no cover - 3.11+ always has it
        pass
    try:
        from asyncio import timeouts

        add(timeouts.Timeout.__aexit__, "unknown", "timeout")
    except ImportError:  # pragma: no cover
        pass
    return table


_KNOWN = _known_codes()
#: A wait for a free connection of a client pool (aiohttp's connector).
POOL_WAIT = "connection pool"
#: Library code objects added to ``_KNOWN`` once their modules are imported (kept alive
#: here, as ``_KNOWN`` is keyed by id).
_LIBRARY_CODES: list[types.CodeType] = []
#: Pool waits at least this long have their pool's leases looked up (a heap scan).
LEASE_MIN_WAIT = 1.0


#: Library functions that mean "waiting on X": (module, class, function, kind, detail).
_LIBRARY_WAITS = (
    # aiohttp 3.10 and later: a request waits for a free connection of the pool
    ("aiohttp.connector", "BaseConnector", "_wait_for_available_connection", "future", POOL_WAIT),
    # aiohttp's protocols (client and server): a write waits for the peer to read
    ("aiohttp.base_protocol", "BaseProtocol", "_drain_helper", "unknown", DRAIN_WAIT),
)


def _learn_library_codes() -> None:
    """Waits of libraries the program imported after diag (never imported here), once
    their modules are loaded (see ``_LIBRARY_WAITS``)."""
    if len(_LIBRARY_CODES) == len(_LIBRARY_WAITS):
        return
    for module, name, attr, kind, detail in _LIBRARY_WAITS:
        cls = wait_evidence.loaded_class(module, name)
        fn = class_attr(cls, attr) if cls is not None else None
        code = getattr(fn, "__code__", None) if type(fn) is types.FunctionType else None
        if type(code) is types.CodeType and id(code) not in _KNOWN:
            _LIBRARY_CODES.append(code)
            _KNOWN[id(code)] = (kind, detail)


_QUEUE_JOIN = id(asyncio.Queue.join.__code__)


def _as_completed_codes() -> frozenset[int]:
    """The coroutines of ``asyncio.as_completed`` that wait on its private queue of finished
    futures: a closure in 3.11 and 3.12, a method of ``_AsCompletedIterator`` in 3.13."""
    found = []
    fn = getattr(asyncio.tasks, "as_completed", None)
    for const in getattr(getattr(fn, "__code__", None), "co_consts", ()):
        if isinstance(const, types.CodeType) and const.co_name == "_wait_for_one":
            found.append(id(const))
    method = getattr(getattr(asyncio.tasks, "_AsCompletedIterator", None), "_wait_for_one", None)
    code = getattr(method, "__code__", None)
    if isinstance(code, types.CodeType):
        found.append(id(code))
    return frozenset(found)


#: ``as_completed`` waits on a Queue of its own: what the task waits for is the futures it was given.
_AS_COMPLETED = _as_completed_codes()
_AS_COMPLETED_ITERATOR: Any = getattr(asyncio.tasks, "_AsCompletedIterator", None)
_GATHERING_FUTURE: Any = getattr(asyncio.tasks, "_GatheringFuture", None)
_TASK_GROUP: Any = asyncio.TaskGroup
#: Waits whose end diag looks for (a sleep says its own; a running task waits on nothing).
_DEADLINE_KINDS = frozenset({"semaphore", "lock", "condition", "event", "queue_get", "queue_put", "future",
                             "task", "gather", "stream_read", "executor", "unknown"})
#: Tasks per dump whose await chains are searched for timeouts (a few microseconds each).
MAX_DEADLINE_SCAN = 20_000

_PRIMITIVE_KINDS = {"lock", "semaphore", "condition", "event", "queue_get", "queue_put"}
_PRIMITIVE_TYPES = (asyncio.Lock, asyncio.Semaphore, asyncio.Condition, asyncio.Event, asyncio.Queue)
#: Where those keep the futures of their waiting tasks.
_WAITER_ATTRS = ("_waiters", "_getters", "_putters")


@dataclass(frozen=True)
class CollectOptions:
    """Bounds of one collection.

    ``max_frames`` caps each await stack; ``source_lines`` adds the source text of
    each frame; ``exclude`` holds tasks never to report (the dump's own handler);
    ``budget`` (seconds) stops the walk over tasks early, and the snapshot says so.
    """

    max_frames: int = 64
    source_lines: bool = True
    exclude: frozenset[int] = frozenset()
    budget: float | None = None


#: Longest source line kept in a frame (minified code has megabyte lines).
MAX_SOURCE = 500


class _FrameCache:
    """Turns (code, line) into a shared ``Frame``, so each distinct frame is built once."""

    def __init__(self, source_lines: bool) -> None:
        self.source_lines = source_lines
        self.cache: dict[tuple[types.CodeType, int], Frame] = {}
        self.by_offset: dict[tuple[int, int], Frame] = {}

    def get(self, code: types.CodeType, line: int) -> Frame:
        key = (code, line)
        fr = self.cache.get(key)
        if fr is None:
            source = linecache.getline(code.co_filename, line).strip()[:MAX_SOURCE] if self.source_lines and line else ""
            fr = Frame(code.co_filename, line, getattr(code, "co_qualname", code.co_name), source)
            self.cache[key] = fr
        return fr

    def of(self, frame: types.FrameType) -> Frame:
        """The ``Frame`` of a live frame; keyed by instruction offset, which is cheaper than
        the line number (that needs a walk of the line table)."""
        code = frame.f_code
        key = (id(code), frame.f_lasti)  # code objects hash by content: slow; ids are alive here
        fr = self.by_offset.get(key)
        if fr is None:
            fr = self.by_offset[key] = self.get(code, frame.f_lineno or 0)
        return fr


#: Await links followed at most: a chain is as deep as the recursion that resumes it.
MAX_CHAIN = 10_000
#: Of a chain deeper than ``max_frames``, this many outermost frames are kept; the rest
#: of the budget goes to the innermost ones, which say what the task waits on.
KEEP_OUTER = 8


def _elide(items: list[Any], max_frames: int) -> tuple[list[Any], int]:
    """The outermost and innermost ``max_frames`` of a chain, and how many were left out."""
    over = len(items) - max_frames
    if over <= 0:
        return items, 0
    head = min(KEEP_OUTER, max_frames // 4)
    return items[:head] + items[len(items) - (max_frames - head):], over


def _elided_frame(count: int) -> Frame:
    """The stack entry standing for the frames left out of a deep chain."""
    return Frame("<elided>", 0, f"... {count} frames elided ...")


def _foreign_link(kind: type, node: object) -> tuple[Any, Any] | None:
    """(frame, next) of a coroutine of another implementation (Cython), read through its
    class's C field descriptors; None for anything else: a future's iterator, or an
    awaitable whose attributes are code of the program (properties, ``__getattr__``)."""
    if class_attr(kind, "__getattribute__") is not _GENERIC_GETATTR:
        return None
    for frame_name, next_name in (("cr_frame", "cr_await"), ("gi_frame", "gi_yieldfrom")):
        frame = read_attr(node, frame_name, MISSING) if type(class_attr(kind, frame_name)) in _FIELDS else MISSING
        if frame is MISSING:
            continue
        if type(frame) is not types.FrameType:
            return None
        nxt = read_attr(node, next_name) if type(class_attr(kind, next_name)) in _FIELDS else None
        return frame, nxt
    return None


def _await_chain(coro: object, max_frames: int) -> tuple[list[object], list[types.FrameType], int]:
    """The coroutines of an await chain and their frames, outermost first, and how many
    links were elided: a chain deeper than ``max_frames`` keeps its outermost
    ``KEEP_OUTER`` and its innermost links, where the real wait is.  Nothing of the
    program runs: only coroutine types (and C fields of foreign ones) are read."""
    nodes: list[object] = []
    frames: list[types.FrameType] = []
    node: object = coro
    while node is not None and len(frames) < MAX_CHAIN:
        kind = type(node)
        if kind is _CoroutineType:
            frame = node.cr_frame  # type: ignore[attr-defined]
            nxt = node.cr_await  # type: ignore[attr-defined]
        elif kind is _GeneratorType:
            frame = node.gi_frame  # type: ignore[attr-defined]
            nxt = node.gi_yieldfrom  # type: ignore[attr-defined]
        elif kind is _AsyncGeneratorType:
            frame = node.ag_frame  # type: ignore[attr-defined]
            nxt = node.ag_await  # type: ignore[attr-defined]
        elif kind is _ACQUIRING:  # diag's own acquire (C): no frame, on to asyncio's
            node = node.inner  # type: ignore[attr-defined]
            continue
        elif kind is COROUTINE_WRAPPER:  # a library's __await__ handing on a coroutine's
            node = wrapped_coroutine(node)
            continue
        elif kind in _ASYNC_GEN_AWAITABLE_TYPES:
            # ``await agen.asend()`` (async with on an @asynccontextmanager, async for):
            # the awaitable exposes its generator only to the GC.
            node = next((r for r in gc.get_referents(node) if type(r) is _AsyncGeneratorType), None)
            continue
        else:
            link = _foreign_link(kind, node)
            if link is None:
                break
            frame, nxt = link
        if frame is None:
            break
        if id(frame.f_code) not in holders.WRAPPER_CODES:  # diag's own acquire/release wrappers
            nodes.append(node)
            frames.append(frame)
        node = nxt
    nodes, elided = _elide(nodes, max_frames)
    frames, _ = _elide(frames, max_frames)
    return nodes, frames, elided


def _frame_of(node: object) -> types.FrameType | None:
    """The frame of a coroutine, generator or async generator (made now if it had none)."""
    kind = type(node)
    if kind is _CoroutineType:
        return node.cr_frame  # type: ignore[attr-defined, no-any-return]
    if kind is _GeneratorType:
        return node.gi_frame  # type: ignore[attr-defined, no-any-return]
    if kind is _AsyncGeneratorType:
        return node.ag_frame  # type: ignore[attr-defined, no-any-return]
    return None


def _frame_at(nodes: list[object], frames: list[types.FrameType] | None, i: int) -> types.FrameType | None:
    return frames[i] if frames is not None else _frame_of(nodes[i])


#: The await chain read by the C accelerator, ``(coro, max_frames, skip_codes) -> (key,
#: coroutines outermost first)``: tasks stuck at the same place share the key; None where
#: only the Python walk will do.
_c_await_chain = getattr(task_origins._fast, "await_chain", None)


def _local_of_type(node: object, frame: types.FrameType | None, cls: type | tuple[type, ...], name: str) -> Any:
    """A local of a suspended coroutine by type (``name`` documents which).  Read from
    ``gc.get_referents`` of the coroutine, its frame's values (closure cells opened),
    never through ``f_locals``: on 3.11 and 3.12 that builds a dict the frame keeps,
    holding every local alive after the program has deleted it."""
    for ref in gc.get_referents(node):
        if type(ref) is types.CellType:
            try:
                ref = ref.cell_contents
            except ValueError:  # an empty cell
                continue
        if is_a(ref, cls):  # not isinstance: that would ask a hostile local for its __class__
            return ref
    return None


_WAIT_FOR_CODE = asyncio.locks.Condition.wait_for.__code__
#: Predicates of ``Condition.wait_for`` described per dump (each reads a closure and the
#: instance dicts it names); waits past this many show none.
MAX_PREDICATES = 512
#: Values of a predicate shown, at most.
MAX_PREDICATE_VALUES = 6


#: Closure values that a predicate compares with as a waiter's own (a threshold, a key).
_OWN_TYPES = (int, float, str, bytes)


def wait_for_predicate(node: object) -> tuple[str, tuple[str, ...]]:
    """What a suspended ``Condition.wait_for`` waits to see true: its predicate, where it
    is defined, and the values it reads (its closure's, and for a closure's object the
    attributes the predicate names: ``<lambda> at app.py:74: failed_on=1, self.seq=1``),
    and the names of its closure's plain values (numbers, strings: ``failed_on``), the
    waiting call's own, which a predicate on shared state alone has none of.
    Read, never called: calling it would run the program's code."""
    if type(node) is not types.CoroutineType or node.cr_code is not _WAIT_FOR_CODE:
        return "", ()
    # its locals, as the GC lists them (the frame's own function, wait_for, among them)
    pred: Any = next((ref for ref in gc.get_referents(node)
                 if type(ref) is types.MethodType or (type(ref) is types.FunctionType
                                                      and ref.__code__ is not _WAIT_FOR_CODE)), None)
    bound: list[tuple[str, object]] = []
    if type(pred) is types.MethodType:
        bound.append(("self", pred.__self__))
        pred = pred.__func__
    if type(pred) is not types.FunctionType:
        return "", ()
    code = pred.__code__
    own = []
    for name, cell in zip(code.co_freevars, pred.__closure__ or ()):
        try:
            bound.append((name, cell.cell_contents))
        except ValueError:
            bound.append((name, MISSING))
            continue
        if type(bound[-1][1]) in _OWN_TYPES:
            own.append(name)
    values = []
    for name, value in bound:
        if value is MISSING:
            values.append(f"{name}=<unset>")
            continue
        namespace = None if type(value) in (int, float, str, bytes, bool, type(None)) else instance_dict(value)
        read = [attr for attr in code.co_names if namespace is not None and attr in namespace]
        if read:
            values.extend(f"{name}.{attr}={quoted(namespace[attr], 40)}" for attr in read)  # type: ignore[index]
        else:
            values.append(f"{name}={quoted(value, 40)}")
    shown = ", ".join(values[:MAX_PREDICATE_VALUES]) + (", ..." if len(values) > MAX_PREDICATE_VALUES else "")
    name = getattr(code, "co_qualname", code.co_name)
    text = f"{name} at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return (f"{text}: {shown}" if shown else text), tuple(own)


def _writer_types() -> tuple[type, ...]:
    """What the ``self`` of a write wait is: a stream writer or a flow-controlled protocol
    (asyncio's, aiohttp's once loaded)."""
    aiohttp_protocol = wait_evidence.loaded_class("aiohttp.base_protocol", "BaseProtocol")
    return (asyncio.StreamWriter, asyncio.streams.FlowControlMixin) + (
        (aiohttp_protocol,) if aiohttp_protocol is not None else ())


def _locals_of_type(node: object, cls: type | tuple[type, ...]) -> list[Any]:
    """Every local of a suspended coroutine of type ``cls`` (see ``_local_of_type``)."""
    return [ref for ref in gc.get_referents(node) if is_a(ref, cls)]


#: On 3.13 ``frame.f_locals`` is a view of the fast locals (PEP 667): nothing is kept.
_LOCALS_ARE_A_VIEW = sys.version_info >= (3, 13)


def _local_names(node: object, frame: types.FrameType, obj: object) -> tuple[str, object]:
    """The name of a local of ``frame`` (the suspended ``node``'s) holding ``obj``, and
    the frame's ``self``, read without leaving a reference behind: on 3.11 and 3.12 the
    dict ``f_locals`` builds stays on the frame, so it is read only when this call made
    it, and emptied at once (nothing else can hold a dict that did not exist); a frame
    whose dict already exists and holds something (the program called ``locals()``) keeps
    its local names to itself; an empty one is an earlier dump's, made and emptied."""
    name, owner = "", None
    if _LOCALS_ARE_A_VIEW:
        view = frame.f_locals
        for key, value in view.items():
            if value is obj and key != "self" and not name:
                name = key
        owner = view.get("self")
        return name, owner
    if node is None:
        return "", None
    before = gc.get_referents(node)
    # The GC visits a frame's parts in order: its frame object, its f_locals dict, its
    # function, code, then the locals; a dict right before the function is f_locals.
    first_function = next((i for i, r in enumerate(before) if type(r) is types.FunctionType), 0)
    existing = before[first_function - 1] if first_function else None
    if first_function == 0 or (type(existing) is dict and existing):
        return "", None  # the program's own locals() dict: neither refreshed nor emptied by diag
    # An f_locals dict that exists but is empty is one an earlier dump made and emptied:
    # refreshing and emptying it again changes nothing anyone can see.
    dicts = {id(r) for r in before if type(r) is dict and r is not existing}
    del existing
    del before  # the locals' values: not to be held while the loop thread runs on
    made = frame.f_locals
    try:
        for key, value in made.items():
            if value is obj and key != "self" and not name:
                name = key
        owner = made.get("self")
    finally:
        if id(made) not in dicts:  # made by this call, so nobody else holds it
            made.clear()  # it keeps nothing alive
    return name, owner


@dataclass(frozen=True)
class _Shape:
    """What every task with the same await chain (code and offset per frame) shares."""

    stack: tuple[Frame, ...]
    known: int  # index (outermost-first) of the frame that names the wait, or -1
    kind: str
    detail: str
    user: int  # index of the nearest non-asyncio frame awaiting the known one, or -1
    #: A wait on this chain is all in ``_Walker.waits`` once seen: a primitive's (but a
    #: Condition's, whose predicate each task has, and Queue.join's).
    memo: bool = False


def _count(obj: object) -> int:
    """Entries in a primitive's queue of waiters (a deque, or None before the first)."""
    return builtin_len(obj) or 0


def describe_primitive(obj: object, label: str = "") -> Primitive | None:
    """The state of an asyncio Lock, Semaphore, Condition, Event or Queue, read from its
    fields without locking and without running any method of it (subclasses override
    them); one whose fields cannot be read is an ``unknown`` primitive of its type."""
    pid = hex(id(obj))
    try:
        if is_a(obj, asyncio.Semaphore):
            bound = read_attr(obj, "_bound_value")
            kind = "bounded_semaphore" if is_a(obj, asyncio.BoundedSemaphore) else "semaphore"
            value = read_attr(obj, "_value")
            if type(value) is not int or (bound is not None and type(bound) is not int):
                raise TypeError(type_name(value))
            return Primitive(kind, pid, label, value=value, capacity=bound,
                             locked=value == 0, waiters=_count(read_attr(obj, "_waiters")))
        waiters = _count(read_attr(obj, "_waiters"))
        if is_a(obj, asyncio.Lock):
            return Primitive("lock", pid, label, locked=_flag(read_attr(obj, "_locked")), waiters=waiters)
        if is_a(obj, asyncio.Condition):
            lock = read_attr(obj, "_lock")
            if not is_a(lock, asyncio.Lock):
                raise TypeError(type_name(lock))
            return Primitive("condition", pid, label, locked=_flag(read_attr(lock, "_locked")), waiters=waiters)
        if is_a(obj, asyncio.Event):
            return Primitive("event", pid, label, is_set=_flag(read_attr(obj, "_value")), waiters=waiters)
        if is_a(obj, asyncio.Queue):
            getters = _count(read_attr(obj, "_getters"))
            putters = _count(read_attr(obj, "_putters"))
            size = builtin_len(read_attr(obj, "_queue"))
            maxsize = read_attr(obj, "_maxsize")
            if size is None or type(maxsize) is not int:
                raise TypeError("queue")
            unfinished = read_attr(obj, "_unfinished_tasks")
            return Primitive("queue", pid, label, size=size, maxsize=maxsize,
                             getters=getters, putters=putters, waiters=getters + putters,
                             unfinished=unfinished if type(unfinished) is int else None)
    except Exception:
        return Primitive("unknown", pid, label or f"<unreadable {clip(type_name(obj), 100)}>")
    return None


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise TypeError(type_name(value))
    return value is True


def _label_in_frame(obj: object, frame: types.FrameType | None, node: object = None) -> str:
    """A name for ``obj`` as the awaiting code sees it: a local, ``self.attr`` or a global
    (``node`` is the frame's coroutine; see ``_local_names``)."""
    try:
        if frame is None:
            return ""
        name, owner = _local_names(node, frame, obj)
        if name:
            return clip(name, 100)
        attrs = instance_dict(owner)
        if attrs is not None:
            for key, value in list(attrs.items()):
                if value is obj:
                    return f"{type(owner).__name__}.{clip(key, 100)}"
        del owner, attrs
        namespace = frame.f_globals
        if type(namespace) is dict:
            for key, value in list(namespace.items()):
                if value is obj:
                    return f"{clip(namespace.get('__name__', '?'), 100)}.{clip(key, 100)}"
    except Exception:
        pass
    return ""


#: Tasks described between two looks at the clock (for ``CollectOptions.budget``).
_CLOCK_EVERY = 256

#: Naming primitives by their holders scans the heap once per dump; beyond this many new
#: primitives the local names are kept instead.
MAX_HOLDER_SCAN = 64
#: With more pending tasks than this, primitives are not named by a heap scan for their
#: holders (``holder_labels``: about 0.4 s holding the GIL at a million tasks here); the
#: waiting frames still name them, and a name found by an earlier dump is kept.
MAX_HOLDER_SCAN_TASKS = 250_000
#: Holders per primitive whose acquiring frame is asked its name for it (a semaphore of
#: a thousand permits is one name, asked a thousand times).
MAX_HOLDERS_NAMED = 4


#: Referrers that never name what they hold (their locals are named from the frames).
_NOT_HOLDERS: frozenset[type] = frozenset({
    _CoroutineType, _GeneratorType, _AsyncGeneratorType, types.FrameType, types.CellType,
    list, tuple, set, collections.deque,
})


def holder_labels(objects: list[object], ignore: tuple[object, ...] = ()) -> dict[int, str]:
    """Name objects by what holds them: ``module.NAME``, ``Type.attr`` or ``[key]``.

    One ``gc.get_referrers`` pass over the heap for all of them; frames are skipped
    (locals are named from the awaiting frame instead), and so are the ``ignore``
    containers: the collector's own.
    """
    if not objects or len(objects) > MAX_HOLDER_SCAN:
        return {}
    wanted = {id(o) for o in objects}
    modules: dict[int, str] = {}
    for name, module in list(sys.modules.items()):
        namespace = instance_dict(module)
        if namespace is not None:
            modules[id(namespace)] = name
    best: dict[int, tuple[int, str]] = {}  # id -> (rank, label); lower rank wins
    plain_dicts: dict[int, dict[Any, Any]] = {}

    def offer(obj_id: int, rank: int, label: str) -> None:
        if obj_id not in best or rank < best[obj_id][0]:
            best[obj_id] = (rank, label)

    ignored = {id(i) for i in ignore}
    for ref in gc.get_referrers(*objects):
        try:
            # coroutines come first: a primitive that 100k tasks wait on has 100k of them
            if type(ref) in _NOT_HOLDERS or is_a(ref, (types.FrameType, list, tuple, set)) or id(ref) in ignored:
                continue
            if is_a(ref, dict):
                module_name = modules.get(id(ref))
                for key, value in list(dict.items(ref)):  # dict's own items(), not a subclass's
                    if id(value) in wanted:
                        if module_name is not None:
                            offer(id(value), 0, f"{module_name}.{key}")
                        elif type(key) is str:
                            offer(id(value), 3, clip(key, 100))  # an instance's __dict__ (owner below) or locals
                            plain_dicts[id(ref)] = ref
                        else:
                            named = plain_attr(key, "_name")  # an aiohttp AppKey, say
                            offer(id(value), 2, f"[{clip(named, 60) if type(named) is str else quoted(key, 60)}]")
                continue
            attrs = instance_dict(ref)
            if attrs is not None:
                for key, value in list(attrs.items()):
                    if id(value) in wanted:
                        offer(id(value), 1, f"{type(ref).__name__}.{clip(key, 100)}")
        except Exception:  # hostile __eq__/__getattr__, or a dict changing under us
            continue
    if plain_dicts:
        # A materialised instance __dict__: name the attribute by its owner's type.
        for owner in gc.get_referrers(*plain_dicts.values()):
            try:
                attrs = instance_dict(owner)
                if attrs is None or id(attrs) not in plain_dicts or is_a(owner, types.FrameType):
                    continue
                for key, value in list(attrs.items()):
                    if id(value) in wanted:
                        offer(id(value), 1, f"{type(owner).__name__}.{clip(key, 100)}")
            except Exception:
                continue
    return {k: label for k, (_rank, label) in best.items()}


def _future_created_at(fut: object, frames: _FrameCache) -> Frame | None:
    """Where the future was made, from the traceback asyncio records in debug mode."""
    tb = future_field(fut, "_source_traceback")
    try:
        for entry in reversed(builtin_items(tb) if type(tb) is not traceback.StackSummary else list.copy(tb)):
            if type(entry) is not traceback.FrameSummary:
                return None
            if not entry.filename.startswith(_ASYNCIO_DIR):
                return Frame(entry.filename, entry.lineno or 0, entry.name, (entry.line or "").strip())
    except Exception:
        pass
    return None


def _is_executor_future(fut: object) -> bool:
    """True for the asyncio future that ``run_in_executor``/``to_thread`` chains to a thread."""
    try:
        for cb in builtin_items(future_field(fut, "_callbacks")):
            fn = cb[0] if type(cb) is tuple else cb
            if type(fn) is types.FunctionType and fn.__name__ == "_call_check_cancel":
                return True
    except Exception:
        pass
    return False


_new_object = object.__new__
_TASK_INFO_FIELDS = frozenset(f.name for f in fields(TaskInfo))


def _handling_cancel(nodes: list[object]) -> bool:
    """Whether a coroutine of the await chain is suspended inside an ``except`` or
    ``finally`` block handling a ``CancelledError``: a coroutine keeps the exception it is
    handling (its saved exception state, or the name ``except ... as`` bound) among its
    referents, and drops it when the block ends."""
    for node in nodes:
        if type(node) is not types.CoroutineType:
            continue
        for ref in gc.get_referents(node):
            if is_a(ref, asyncio.CancelledError):
                return True
    return False


def _task_info(values: dict[str, Any]) -> TaskInfo:
    """Build a ``TaskInfo`` without the frozen dataclass ``__init__``, which sets every field
    through ``object.__setattr__`` (2 us a task, a fifth of a dump); the object is the same.
    ``values`` leaves out the fields at their defaults, which the class holds: a smaller
    ``__dict__`` (about 190 bytes a task of a snapshot's memory)."""
    info: TaskInfo = _new_object(TaskInfo)
    info.__dict__.update(values)
    return info


class _Walker:
    """One collection pass; caches frames and primitives across tasks."""

    def __init__(self, watch: LoopWatch | None, options: CollectOptions, now: float) -> None:
        self.watch = watch
        self.options = options
        self.now = now
        self.frames = _FrameCache(options.source_lines)
        self.primitives: dict[int, Primitive | None] = {}
        self.primitive_objects: dict[int, object] = {}
        self.creators: dict[tuple[int, int, int | None], CreatedBy] = {}
        self.coro_names: dict[int, str] = {}
        self.loop_ids: dict[int, str] = {}
        self.by_seq: dict[int, asyncio.Task[Any]] = {}
        self.shapes: dict[object, _Shape] = {}
        self.deadline_waits: dict[tuple[object, ...], tuple[Wait, Wait]] = {}
        # Tasks stuck together share one Wait: same chain, same object, first seen together.
        self.waits: dict[tuple[int, int, float | None], Wait] = {}
        self.predicates_left = MAX_PREDICATES
        # id(future) -> (future, primitive) for the futures queued in primitives already
        # found: the next task waiting on one of them needs no look into its frame.
        self.waiter_owners: dict[int, tuple[object, object]] = {}
        # (id(primitive), id(shape)) -> the name the awaiting code of that chain uses for it;
        # id(primitive) -> every name found for it, in the order found (an ordered set)
        self.frame_names: dict[tuple[int, int], str] = {}
        self.names: dict[int, dict[str, None]] = {}
        # Deadline evidence: the loops' timers, each loop's clock, and how many more tasks
        # may have their await chains searched for timeouts in this dump.
        self.timers: wait_evidence.LoopTimers | None = None
        self.loop_times: dict[int, float] = {}
        self.deadline_budget = MAX_DEADLINE_SCAN
        self.executor_waits: list[object] = []
        self.handed: dict[int, tuple[str, int | None]] | None = None
        self.pools: dict[int, tuple[ConnectionPool | None, bool]] = {}
        self.loop_ids_loops: set[asyncio.AbstractEventLoop] = set()
        # ``read_memo`` needs the C await chain and the sampler's wait starts
        self.memo_ok = _c_await_chain is not None and watch is not None and _C_TASK is not None
        self.holder_scan_skipped = False

    def index_waiters(self, obj: object) -> None:
        for attr in _WAITER_ATTRS:
            queued = plain_attr(obj, attr)
            if type(queued) is not collections.deque:
                continue
            try:
                futures = list(queued)  # one C call: the loop cannot change it meanwhile
            except Exception:
                continue
            owners = self.waiter_owners
            for fut in futures:
                owners[id(fut)] = (fut, obj)

    def waited_primitive(self, waiter: object, node: object, frame: types.FrameType | None) -> object:
        """The primitive whose queue holds ``waiter``: known from an earlier task's, or the
        ``self`` of the primitive's method that awaits it (``node``)."""
        entry = self.waiter_owners.get(id(waiter))
        if entry is not None and entry[0] is waiter:
            return entry[1]
        obj = _local_of_type(node, frame, _PRIMITIVE_TYPES, "self")
        if obj is not None:
            self.index_waiters(obj)
        return obj

    def primitive(self, obj: object, nodes: list[object], frames: list[types.FrameType] | None,
                  shape: _Shape) -> tuple[Primitive | None, str]:
        """The primitive's description and the awaiting code's name for it; that name is
        looked up once per primitive and await chain, not once per task."""
        key = id(obj)
        pair = (key, id(shape))
        name = self.frame_names.get(pair)
        if name is None:
            caller = _frame_at(nodes, frames, shape.user) if shape.user >= 0 else None
            name = _label_in_frame(obj, caller, nodes[shape.user]) if caller is not None else ""
            self.frame_names[pair] = name
            if name:
                self.names.setdefault(key, {})[name] = None
        prim = self.primitives.get(key)
        if prim is None or (name and not prim.label):
            prim = self.primitives[key] = describe_primitive(obj, name)
            self.primitive_objects[key] = obj
        return prim, name

    def name_by_holders_frames(self) -> None:
        """Add the names the holding tasks' own frames give the primitives tasks wait on:
        the lock one task waits for as ``second`` is ``first`` in the task holding it
        (for the first ``MAX_HOLDER_SCAN`` primitives, as ``holder_labels``)."""
        for key, obj in list(self.primitive_objects.items())[:MAX_HOLDER_SCAN]:
            source = read_attr(obj, "_lock") if is_a(obj, asyncio.Condition) else obj
            for rec in holders.records(source)[:MAX_HOLDERS_NAMED]:
                task = self.by_seq.get(rec.task_id) if rec.task_id is not None else None
                if task is None or not rec.site:
                    continue
                code = rec.site[0][0]
                nodes, frames, _ = _await_chain(task_coroutine(future_field(task, "_coro")), self.options.max_frames)
                for node, frame in zip(nodes, frames):
                    if frame.f_code is code:
                        name = _label_in_frame(obj, frame, node)
                        if name:
                            self.names.setdefault(key, {})[name] = None
                        break
                del nodes, frames

    def relabel_by_holders(self) -> None:
        """Prefer what holds a primitive (``module.NAME``, ``Type.attr``) over a local name,
        which in a generic helper is only its parameter name."""
        cache = self.watch.holder_labels if self.watch is not None else {}
        unknown = [o for k, o in self.primitive_objects.items() if k not in cache or cache[k][0]() is not o]
        if unknown and len(self.by_seq) > MAX_HOLDER_SCAN_TASKS:
            # the heap scan is one C call over every object: with this many tasks it would
            # stop the target's loop for a third of a second or more
            self.holder_scan_skipped = True
            unknown = []
        found = holder_labels(unknown, ignore=(self.primitive_objects,)) if unknown else {}
        for obj in unknown:
            try:
                cache[id(obj)] = (weakref.ref(obj), found.get(id(obj), ""))
            except TypeError:  # not weakly referenceable: do not cache
                pass
        if len(cache) > 2 * len(self.primitive_objects) + 64:
            # forget primitives that died, so a long-running agent's cache stays the size
            # of what is alive (the heap scan it saves is per live primitive anyway)
            for key in [k for k, (ref, _) in list(cache.items()) if ref() is None]:
                cache.pop(key, None)
        for key, prim in self.primitives.items():
            if prim is None:
                continue
            entry = cache.get(key)
            label = found.get(key) or (entry[1] if entry is not None else "") or prim.label
            aliases = tuple(n for n in self.names.get(key, ()) if n != label)
            if label != prim.label or aliases != prim.aliases:
                self.primitives[key] = replace(prim, label=label, aliases=aliases)

    def shape(self, frames: list[types.FrameType], key: object = None, elided: int = 0) -> _Shape:
        """The shape of an await chain, under ``key`` (the accelerator's) or its own;
        ``elided`` links left out after the first ``KEEP_OUTER`` show as one entry."""
        if key is None:
            key = (elided, tuple([(id(f.f_code), f.f_lasti) for f in frames]))
        shape = self.shapes.get(key)  # type: ignore[call-overload]
        if shape is None:
            frame_of = self.frames.of
            inner_first = [frame_of(f) for f in reversed(frames)]
            if elided:
                inner_first.insert(len(frames) - min(KEEP_OUTER, self.options.max_frames // 4),
                                   _elided_frame(elided))
            stack = tuple(inner_first)
            known, kind, detail, user = -1, "", "", -1
            for i in range(len(frames) - 1, -1, -1):
                found = _KNOWN.get(id(frames[i].f_code))
                if found is None:
                    continue
                known, (kind, detail) = i, found
                user = next((j for j in range(i - 1, -1, -1)
                             if not frames[j].f_code.co_filename.startswith(_ASYNCIO_DIR)), -1)
                if kind == "stream_read" and i > 0:
                    caller = frames[i - 1].f_code
                    if caller.co_filename.startswith(_ASYNCIO_DIR):
                        detail = getattr(caller, "co_qualname", caller.co_name)
                elif i > 0 and id(frames[i - 1].f_code) == _QUEUE_JOIN:
                    # Queue.join waits on the queue's own event: the queue is what it waits on
                    known, (kind, detail) = i - 1, _KNOWN[_QUEUE_JOIN]
                elif i > 0 and id(frames[i - 1].f_code) in _AS_COMPLETED:
                    known, kind, detail = i - 1, "gather", "as_completed"
                break
            memo = kind in _PRIMITIVE_KINDS and kind != "condition" and detail != "Queue.join"
            shape = self.shapes[key] = _Shape(stack, known, kind, detail, user, memo)  # type: ignore[index]
        return shape

    def classify(self, task: asyncio.Task[Any], nodes: list[object], frames: list[types.FrameType] | None,
                 shape: _Shape, running: bool) -> Wait:
        """What the task waits on.  ``frames`` are the nodes' frames, or None when the chain
        was read without them (they are then made only where a local must be read)."""
        if running:
            return _RUNNING
        waiter = future_field(task, "_fut_waiter")
        if waiter is None:
            return _READY
        if self.watch is None:
            since, seconds = None, None
        else:  # a wait the sampler has not seen yet is at least 0 s old
            since = self.watch.first_seen(task, waiter)
            seconds = 0.0 if since is None else max(0.0, self.now - since)
        i = shape.known
        if i < 0:
            return self._future_wait(waiter, seconds)
        kind, detail = shape.kind, shape.detail
        if kind in _PRIMITIVE_KINDS:
            if detail == "Queue.join":  # the queue, not the event whose waiters hold the future
                obj = _local_of_type(nodes[i], frames[i] if frames is not None else None, asyncio.Queue, "self")
            else:
                obj = self.waited_primitive(waiter, nodes[i], frames[i] if frames is not None else None)
            prim, name = self.primitive(obj, nodes, frames, shape) if obj is not None else (None, "")
            key = (id(shape), id(obj), since)
            wait = self.waits.get(key)
            if wait is None:
                if prim is not None and prim.kind == "bounded_semaphore":
                    detail = "BoundedSemaphore.acquire"
                wait = self.waits[key] = Wait(kind, detail, prim, seconds, frame_label=name)
            if kind == "condition" and i > 0 and self.predicates_left > 0:
                predicate, own = wait_for_predicate(nodes[i - 1])  # each waiting task has its own
                if predicate:
                    self.predicates_left -= 1
                    woken = condition_activity.woken(obj, nodes[i - 1]) if obj is not None else None
                    wait = replace(wait, predicate=predicate, predicate_own=own,
                                   woken=woken[0] if woken else 0,
                                   woken_seconds=max(0.0, self.now - woken[1]) if woken else None)
            return wait
        if kind == "sleep":
            handle = _local_of_type(nodes[i], frames[i] if frames is not None else None, asyncio.TimerHandle, "h")
            left = None
            try:
                when, loop = read_attr(handle, "_when"), read_attr(handle, "_loop")
                if type(when) is float and loop is not None:
                    left = max(0.0, when - loop.time())
            except Exception:
                left = None
            return Wait("sleep", "sleep", seconds=seconds, time_left=left)
        if kind == "stream_read":
            reader = _local_of_type(nodes[i], frames[i] if frames is not None else None, asyncio.StreamReader, "self")
            return Wait("stream_read", detail, seconds=seconds, stream_side=wait_evidence.stream_side(reader),
                        traffic=wait_evidence.traffic(reader))
        if kind == "gather":
            # the awaited tasks are locals of the frame: found by type among its values
            awaited: list[object] = []
            if detail == "TaskGroup":
                group = _local_of_type(nodes[i], None, _TASK_GROUP, "self")
                awaited = builtin_items(read_attr(group, "_tasks"))
            elif detail == "wait_for":
                awaited = _locals_of_type(nodes[i], asyncio.Task)
            elif detail == "as_completed":  # 3.13 keeps the futures left in its iterator
                if _AS_COMPLETED_ITERATOR is not None:
                    iterator = _local_of_type(nodes[i], None, _AS_COMPLETED_ITERATOR, "self")
                    awaited = builtin_items(read_attr(iterator, "_todo")) if iterator is not None else []
            else:
                for ref in gc.get_referents(nodes[i]):
                    awaited.extend(builtin_items(ref) if type(ref) in (set, list, tuple) else ())
            ids = tuple(task_origins.task_seq(t) for t in awaited if is_a(t, asyncio.Task))
            finished = self.finished_children(awaited) if detail == "gather" else ()
            del awaited
            return Wait("gather", detail, seconds=seconds, tasks=ids, finished=finished)
        if detail == POOL_WAIT:
            wait = self._future_wait(waiter, seconds, detail=detail)
            pool = self.pool_of(nodes[i], (seconds or 0.0) >= LEASE_MIN_WAIT)
            return replace(wait, pool=pool) if pool is not None else wait
        if detail == "Process.wait":
            process = _local_of_type(nodes[i], frames[i] if frames is not None else None,
                                     asyncio.subprocess.Process, "self")
            wait = self._future_wait(waiter, seconds, detail=detail)
            child = wait_evidence.child_process(process) if wait.kind == "future" else None
            del process
            return replace(wait, child=child) if child is not None else wait
        if detail in (DRAIN_WAIT, CLOSE_WAIT):
            wait = self._future_wait(waiter, seconds, detail=detail)
            owner = _local_of_type(nodes[i], frames[i] if frames is not None else None, _writer_types(), "self")
            backlog = wait_evidence.write_backlog(owner) if owner is not None else None
            del owner
            if backlog is not None and (detail == DRAIN_WAIT or backlog.closing):
                return replace(wait, backlog=backlog)
            return wait
        return self._future_wait(waiter, seconds, detail=detail)

    def pool_of(self, node: object, leases: bool) -> ConnectionPool | None:
        """The pool whose ``_wait_for_available_connection`` ``node`` runs, read once per
        dump (with its leases if any of its waits asks for them)."""
        base = wait_evidence.loaded_class("aiohttp.connector", "BaseConnector")
        connector = _local_of_type(node, None, base, "self") if base is not None else None
        if connector is None:
            return None
        key = id(connector)
        known = self.pools.get(key)
        if known is None or (leases and not known[1]):
            known = self.pools[key] = (wait_evidence.connection_pool(connector, leases), leases)
        return known[0]

    def _future_wait(self, waiter: object, seconds: float | None, detail: str = "") -> Wait:
        if is_a(waiter, asyncio.Task):
            return Wait("task", detail or "await task", seconds=seconds, tasks=(task_origins.task_seq(waiter),))
        if not is_a(waiter, asyncio.Future):  # a future-like object of the program's own: not read
            return Wait("unknown", detail or clip(type_name(waiter), 100), seconds=seconds)
        if type(waiter) is _GATHERING_FUTURE:
            children = builtin_items(read_attr(waiter, "_children"))
            ids = tuple(task_origins.task_seq(c) for c in children if is_a(c, asyncio.Task))
            return Wait("gather", "gather", seconds=seconds, tasks=ids, finished=self.finished_children(children))
        if _is_executor_future(waiter):
            handed = self.handed_to(waiter)
            if handed is not None:
                return Wait("executor", "run_coroutine_threadsafe", seconds=seconds,
                            remote_loop=handed[0], remote_task=handed[1])
            return Wait("executor", "run_in_executor", seconds=seconds)
        return Wait("future", detail or "Future", seconds=seconds,
                    created_at=_future_created_at(waiter, self.frames))

    def handed_to(self, waiter: object) -> tuple[str, int | None] | None:
        """For a wait on a coroutine ``run_coroutine_threadsafe`` handed another loop of
        this process: that loop and the coroutine's task there (found once per dump, and
        only when the process runs more than one loop)."""
        if len(self.loop_ids_loops) < 2:
            return None
        if self.handed is None:
            try:
                self.handed = wait_evidence.handed_coroutines(self.by_seq.values(), self.loop_ids_loops)
            except Exception:
                self.handed = {}
        cf = wait_evidence.concurrent_source(waiter)
        return self.handed.get(id(cf)) if cf is not None else None

    def created_by(self, origin: task_origins.Origin) -> CreatedBy | None:
        code_id, offset, parent, _seq = origin
        key = (code_id, offset, parent)
        created = self.creators.get(key)  # (only ever filled for a code that was known)
        if created is None:
            code = task_origins.creating_code(origin)
            if code is None:
                return None
            line = task_origins.origin_line(code, offset)
            parent_task = self.by_seq.get(parent) if parent is not None else None
            name = _safe_str(task_name(parent_task)) if parent_task is not None else None
            created = self.creators[key] = CreatedBy(parent, name, code.co_filename, line, _creator_function(code))
        return created

    def task_info(self, task: asyncio.Task[Any], running: bool) -> TaskInfo:
        return self.finish(task, running, *self.read(task, running))

    def read(self, task: asyncio.Task[Any], running: bool) -> tuple[object, list[object], _Shape, Wait]:
        """What every task of a dump needs read: its coroutine, await chain, the chain's
        shape (stack) and what it waits on; ``finish`` adds the rest of its record."""
        if not running and self.memo_ok:
            found = self.read_memo(task)
            if found is not None:
                return found
        coro = task_coroutine(future_field(task, "_coro"))
        walked = (None if _c_await_chain is None
                  else _c_await_chain(coro, MAX_CHAIN, holders.WRAPPER_CODE_OBJECTS))
        frames: list[types.FrameType] | None
        if walked is None:
            nodes, frames, elided = _await_chain(coro, self.options.max_frames)
            shape = self.shape(frames, elided=elided)
        else:
            key, nodes = walked
            nodes, elided = _elide(nodes, self.options.max_frames)
            shape = self.shapes.get(key)  # type: ignore[assignment]
            frames = None
            if shape is None:  # the first task stuck here: its frames name the place
                nodes, frames, elided = _await_chain(coro, self.options.max_frames)
                shape = self.shape(frames, key, elided)
        try:
            wait = self.classify(task, nodes, frames, shape, running)
        except Exception as err:  # an odd shape in the target: degrade, do not fail the dump
            wait = Wait("unknown", f"unreadable ({type(err).__name__})")
        return coro, nodes, shape, wait

    def read_memo(self, task: Any) -> tuple[object, list[object], _Shape, Wait] | None:
        """``read`` of a waiting task through what earlier tasks of the dump left in the
        memos, or None: asyncio's own task, on a chain whose shape is known, its future in
        a primitive's queue already indexed, with that wait (chain, primitive, start) seen
        before.  Tasks stuck together cost a few look-ups each this way."""
        if type(task) is not _C_TASK:  # exact type: its fields are asyncio's descriptors
            return None
        try:
            coro = task._coro
            waiter = task._fut_waiter
            if type(coro) is not _CoroutineType or waiter is None:
                return None
            walked = _c_await_chain(coro, MAX_CHAIN, holders.WRAPPER_CODE_OBJECTS)  # type: ignore[misc]
            shape = self.shapes.get(walked[0]) if walked is not None else None
            if shape is None or not shape.memo:
                return None
            entry = self.waiter_owners.get(id(waiter))
            if entry is None or entry[0] is not waiter:
                return None
            wait = self.waits.get((id(shape), id(entry[1]), self.watch.first_seen(task, waiter)))  # type: ignore[union-attr]
            if wait is None:
                return None
            nodes = walked[1]
            if len(nodes) > self.options.max_frames:
                nodes = _elide(nodes, self.options.max_frames)[0]
            return coro, nodes, shape, wait
        except Exception:
            return None

    def finish(self, task: asyncio.Task[Any], running: bool, coro: object, nodes: list[object], shape: _Shape,
               wait: Wait) -> TaskInfo:
        """The task's record from what ``read`` found: its origin, creator, loop, name,
        cancellation and what can end its wait."""
        stack = shape.stack
        origin = task_origins.task_origin(task)
        created_by = self.created_by(origin) if origin is not None else None
        try:  # asyncio's own task (most of a dump): its own methods and fields, read once
            if type(task) is not _C_TASK:
                raise TypeError
            cancelling = bool(_task_cancelling(task))
            loop = task._loop
            name = _task_get_name(task)
            main = bool(task._callbacks) and wait_evidence.is_main_task(task)
        except Exception:
            cancelling = bool(task_cancelling(task))
            loop = future_field(task, "_loop")
            name = task_name(task)
            main = wait_evidence.is_main_task(task)
        loop_id = self.loop_ids.get(id(loop))
        if loop_id is None:
            loop_id = self.loop_ids[id(loop)] = hex(id(loop))
        if wait.kind in _DEADLINE_KINDS:
            try:
                wait = self.wait_evidence(task, nodes, loop, wait)
            except Exception:
                pass
        cancel_seconds = None
        handling = False
        if cancelling:
            seen = self.watch.cancel_seen(task) if self.watch is not None else None
            cancel_seconds = 0.0 if seen is None else max(0.0, self.now - seen)
            handling = _handling_cancel(nodes)
        values = {
            "id": origin[3] if origin is not None else task_origins.task_seq(task),
            "name": name if type(name) is str and len(name) <= _NAME_LIMIT else _safe_str(name),
            "coro": self.coro_name(coro),
            "state": "running" if running else ("ready" if wait.kind == "ready" else "waiting"),
            "stack": stack, "wait": wait, "created_by": created_by, "loop": loop_id,
        }
        if cancelling:
            values.update(cancelling=True, cancel_seconds=cancel_seconds, handling_cancel=handling)
        if main:
            values["main"] = True
        return _task_info(values)

    def wait_evidence(self, task: asyncio.Task[Any], nodes: list[object], loop: asyncio.AbstractEventLoop,
                      wait: Wait) -> Wait:
        """``wait`` with what can end it (a deadline) and the awaited future's id."""
        primitive = wait.kind in _PRIMITIVE_KINDS
        if primitive and (self.deadline_budget <= 0 or not wait.seconds):
            return wait  # nothing to add (most tasks of a big dump, past the deadline scan)
        waiter = wait_evidence.fut_waiter(task)
        future_id = ""
        if not primitive and waiter is not None:
            future_id = hex(id(waiter))
            if wait.kind == "executor":
                self.executor_waits.append(waiter)
        if self.deadline_budget <= 0 or not wait.seconds:
            return replace(wait, future_id=future_id) if future_id else wait
        self.deadline_budget -= 1
        if self.timers is None:
            self.timers = wait_evidence.LoopTimers(self.loop_ids_loops)
        now = self.loop_times.get(id(loop))
        if now is None:
            try:
                now = self.loop_times[id(loop)] = float(loop.time())
            except Exception:
                now = self.loop_times[id(loop)] = time.monotonic()
        found = wait_evidence.deadline_of(task, nodes, waiter, self.timers, now)
        # Tasks stuck together share one Wait, and most find the same answer (none): they
        # share the Wait that says so too.
        memo_key = (id(wait), found, future_id)
        memo = self.deadline_waits.get(memo_key)
        if memo is not None and memo[0] is wait:
            return memo[1]
        out = replace(wait, deadline=None if found is None else found[0],
                      deadline_by="" if found is None else found[1], deadline_known=True, future_id=future_id)
        self.deadline_waits[memo_key] = (wait, out)
        return out

    def finished_children(self, children: list[object]) -> tuple[FinishedChild, ...]:
        """The tasks among a gather's ``children`` that have ended, and how: read from their
        fields, never asked (``exception()`` would mark an error as retrieved)."""
        out = []
        for child in children:
            if not is_a(child, asyncio.Task) or not future_done(child):
                continue
            state = future_field(child, "_state")
            if state == "CANCELLED":
                outcome = "cancelled"
            else:
                exc = future_field(child, "_exception")
                outcome = f"raised {type_name(exc)}" if is_a(exc, BaseException) else "returned"
            coro = future_field(child, "_coro")
            out.append(FinishedChild(task_origins.task_seq(child),
                                     self.coro_name(coro) if coro is not None else clip(task_name(child)), outcome))
            if len(out) >= 16:
                break
        return tuple(out)

    def coro_name(self, coro: object) -> str:
        if type(coro) is _CoroutineType:
            code: Any = coro.cr_code  # type: ignore[attr-defined]
        elif type(coro) is _GeneratorType:
            code = coro.gi_code  # type: ignore[attr-defined]
        else:  # another implementation (Cython) by its C field, or any awaitable by its class
            name = read_attr(coro, "__qualname__") if type(class_attr(type(coro), "__qualname__")) in _FIELDS else None
            return clip(name if type(name) is str else type_name(coro))
        name = self.coro_names.get(id(code))
        if name is None:
            name = _safe_str(getattr(coro, "__qualname__", None) or type(coro).__name__)
            if code is not None:
                self.coro_names[id(code)] = name
        return name


_COMPREHENSIONS = (".<listcomp>", ".<genexpr>", ".<setcomp>", ".<dictcomp>")


def _creator_function(code: types.CodeType) -> str:
    """The creating function's name; a comprehension (its own frame before 3.12) counts as
    the function it is written in."""
    name: str = getattr(code, "co_qualname", code.co_name)
    for suffix in _COMPREHENSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)].removesuffix(".<locals>")
    return name


_NAME_LIMIT = 200


def _safe_str(value: object, limit: int = _NAME_LIMIT) -> str:
    """A name cut to ``limit``; never runs the value's own ``__str__`` (see safe_read)."""
    return clip(value, limit)


def thread_stack(thread_id: int | None, frames: _FrameCache, max_frames: int = 64) -> tuple[Frame, ...]:
    """A thread's current stack, innermost frame first."""
    if thread_id is None:
        return ()
    frame = sys._current_frames().get(thread_id)
    out: list[Frame] = []
    while frame is not None and len(out) < max_frames:
        out.append(frames.of(frame))
        frame = frame.f_back
    return tuple(out)


def collect_loops(watch: LoopWatch | None, loops: set[asyncio.AbstractEventLoop],
                  frames: _FrameCache) -> tuple[LoopInfo, ...]:
    out = []
    for loop in sorted(loops, key=id):
        thread_id, thread_name, lag, stalled = (watch.loop_health(loop) if watch is not None
                                                else (getattr(loop, "_thread_id", None), "", None, 0.0))
        if not thread_name and thread_id is not None:
            for th in threading.enumerate():
                if th.ident == thread_id:
                    thread_name = th.name
        try:
            running = loop.is_running()
        except Exception:
            running = False
        blocking = thread_stack(thread_id, frames) if stalled > 0 else ()
        h = watch.stall_history(loop) if watch is not None else StallHistory()
        unwoken, unwoken_total = watch.unwoken(loop) if watch is not None else ((), 0)
        out.append(LoopInfo(hex(id(loop)), thread_id, thread_name, running, lag, stalled, blocking,
                            h.window, h.stalls, h.stacks, h.stalls_total, h.stall_seconds_total,
                            h.starved_total, h.starved_seconds_total,
                            watch.lag_peaks(loop) if watch is not None else (), unwoken, unwoken_total))
    return tuple(out)


def process_info() -> ProcessInfo:
    return ProcessInfo(os.getpid(), tuple(sys.argv), sys.version.split()[0], diag.__version__)


def _unify_primitives(infos: list[TaskInfo], final: dict[int, Primitive | None]) -> list[TaskInfo]:
    """Give every task the final description of its primitive (labels found in later tasks)."""
    by_id = {p.id: p for p in final.values() if p is not None}
    out = []
    for info in infos:
        prim = info.wait.primitive
        if prim is not None and by_id.get(prim.id, prim) is not prim:
            info = replace(info, wait=replace(info.wait, primitive=by_id[prim.id]))
        out.append(info)
    return out


# Its state lives in gc_pause, which puts the program's setting back in a forked child.
from diag.collect.gc_pause import paused_gc as paused_gc  # noqa: E402


def collect_tasks(watch: LoopWatch | None = None, options: CollectOptions = CollectOptions()) -> TaskSnapshot:
    """Snapshot every pending task of this process; safe to call from any thread.  The
    cyclic GC is paused meanwhile (see ``paused_gc``)."""
    _learn_library_codes()
    with paused_gc(), (watch.own_work() if watch is not None else contextlib.nullcontext()):
        snap = _collect_tasks(watch, options)
    first = process_notes()
    return replace(snap, notes=first + snap.notes) if first else snap


def process_notes() -> tuple[str, ...]:
    """What every dump of this process says first: a late attach, a pure-Python path."""
    from diag.attach import in_target

    return tuple(n for n in (in_target.note(), task_origins.accelerator_note()) if n)


def _unreadable_task(task: asyncio.Task[Any], err: Exception) -> TaskInfo:
    """A task whose description failed: listed anyway, by its id, name and coroutine's
    type, waiting on ``unknown: unreadable (Error)``."""
    coro = future_field(task, "_coro")
    return _task_info({
        "id": task_origins.task_seq(task), "name": _safe_str(task_name(task)),
        "coro": clip(type_name(coro) if type(coro) is not _CoroutineType else coro.__qualname__),  # type: ignore[attr-defined]
        "state": "waiting", "stack": (), "wait": Wait("unknown", f"unreadable ({type(err).__name__})"),
        "loop": hex(id(future_field(task, "_loop"))),
    })


#: Up to this many tasks are put in creation order by one sort (about 40 ms here).
_ONE_SORT = 100_000
#: Tasks a bucket of ``sort_by_seq`` holds, on average.
_BUCKET = 4096
#: Bulk steps over every task (numbering, indexing) go this many tasks at a time: each is
#: one C call that keeps the GIL, so the target's loop runs between them.
_SLICE = 8192


def _first(pair: tuple[int, object]) -> int:
    return pair[0]


class _Collection:
    """One collection's state: the pending tasks found at its start and the walker that
    describes them; ``describe`` does any run of them, ``snapshot`` the rest."""

    def __init__(self, watch: LoopWatch | None, options: CollectOptions) -> None:
        self.watch = watch
        self.options = options
        self.started = time.monotonic()
        self.taken_at = time.time()
        exclude, c_task = options.exclude, _C_TASK
        self.all_tasks: list[asyncio.Task[Any]] = []
        tasks = self.all_tasks
        by_id: dict[int, asyncio.AbstractEventLoop] = {}
        for t in iter_all_tasks():
            if id(t) in exclude:
                continue
            try:  # asyncio's own task: its fields are asyncio's descriptors, no code of the program's
                if type(t) is not c_task:
                    raise AttributeError
                state, loop = t._state, t._loop
            except AttributeError:  # a subclass (or an interpreter without these fields): the careful way
                state, loop = future_field(t, "_state"), future_field(t, "_loop")
            if state != _PENDING:
                continue
            tasks.append(t)
            if loop is not None and id(loop) not in by_id:
                by_id[id(loop)] = loop
        #: ``task_seq`` of each of ``all_tasks``, in the same order
        self.seqs: list[int] = []
        for start in range(0, len(tasks), _SLICE):
            self.seqs += task_origins.task_seqs(tasks[start:start + _SLICE])
        loops: set[asyncio.AbstractEventLoop] = set()
        self.current: set[int] = set()
        for loop in by_id.values():
            loops.add(loop)
            cur = asyncio.current_task(loop)
            if cur is not None:
                self.current.add(id(cur))
        if watch is not None:
            loops.update(watch.loops())
            for loop in loops:
                watch.add_loop(loop)
        self.loops = loops
        self.walker = walker = _Walker(watch, options, time.monotonic())
        walker.by_seq = {}
        for start in range(0, len(tasks), _SLICE):  # a slice at a time: a loop can run between
            walker.by_seq.update(zip(self.seqs[start:start + _SLICE], tasks[start:start + _SLICE]))
        walker.loop_ids_loops = loops
        self.deadline = None if options.budget is None else self.started + options.budget
        self.described = 0
        self.cut = False  # the walk stopped at its budget: total_tasks counts the tasks it did not describe
        self.notes: tuple[str, ...] = ()

    def release(self) -> None:
        """Free the collection's indexes of every task a slice at a time: freeing a
        million-entry dict at once is one C call that keeps the GIL for a tenth of a
        second or more, the target's loop stopped meanwhile."""
        walker = self.walker
        for table in (walker.waiter_owners, walker.by_seq):
            while table:
                for _ in range(min(_SLICE, len(table))):
                    table.popitem()
        for items in (self.all_tasks, self.seqs):
            while items:
                del items[-_SLICE:]

    def sort_by_seq(self) -> None:
        """Put ``all_tasks`` (and ``seqs``) in creation order.  One sort holds the GIL from
        start to end (half a second for a million tasks here, the target's loop stopped
        meanwhile), so many tasks are first spread over buckets of ids, a slice at a time,
        and each bucket is sorted on its own."""
        seqs, tasks = self.seqs, self.all_tasks
        if len(seqs) <= _ONE_SORT:
            order = sorted(range(len(seqs)), key=seqs.__getitem__)
            self.all_tasks = [tasks[i] for i in order]
            self.seqs = [seqs[i] for i in order]
            return
        low, high = min(seqs), max(seqs)
        width = (high - low) // (len(seqs) // _BUCKET + 1) + 1
        buckets: list[list[tuple[int, asyncio.Task[Any]]]] = [[] for _ in range((high - low) // width + 1)]
        for start in range(0, len(seqs), _SLICE):
            for pair in zip(seqs[start:start + _SLICE], tasks[start:start + _SLICE]):
                buckets[(pair[0] - low) // width].append(pair)
        self.all_tasks, self.seqs = [], []
        for bucket in buckets:
            bucket.sort(key=_first)
            self.seqs += [pair[0] for pair in bucket]
            self.all_tasks += [pair[1] for pair in bucket]

    def out_of_time(self) -> bool:
        """Whether the collection has used up its budget (after describing at least one
        task); if so, ``cut`` is set and a note says how far it got."""
        if not self.described or self.deadline is None or time.monotonic() <= self.deadline:
            return False
        self.notes += (f"cut: the dump stopped after its budget of {self.options.budget:g}s; "
                       f"described {self.described} of {len(self.all_tasks)} tasks",)
        self.cut = True
        return True

    def describe(self, tasks: list[asyncio.Task[Any]]) -> list[TaskInfo]:
        """``tasks`` described, until the budget runs out (then ``cut`` is set and a note says so)."""
        infos: list[TaskInfo] = []
        walker, current, deadline = self.walker, self.current, self.deadline
        for task in tasks:
            if deadline is not None and self.described % _CLOCK_EVERY == 0 and self.out_of_time():
                break
            self.described += 1
            try:
                infos.append(walker.task_info(task, id(task) in current))
            except Exception as err:  # an object that cannot be read costs its entry, not the dump
                try:
                    infos.append(_unreadable_task(task, err))
                except Exception:  # gone under our feet
                    continue
        return infos

    def name_primitives(self) -> None:
        """The passes that name the primitives found so far by what holds them."""
        try:
            self.walker.name_by_holders_frames()
        except Exception:  # a name is a help, never worth the dump
            pass
        self.walker.relabel_by_holders()

    def snapshot(self, infos: list[TaskInfo], described: int) -> TaskSnapshot:
        """The snapshot of ``infos`` (``described`` tasks were described in all)."""
        watch, walker, loops = self.watch, self.walker, self.loops
        clock = watch.describe_clock() if watch is not None else "not measured (no agent watchdog)"
        notes = self.notes
        if walker.deadline_budget <= 0:
            notes += (f"deadlines were looked for in the first {MAX_DEADLINE_SCAN} waiting tasks only",)
        if walker.holder_scan_skipped:
            notes += (f"primitives are named by the waiting code only: with more than {MAX_HOLDER_SCAN_TASKS} "
                      "tasks, the heap scan for what holds them would stop the loop too long",)
        try:
            threads, executors = wait_evidence.collect_threads(walker.frames.of, walker.executor_waits, loops)
        except Exception:
            threads, executors = (), ()
        walker.executor_waits = []
        return TaskSnapshot(
            taken_at=self.taken_at, process=process_info(), tasks=tuple(infos),
            loops=collect_loops(watch, loops, walker.frames),
            total_tasks=len(self.all_tasks) if self.cut else described,
            wait_clock=clock, notes=notes, collect_seconds=time.monotonic() - self.started,
            dead_tasks=watch.dead.snapshot() if watch is not None else (),
            threads=threads, executors=executors,
            destroyed_seen=watch is not None and bool(loops) and all(watch.dead.hooked(lp) for lp in loops),
        )


def _collect_tasks(watch: LoopWatch | None, options: CollectOptions) -> TaskSnapshot:
    run = _Collection(watch, options)
    infos = run.describe(run.all_tasks)
    run.name_primitives()
    infos = _unify_primitives(infos, run.walker.primitives)
    infos.sort(key=lambda t: t.id)
    return run.snapshot(infos, len(infos))


#: Rounds of naming primitives by their holders in a streamed collection: after its first
#: slice, and again when a later slice found new primitives (each round scans the heap).
MAX_STREAM_NAMING = 4


class TaskStream:
    """A collection described and handed out a slice at a time, for dumps too big to hold
    whole: only one slice of ``TaskInfo`` is alive at once.  Tasks come in creation order;
    a primitive is described as it is known when its slice is made (named by its holders
    after the first slice, and after any slice that found new ones, up to
    ``MAX_STREAM_NAMING`` rounds).  ``slices`` runs each slice with the GC paused and as
    the agent's own work; ``snapshot`` (after the slices) gives everything but the tasks,
    with the await cycles among all of them.

    Usage::

        stream = TaskStream(watch, CollectOptions(budget=60.0), slice_size=2000)
        for infos in stream.slices():
            send(infos)
        rest = stream.snapshot()        # tasks == (), total_tasks counts them all
    """

    def __init__(self, watch: LoopWatch | None, options: CollectOptions, slice_size: int = 2000) -> None:
        _learn_library_codes()
        with paused_gc(), (watch.own_work() if watch is not None else contextlib.nullcontext()):
            self.run = _Collection(watch, options)
            self.run.sort_by_seq()
        self.slice_size = slice_size
        self.edges: dict[int, tuple[int, ...]] = {}
        self.ended = 0  # tasks that ended before their slice was described
        self.stopped = False  # the reader took what it wanted before the last slice

    def __len__(self) -> int:
        return len(self.run.all_tasks)

    def slices(self) -> Iterator[tuple[TaskInfo, ...]]:
        run = self.run
        tasks = run.all_tasks
        named, rounds = 0, 0
        for start in range(0, len(tasks), self.slice_size):
            with paused_gc(), (run.watch.own_work() if run.watch is not None else contextlib.nullcontext()):
                # still pending (asyncio's own task, most of a dump, by its field at once)
                chunk = [t for t in tasks[start:start + self.slice_size]
                         if (t._state if type(t) is _C_TASK else future_field(t, "_state")) == _PENDING]
                self.ended += min(self.slice_size, len(tasks) - start) - len(chunk)
                infos = run.describe(chunk)
                del chunk
                if rounds < MAX_STREAM_NAMING and len(run.walker.primitive_objects) > named:
                    run.name_primitives()
                    named, rounds = len(run.walker.primitive_objects), rounds + 1
                infos = _unify_primitives(infos, run.walker.primitives)
            for info in infos:
                if info.wait.tasks:
                    self.edges[info.id] = info.wait.tasks
            yield tuple(infos)
            del infos
            if run.cut or self.stopped:
                break

    def stop(self) -> None:
        """Describe no more slices (the reader has what it wants): the snapshot still
        counts every task pending when the dump began."""
        self.stopped = True

    def snapshot(self) -> TaskSnapshot:
        """Everything but the tasks, once ``slices`` has run (``edges`` holds what the
        tasks await, for their cycles)."""
        run = self.run
        with paused_gc():
            snap = run.snapshot([], len(run.all_tasks) - self.ended if self.stopped else run.described)
            total = len(run.all_tasks)
            run.release()
        notes = process_notes() + snap.notes + (
            f"streamed: the {total} tasks pending when the dump began, described a slice of "
            f"{self.slice_size} at a time over {snap.collect_seconds:.1f}s while the loop ran; tasks created "
            "meanwhile are not in it",)
        if self.ended:
            notes += (f"{self.ended} of them ended before their slice was described, and are left out",)
        return replace(snap, notes=notes)


class TaskSketches:
    """A collection for a grouped dump: every pending task read only as far as its group
    needs (its await chain, stack and wait), and described in full (creator, name,
    deadline, cancellation...) only when the reader asks, for the first task of a group.
    Tasks come in no particular order (putting a million in order would hold the GIL for
    half a second). The GC stays paused, and the work is the agent's own, from the first
    sketch to ``snapshot``.

    Usage::

        with TaskSketches(watch, CollectOptions(budget=5.0)) as sketches:
            firsts = [sketches.describe(s) for s in lowest_of_each_group(sketches)]
            snap, firsts = sketches.snapshot(firsts)   # primitives named, as collect_tasks
    """

    def __init__(self, watch: LoopWatch | None, options: CollectOptions) -> None:
        _learn_library_codes()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(paused_gc())
        if watch is not None:
            self._stack.enter_context(watch.own_work())
        try:
            self.run = _Collection(watch, options)
        except BaseException:
            self._stack.close()
            raise

    def __iter__(self) -> Iterator[Sketch]:
        run = self.run
        walker, current, deadline = run.walker, run.current, run.deadline
        coro_name, read_memo, memo_ok = walker.coro_name, walker.read_memo, walker.memo_ok
        task: Any
        for seq, task in zip(run.seqs, run.all_tasks):
            if deadline is not None and run.described % _CLOCK_EVERY == 0 and run.out_of_time():
                return
            run.described += 1
            try:
                running = id(task) in current
                found = read_memo(task) if memo_ok and not running else None
                if found is not None:  # waiting, on a wait an earlier task was read whole for
                    coro, nodes, shape, wait = found
                    yield (seq, "waiting", coro_name(coro), shape.stack, wait, (task, False, coro, nodes, shape))
                    continue
                coro, nodes, shape, wait = walker.read(task, running)
                state = "running" if running else ("ready" if wait.kind == "ready" else "waiting")
                yield (seq, state, coro_name(coro), shape.stack, wait, (task, running, coro, nodes, shape))
            except Exception as err:  # an object that cannot be read costs its entry, not the dump
                try:
                    info = _unreadable_task(task, err)
                except Exception:  # gone under our feet
                    run.described -= 1
                    continue
                yield (info.id, info.state, info.coro, info.stack, info.wait, info)

    def describe(self, sketch: Sketch) -> TaskInfo:
        """The whole record of the sketch's task, as ``collect_tasks`` has it."""
        handle = sketch[5]
        if isinstance(handle, TaskInfo):
            return handle
        task: Any
        running: bool
        nodes: list[object]
        shape: _Shape
        coro: object
        task, running, coro, nodes, shape = handle  # type: ignore[misc]
        try:
            return self.run.walker.finish(task, running, coro, nodes, shape, sketch[4])
        except Exception as err:
            try:
                return _unreadable_task(task, err)
            except Exception:
                return _task_info({"id": sketch[0], "name": "", "coro": sketch[2], "state": sketch[1],
                                   "stack": sketch[3], "wait": Wait("unknown", f"unreadable ({type(err).__name__})"),
                                   "loop": ""})

    def snapshot(self, firsts: list[TaskInfo]) -> tuple[TaskSnapshot, list[TaskInfo]]:
        """Everything but the tasks, and ``firsts`` with their primitives named as
        ``collect_tasks`` names them; ``close`` ends the collection."""
        run = self.run
        run.name_primitives()
        firsts = _unify_primitives(firsts, run.walker.primitives)
        snap = run.snapshot([], run.described)
        first = process_notes()
        return (replace(snap, notes=first + snap.notes) if first else snap), firsts

    def __enter__(self) -> TaskSketches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the collection (the GC runs again), its indexes freed a slice at a time."""
        try:
            self.run.release()
        finally:
            self._stack.close()
