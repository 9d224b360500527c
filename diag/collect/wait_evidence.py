"""Evidence about waits beyond what the await chain says: can anything end the wait, is
the task the program's main one, which thread runs an executor call, and does the
object holding an awaited future still have a live connection.

Everything here reads the program's objects as ``safe_read`` does (types by ``type()``,
attributes through the base classes' descriptors and instance dicts): no code of the
program's runs.  The functions are small and separate so that each verdict rule can
name the evidence it used.

- ``is_main_task``: the task ``asyncio.run``/``run_until_complete`` waits on (its done
  callback is the runner's).  A runner holds it; it is never fire-and-forget.
- ``LoopTimers`` and ``deadline_of``: what can end a wait on its own: an
  ``asyncio.timeout`` (or 3.12's ``wait_for``, built on it) in the task's await chain,
  a ``TimerHandle`` local (3.11's ``wait_for``, ``wait(timeout=)``), or a timer on the
  loop that cancels the task or resolves the future it awaits (asyncio's loop; uvloop
  keeps its timers in C).
- ``collect_threads``: every thread but the agent's, and for ``ThreadPoolExecutor``
  workers the executor and the asyncio future of the call they run.
- ``future_owners``: for futures awaited a long time, the object that keeps them (a
  client's map of pending requests) and whether its transport or stream is closed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures.thread as cf_thread
import functools
import gc
import queue as queue_module
import socket as socket_module
import sys
import threading
import types
import weakref
from typing import Any, Iterable

from diag.collect import task_origins
from diag.collect.safe_read import (
    builtin_items, builtin_len, clip, future_done, future_field, instance_dict, is_a, plain_attr, task_coroutine,
    type_name,
)
from diag.model.task_snapshot import (
    ChildPipe, ChildProcess, ConnectionPool, ExecutorInfo, Frame, PoolLease, ThreadInfo, Traffic, WriteBacklog,
)

try:
    from asyncio import timeouts as _timeouts
    _TIMEOUT_TYPE: type | None = _timeouts.Timeout
except ImportError:  # pragma: no cover - 3.11+ has it
    _TIMEOUT_TYPE = None

_future_callbacks = getattr(asyncio.Future, "_callbacks", None)
_RUNNER_CALLBACKS = frozenset({"_run_until_complete_cb", "done_cb"})
_WORKITEM_RUN = cf_thread._WorkItem.run.__code__
_MethodType = types.MethodType
_TimerHandle = asyncio.TimerHandle

#: Futures whose owners one heap scan looks for (a scan costs the same for 1 or 64).
MAX_OWNER_SCAN = 64


_task_fut_waiter = asyncio.Task.__dict__.get("_fut_waiter")


def fut_waiter(task: object) -> object:
    """The future ``task`` awaits (``Task._fut_waiter``), read through asyncio's own
    descriptor, so a Task subclass's attribute hooks do not run."""
    if _task_fut_waiter is not None and is_a(task, asyncio.Task):
        try:
            return _task_fut_waiter.__get__(task, type(task))
        except Exception:
            return None
    return plain_attr(task, "_fut_waiter")


def _callbacks(fut: object) -> list[Any]:
    if _future_callbacks is None or not is_a(fut, asyncio.Future):
        return []
    try:
        found = _future_callbacks.__get__(fut, type(fut))
    except Exception:
        return []
    return list(found) if type(found) is list else []


def _callback_fn(entry: object) -> object:
    return entry[0] if type(entry) is tuple and entry else entry


_release_waiter = getattr(asyncio.tasks, "_release_waiter", None)


def is_main_task(task: object, depth: int = 3) -> bool:
    """True for the task a loop runner waits on (``asyncio.run``, ``Runner.run``,
    ``run_until_complete``, and uvloop's): its done callbacks include the runner's.  Also
    for the task 3.11's ``wait_for`` runs a main task's coroutine in (``asyncio.run(
    asyncio.wait_for(main(), limit))``): that task is the program's main in all but name,
    and it is cancelled with the main task."""
    for entry in _callbacks(task):
        fn = _callback_fn(entry)
        if type(fn) is types.FunctionType:
            if fn.__name__ == "_run_until_complete_cb" and fn.__module__ == "asyncio.base_events":
                return True
        elif type(fn) is functools.partial:
            if depth > 0 and _release_waiter is not None and fn.func is _release_waiter and fn.args:
                # wait_for's inner task: its waiter future wakes the task that called wait_for
                for waiting in _callbacks(fn.args[0]):
                    wake = _callback_fn(waiting)
                    owner = getattr(wake, "__self__", None) if type(wake) is types.BuiltinMethodType else None
                    if is_a(owner, asyncio.Task) and is_main_task(owner, depth - 1):
                        return True
        elif "cyfunction" in type(fn).__name__ or "cython" in type(fn).__name__:
            if _cy_attr(fn, "__name__") == "done_cb" and _cy_attr(fn, "__module__").startswith("uvloop"):
                return True
    return False


def _cy_attr(fn: object, name: str) -> str:
    """A string attribute of a Cython function, read through its type's descriptor."""
    try:
        descr = type(fn).__dict__.get(name)
        value = descr.__get__(fn, type(fn)) if descr is not None and hasattr(descr, "__get__") else None
        return value if type(value) is str else ""
    except Exception:
        return ""


def stream_side(reader: object) -> str:
    """``server`` when ``reader`` is the server's end of a connection (its protocol was
    made by ``start_server``, with a connected callback), ``client`` for a connection this
    process opened, "" when unknown."""
    transport = plain_attr(reader, "_transport")
    if transport is None:
        return ""
    proto = plain_attr(transport, "_protocol")
    if proto is None and type(transport).__module__.startswith("uvloop"):
        try:
            proto = transport.get_protocol()  # type: ignore[attr-defined]  # uvloop's own C method
        except Exception:
            proto = None
    if not is_a(proto, asyncio.StreamReaderProtocol):
        return ""
    return "server" if plain_attr(proto, "_client_connected_cb") is not None else "client"


