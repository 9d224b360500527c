"""Who could still act on an awaited thing: the names a suspended coroutine's code has yet
to read, and whether anything outside the tasks (a loop callback, a transport or server,
a pending future's callback, a signal handler, a thread) can reach it.

Both answer one question of ``sync_collector.with_users``: can anything end this wait?
Both only read: bytecode (``dis``), frames' positions, and the GC's referents; no code of
the program runs.  Both err the safe way: a name that might be read counts as read, an
object that might be reached counts as reached, and a thread busy in the program's own
code (whose locals cannot be read) makes the answer unknown.
"""

from __future__ import annotations

import asyncio
import bisect
import dis
import functools
import gc
import os
import signal
import sys
import sysconfig
import threading
import types
from collections.abc import Iterable
from typing import Any

from diag.collect.safe_read import _class_dict, _class_mro, future_field, instance_dict, read_attr

#: Interpreters whose bytecode layout (byte offsets in ``f_lasti``, the exception table)
#: ``names_ahead`` was checked on; on others a coroutine's whole code counts as ahead.
_TESTED = ((3, 11), (3, 12), (3, 13))
#: Functions called by name whose own names are added to a task's, followed this deep.
CALL_DEPTH = 2
#: Functions so followed for one task, at most.
MAX_CALLED = 64
#: Objects one search from outside the tasks visits before it gives up (unknown).
MAX_REACH = 60_000

_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_NAMES = frozenset(dis.hasname)


@functools.lru_cache(maxsize=2048)
def _code_layout(code: types.CodeType) -> tuple[tuple[tuple[int, str, int], ...], tuple[tuple[int, int, int], ...]]:
    """The instructions of ``code`` that read a name or jump, as (offset, name or "",
    jump target or -1), and its exception table as (start, end, handler)."""
    bytecode = dis.Bytecode(code)
    out = []
    before = ""
    for ins in bytecode:
        if ins.opcode in _NAMES and type(ins.argval) is str:
            out.append((ins.offset, ins.argval, -1))
        elif (ins.opcode in _JUMPS and type(ins.argval) is int and ins.opname != "JUMP_BACKWARD_NO_INTERRUPT"
              and before != "CLEANUP_THROW"):
            # (not an await's own machinery: its send loop, and the way back to just after
            # it from the handler of a throw into it)
            out.append((ins.offset, "", ins.argval))
        if ins.opname != "EXTENDED_ARG":  # (a far jump's prefix)
            before = ins.opname
    entries = tuple((e.start, e.end, e.target) for e in getattr(bytecode, "exception_entries", ()) or ())
    return tuple(out), entries


def _earliest(layout: tuple[tuple[int, str, int], ...], entries: tuple[tuple[int, int, int], ...],
              lasti: int) -> int:
    """The earliest offset code suspended at ``lasti`` can get back to: a jump or an
    exception handler ahead of it that leads back, to a fixed point."""
    start = lasti
    moved = True
    while moved:
        moved = False
        for offset, _, target in layout:
            if target >= 0 and offset >= start and target < start:
                start, moved = target, True
        for begin, end, handler in entries:
            if end > start and handler < start:
                start, moved = handler, True
    return start


def in_loop(coro: object) -> bool | None:
    """Whether one of the program's own coroutines (not the standard library's, nor diag's)
    in the await chain from ``coro`` is suspended inside a loop (it waits again once woken:
    a worker); None when that cannot be told."""
    if sys.version_info[:2] not in _TESTED:
        return None
    for _ in range(16):
        if type(coro) is types.CoroutineType:
            frame, code, nxt = coro.cr_frame, coro.cr_code, coro.cr_await
        elif type(coro) is types.GeneratorType:
            frame, code, nxt = coro.gi_frame, coro.gi_code, coro.gi_yieldfrom
        else:
            return False
        if frame is None:
            return False
        if not _outside_program(code.co_filename):
            try:
                layout, entries = _code_layout(code)
            except Exception:
                return None
            lasti = frame.f_lasti
            if lasti < 0 or _earliest(layout, entries, lasti) < lasti:
                return True
        coro = nxt
    return None


def names_ahead(code: types.CodeType, lasti: int) -> frozenset[str]:
    """The names (attributes, globals, methods) that ``code``, suspended at byte offset
    ``lasti``, may still read: every instruction from the earliest point it can get back to
    (a loop around the suspension, an exception handler) to its end.  The whole code's on an
    interpreter this was not checked on, or at an unknown position."""
    if sys.version_info[:2] not in _TESTED or lasti < 0:
        return frozenset(code.co_names)
    try:
        layout, entries = _code_layout(code)
    except Exception:
        return frozenset(code.co_names)
    start = _earliest(layout, entries, lasti)
    return frozenset(name for offset, name, _ in layout if name and offset >= start)


