"""A bounded log of tasks that ended badly: raised, or were destroyed while pending.

A consumer that dies of a ``ConnectionResetError`` leaves its producer blocked on a
full queue, and the queue is still reachable: nothing in the live state says why the
producer waits.  The log remembers the dead: which coroutine, what it raised, where,
and which primitives and futures its last frames referred to, so a waiter on one of
them can be told "the task that served this queue died 3.2s ago".

Two feeds, neither on the program's hot path:

- the agent's wait sampler (about once a second) passes every finished task that is
  still alive (a service keeps its workers in a list or a dict);
- on asyncio's own loops, the loop's ``call_exception_handler`` is wrapped: asyncio
  calls it when a task is destroyed while pending ("Task was destroyed but it is
  pending!"), with an exception nobody retrieved, and when a callback of the loop (a
  protocol's ``datagram_received``, a ``call_soon`` callback) raised: the loop only logs
  that and goes on, and what the callback was to resolve stays pending, as if a
  worker had died.  The wrapper records, then calls the program's handler unchanged.
  uvloop's loop cannot be wrapped; there the sampler feeds the tasks, and a filter on
  the ``asyncio`` logger hears the callbacks that raised when the loop's default
  handler logs them (a filter changes nothing of where the records go).

Records hold plain data and weak references, never the task, its exception or its
frames.  Reading a task uses the C Future's own descriptors: no ``exception()`` call,
which would mark the exception retrieved and silence asyncio's own log.

A thread that dies of an exception is heard through ``threading.excepthook``, wrapped
the same way.

Usage::

    log = DeadTaskLog()
    log.hook_loop(loop)
    log.note_done(task)                # from the sampler
    for dead in log.snapshot():        # DeadTask records, oldest first
        print(dead.coro, dead.exception)
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import linecache
import logging
import os
import threading
import time
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from diag.collect import task_origins
from diag.collect.safe_read import clip, future_field, instance_dict, is_a, task_name
from diag.model.task_snapshot import CreatedBy, DeadTask, Frame

#: Records kept; the oldest are dropped first.
MAX_DEAD = 200
#: Frames kept from a dead task's traceback (innermost).
MAX_FRAMES = 16
#: Frames of the traceback whose locals are read for ``touched`` (innermost).
TOUCH_FRAMES = 6
#: Primitives and futures kept per record.
MAX_TOUCHED = 16
_TOUCHABLE = (asyncio.Lock, asyncio.Semaphore, asyncio.Condition, asyncio.Event, asyncio.Queue, asyncio.Future)
_DESTROYED = "Task was destroyed but it is pending!"
_NOT_RETRIEVED = "exception was never retrieved"

#: Where asyncio's own files are: a callback's frames in them are the loop's machinery.
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
#: Set on a thread while the wrapped ``call_exception_handler`` runs the program's handler:
#: the logger filter leaves alone what the wrapper has recorded.
_handling = threading.local()

_future_exception = getattr(asyncio.Future, "_exception", None)
_handle_callback = getattr(asyncio.Handle, "_callback", None)
_future_state = getattr(asyncio.Future, "_state", None)
_exc_traceback = BaseException.__dict__["__traceback__"]
_exc_args = BaseException.__dict__["args"]
_class_module = type.__dict__["__module__"].__get__


@dataclass
class _Record:
    """A log entry: plain data, plus weak references to what it touched."""

    seq: int
    name: str
    coro: str
    how: str
    ended: float  # time.monotonic()
    exception: str
    stack: tuple[Frame, ...]
    created_by: CreatedBy | None
    touched: list[Any]  # weakref.ref to primitives and futures


def _descriptor(descr: Any, obj: object) -> Any:
    """``obj.<attr>`` through the base class's own descriptor (no subclass code runs)."""
    if descr is None or not hasattr(descr, "__get__"):
        return None
    try:
        return descr.__get__(obj, type(obj))
    except Exception:
        return None