#: ``struct tcp_info`` (Linux): offsets of ``tcpi_last_data_sent`` and ``tcpi_last_data_recv``,
#: milliseconds since this end last sent and last received data.
_TCP_INFO_SIZE = 232
_LAST_DATA_SENT = 44
_LAST_DATA_RECV = 52
#: ``tcpi_bytes_received`` (Linux 4.1) and ``tcpi_bytes_sent`` (4.19), 64 bits each.
_BYTES_RECEIVED = 128
_BYTES_SENT = 200


def traffic(reader: object) -> Traffic | None:
    """A stream reader's TCP connection: its last data each way and what the reader holds
    unread; None where the kernel does not say (not Linux, not TCP, not the loop's own
    transport)."""
    if not sys.platform.startswith("linux") or not hasattr(socket_module, "TCP_INFO"):
        return None
    transport = plain_attr(reader, "_transport")
    cls = type(transport)
    if transport is None or not cls.__module__.startswith(_LOOP_TRANSPORT_MODULES):
        return None
    try:
        sock = cls.get_extra_info(transport, "socket")  # type: ignore[attr-defined]
        # the loop's own socket wrapper (asyncio's TransportSocket, uvloop's): its getters read the socket
        if sock is None or sock.family not in (socket_module.AF_INET, socket_module.AF_INET6):
            return None
        raw = sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_INFO, _TCP_INFO_SIZE)
        if type(raw) is not bytes or len(raw) < _LAST_DATA_RECV + 4:
            return None
        sent = int.from_bytes(raw[_LAST_DATA_SENT:_LAST_DATA_SENT + 4], sys.byteorder)
        received = int.from_bytes(raw[_LAST_DATA_RECV:_LAST_DATA_RECV + 4], sys.byteorder)
        bytes_received = (int.from_bytes(raw[_BYTES_RECEIVED:_BYTES_RECEIVED + 8], sys.byteorder)
                          if len(raw) >= _BYTES_RECEIVED + 8 else None)
        bytes_sent = int.from_bytes(raw[_BYTES_SENT:_BYTES_SENT + 8], sys.byteorder) if len(raw) >= _BYTES_SENT + 8 else None
    except Exception:
        return None
    try:  # a reset connection has no peer name any more; its figures still count
        local, peer = address_text(sock.getsockname()), address_text(sock.getpeername())
    except Exception:
        local = peer = ""
    buffer = plain_attr(reader, "_buffer")
    unread = len(buffer) if type(buffer) is bytearray else 0
    return Traffic(sent / 1000.0, received / 1000.0, unread, bytes_sent, bytes_received, local, peer)