#: Instructions naming a local (fast or cell) slot; stores and deletes do not read it.
_LOCAL_OPS = frozenset(dis.haslocal) | frozenset(dis.hasfree)


@functools.lru_cache(maxsize=2048)
def _local_reads(code: types.CodeType) -> tuple[tuple[int, str], ...]:
    """The instructions of ``code`` that read a local variable, as (offset, name)."""
    out: list[tuple[int, str]] = []
    for ins in dis.get_instructions(code):
        if ins.opcode not in _LOCAL_OPS:
            continue
        names = ins.argval if type(ins.argval) is tuple else (ins.argval,)
        if ins.opname == "STORE_FAST_LOAD_FAST":  # (3.13: stores the first, reads the second)
            names = names[1:]
        elif ins.opname.startswith(("STORE_", "DELETE_")):
            continue
        out.extend((ins.offset, name) for name in names if type(name) is str)
    return tuple(out)


def locals_ahead(code: types.CodeType, lasti: int) -> frozenset[str] | None:
    """The local variables ``code``, suspended at byte offset ``lasti``, may still read (from
    the earliest point it can get back to, as ``names_ahead``); None when that cannot be
    told (an interpreter this was not checked on, an unknown position): any may be read."""
    if sys.version_info[:2] not in _TESTED or lasti < 0:
        return None
    try:
        layout, entries = _code_layout(code)
        reads = _local_reads(code)
    except Exception:
        return None
    start = _earliest(layout, entries, lasti)
    return frozenset(name for offset, name in reads if offset >= start)


def called_names(names: Iterable[str], namespace: dict[str, Any] | None) -> set[str]:
    """The names read by the module-level functions that ``names`` calls (looked up in the
    module's ``namespace``), and by those they call, ``CALL_DEPTH`` deep."""
    out: set[str] = set()
    if namespace is None:
        return out
    seen: set[int] = set()
    frontier = list(names)
    for _ in range(CALL_DEPTH):
        nxt: list[str] = []
        for name in frontier:
            fn = namespace.get(name)
            if type(fn) is not types.FunctionType or id(fn) in seen or len(seen) >= MAX_CALLED:
                continue
            seen.add(id(fn))
            new = set(fn.__code__.co_names) - out
            out |= new
            nxt.extend(new)
        frontier = nxt
    return out


def callable_names(fn: object, out: set[str]) -> None:
    """Add to ``out`` the names read by ``fn`` when it is a function, a bound method (of a
    function) or a ``functools.partial`` of one."""
    for _ in range(3):
        if type(fn) is types.MethodType:
            fn = fn.__func__
        elif type(fn) is functools.partial:
            fn = fn.func
        else:
            break
    if type(fn) is types.FunctionType:
        _code_names(fn.__code__, out)


def coroutine_names(coro: object) -> set[str] | None:
    """The names a suspended coroutine (or generator) may still read, with those of the
    module functions it calls; None for anything else."""
    if type(coro) is types.CoroutineType:
        frame, code = coro.cr_frame, coro.cr_code
    elif type(coro) is types.GeneratorType:
        frame, code = coro.gi_frame, coro.gi_code
    else:
        return None
    if frame is None:
        return set()  # ended: it reads nothing more
    ahead = names_ahead(code, frame.f_lasti)
    names = set(ahead)
    namespace = frame.f_globals
    names |= called_names(ahead, namespace if type(namespace) is dict else None)
    return names


# -- from outside the tasks ---------------------------------------------------------------

_STDLIB = tuple(os.path.normcase(p) + os.sep for p in
                {sysconfig.get_paths().get("stdlib", ""), sysconfig.get_paths().get("platstdlib", "")} if p)
_OWN = os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


def _outside_program(filename: str) -> bool:
    """Code of the standard library (not a package installed into it) or of diag itself."""
    name = os.path.normcase(filename)
    if name.startswith(_OWN):
        return True
    return name.startswith(_STDLIB) and "site-packages" not in name and "dist-packages" not in name


def busy_threads(loop_threads: set[int]) -> list[str]:
    """Threads other than the loops' and this one that are in the program's code (or a
    library's) now: what their frames hold cannot be read, so they may act on anything.
    Idle pool workers and diag's own threads are in the standard library's or diag's code."""
    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in list(sys._current_frames().items()):
        if ident == me or ident in loop_threads:
            continue
        f: types.FrameType | None = frame
        depth = 0
        while f is not None and depth < 64:
            if not _outside_program(f.f_code.co_filename):
                out.append(names.get(ident, str(ident)))
                break
            f = f.f_back
            depth += 1
        del f
    return out