def exception_text(exc: object) -> str:
    """``ConnectionResetError: peer reset``: the type, and the first argument when it is
    plain text; never the exception's own ``__str__``."""
    name = clip(type(exc).__qualname__, 100)
    try:
        args = _exc_args.__get__(exc, type(exc))
    except Exception:
        return name
    if type(args) is tuple and args and type(args[0]) in (str, int, float):
        return f"{name}: {clip(args[0], 200)}"
    return name


def _traceback(exc: object) -> object:
    """``exc``'s traceback as it is now."""
    try:
        return _exc_traceback.__get__(exc, type(exc))
    except Exception:
        return None


def _task_traceback(task: Any, exc: object) -> object:
    """The traceback ``task`` ended with, as it was when it ended.  The exception goes on to
    whoever awaits the task (``await task``, ``gather``), and each frame it passes through
    on its way out is added to the same traceback, outermost first: those frames, and their
    locals, are not the task's.  A future keeps the traceback it was given with its
    exception (C futures among their referents, Python ones as ``_exception_tb``); failing
    that, the traceback is read from the first entry running the task's own coroutine."""
    try:
        for ref in gc.get_referents(task):
            if type(ref) is types.TracebackType:
                return ref
        kept = (instance_dict(task) or {}).get("_exception_tb")
        if type(kept) is types.TracebackType:
            return kept
    except Exception:
        pass
    tb = _traceback(exc)
    own = _coro_code(task)
    entry = tb
    while own is not None and type(entry) is types.TracebackType:
        if entry.tb_frame.f_code is own:
            return entry
        entry = entry.tb_next
    return tb


def _traceback_frames(tb: object) -> list[types.FrameType]:
    """The frames of the traceback ``tb``, innermost first (at most MAX_FRAMES)."""
    frames: list[types.FrameType] = []
    while type(tb) is types.TracebackType:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    frames.reverse()
    return frames[:MAX_FRAMES]


def _frame(code: types.CodeType, line: int) -> Frame:
    source = linecache.getline(code.co_filename, line).strip()[:500] if line else ""
    return Frame(code.co_filename, line, getattr(code, "co_qualname", code.co_name), source)


def _traceback_stack(tb: object) -> tuple[Frame, ...]:
    """The frames of the traceback ``tb``, innermost first (at most MAX_FRAMES)."""
    out: list[Frame] = []
    while type(tb) is types.TracebackType:
        out.append(_frame(tb.tb_frame.f_code, tb.tb_lineno or 0))
        tb = tb.tb_next
    out.reverse()
    return tuple(out[:MAX_FRAMES])


def _touched_by(frames: list[types.FrameType]) -> list[Any]:
    """Weak references to the primitives and futures the frames' locals hold, directly or
    as attributes of an object a local holds (``self.queue``).  ``gc.get_referents`` of a
    finished frame lists its locals without building ``f_locals``."""
    found: dict[int, Any] = {}

    def offer(value: object) -> None:
        if len(found) < MAX_TOUCHED and id(value) not in found and is_a(value, _TOUCHABLE):
            try:
                found[id(value)] = weakref.ref(value)
            except TypeError:
                pass

    for frame in frames[:TOUCH_FRAMES]:
        owner = _self_of(frame)
        if owner is not None and len(found) < MAX_TOUCHED and id(owner) not in found:
            try:
                found[id(owner)] = weakref.ref(owner)  # the object whose method died: "served X"
            except TypeError:
                pass
        try:
            values = gc.get_referents(frame)
            # the module globals the function names (a worker on a module-level queue)
            names = frame.f_code.co_names
            module = frame.f_globals
            values += [module[n] for n in names if type(n) is str and n in module]
        except Exception:
            continue
        for value in values:
            offer(value)
            attrs = instance_dict(value) if type(value) not in (dict, list, tuple, types.FrameType) else None
            if attrs:
                for attr in list(attrs.values())[:64]:
                    offer(attr)
    return list(found.values())