def address_text(address: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address tuple; "" otherwise."""
    if type(address) is not tuple or len(address) < 2 or type(address[0]) is not str or type(address[1]) is not int:
        return ""
    host = clip(address[0], 80)
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def server_ends(live: dict[int, Any], wanted: set[tuple[str, str]], limit: int) -> dict[tuple[str, str], list[int]]:
    """(local, peer) address of a connection's server end -> the ids of the tasks of this
    process that can answer on it: the task ``asyncio.start_server`` made for the
    connection (its protocol's ``_task``) first, then any other task holding that end's
    ``StreamWriter`` (one the handler started to answer a request).  Found among the
    references of each task's coroutine (never ``f_locals``), for the ends in ``wanted``
    only, among at most ``limit`` tasks."""
    found: dict[tuple[str, str], list[int]] = {}
    for n, (tid, task) in enumerate(live.items()):
        if n >= limit:
            break
        coro = task_coroutine(future_field(task, "_coro"))
        if type(coro) is not types.CoroutineType or coro.cr_running:
            continue
        try:
            refs = gc.get_referents(coro)
        except Exception:
            continue
        for ref in refs:
            if not is_a(ref, asyncio.StreamWriter):
                continue
            transport = plain_attr(ref, "_transport")
            cls = type(transport)
            if transport is None or not cls.__module__.startswith(_LOOP_TRANSPORT_MODULES):
                continue
            proto = plain_attr(transport, "_protocol")
            if proto is None and cls.__module__.startswith("uvloop"):
                try:
                    proto = transport.get_protocol()  # type: ignore[attr-defined]  # uvloop's own C method
                except Exception:
                    proto = None
            if not is_a(proto, asyncio.StreamReaderProtocol) or plain_attr(proto, "_client_connected_cb") is None:
                continue  # not a server's end
            try:
                key = (address_text(cls.get_extra_info(transport, "sockname")),  # type: ignore[attr-defined]
                       address_text(cls.get_extra_info(transport, "peername")))  # type: ignore[attr-defined]
            except Exception:
                continue
            if key in wanted:
                tids = found.setdefault(key, [])
                if plain_attr(proto, "_task") is task:
                    tids.insert(0, tid)
                else:
                    tids.append(tid)
            break
        del refs, coro
    return found


# -- deadlines ---------------------------------------------------------------------------
def _is_aiohttp(obj: object, name: str) -> bool:
    """Whether ``obj`` is an instance of ``aiohttp.helpers.<name>`` exactly."""
    cls = loaded_class("aiohttp.helpers", name)
    return cls is not None and type(obj) is cls


class LoopTimers:
    """The timers of asyncio's loops that end waits: task id -> when, future id -> when
    (loop time), each with what set it.  uvloop keeps its timers in C: empty there."""

    def __init__(self, loops: Iterable[asyncio.AbstractEventLoop]) -> None:
        self.tasks: dict[int, tuple[float, str]] = {}
        self.futures: dict[int, tuple[float, str]] = {}
        for loop in loops:
            scheduled = plain_attr(loop, "_scheduled")
            if type(scheduled) is not list:
                continue
            try:
                handles = list(scheduled)
            except Exception:
                continue
            for handle in handles[:50_000]:
                self._read(handle)

    def _offer(self, table: dict[int, tuple[float, str]], key: int, when: float, by: str) -> None:
        old = table.get(key)
        if old is None or when < old[0]:
            table[key] = (when, by)

    def _aiohttp_timeout(self, handle: object, when: float) -> None:
        """aiohttp's ``ClientTimeout``: a ``TimeoutHandle`` whose callbacks include the
        ``timeout`` of a ``TimerContext``, which cancels the request's tasks."""
        for entry in builtin_items(plain_attr(handle, "_callbacks"))[:8]:
            callback = entry[0] if type(entry) is tuple and entry else None
            context = callback.__self__ if type(callback) is _MethodType else None
            if _is_aiohttp(context, "TimerContext"):
                for task in builtin_items(plain_attr(context, "_tasks"))[:8]:
                    if is_a(task, asyncio.Task):
                        self._offer(self.tasks, id(task), when, "aiohttp's ClientTimeout")

    def _read(self, handle: object) -> None:
        if type(handle) is not _TimerHandle or plain_attr(handle, "_cancelled") is True:
            return
        when = plain_attr(handle, "_when")
        if type(when) is int:  # aiohttp rounds its timeouts up to whole seconds
            when = float(when)
        if type(when) is not float:
            return
        callback = plain_attr(handle, "_callback")
        args = plain_attr(handle, "_args")
        if type(callback) is _MethodType:
            owner = callback.__self__
            name = callback.__func__.__name__ if type(callback.__func__) is types.FunctionType else ""
            if _TIMEOUT_TYPE is not None and type(owner) is _TIMEOUT_TYPE:
                task = plain_attr(owner, "_task")
                if task is not None:
                    self._offer(self.tasks, id(task), when, "asyncio.timeout")
                return
            if is_a(owner, asyncio.Task):
                self._offer(self.tasks, id(owner), when, f"a timer calling task.{name or 'cancel'}()")
                return
            if _is_aiohttp(owner, "TimeoutHandle"):
                self._aiohttp_timeout(owner, when)
                return
            if is_a(owner, asyncio.Future):
                self._offer(self.futures, id(owner), when, f"a timer calling future.{name or 'set_result'}()")
                return
        elif is_a(callback, asyncio.Task) or type(callback) is types.BuiltinMethodType:
            owner = getattr(callback, "__self__", None)
            if is_a(owner, asyncio.Task):
                self._offer(self.tasks, id(owner), when, "a timer calling task.cancel()")
                return
            if is_a(owner, asyncio.Future):
                self._offer(self.futures, id(owner), when, "a timer resolving the future")
                return
        if type(callback) is functools.partial:
            args = tuple(callback.args) + (tuple(args) if type(args) is tuple else ())
        if type(args) is tuple:
            for arg in args[:4]:
                if is_a(arg, asyncio.Task):
                    self._offer(self.tasks, id(arg), when, "a timer that ends the task")
                elif is_a(arg, asyncio.Future):
                    self._offer(self.futures, id(arg), when, "a timer (wait_for/wait timeout)")


_CHAIN_TYPES = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)
_REF_OTHER, _REF_METHOD, _REF_TIMEOUT, _REF_TIMER, _REF_UV_TIMER = range(5)
#: What a type found among a coroutine's referents can be to ``deadline_of``, decided once
#: per type: a coroutine refers to its globals, code and locals, nearly all of them
#: nothing to it, and one dict look-up passes them over.
_REF_KINDS: dict[type, int] = {}
_MAX_REF_KINDS = 4096


def _ref_kind(kind: type) -> int:
    if kind is _MethodType:
        found = _REF_METHOD
    elif _TIMEOUT_TYPE is not None and kind is _TIMEOUT_TYPE:
        found = _REF_TIMEOUT
    elif issubclass(kind, _TimerHandle):
        found = _REF_TIMER
    elif getattr(kind, "__module__", None) == "uvloop.loop" and getattr(kind, "__name__", None) == "TimerHandle":
        found = _REF_UV_TIMER
    else:
        found = _REF_OTHER
    if len(_REF_KINDS) < _MAX_REF_KINDS:
        _REF_KINDS[kind] = found
    return found


def deadline_of(task: object, nodes: Iterable[object], waiter: object, timers: LoopTimers,
                loop_time: float) -> tuple[float, str] | None:
    """(seconds left, what) for the earliest thing that ends ``task``'s wait on its own,
    or None: timeouts held by the coroutines of its await chain, then the loop's timers."""
    best: tuple[float, str] | None = None

    def offer(when: float, by: str) -> None:
        nonlocal best
        left = max(0.0, when - loop_time)
        if best is None or left < best[0]:
            best = (left, by)

    for node in nodes:
        if type(node) not in _CHAIN_TYPES:
            continue
        try:
            refs = gc.get_referents(node)
        except Exception:
            continue
        for ref in refs:
            kind = _REF_KINDS.get(type(ref))
            if kind is None:
                kind = _ref_kind(type(ref))
            if kind == _REF_METHOD:
                ref = ref.__self__
                kind = _REF_KINDS.get(type(ref))
                if kind is None:
                    kind = _ref_kind(type(ref))
            if kind == _REF_OTHER or kind == _REF_METHOD:
                continue
            if kind == _REF_TIMEOUT:
                when = plain_attr(ref, "_when")
                state = plain_attr(ref, "_state")
                if type(when) is float and getattr(state, "name", "") not in ("EXPIRED", "EXITED", "EXPIRING"):
                    offer(when, "asyncio.timeout")
            elif kind == _REF_TIMER:
                if plain_attr(ref, "_cancelled") is not True:
                    when = plain_attr(ref, "_when")
                    if type(when) is float:
                        offer(when, "a timeout timer")
            else:
                # uvloop's own handle (3.11's wait_for keeps one): its C getters read fields
                try:
                    when = None if ref.cancelled() else ref.when()
                except Exception:
                    when = None
                if type(when) is float:
                    offer(when, "a timeout timer")
    hit = timers.tasks.get(id(task))
    if hit is not None:
        offer(*hit)
    if waiter is not None:
        hit = timers.futures.get(id(waiter))
        if hit is not None:
            offer(*hit)
    return best


# -- threads and executors ---------------------------------------------------------------------
def _executor_of(thread: threading.Thread) -> concurrent.futures.ThreadPoolExecutor | None:
    args = plain_attr(thread, "_args")
    if type(args) is not tuple or not args or type(args[0]) is not weakref.ReferenceType:
        return None
    target = args[0]()
    return target if is_a(target, concurrent.futures.ThreadPoolExecutor) else None


def _work_item_future(frame: types.FrameType) -> object:
    """The concurrent future of the call a ``_WorkItem.run`` frame runs.  The frame is
    executing, so its locals are read through ``f_locals``; that frame's only local is
    the work item itself, which it holds anyway."""
    try:
        item = frame.f_locals.get("self")
    except Exception:
        return None
    return plain_attr(item, "future") if type(item) is cf_thread._WorkItem else None


_CF_RESULT = concurrent.futures.Future.result.__code__
_SIMPLE_QUEUE = queue_module.SimpleQueue
#: Queued calls of an executor read for the futures tasks await.
MAX_QUEUED_READ = 256


def _awaited_task(frame: types.FrameType) -> Any:
    """The task a thread blocks on in ``frame`` (``concurrent.futures.Future.result``, no
    timeout) when that future is the one ``run_coroutine_threadsafe`` chained to a task:
    its done callback (asyncio's ``_call_check_cancel``) closes over the task.  The frame
    is executing, so its two locals (the future and the timeout) are read through
    ``f_locals``; it holds them anyway."""
    try:
        local = frame.f_locals
        fut, timeout = local.get("self"), local.get("timeout")
    except Exception:
        return None
    if timeout is not None or type(fut) is not concurrent.futures.Future:
        return None
    callbacks = plain_attr(fut, "_done_callbacks")
    for callback in (callbacks[:8] if type(callbacks) is list else ()):
        if type(callback) is not types.FunctionType:
            continue
        for cell in callback.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if is_a(value, asyncio.Task):
                return value
    return None


def _queued_futures(queue: object, by_cf: dict[int, object]) -> tuple[str, ...]:
    """The asyncio futures (``Primitive.id`` form) of the calls waiting in an executor's
    queue that tasks await, from its first ``MAX_QUEUED_READ`` entries."""
    items: Any
    if type(queue) is _SIMPLE_QUEUE:  # what ThreadPoolExecutor uses: its items are its referents
        refs = gc.get_referents(queue)
        # up to 3.12 one list holds them; 3.13's ring buffer lists each item itself
        items = next((r for r in refs if type(r) is list), None)
        if items is None:
            items = [r for r in refs if type(r) is cf_thread._WorkItem]
    else:
        items = plain_attr(queue, "queue")
    if type(items) is not collections.deque and type(items) is not list:
        return ()
    out = []
    for item in list(items)[:MAX_QUEUED_READ]:  # list(): one step under the GIL
        if type(item) is cf_thread._WorkItem:
            aio = by_cf.get(id(plain_attr(item, "future")))
            if aio is not None:
                out.append(hex(id(aio)))
    return tuple(out)


def asyncio_futures_by_concurrent(futures: Iterable[object]) -> dict[int, object]:
    """id(concurrent future) -> the asyncio future chained to it (``run_in_executor``)."""
    out: dict[int, object] = {}
    for fut in futures:
        source = concurrent_source(fut)
        if source is not None:
            out[id(source)] = fut
    return out


def concurrent_source(fut: object) -> object:
    """The ``concurrent.futures.Future`` an asyncio future is chained to (``wrap_future``:
    ``run_in_executor``, ``run_coroutine_threadsafe`` awaited), or None."""
    for entry in _callbacks(fut):
        fn = _callback_fn(entry)
        if type(fn) is types.FunctionType and fn.__name__ == "_call_check_cancel":
            found = _closure_futures(fn)
            if found:
                return found[0]
    return None


#: Tasks looked at for the futures ``run_coroutine_threadsafe`` gave out, per dump.
MAX_HANDED_SCAN = 50_000


def _closure_futures(fn: object) -> list[object]:
    if type(fn) is not types.FunctionType:
        return []
    out: list[object] = []
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if type(value) is concurrent.futures.Future:
            out.append(value)
    return out


def handed_coroutines(tasks: Iterable[object], loops: Iterable[object]) -> dict[int, tuple[str, int | None]]:
    """id(concurrent future) -> (the loop, in ``Primitive.id`` form, that runs the coroutine
    ``run_coroutine_threadsafe`` handed it, and the id of its task there, or None when the
    loop has not started it yet).  Started: the task's done callback (asyncio's
    ``_call_set_state``) closes over the future.  Not yet: the callback that will start it
    waits in the loop's ready queue (asyncio's loops; uvloop's queue cannot be read)."""
    out: dict[int, tuple[str, int | None]] = {}
    for n, task in enumerate(tasks):
        if n >= MAX_HANDED_SCAN:
            break
        for entry in _callbacks(task):
            fn = _callback_fn(entry)
            if type(fn) is types.FunctionType and fn.__name__ == "_call_set_state":
                loop = future_field(task, "_loop")
                for cf in _closure_futures(fn):
                    out[id(cf)] = (hex(id(loop)), task_origins.task_seq(task))  # type: ignore[arg-type]
    for loop in loops:
        ready = plain_attr(loop, "_ready")
        if type(ready) is not collections.deque:
            continue
        for _ in range(3):  # the loop's thread may change it meanwhile: read it again
            try:
                handles = list(ready)
                break
            except RuntimeError:
                handles = []
        for handle in handles:
            fn = plain_attr(handle, "_callback")
            if type(fn) is types.FunctionType and fn.__qualname__ == "run_coroutine_threadsafe.<locals>.callback":
                for cf in _closure_futures(fn):
                    out.setdefault(id(cf), (hex(id(loop)), None))
    return out


def collect_threads(frame_of: Any, executor_waits: Iterable[object],
                    loops: Iterable[asyncio.AbstractEventLoop] = (),
                    max_frames: int = 48) -> tuple[tuple[ThreadInfo, ...], tuple[ExecutorInfo, ...]]:
    """Every thread but the agent's (``diag-*``), innermost frame first; ``frame_of`` turns a
    live frame into a ``Frame``; ``executor_waits`` are the asyncio futures tasks await
    through ``run_in_executor``, so each worker says whose call it runs."""
    by_cf = asyncio_futures_by_concurrent(executor_waits)
    loop_names = {}
    for loop in loops:
        default = plain_attr(loop, "_default_executor")
        if default is not None:
            loop_names[id(default)] = hex(id(loop))
    own = threading.get_ident()  # the collecting thread: its stack is this code
    top = frame = None
    frames = sys._current_frames()
    executors: dict[int, tuple[concurrent.futures.ThreadPoolExecutor, list[int], list[int]]] = {}
    out = []
    for thread in threading.enumerate():
        ident = thread.ident
        if ident is None or ident == own or thread.name.startswith("diag-"):
            continue
        top = frames.get(ident)
        stack: list[Frame] = []
        runs = ""
        waits: int | None = None
        frame = top
        while frame is not None and len(stack) < max_frames:
            stack.append(frame_of(frame))
            if frame.f_code is _WORKITEM_RUN:
                cf = _work_item_future(frame)
                aio = by_cf.get(id(cf)) if cf is not None else None
                runs = hex(id(aio)) if aio is not None else (hex(id(cf)) if cf is not None else "")
            elif frame.f_code is _CF_RESULT and waits is None and len(stack) <= 4:
                task = _awaited_task(frame)
                if task is not None:
                    waits = task_origins.task_seq(task)
                del task
            frame = frame.f_back
        executor = _executor_of(thread)
        name = ""
        if executor is not None:
            prefix = plain_attr(executor, "_thread_name_prefix")
            name = clip(prefix) if type(prefix) is str and prefix else f"ThreadPoolExecutor {hex(id(executor))}"
            entry = executors.setdefault(id(executor), (executor, [], []))
            entry[1].append(ident)
            if any(f.function == "_WorkItem.run" for f in stack):
                entry[2].append(ident)
        out.append(ThreadInfo(ident, clip(thread.name), tuple(stack), bool(thread.daemon), name, runs,
                              waits_task=waits))
    # The frames dict holds this function's own frame, which holds the dict: a cycle that
    # would keep every frame (and what they hold) alive until the next collection.
    frames.clear()
    del frames, top, frame
    infos = []
    for key, (executor, idents, busy) in executors.items():
        queue = plain_attr(executor, "_work_queue")
        try:
            # the standard library's queues only (SimpleQueue is ThreadPoolExecutor's): their
            # qsize() reads a length
            queued = (queue.qsize() if type(queue) is _SIMPLE_QUEUE or type(queue).__module__ == "queue"  # type: ignore[attr-defined]
                      else 0)
        except Exception:
            queued = 0
        prefix = plain_attr(executor, "_thread_name_prefix")
        workers = plain_attr(executor, "_max_workers")
        infos.append(ExecutorInfo(
            clip(prefix) if type(prefix) is str and prefix else f"ThreadPoolExecutor {hex(key)}",
            workers if type(workers) is int else len(idents), tuple(idents), len(busy), int(queued),
            loop_names.get(key, ""), _queued_futures(queue, by_cf) if queued else (),
        ))
    return tuple(out), tuple(infos)


# -- child processes ------------------------------------------------------------------------
def _proc_text(pid: int, name: str, limit: int = 200) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _stream_state(reader: object) -> tuple[int, bool] | None:
    """(bytes buffered, reading paused) of the parent's end of a child's output pipe."""
    if not is_a(reader, asyncio.StreamReader):
        return None
    buffered = plain_attr(reader, "_buffer")
    paused = plain_attr(reader, "_paused")
    size = len(buffered) if type(buffered) is bytearray else 0
    return size, paused is True


# -- waits for a connection's writes --------------------------------------------------------
#: Transports whose methods diag may call from its own thread: the event loops' own (their
#: size and address getters read fields); a program's transport class is never called.
_LOOP_TRANSPORT_MODULES = ("asyncio.", "uvloop.")


def _transport_of(owner: object) -> object:
    """The transport a ``StreamWriter`` writes to, or a protocol's (``transport`` or
    ``_transport``: asyncio's stream protocols, aiohttp's), or None."""
    if is_a(owner, asyncio.BaseTransport):
        return owner
    if is_a(owner, asyncio.StreamWriter):
        return plain_attr(owner, "_transport")
    attrs = instance_dict(owner) or {}
    for name in _TRANSPORT_ATTRS:
        value = attrs.get(name)
        if value is not None:
            return value
    return None


def _unacknowledged(sock: object) -> int | None:
    """Bytes in a socket's send queue that the peer has not acknowledged (Linux's
    ``SIOCOUTQ``), or None where that cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import fcntl
        import termios

        fd = type(sock).fileno(sock)  # type: ignore[attr-defined]
        if type(fd) is not int or fd < 0:
            return None
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")  # TIOCOUTQ is SIOCOUTQ on a socket
        value = int.from_bytes(raw, sys.byteorder, signed=True)
        return value if value >= 0 else None
    except Exception:
        return None


def write_backlog(owner: object) -> WriteBacklog | None:
    """What stands between a waiting ``drain()`` or ``wait_closed()`` and its end: the
    bytes in the transport's buffer and in the socket's send queue, the pause mark, the
    peer.  None when ``owner`` has no transport of the loop's own."""
    transport = _transport_of(owner)
    cls = type(transport)
    if transport is None or not cls.__module__.startswith(_LOOP_TRANSPORT_MODULES):
        return None
    try:
        buffered = cls.get_write_buffer_size(transport)  # type: ignore[attr-defined]
        limits = cls.get_write_buffer_limits(transport)  # type: ignore[attr-defined]
        closing = cls.is_closing(transport)  # type: ignore[attr-defined]
        peer = cls.get_extra_info(transport, "peername")  # type: ignore[attr-defined]
        sock = cls.get_extra_info(transport, "socket")  # type: ignore[attr-defined]
    except Exception:
        return None
    if type(buffered) is not int:
        return None
    high = limits[1] if type(limits) is tuple and len(limits) == 2 and type(limits[1]) is int else None
    if type(peer) is tuple and len(peer) >= 2:
        peer_text = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    else:
        peer_text = clip(str(peer), 100) if type(peer) in (str, bytes) and peer else ""
    return WriteBacklog(peer=clip(peer_text, 120), buffered=buffered, high_water=high,
                        in_kernel=_unacknowledged(sock) if sock is not None else None, closing=closing is True)


def child_process(process: object) -> ChildProcess | None:
    """What a ``Process.wait()`` waits for: the child's pid, command, scheduler state and
    kernel wait channel (``/proc``), and the parent's ends of its pipes: an open stdin, an
    output pipe whose reading is paused because nobody reads what is buffered."""
    if not is_a(process, asyncio.subprocess.Process):
        return None
    pid = plain_attr(process, "pid")
    if type(pid) is not int:
        return None
    cmdline = _proc_text(pid, "cmdline", 400).replace("\0", " ").strip()
    stat = _proc_text(pid, "stat")
    state = ""
    if ")" in stat:
        fields = stat.rsplit(")", 1)[1].split()
        state = fields[0] if fields else ""
    wchan = _proc_text(pid, "wchan").strip()
    stdin = plain_attr(process, "stdin")
    stdin_open = False
    if is_a(stdin, asyncio.StreamWriter):
        transport = plain_attr(stdin, "_transport")
        closing = plain_attr(transport, "_closing")
        if closing is None and type(transport).__module__.startswith("uvloop."):
            try:  # uvloop's transports keep the flag in C: its own method, not the program's code
                closing = type(transport).is_closing(transport)  # type: ignore[attr-defined]
            except Exception:
                closing = None
        stdin_open = transport is not None and closing is False
    outputs = []
    for name in ("stdout", "stderr"):
        found = _stream_state(plain_attr(process, name))
        if found is not None:
            outputs.append((name, found[0], found[1]))
    return ChildProcess(pid, clip(cmdline, 200), state, "" if wchan == "0" else clip(wchan, 60), stdin_open,
                        tuple(ChildPipe(n, size, paused) for n, size, paused in outputs))


# -- owners of awaited futures ---------------------------------------------------------------
_CONTAINERS = (dict, list, collections.deque, set, tuple)
_CLOSED_FLAGS = ("_closed", "closed", "_closing", "_connection_lost", "_conn_lost")
_TRANSPORT_ATTRS = ("transport", "_transport")


def _closed_reason(obj: object) -> str:
    """Why ``obj`` (a transport, stream, protocol or a client holding one) is closed, or ""."""
    if is_a(obj, asyncio.BaseTransport):
        sock = plain_attr(obj, "_sock")
        if "_sock" in (instance_dict(obj) or {}) and sock is None:
            return "its transport is closed"
        if plain_attr(obj, "_closing") is True:
            # close() was called; with bytes still to send the connection stays up until
            # the peer takes them (write_backlog says so), else it is lost at once
            backlog = write_backlog(obj) if type(obj).__module__.startswith(_LOOP_TRANSPORT_MODULES) else None
            return "" if backlog is not None and backlog.buffered else "its transport is closed"
        return ""
    if is_a(obj, asyncio.StreamReader):
        if plain_attr(obj, "_eof") is True:
            return "its stream reader is at EOF"
        exc = plain_attr(obj, "_exception")
        if exc is not None:
            return f"its stream reader failed ({clip(type(exc).__qualname__)})"
        return ""
    if is_a(obj, asyncio.StreamWriter):
        reason = _closed_reason(plain_attr(obj, "_transport"))
        if reason:
            return reason
        # The peer closed its end: the transport stays open for writing (half-closed), but
        # nothing more will come in.
        reader = plain_attr(obj, "_reader")
        if is_a(reader, asyncio.StreamReader) and plain_attr(reader, "_eof") is True:
            return "its stream's reader is at EOF (the peer closed the connection)"
        return ""
    attrs = instance_dict(obj)
    if attrs is None:
        return ""
    for flag in _CLOSED_FLAGS:
        value = attrs.get(flag)
        if value is True or (type(value) is int and flag.endswith("lost") and value > 0):
            return f"{flag.strip('_')} is set"
    is_protocol = callable(type(obj).__dict__.get("connection_lost")) or any(
        "connection_lost" in klass.__dict__ for klass in type(obj).__mro__[1:] if klass is not asyncio.BaseProtocol
        and klass is not asyncio.Protocol and klass is not object)
    for name in _TRANSPORT_ATTRS:
        if name in attrs:
            value = attrs[name]
            if value is None and is_protocol:
                return "its connection was lost (transport is None)"
            reason = _closed_reason(value) if is_a(value, (asyncio.BaseTransport,)) else ""
            if reason:
                return reason
    return ""


def _ended_task(attrs: dict[str, Any]) -> str:
    """An owner's own task that has ended (the reader loop of a client, kept as
    ``self.receiver``), when no task it keeps is still running: whatever that task
    served (futures in ``self._pending``) has nobody left to resolve it."""
    ended = []
    for name, value in list(attrs.items())[:64]:
        if not is_a(value, asyncio.Task):
            continue
        state = future_field(value, "_state")
        if state == "PENDING":
            return ""  # one of its tasks still runs: it may yet end the wait
        ended.append((name, value, state))
    if not ended:
        return ""
    name, task, state = ended[0]
    coro = future_field(task, "_coro")
    code = getattr(coro, "cr_code", None) if type(coro) is types.CoroutineType else None
    what = clip(getattr(code, "co_qualname", code.co_name)) if code is not None else "?"
    if state == "CANCELLED":
        how = "it was cancelled"
    else:
        exc = future_field(task, "_exception")  # the descriptor: the exception is not marked retrieved
        how = f"it raised {clip(type(exc).__qualname__)}" if exc is not None else "it returned"
    return f"{clip(name, 60)}: its task {what} has ended ({how})"


def _owner_closed(owner: object, ended_tasks: bool = False) -> str:
    """Why ``owner`` (or an object in its attributes) is closed, or ""; with
    ``ended_tasks``, an ended task of its own counts too (for a future it keeps: a
    request's answer that its reader loop would have set)."""
    reason = _closed_reason(owner)
    if reason:
        return reason
    attrs = instance_dict(owner) or {}
    for name, value in list(attrs.items())[:64]:
        if type(value) in _CONTAINERS or value is None or type(value) in (int, float, str, bool, bytes):
            continue
        reason = _closed_reason(value)
        if reason:
            return f"{clip(name, 60)}: {reason}"
    return _ended_task(attrs) if ended_tasks else ""


#: Levels of owners searched above an awaited object (the event of a stream of a connection).
OWNER_DEPTH = 3


def _owners(objects: list[object], ignore: set[int]) -> dict[int, list[tuple[object, str]]]:
    """id(object) -> [(owning instance, attribute path)], for the instances that keep each
    object in an attribute, directly or in a dict/list/deque/set attribute.  Two
    ``gc.get_referrers`` passes: the objects', then their containers'."""
    wanted = {id(o) for o in objects}
    found: dict[int, list[tuple[object, str]]] = {}
    containers: dict[int, tuple[object, set[int]]] = {}
    for ref in gc.get_referrers(*objects):
        if id(ref) in ignore or type(ref) in (types.FrameType, types.CoroutineType, types.MethodType,
                                              types.GeneratorType, types.CellType):
            continue
        try:
            if type(ref) in _CONTAINERS:
                values = ref.values() if type(ref) is dict else ref  # type: ignore[attr-defined]
                held = {id(v) for v in list(values) if id(v) in wanted}
                if held:
                    containers[id(ref)] = (ref, held)
                continue
            attrs = instance_dict(ref)
            if attrs is None:
                continue
            for key, value in list(attrs.items()):
                if id(value) in wanted:
                    found.setdefault(id(value), []).append((ref, f"{type(ref).__qualname__}.{clip(key, 60)}"))
        except Exception:
            continue
    if containers:
        _add_outer_containers(containers, ignore)
        boxes = [c for c, _ in containers.values()]
        skip = ignore | {id(boxes)}
        # instance __dict__s that hold one of the containers: their instances are found below
        dict_holders: dict[int, tuple[dict[Any, Any], list[tuple[str, set[int]]]]] = {}
        for owner in gc.get_referrers(*boxes):
            if id(owner) in skip or type(owner) is types.FrameType:
                continue
            if type(owner) is dict:
                try:
                    keyed = [(clip(k, 60), containers[id(v)][1]) for k, v in list(owner.items())
                             if type(k) is str and id(v) in containers]
                except Exception:
                    keyed = []
                if keyed:
                    dict_holders[id(owner)] = (owner, keyed)
                continue
            if type(owner) in _CONTAINERS:
                continue
            attrs = instance_dict(owner)
            if attrs is None:
                continue
            try:
                own = containers.get(id(attrs))
                if own is not None:  # the container is the owner's own __dict__: its attributes
                    for key, value in list(attrs.items()):
                        inner = containers.get(id(value))  # an attribute that is itself a container
                        for oid in (own[1] & inner[1]) if inner is not None else own[1] & {id(value)}:
                            found.setdefault(oid, []).append((owner, f"{type(owner).__qualname__}.{clip(key, 60)}"))
                    continue
                for key, value in list(attrs.items()):
                    entry = containers.get(id(value))
                    if entry is not None:
                        for oid in entry[1]:
                            found.setdefault(oid, []).append((owner, f"{type(owner).__qualname__}.{clip(key, 60)}"))
            except Exception:
                continue
        del boxes
        if dict_holders:
            dicts = [d for d, _ in dict_holders.values()]
            skip.add(id(dicts))
            for owner in gc.get_referrers(*dicts):
                if id(owner) in skip or type(owner) in _CONTAINERS or type(owner) is types.FrameType:
                    continue
                attrs = instance_dict(owner)
                entry2 = dict_holders.get(id(attrs)) if attrs is not None else None
                if entry2 is None:
                    continue
                for key, held in entry2[1]:
                    for oid in held:
                        found.setdefault(oid, []).append((owner, f"{type(owner).__qualname__}.{key}"))
            del dicts
    return found


#: Containers looked through between an awaited object and the instance keeping it: a
#: list in a dict (subscribers' queues by topic), whatever the dict's own type.
_NESTING = (dict, list, collections.deque, set, tuple, collections.defaultdict, collections.OrderedDict)


def _add_outer_containers(containers: dict[int, tuple[object, set[int]]], ignore: set[int]) -> None:
    """Add to ``containers`` (id -> (container, ids of the objects it holds)) the builtin
    containers that hold one of them, with the objects they lead to: one level up."""
    boxes = [c for c, _ in containers.values()]
    skip = ignore | {id(boxes), id(containers)}
    outer: dict[int, tuple[object, set[int]]] = {}
    for ref in gc.get_referrers(*boxes):
        if id(ref) in skip or id(ref) in containers or type(ref) not in _NESTING:
            continue
        try:  # the builtin's own iteration (exact types only): no program code runs
            values = list(dict.values(ref)) if is_a(ref, dict) else list(ref)  # type: ignore[call-overload]
        except Exception:
            continue
        held: set[int] = set()
        for value in values:
            entry = containers.get(id(value))
            if entry is not None:
                held |= entry[1]
        if held:
            outer[id(ref)] = (ref, held)
    del boxes
    containers.update(outer)


#: Owners' ids kept per awaited object (every level's, for matching with the dead-task log).
MAX_OWNER_IDS = 8


def closed_owners(objects: list[object], depth: int = OWNER_DEPTH) -> dict[int, tuple[str, str, tuple[int, ...]]]:
    """id(object) -> (where it is kept, why that owner is closed, or "", the ids of the
    owners found) for awaited futures and primitives: the instance keeping each one, or
    the one keeping that (up to ``depth`` levels), whose transport or stream is closed or
    whose connection was lost."""
    if not objects or len(objects) > MAX_OWNER_SCAN:
        return {}
    ignore = {id(objects)}
    result: dict[int, tuple[str, str]] = {}
    owner_ids: dict[int, list[int]] = {}
    # the objects still looked for, each with the path from its original object
    level: dict[int, tuple[object, int, str]] = {id(o): (o, id(o), "") for o in objects}
    # A worker idle on a queue of an object whose start-up task has ended is not stuck; a
    # request whose answer only the ended reader loop could set is.
    futures = {id(o) for o in objects if is_a(o, asyncio.Future)}
    seen: set[int] = set(level)
    for _ in range(depth):
        if not level:
            break
        current = [entry[0] for entry in level.values()]
        ignore.add(id(current))
        owners = _owners(current, ignore)
        del current
        nxt: dict[int, tuple[object, int, str]] = {}
        for key, (obj, origin, path) in level.items():
            for owner, label in owners.get(key, ()):
                where = label if not path else f"{path} in {label}"
                if origin not in result:
                    result[origin] = (where, "")
                ids = owner_ids.setdefault(origin, [])
                if len(ids) < MAX_OWNER_IDS and id(owner) not in ids:
                    ids.append(id(owner))
                reason = _owner_closed(owner, origin in futures)
                if reason:
                    result[origin] = (where, reason)
                    nxt.pop(id(owner), None)
                    break
                if id(owner) not in seen:
                    seen.add(id(owner))
                    nxt[id(owner)] = (owner, origin, where)
        closed = {o for o, (_w, r) in result.items() if r}
        level = {k: v for k, v in nxt.items() if v[1] not in closed}
    return {origin: (where, reason, tuple(owner_ids.get(origin, ()))) for origin, (where, reason) in result.items()}


def future_owners(futures: list[object]) -> dict[int, tuple[str, str, tuple[int, ...]]]:
    """``closed_owners`` of awaited futures (kept for its name in the sync collector)."""
    return closed_owners(futures)


__all__ = ["is_main_task", "LoopTimers", "deadline_of", "collect_threads", "future_owners", "closed_owners",
           "child_process", "connection_pool", "loaded_class",
           "asyncio_futures_by_concurrent"]


# -- client connection pools (aiohttp) -------------------------------------------------------
#: Leases looked at per pool: enough to say what holds a pool's connections.
MAX_LEASES = 32
_DICTS = (dict, collections.OrderedDict, collections.defaultdict)


def loaded_class(module: str, name: str) -> type | None:
    """A library's class if the program has imported its module (never imported here)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if issubclass(type(found), type) else None  # a class (ABCMeta's included)


def _dict_values(obj: object) -> list[Any]:
    if type(obj) not in _DICTS:
        return []
    try:
        return list(dict.values(obj))  # type: ignore[arg-type]
    except RuntimeError:  # changed size during the copy (another thread)
        return []


def _waiting_futures(container: object) -> int:
    """Futures queued in one of a connector's per-host waiter containers (an OrderedDict
    keyed by future in aiohttp 3.10+, a deque before)."""
    if type(container) in _DICTS:
        return dict.__len__(container)  # type: ignore[arg-type]
    return len(builtin_items(container))


def _url_text(url: object) -> str:
    if type(url) is not loaded_class("yarl", "URL"):
        return ""
    try:
        return clip(str(url), 200)  # yarl's own formatting: a library type, not the program's
    except Exception:
        return ""


def _lease(response: object | None) -> PoolLease:
    if response is None:
        return PoolLease()
    method = plain_attr(response, "method")
    url = _url_text(plain_attr(response, "_url"))
    status = plain_attr(response, "status")
    content = plain_attr(response, "content")
    waiter = plain_attr(content, "_waiter")
    body = plain_attr(response, "_body")
    return PoolLease(holder=type_name(response),
                     request=f"{clip(method, 10)} {url}".strip() if type(method) is str else url,
                     status=status if type(status) is int else 0,
                     reading=is_a(waiter, asyncio.Future) and not future_done(waiter),
                     body_read=body is not None or plain_attr(content, "_eof") is True
                     and not builtin_len(plain_attr(content, "_buffer")))


def _keepers(objects: list[object], cls: type, attr: str) -> dict[int, object]:
    """id(object) -> the instance of ``cls`` whose ``attr`` is that object.  An instance
    refers to its attributes itself until something reads its ``__dict__``, and through
    that dict after: both are looked for (a second ``gc.get_referrers`` pass for dicts)."""
    wanted = {id(o) for o in objects}
    found: dict[int, object] = {}
    dicts: dict[int, tuple[dict[str, Any], int]] = {}  # id(instance dict) -> (it, id(the object it holds))
    for ref in gc.get_referrers(*objects):
        if is_a(ref, cls):
            held = plain_attr(ref, attr)
            if id(held) in wanted:
                found[id(held)] = ref
        elif type(ref) is dict:
            held = ref.get(attr)
            if id(held) in wanted:
                dicts[id(ref)] = (ref, id(held))
    if dicts:
        for ref in gc.get_referrers(*[box for box, _ in dicts.values()]):
            own = instance_dict(ref) if is_a(ref, cls) else None
            if own is not None and id(own) in dicts:
                found.setdefault(dicts[id(own)][1], ref)
        dicts.clear()
    return found


def _leases(acquired: list[object]) -> tuple[PoolLease, ...]:
    """What holds each connection in use: the ``ClientResponse`` that keeps its
    ``Connection`` (none while the request is still being sent)."""
    connection_type = loaded_class("aiohttp.connector", "Connection")
    response_type = loaded_class("aiohttp.client_reqrep", "ClientResponse")
    protocols = acquired[:MAX_LEASES]
    if connection_type is None or not protocols:
        return ()
    connections = _keepers(protocols, connection_type, "_protocol")
    responses = (_keepers(list(connections.values()), response_type, "_connection")
                 if connections and response_type is not None else {})
    held = [_lease(responses.get(id(conn))) for conn in connections.values()]
    held.extend(PoolLease() for _ in range(len(protocols) - len(connections)))
    return tuple(held)


def connection_pool(connector: object, leases: bool) -> ConnectionPool | None:
    """The state of an aiohttp connector that a task waits on for a free connection:
    its limits, connections in use, requests waiting, and (``leases``) what holds the
    connections in use.  Read from its fields; no method of it runs."""
    base = loaded_class("aiohttp.connector", "BaseConnector")
    if base is None or not is_a(connector, base):
        return None
    limit, per_host = plain_attr(connector, "_limit"), plain_attr(connector, "_limit_per_host")
    acquired = builtin_items(plain_attr(connector, "_acquired"))
    waiting = sum(_waiting_futures(c) for c in _dict_values(plain_attr(connector, "_waiters")))
    return ConnectionPool(
        kind=type_name(connector), id=hex(id(connector)),
        limit=limit if type(limit) is int else 0, limit_per_host=per_host if type(per_host) is int else 0,
        in_use=len(acquired), waiting=waiting, leases=_leases(acquired) if leases else ())