_TYPE_MODULE = type.__dict__["__module__"]
#: What refers to a loop and may run code later: a pending future's done callbacks, a
#: transport's protocol, a server's protocol factory, a handle's callback.  (A primitive
#: or a queue bound to the loop acts on nothing by itself.)
_ACTORS = (asyncio.Future, asyncio.BaseTransport, asyncio.BaseProtocol, asyncio.AbstractServer, asyncio.Handle)


def _module_of(kind: type) -> str:
    """The module a class was defined in, read through ``type``'s own descriptor (a
    metaclass's ``__module__`` is the program's code)."""
    try:
        name = _TYPE_MODULE.__get__(kind, type)
    except Exception:
        return ""
    return name if type(name) is str else ""


def _roots(loops: Iterable[object], skip: set[int], awaited: Iterable[object] = ()) -> list[object]:
    """Where the program can act from outside its tasks: each loop (its ready and timer
    handles, asyncio's selector with every transport and server), the futures the tasks
    await (``awaited``: their done callbacks), the handlers of signals, and the threads'
    functions and arguments.  A loop whose internals are C (uvloop) is entered through
    what refers to it instead: its transports, servers and handles, and the pending futures
    bound to it (one pass over the heap)."""
    roots: list[object] = [fut for fut in awaited if id(fut) not in skip]
    for loop in loops:
        roots.append(loop)
        if issubclass(type(loop), asyncio.BaseEventLoop):
            continue  # asyncio's own: everything it runs is reached from its attributes
        for ref in gc.get_referrers(loop):
            if id(ref) in skip or type(ref) is types.FrameType or type(ref) is dict:
                continue
            kind = type(ref)
            if issubclass(kind, _ACTORS) or _module_of(kind).startswith("uvloop"):
                roots.append(ref)
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        if callable(handler):
            roots.append(handler)
    for thread in threading.enumerate():
        for field in ("_target", "_args", "_kwargs"):
            value = read_attr(thread, field)
            if value is not None:
                roots.append(value)
    return roots


def _code_names(code: types.CodeType, out: set[str], depth: int = 3) -> None:
    """The names ``code`` reads, and those of the functions and lambdas defined in it."""
    out.update(code.co_names)
    if depth > 0:
        for const in code.co_consts:
            if type(const) is types.CodeType:
                _code_names(const, out, depth - 1)


def _method_names(kind: type, cache: dict[int, frozenset[str]]) -> frozenset[str]:
    """The names read by the methods of ``kind`` (its own classes, not ``object``'s)."""
    known = cache.get(id(kind))
    if known is not None:
        return known
    names: set[str] = set()
    try:
        for klass in _class_mro(kind)[:-1]:
            if not _class_dict(klass).get("__module__"):
                continue  # a C class: no code of its own to read
            for fn in list(_class_dict(klass).values()):
                if type(fn) in (staticmethod, classmethod):
                    fn = fn.__func__
                if type(fn) is types.FunctionType:
                    _code_names(fn.__code__, names)
    except Exception:
        pass
    cache[id(kind)] = frozenset(names)
    return cache[id(kind)]


def outside_reach(loops: Iterable[object], wanted: set[int], skip: set[int],
                  awaited: Iterable[object] = ()) -> tuple[set[int], set[str]] | None:
    """What something outside the tasks (``_roots``) can reach: the ids in ``wanted`` it
    refers to, through any chain of objects, and the names read by the code it can run (the
    functions and the methods of the objects so reached), for the module globals they may
    name.  The walk stops at tasks, coroutines and frames, whose use the tasks' own scan
    judges, and at modules and classes.  None when cut at ``MAX_REACH`` objects.  ``skip``:
    ids never taken as roots (the awaited things themselves, which refer to their loop)."""
    modules = {id(ns) for m in list(sys.modules.values()) if (ns := instance_dict(m)) is not None}
    seen: set[int] = set()
    stack = _roots(loops, skip, awaited)
    found: set[int] = set()
    read: set[str] = set()
    classes: dict[int, frozenset[str]] = {}
    try:
        while stack:
            obj = stack.pop()
            oid = id(obj)
            if oid in seen:
                continue
            seen.add(oid)
            if oid in wanted:
                found.add(oid)
                continue
            if len(seen) > MAX_REACH:
                return None
            kind = type(obj)
            if (kind is types.CoroutineType or kind is types.GeneratorType or kind is types.AsyncGeneratorType
                    or kind is types.FrameType or kind is types.ModuleType or kind is types.CodeType
                    or issubclass(kind, type) or oid in modules):
                continue
            if issubclass(kind, asyncio.Future) and future_field(obj, "_coro") is not None:
                continue  # a task: judged by its await chain
            if kind is types.FunctionType:
                _code_names(obj.__code__, read)  # type: ignore[attr-defined]
            elif id(kind) not in classes:  # (once per class: what it reads is added once)
                read |= _method_names(kind, classes)
            stack.extend(gc.get_referents(obj))
    finally:
        del stack
    return found, read