def _pending_frames(task: Any) -> list[types.FrameType]:
    """The frames of a pending task's await chain, innermost first (at most MAX_FRAMES).
    Read as the GC destroys the task: its coroutine is not closed yet, so the frames still
    say where it was suspended."""
    from diag.collect.task_collector import _await_chain  # the collector imports this module

    coro = future_field(task, "_coro")
    if coro is None:
        return []
    _, frames, _ = _await_chain(coro, MAX_FRAMES)
    frames.reverse()
    return frames


def _frames_stack(frames: list[types.FrameType]) -> tuple[Frame, ...]:
    return tuple(_frame(f.f_code, f.f_lineno or 0) for f in frames)


def _self_of(frame: types.FrameType) -> Any:
    """The instance a finished method frame ran for (its first argument, named ``self``):
    an object of the program's own class with attributes, else None."""
    code = frame.f_code
    if not code.co_argcount or code.co_varnames[0] != "self":
        return None
    try:
        value = frame.f_locals.get("self")  # a finished frame: nothing of the program runs
    except Exception:
        return None
    return _program_object(value)


def _program_object(value: object) -> Any:
    """``value`` when it is an object of the program's own class with attributes (not a
    primitive, not the loop's or a library's machinery), else None."""
    if value is None or instance_dict(value) is None or is_a(value, _TOUCHABLE):
        return None
    try:
        module = _class_module(type(value))  # type's own descriptor: no metaclass code runs
    except Exception:
        return None
    if type(module) is not str or module.split(".", 1)[0] in _LIBRARY_ROOTS:
        return None
    return value


#: Modules whose instances are machinery, not the program's objects (a thread, a loop).
_LIBRARY_ROOTS = frozenset({"asyncio", "threading", "concurrent", "selectors", "socket", "diag", "builtins"})


def _outer_function(frames: list[types.FrameType]) -> str:
    """The outermost frame's function of a thread's traceback that is not threading's."""
    for frame in reversed(frames):
        if not frame.f_code.co_filename.endswith("threading.py"):
            code = frame.f_code
            return clip(getattr(code, "co_qualname", code.co_name))
    return "?"


def _is_loop_machinery(filename: str) -> bool:
    return filename.startswith(_ASYNCIO_DIR) or filename.startswith("uvloop/") or "/uvloop/" in filename


def _callback_function(frames: list[types.FrameType]) -> str:
    """The function the loop called back, as the program wrote it: the outermost frame of
    the traceback that is not asyncio's or uvloop's (``SnmpClient.datagram_received``)."""
    for frame in reversed(frames):
        code = frame.f_code
        if not _is_loop_machinery(code.co_filename):
            return clip(getattr(code, "co_qualname", code.co_name))
    if frames:
        code = frames[0].f_code
        return clip(getattr(code, "co_qualname", code.co_name))
    return "?"


class _LoopLogFilter(logging.Filter):
    """A filter on the ``asyncio`` logger: hears a callback that raised when the loop's
    default handler logs it (uvloop's loop, whose handler cannot be wrapped).  It always
    lets the record through."""

    def __init__(self, log: "DeadTaskLog") -> None:
        super().__init__("asyncio")
        self.log: "weakref.ref[DeadTaskLog]" = weakref.ref(log)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            log = self.log()
            handling: int = getattr(_handling, "depth", 0)
            if log is None or handling or record.levelno < logging.ERROR:
                return True
            info = record.exc_info
            if type(info) is not tuple or len(info) != 3 or info[1] is None:
                return True
            message = record.msg.split("\n", 1)[0] if type(record.msg) is str else ""
            if message.endswith(_NOT_RETRIEVED) or message == _DESTROYED:
                return True  # a task's or future's: the sampler hears of those
            log.note_callback(info[1], message)
        except Exception:
            pass
        return True


def _creator(task: Any, origin: task_origins.Origin | None = None) -> CreatedBy | None:
    origin = task_origins.task_origin(task) if origin is None else origin
    if origin is None:
        return None
    code = task_origins.creating_code(origin)
    if code is None:
        return None
    return CreatedBy(origin[2], None, code.co_filename, task_origins.origin_line(code, origin[1]),
                     getattr(code, "co_qualname", code.co_name))


def _coro_code(task: Any) -> types.CodeType | None:
    coro = future_field(task, "_coro")
    if type(coro) is types.CoroutineType:
        return coro.cr_code
    if type(coro) is types.GeneratorType:
        return coro.gi_code
    return None


def _coro_name(task: Any) -> str:
    code = _coro_code(task)
    if code is not None:
        return clip(getattr(code, "co_qualname", code.co_name))
    return clip(type(future_field(task, "_coro")).__qualname__)


class DeadTaskLog:
    """The bounded log; safe to feed from any thread, never raises."""

    def __init__(self, maxlen: int = MAX_DEAD) -> None:
        self._records: collections.deque[_Record] = collections.deque(maxlen=maxlen)
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._unnumbered = itertools.count(1)  # a destroyed task diag never numbered, a thread
        self._thread_hook: Callable[[Any], None] | None = None
        self._lock = threading.Lock()
        self._log_filter: _LoopLogFilter | None = None
        # loop -> (a weak reference to its wrapper, the wrapper's state): nothing in a value may
        # refer to the loop, or the weak key would never die (the wrapper does: it lives in
        # the loop's own attributes, a cycle the collector frees with the loop)
        self._hooked: "weakref.WeakKeyDictionary[Any, tuple[weakref.ref[Callable[..., Any]], dict[str, bool]]]" = (
            weakref.WeakKeyDictionary())
        #: Where a task was last seen waiting, ``(code, line)`` innermost first (the wait
        #: sampler's): a task the GC destroys has had its coroutine closed by then.
        self.last_stack: Callable[[Any], tuple[tuple[types.CodeType, int], ...]] = lambda task: ()

    # -- feeds ----------------------------------------------------------------------------
    def note_done(self, task: Any) -> None:
        """Record ``task`` if it finished with an exception (not a cancellation)."""
        try:
            if _descriptor(_future_state, task) != "FINISHED":
                return
            exc = _descriptor(_future_exception, task)
            if exc is None or not is_a(exc, BaseException):
                return
            self._add(task, "exception", exc)
        except Exception:
            pass

    def note_destroyed(self, task: Any) -> None:
        """Record ``task``, destroyed by the GC while it was still pending."""
        try:
            self._add(task, "destroyed_pending", None)
        except Exception:
            pass

    def _add(self, task: Any, how: str, exc: object) -> None:
        origin = None
        if how == "destroyed_pending":  # being finalized: its weak references are gone
            found, origin = task_origins.dying_task_ids(task)
            with self._lock:
                if found is not None and found in self._seen:
                    # That id was an earlier task's, freed at this address: a task diag never
                    # numbered is destroyed here.  Recorded, with no id of its own.
                    found, origin = None, None
            seq = found if found is not None else -next(self._unnumbered)
        else:
            seq = task_origins.task_seq(task)
        with self._lock:
            if seq in self._seen:
                return
            self._seen[seq] = None
            while len(self._seen) > 4 * (self._records.maxlen or MAX_DEAD):
                self._seen.popitem(last=False)
        name = clip(task_name(task))
        if exc is not None:
            tb = _task_traceback(task, exc)
            frames = _traceback_frames(tb)
            stack = _traceback_stack(tb)
            del tb
        else:  # destroyed while pending: where it was suspended, if its frames are left
            frames = _pending_frames(task)
            stack = _frames_stack(frames)
            if not stack:  # the GC closed the coroutine first: where the sampler saw it wait
                stack = tuple(_frame(code, line) for code, line in self.last_stack(task))
        record = _Record(
            seq=seq, name=name, coro=_coro_name(task), how=how, ended=time.monotonic(),
            exception=exception_text(exc) if exc is not None else "",
            stack=stack,
            created_by=_creator(task, origin) if origin is not None or how != "destroyed_pending" else None,
            touched=_touched_by(frames),
        )
        del frames
        with self._lock:
            self._records.append(record)

    def note_thread(self, args: Any) -> None:
        """Record a thread that died of an exception (``threading.excepthook``'s argument)."""
        try:
            exc = getattr(args, "exc_value", None)
            thread = getattr(args, "thread", None)
            if exc is None or not is_a(exc, Exception):
                return  # SystemExit ends a thread quietly, by design
            frames = _traceback_frames(_traceback(exc))  # innermost first
            record = _Record(
                seq=-next(self._unnumbered), name=clip((instance_dict(thread) or {}).get("_name") or "?"),
                coro=_outer_function(frames), how="thread_exception", ended=time.monotonic(),
                exception=exception_text(exc), stack=_traceback_stack(_traceback(exc)), created_by=None,
                touched=_touched_by(frames),
            )
            del frames
            with self._lock:
                self._records.append(record)
        except Exception:
            pass

    def note_callback(self, exc: object, message: str, extras: tuple[object, ...] = ()) -> None:
        """Record a callback of the loop that raised ``exc`` (the loop's ``message``:
        "Exception in callback ...", "Fatal error: protocol.data_received() call
        failed."); ``extras`` are objects the loop named with it (the protocol, the
        callback's own object), kept as touched when they are the program's."""
        try:
            if not is_a(exc, Exception):
                return  # a cancellation, an exit: not a callback dying
            frames = _traceback_frames(_traceback(exc))  # innermost first
            touched = _touched_by(frames)
            known = {id(ref()) for ref in touched}
            for value in extras:
                obj = _program_object(value)
                if obj is not None and id(obj) not in known and len(touched) < MAX_TOUCHED:
                    try:
                        touched.append(weakref.ref(obj))
                        known.add(id(obj))
                    except TypeError:
                        pass
            record = _Record(
                seq=-next(self._unnumbered), name=clip(message or "Unhandled exception in event loop", 120),
                coro=_callback_function(frames), how="callback_exception", ended=time.monotonic(),
                exception=exception_text(exc), stack=_traceback_stack(_traceback(exc)), created_by=None, touched=touched,
            )
            del frames
            with self._lock:
                self._records.append(record)
        except Exception:
            pass

    def hook_logger(self) -> None:
        """Put a filter on the ``asyncio`` logger that hears callbacks that raised (see
        ``_LoopLogFilter``); on asyncio's loops the wrapped handler hears them first."""
        try:
            if self._log_filter is None:
                self._log_filter = _LoopLogFilter(self)
                logging.getLogger("asyncio").addFilter(self._log_filter)
        except Exception:
            pass

    def unhook_logger(self) -> None:
        found, self._log_filter = self._log_filter, None
        if found is not None:
            try:
                logging.getLogger("asyncio").removeFilter(found)
            except Exception:
                pass

    def hook_threads(self) -> None:
        """Wrap ``threading.excepthook``: a thread that serves the loop (a device reader, a
        callback thread) and dies leaves its futures unresolved.  The wrapper records, then
        calls the hook it wrapped, so the program's own hook and the default printout run
        unchanged."""
        try:
            if self._thread_hook is not None:
                return
            below = threading.excepthook
            log = self

            def excepthook(args: Any) -> None:
                if log._thread_hook is excepthook:
                    log.note_thread(args)
                below(args)

            excepthook.__wrapped__ = below  # type: ignore[attr-defined]
            self._thread_hook = excepthook
            threading.excepthook = excepthook
        except Exception:
            pass

    def unhook_threads(self) -> None:
        """Put back the wrapped hook when ours is on top; else ours stays as a pass-through."""
        hook, self._thread_hook = self._thread_hook, None
        if hook is not None and threading.excepthook is hook:
            threading.excepthook = hook.__wrapped__  # type: ignore[attr-defined]

    # -- the loop's exception handler ----------------------------------------------------------
    def hook_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap ``loop.call_exception_handler`` (asyncio's loops; uvloop's cannot be).
        Wrappers chain: another log (the test plugin's, a second agent) may wrap it too."""
        try:
            if loop in self._hooked:
                return
            attrs = instance_dict(loop)
            if attrs is None:
                return  # uvloop: no instance attributes
            below = attrs.get("call_exception_handler")  # another wrapper, or None: the class's method
            original = loop.call_exception_handler
            log = self
            state = {"active": True}

            def call_exception_handler(context: dict[str, Any]) -> None:
                if not state["active"]:
                    original(context)
                    return
                try:
                    log._from_context(context)
                except Exception:
                    pass
                _handling.depth = getattr(_handling, "depth", 0) + 1
                try:
                    original(context)
                finally:
                    _handling.depth -= 1

            call_exception_handler.__wrapped__ = original  # type: ignore[attr-defined]
            call_exception_handler.diag_below = below  # type: ignore[attr-defined]
            setattr(loop, "call_exception_handler", call_exception_handler)
            self._hooked[loop] = (weakref.ref(call_exception_handler), state)
        except Exception:
            pass

    def unhook_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the wrapper out: put back what it wrapped when it is on top, else leave it
        in the chain as a pass-through (a wrapper above it calls it)."""
        try:
            entry = self._hooked.pop(loop, None)
            if entry is None:
                return
            mine_ref, state = entry
            state["active"] = False
            mine = mine_ref()
            attrs = instance_dict(loop)
            if mine is not None and attrs is not None and attrs.get("call_exception_handler") is mine:
                below = getattr(mine, "diag_below", None)
                if below is None:
                    del attrs["call_exception_handler"]
                else:
                    attrs["call_exception_handler"] = below
        except Exception:
            pass

    def hooked(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True when this log hears of tasks ``loop`` destroys while pending."""
        entry = self._hooked.get(loop)
        return entry is not None and entry[1]["active"]

    def unhook_all(self) -> None:
        self.unhook_threads()
        self.unhook_logger()
        for loop in list(self._hooked.keys()):
            self.unhook_loop(loop)

    def _from_context(self, context: object) -> None:
        if type(context) is not dict:
            return
        message = context.get("message")
        if type(message) is not str:
            message = ""
        if message == _DESTROYED:
            task = context.get("task")
            if is_a(task, asyncio.Task):
                self.note_destroyed(task)
        elif message.endswith(_NOT_RETRIEVED):
            task = context.get("future")
            if is_a(task, asyncio.Task):
                self.note_done(task)
        elif "exception" in context and not is_a(context.get("future"), asyncio.Future) \
                and not is_a(context.get("task"), asyncio.Future):
            # a callback of the loop raised: a protocol method, a call_soon callback
            callback = _descriptor(_handle_callback, context.get("handle")) if is_a(
                context.get("handle"), asyncio.Handle) else None
            owner = callback.__self__ if type(callback) is types.MethodType else None
            self.note_callback(context.get("exception"), message.split("\n", 1)[0],
                               (context.get("protocol"), owner))

    # -- reading ---------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> tuple[DeadTask, ...]:
        """The log as plain records, oldest first; ``touched`` lists what is still alive."""
        now = time.monotonic() if now is None else now
        with self._lock:
            records = list(self._records)
        out = []
        for rec in records:
            touched = []
            for ref in rec.touched:
                obj = ref()
                if obj is not None:
                    touched.append(hex(id(obj)))
            out.append(DeadTask(rec.seq, rec.name, rec.coro, rec.how, max(0.0, now - rec.ended), rec.exception,
                                rec.stack, rec.created_by, tuple(touched)))
        return tuple(out)

    def __len__(self) -> int:
        return len(self._records)