#: Instructions that end a path through a function: by returning, or by raising.
_RETURNS = frozenset({"RETURN_VALUE", "RETURN_CONST"})
_RAISES = frozenset({"RAISE_VARARGS", "RERAISE"})
#: Jumps taken whatever the state (the others may also fall through).
_ALWAYS = frozenset({"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT"})
#: Loads an attribute chain (``self._lock``, ``pool.sem``) starts from.
_ROOT_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF", "LOAD_GLOBAL", "LOAD_NAME"})
#: What an ``await x.acquire()`` compiles to between the method's load and where its
#: frame is suspended (or resumed) while the acquire completes.
_AWAIT_OPS = frozenset({"PRECALL", "CALL", "KW_NAMES", "GET_AWAITABLE", "LOAD_CONST", "SEND", "YIELD_VALUE",
                        "RESUME", "JUMP_BACKWARD_NO_INTERRUPT", "END_SEND", "CLEANUP_THROW", "NOP"})
#: Instructions looked at back from an acquire's site for the method's load.
_SITE_REACH = 12


def reads_bytecode() -> bool:
    """Whether this interpreter's bytecode layout is one the readings here were checked on."""
    return sys.version_info[:2] in _TESTED


def _receiver(ins: list[dis.Instruction], i: int) -> tuple[str, ...] | None:
    """The chain of names a method loaded at ``ins[i]`` is called on (``self._lock.release``:
    ``("self", "_lock")``), when it is one of plain names and attributes; else None."""
    chain: list[str] = []
    j = i - 1
    while j >= 0 and ins[j].opname == "LOAD_ATTR" and type(ins[j].argval) is str:
        chain.append(ins[j].argval)
        j -= 1
    if j < 0:
        return None
    root = ins[j]
    if root.opname == "LOAD_FAST_LOAD_FAST" and type(root.argval) is tuple:  # 3.13: two loads in one
        name = root.argval[-1]
    elif root.opname in _ROOT_LOADS:
        name = root.argval
    else:
        return None
    return (name, *reversed(chain)) if type(name) is str else None


def _method_load(ins: dis.Instruction, name: str) -> bool:
    return ins.opname in ("LOAD_METHOD", "LOAD_ATTR") and ins.argval == name


@functools.lru_cache(maxsize=512)
def release_lines(code: types.CodeType, offset: int) -> tuple[int, ...]:
    """For an ``await <x>.acquire()`` in ``code`` whose frame was at byte offset ``offset``
    as the acquire completed: the lines where the same code calls ``<x>.release()``, when
    every path from there that returns passes one of them (exception handlers included;
    paths that end in a raise need not).  Such code keeps nothing it takes: once its frame
    has ended with the permit still held, it left by an exception past its own release.
    Empty when that does not hold or cannot be told (``async with``, a helper's acquire,
    a path that returns holding it, an interpreter this was not checked on)."""
    if sys.version_info[:2] not in _TESTED or offset < 0:
        return ()
    try:
        bytecode = dis.Bytecode(code)
        ins = list(bytecode)
        entries = tuple((e.start, e.end, e.target) for e in getattr(bytecode, "exception_entries", ()) or ())
    except Exception:
        return ()
    index = {x.offset: n for n, x in enumerate(ins)}
    # the instruction at ``offset``, or the one whose inline caches it falls in (a frame's
    # ``f_lasti`` may point into those of a ``SEND``)
    at = bisect.bisect_right([x.offset for x in ins], offset) - 1
    if at < 0:
        return ()
    load = None
    for k in range(at, max(-1, at - _SITE_REACH), -1):
        if _method_load(ins[k], "acquire"):
            load = k
            break
        if ins[k].opname not in _AWAIT_OPS and ins[k].opname != "EXTENDED_ARG":
            return ()
    if load is None:
        return ()
    chain = _receiver(ins, load)
    if chain is None:
        return ()
    lines: set[int] = set()
    seen: set[int] = set()
    todo = [at]
    while todo:
        n = todo.pop()
        if n in seen or n >= len(ins):
            continue
        seen.add(n)
        x = ins[n]
        if _method_load(x, "release") and _receiver(ins, n) == chain:
            lines.add(x.positions.lineno if x.positions is not None and x.positions.lineno else 0)
            continue  # released on this path
        if x.opname in _RETURNS:
            return ()  # a way out that keeps the permit
        nxt = [] if x.opname in _RAISES or x.opname in _ALWAYS else [n + 1]
        if x.opcode in _JUMPS and type(x.argval) is int and x.argval in index:
            nxt.append(index[x.argval])
        nxt.extend(index[t] for s, e, t in entries if s <= x.offset < e and t in index)
        todo.extend(nxt)
    return tuple(sorted(line for line in lines if line))
