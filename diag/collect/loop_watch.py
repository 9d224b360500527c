"""Which event loops the process runs, whether they turn, and how long tasks have waited.

``LoopWatch`` learns about loops from a hook on asyncio's ``_set_running_loop`` (every
loop that starts running, in any thread) and from tasks seen in dumps.  A watchdog
thread sends each running loop a heartbeat with ``call_soon_threadsafe``: a beat that
has not run after a while means the loop is stalled, and the loop thread's current
stack (from ``sys._current_frames``) says on what.  A loop whose thread sleeps in the
loop's own poll is idle and gets no beat: waking it would hide a wake-up the program
lost (a future set from another thread), which is recorded instead when callbacks stay
ready while the thread sleeps (``UNWOKEN_MIN``).  The same thread samples every
task's awaited future about once a second, so a dump can say how long a task has
waited on the same object: a lower bound, exact to the sampling interval.

Every stall is kept for ``STALL_WINDOW`` seconds (at most ``MAX_STALLS`` per loop): its
length, the loop thread's stacks sampled while it lasted, and what the thread did
meanwhile, from Linux's per-thread scheduler counters (``/proc/self/task/TID/schedstat``:
CPU time and time runnable on a run queue, read when the beat is sent and when it runs),
the process's CPU time and its cgroup's throttled time.  From these
``diag.analysis.loop_stalls.classify`` tells a loop blocked by its own code from one
that was starved of a CPU or of the GIL.
"""

from __future__ import annotations

import asyncio
import atexit
import asyncio.events
import collections
import contextlib
import itertools
import linecache
import os
import platform
import selectors
import sys
import threading
import time
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from diag.analysis.loop_stalls import MOSTLY, classify
from diag.collect import task_origins
from diag.collect.dead_tasks import DeadTaskLog
from diag.collect.safe_read import (
    COROUTINE_WRAPPER, clip, future_done, future_field, instance_dict, is_a, task_cancelling, task_coroutine,
    wrapped_coroutine,
)
from diag.model.task_snapshot import Frame, Stall, StallStack, Unwoken

HEARTBEAT_INTERVAL = 0.1
#: A loop asleep in its selector this long with callbacks in its ready queue, its thread
#: not woken, has lost a wake-up: they were scheduled from another thread without
#: ``call_soon_threadsafe``.
UNWOKEN_MIN = 0.25
#: Such episodes kept per loop (the last ``STALL_WINDOW`` seconds are reported).
MAX_UNWOKEN = 32
#: Ready callbacks described per episode.
UNWOKEN_CALLBACKS = 8
#: The ``select`` methods of the selectors asyncio's loops sleep in: a loop thread whose
#: innermost frame is one of these is idle.
_SELECT_CODES = frozenset(
    cls.__dict__["select"].__code__ for cls in vars(selectors).values()
    if isinstance(cls, type) and callable(cls.__dict__.get("select")) and hasattr(cls.__dict__["select"], "__code__"))
#: A loop whose heartbeat is older than this is reported as stalled: asyncio's own
#: ``slow_callback_duration``, the time its debug mode calls one callback slow.  A beat
#: is sent at some moment inside a stall, so a stall is seen from about 1.5 times this on.
STALL_THRESHOLD = 0.1
#: A loop's first beat is its start-up's when sent this soon after the loop began to run (a
#: watchdog on a loaded machine, late to its first look, may find the loop serving already).
START_BEAT_WITHIN = 1.0
#: A stack the loop thread read itself for the watchdog counts as where a long call ended
#: only if it was read within this share of the watchdog's lateness before it got the GIL.
ENDED_READ_SHARE = 0.25
#: The wait sampler may use at most this share of one core; with many tasks it samples less often.
SAMPLER_CPU_SHARE = 0.01
SAMPLER_MIN_INTERVAL = 1.0
#: Seconds of stall history kept per loop, and at most this many stalls in it.
STALL_WINDOW = 60.0
MAX_STALLS = 256
#: The worst heartbeat lag of each second is kept this many seconds (for ``diag top``'s
#: worst lag since its last refresh); lags under ``LAG_PEAK_FLOOR`` are not kept.
LAG_PEAK_SECONDS = 60
LAG_PEAK_FLOOR = 0.001
#: Distinct stacks kept per stall (the most sampled), and frames per stack.
MAX_STALL_STACKS = 3
MAX_STALL_FRAMES = 16
#: Long waits (the same future in two samples) whose stack one sample reads, at most: the
#: rest wait for the next sample, so a dump of 200,000 stuck tasks costs no long pause.
STACKS_PER_SAMPLE = 256
#: Await chains read per sample to find a ``Condition.wait_for`` a wait goes on inside.
WAIT_FOR_READS = 256
#: Coroutines kept of such a stack (innermost).
STACK_DEPTH = 16

#: (CPU seconds, seconds runnable on a run queue) of a thread, the process's CPU seconds,
#: the cgroup's throttled seconds; ``None`` where not known.
_Figures = tuple[float | None, float | None, float, float | None]
#: A sampled stack: (file, line, function) per frame, innermost first.
_StackKey = tuple[tuple[str, int, str], ...]


@dataclass
class _OpenStall:
    """A stall the watchdog has seen in progress: the beat it waits for and the stacks sampled."""

    sent_at: float
    samples: int = 0
    own_wait: int = 0
    lock_wait: int = 0  # samples in the program's code, waiting in a futex: for the GIL or a lock
    stacks: dict[_StackKey, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _StallRecord:
    """One finished stall, as kept in a loop's history."""

    started_at: float  # Unix time
    ended_mono: float
    seconds: float
    cause: str
    reason: str
    figures: tuple[float | None, float | None, float | None, float | None]  # cpu, runqueue, throttled, others
    samples: int
    stacks: tuple[tuple[_StackKey, int], ...]
    before_watch: float = 0.0  # seconds of ``seconds`` from before the watch began (see ``_overdue``)
    at_start: bool = False  # in the loop's start-up: see ``_Beat.start_beat``


@dataclass
class _Unwoken:
    """An episode of a loop asleep in its selector with callbacks ready (see ``UNWOKEN_MIN``)."""

    first: float  # monotonic time it was first seen
    wall: float  # time.time() then
    last: float  # monotonic time it was last seen
    callbacks: tuple[str, ...]
    tasks: tuple[int, ...]  # diag ids of the tasks the callbacks would wake
    handles: frozenset[int]  # ids of the ready handles (or tasks) first seen (to tell one episode from the next)
    source: str = "ready"  # "ready": the loop's ready queue; "tasks": tasks on done futures (uvloop)
    recorded: bool = False
    ongoing: bool = True


@dataclass
class _Beat:
    """Heartbeat state of one loop (mutated by the watchdog and the loop thread)."""

    thread_id: int | None = None
    thread_name: str = ""
    native_id: int | None = None
    sent_at: float | None = None  # monotonic time of the beat in flight, None when none is
    last_turn: float = field(default_factory=time.monotonic)
    lag: float | None = None
    # (monotonic time, lag) of the worst beat of each second that had one over the floor
    lag_peaks: "collections.deque[tuple[float, float]]" = field(
        default_factory=lambda: collections.deque(maxlen=LAG_PEAK_SECONDS))
    sent_figures: _Figures | None = None  # read as the beat was sent
    # The first beat only: how long the loop had already not turned as it was sent (an attach
    # to a hung process), from its overdue timers; counted once the beat is late by itself.
    before_watch: float = 0.0
    first_sent: bool = False
    # The loop was added as it began to run (the running-loop hook), so its first beat went out
    # before it had ever gone idle: a stall on that beat is the program's start-up code.
    from_start: bool = False
    start_beat: float | None = None  # sent_at of that first beat
    # (sent at, ran at, figures at send, figures at run) of a stall that just ended: written
    # by the loop thread in one assignment, taken by the watchdog
    ended: tuple[float, float, _Figures | None, _Figures | None] | None = None
    base_stack: _StackKey | None = None  # uvloop: the stack beneath a callback, i.e. its idle stack
    base_known: bool = False  # base_stack was looked for (in the first beat)
    closing: bool = False  # the loop thread is reading a stall's end figures
    open: _OpenStall | None = None
    history: "collections.deque[_StallRecord]" = field(
        default_factory=lambda: collections.deque(maxlen=MAX_STALLS))
    watched_since: float = field(default_factory=time.monotonic)
    stalls_total: int = 0
    stall_seconds_total: float = 0.0
    starved_total: int = 0
    starved_seconds_total: float = 0.0
    asleep: _Unwoken | None = None  # the loop is asleep with callbacks ready
    idle_since: float | None = None  # monotonic time the watchdog first saw the loop idle, while it is
    idle_figures: _Figures | None = None  # read as the watchdog went to sleep with the loop idle
    unwoken: "collections.deque[_Unwoken]" = field(default_factory=lambda: collections.deque(maxlen=MAX_UNWOKEN))
    unwoken_total: int = 0


@dataclass(frozen=True)
class StallHistory:
    """A loop's recent stalls as snapshot data (see ``diag.model.task_snapshot.LoopInfo``)."""

    window: float = 0.0
    stalls: tuple[Stall, ...] = ()
    stacks: tuple[StallStack, ...] = ()
    stalls_total: int = 0
    stall_seconds_total: float = 0.0
    starved_total: int = 0
    starved_seconds_total: float = 0.0


def thread_schedstat(native_id: int | None) -> tuple[float, float] | None:
    """(CPU seconds, seconds runnable on a run queue) of one of this process's threads, from
    Linux's ``/proc/self/task/TID/schedstat``; None elsewhere or when the thread is gone."""
    if native_id is None or not _PROCFS[0]:
        return None
    try:
        fd = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
        try:
            fields = os.read(fd, 128).split()
        finally:
            os.close(fd)
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except FileNotFoundError:
        if not os.path.exists("/proc/self/schedstat"):
            _PROCFS[0] = False  # no procfs or no scheduler statistics: stop trying
        return None
    except (OSError, ValueError, IndexError):
        return None


_PROCFS = [sys.platform.startswith("linux")]
_RUN_ONCE_CODE = getattr(asyncio.base_events.BaseEventLoop, "_run_once").__code__
_THREADSAFE_CODE = asyncio.base_events.BaseEventLoop.call_soon_threadsafe.__code__


def _inside(frame: types.FrameType | None, code: types.CodeType, depth: int = 4) -> bool:
    """Whether ``frame`` or one of its ``depth - 1`` callers runs ``code``."""
    while frame is not None and depth > 0:
        if frame.f_code is code:
            return True
        frame, depth = frame.f_back, depth - 1
    return False
_handle_callback = getattr(asyncio.Handle, "_callback", None)


def thread_state(native_id: int | None) -> str | None:
    """The scheduler state of one of this process's threads (``R`` running or runnable,
    ``S`` asleep...), from ``/proc/self/task/TID/stat``; None where it cannot be read."""
    if native_id is None or not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(f"/proc/self/task/{native_id}/stat", os.O_RDONLY)
        try:
            text = os.read(fd, 512)
        finally:
            os.close(fd)
        return text.rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _overdue(loop: object) -> float:
    """Seconds the earliest timer of an asyncio loop is past its time, 0.0 where not known.

    Each turn of the loop begins by taking every timer that is due, so one still queued and
    overdue by ``x`` means the turn under way has lasted at least ``x``: a loop that was hung
    before the watch began (``diag attach``) shows how long at once.  uvloop keeps its timers
    in libuv: 0.0.  A loop whose clock is not asyncio's own: 0.0."""
    if getattr(type(loop), "time", None) is not asyncio.base_events.BaseEventLoop.time:
        return 0.0
    heap = (instance_dict(loop) or {}).get("_scheduled")
    if type(heap) is not list:
        return 0.0
    try:
        first = heap[0]  # the heap's least: one C call, the loop thread cannot move it meanwhile
    except IndexError:
        return 0.0
    when = getattr(first, "_when", None) if type(first) is asyncio.TimerHandle else None
    if type(when) is not float:
        return 0.0
    return max(0.0, time.monotonic() - when)


def _hung_before(loop: object, beat: _Beat) -> bool:
    """The first beat, sent to a loop already stalled, has not run yet and the same timer is
    still overdue (the loop has not turned since: a turn would have taken it), so the stall
    is known before the beat is late by itself."""
    return beat.before_watch > STALL_THRESHOLD and _overdue(loop) >= beat.before_watch


def _has_ready_queue(loop: object) -> bool:
    """An asyncio loop whose ready queue the watchdog reads (not uvloop's, which is compiled)."""
    attrs = instance_dict(loop)
    return attrs is not None and type(attrs.get("_ready")) is collections.deque


def _wakes(task: Any) -> tuple[int, str]:
    """(diag id, ``wakes task 5 (poll)``) of a task a callback would wake."""
    seq = task_origins.task_seq(task)
    coro = future_field(task, "_coro")
    code = getattr(coro, "cr_code", None) if type(coro) is types.CoroutineType else None
    name = getattr(code, "co_qualname", "?") if code is not None else clip(type(coro).__qualname__)
    return seq, f"wakes task {seq} ({clip(name)})"


def _describe_ready(handles: list[Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """What ready callbacks would do (``wakes task 5 (poll)``, ``Client._on_timer``) and the
    ids of the tasks they would wake; no code of the program's runs."""
    described: list[str] = []
    tasks: list[int] = []
    for handle in handles:
        if not is_a(handle, asyncio.Handle) or _handle_callback is None:
            continue
        try:
            callback = _handle_callback.__get__(handle, asyncio.Handle)
        except Exception:
            continue
        owner = callback.__self__ if type(callback) in (types.MethodType, types.BuiltinMethodType) else None
        if is_a(owner, asyncio.Task):
            seq, text = _wakes(owner)
            described.append(text)
            tasks.append(seq)
        elif type(callback) in (types.FunctionType, types.MethodType, types.BuiltinFunctionType):
            described.append(clip(getattr(callback, "__qualname__", "?")))
        else:
            described.append(clip(type(callback).__qualname__))
    return tuple(described), tuple(tasks)


#: The futex system call's number, which a thread waiting for the GIL (or a lock) sits in.
_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine()) if _PROCFS[0] else None
#: The epoll wait system calls (epoll_wait, epoll_pwait, epoll_pwait2), which an idle uvloop sits in.
_EPOLL_WAITS = {"x86_64": frozenset({232, 281, 441}), "aarch64": frozenset({22, 441}),
                "arm64": frozenset({22, 441})}.get(platform.machine(), frozenset()) if _PROCFS[0] else frozenset()


def _syscall(native_id: int) -> int | None:
    """The system call one of this process's threads is blocked in (``/proc/self/task/TID/syscall``),
    or None (running, or not readable)."""
    try:
        fd = os.open(f"/proc/self/task/{native_id}/syscall", os.O_RDONLY)
        try:
            first = os.read(fd, 64).split(b" ", 1)[0]
        finally:
            os.close(fd)
        return int(first) if first.isdigit() else None
    except (OSError, ValueError):
        return None


def in_epoll_wait(native_id: int | None) -> bool:
    """Is this thread of the process blocked in an epoll wait: an event loop polling for
    I/O, not a call that blocks?"""
    if native_id is None or not _EPOLL_WAITS:
        return False
    return _syscall(native_id) in _EPOLL_WAITS


def in_futex_wait(native_id: int | None) -> bool:
    """Is this thread of the process blocked in a futex wait: waiting for the GIL or a lock,
    not sleeping or reading a socket?"""
    if native_id is None or _FUTEX is None:
        return False
    return _syscall(native_id) == _FUTEX


def _cgroup_cpu_stat() -> tuple[str, str] | None:
    """(path of the process's cgroup ``cpu.stat``, its throttled-time field) when the cgroup
    has a CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None otherwise."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            base = os.path.join("/sys/fs/cgroup", path)
            quota, stat, key = os.path.join(base, "cpu.max"), os.path.join(base, "cpu.stat"), "throttled_usec"
        elif "cpu" in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup", controllers, path)
            quota, stat, key = os.path.join(base, "cpu.cfs_quota_us"), os.path.join(base, "cpu.stat"), "throttled_time"
        else:
            continue
        try:
            with open(quota) as f:
                value = f.read().split()
        except OSError:
            continue
        if value and value[0] not in ("max", "-1"):
            return stat, key
    return None


def _throttled_seconds(source: tuple[str, str] | None) -> float | None:
    if source is None:
        return None
    path, key = source
    try:
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                name, _, value = line.partition(b" ")
                if name.decode() == key:
                    return int(value) / (1e6 if key == "throttled_usec" else 1e9)
    except (OSError, ValueError):
        return None
    return None


def _stack_key(frame: types.FrameType | None) -> _StackKey:
    out: list[tuple[str, int, str]] = []
    while frame is not None and len(out) < MAX_STALL_FRAMES:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno or 0, getattr(code, "co_qualname", code.co_name)))
        frame = frame.f_back
    return tuple(out)


def _is_own_wait(key: _StackKey, base: _StackKey | None) -> bool:
    """Is this the loop's own poll: asyncio's selector (or the loop's run between polls), or
    for uvloop, whose loop is compiled, the bare stack beneath its callbacks?"""
    if not key:
        return False
    file, _, function = key[0]
    if file == __file__:  # the heartbeat itself, on its way out of a stall
        return True
    if file.endswith(("selectors.py", "selector_events.py")):
        return True
    if file.endswith("base_events.py") and function.endswith(("_run_once", "run_forever")):
        return True
    return base is not None and key == base


def _suspended_at(coro: object) -> tuple[tuple[types.CodeType, int], ...]:
    """(code, line) of each coroutine of an await chain, innermost first: plain coroutines
    and generators only, at most ``STACK_DEPTH`` of them."""
    out: list[tuple[types.CodeType, int]] = []
    node = coro
    while node is not None and len(out) < STACK_DEPTH:
        kind = type(node)
        if kind is types.CoroutineType:
            frame, node = node.cr_frame, node.cr_await  # type: ignore[attr-defined]
        elif kind is types.GeneratorType:
            frame, node = node.gi_frame, node.gi_yieldfrom  # type: ignore[attr-defined]
        elif kind is COROUTINE_WRAPPER:  # a library's __await__ handing on a coroutine's
            node = wrapped_coroutine(node)
            continue
        else:
            break
        if frame is None:
            break
        out.append((frame.f_code, frame.f_lineno or 0))
    out.reverse()
    return tuple(out)


def _read_as_call_ended(read_at: float, armed_at: float, now: float, late: float) -> bool:
    """Whether a stack the loop thread read for the watchdog (at ``read_at``, asked for at
    ``armed_at``) is where its long call ended: read after the request, and within
    ``ENDED_READ_SHARE`` of the watchdog's lateness before it got the GIL (``now``)."""
    return read_at >= armed_at and now - read_at <= ENDED_READ_SHARE * late


_WAIT_FOR_CODE = asyncio.Condition.wait_for.__code__


def _wait_for_of(task: object) -> Any:
    """The ``Condition.wait_for`` coroutine suspended in ``task``'s await chain, if any: it
    waits on a new future after every wake-up whose predicate is still false, and its wait
    goes on across them."""
    node = task_coroutine(future_field(task, "_coro"))
    for _ in range(STACK_DEPTH):
        if type(node) is not types.CoroutineType:
            return None
        if node.cr_code is _WAIT_FOR_CODE:  # type: ignore[attr-defined]
            return node
        node = node.cr_await  # type: ignore[attr-defined]
    return None


def _no_ref() -> None:
    """Stands for a weak reference to a future that cannot have one: never the same future."""
    return None


def _weak_or_none(obj: object) -> Any:
    """A weak reference to ``obj``, or ``_no_ref`` when it is None (or cannot have one)."""
    if obj is None:
        return _no_ref
    try:
        return weakref.ref(obj)
    except TypeError:
        return _no_ref


def iter_all_tasks() -> list[asyncio.Task[Any]]:
    """Every task of every loop, read without the loops' cooperation (any thread).

    Copies asyncio's registries as sets of weak references in one C-level step, so a
    loop thread adding tasks meanwhile cannot break the iteration.
    """
    registries: list[Any] = []
    for name in ("_scheduled_tasks", "_all_tasks"):  # 3.12+, 3.11
        reg = getattr(asyncio.tasks, name, None)
        if reg is not None:
            registries.append(reg)
            break
    out: list[asyncio.Task[Any]] = []
    for reg in registries:
        data = getattr(reg, "data", None)
        refs = set(data) if data is not None else set()
        for ref in refs:
            task = ref()
            if task is not None:
                out.append(task)
    eager = getattr(asyncio.tasks, "_eager_tasks", None)
    if eager:
        for _ in range(3):
            try:
                out.extend(set(eager))
                break
            except RuntimeError:  # changed size during the copy: try again
                continue
    return out


def _running(loop: Any) -> bool:
    """``loop.is_running()``, False for a loop that cannot say."""
    try:
        return bool(loop.is_running())
    except Exception:
        return False


_arming: list[bool] = []  # [opened] once the first watchdog has opened it


def _arming_opened() -> bool:
    """Open the C sleep's requests for the main thread's stack, once per process, and close
    them from ``atexit`` on: a request made while the interpreter tears itself down would
    touch its pending-call queue as that is freed (a daemon watchdog still sleeps then)."""
    if not _arming:
        try:
            fast = task_origins._fast
            atexit.register(fast.set_arming, False)
            fast.set_arming(True)
            _arming.append(True)
        except Exception:
            _arming.append(False)
    return _arming[0]


class LoopWatch:
    """Loop registry, heartbeat and wait sampler; one per agent."""

    def __init__(self, *, install_factories: bool = True) -> None:
        self._beats: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Beat]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._install_factories = install_factories
        self._hook: Callable[[Any], None] | None = None
        self._hooked: list[Any] = []  # the modules whose _set_running_loop is wrapped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._armed: tuple[float, bool] | None = None  # see _sleep
        # id(task) -> (id(awaited future), monotonic time first seen waiting on it, weak ref to it)
        # id(task) -> (id of the awaited future, when first seen, weak reference to it, the
        # Condition.wait_for it waits in: a weak reference, _no_ref when it waits in none,
        # None when not looked for yet)
        self._waits: dict[int, tuple[int, float, Any, Any]] = {}
        self.sampled_since: float | None = None
        self.sample_interval = SAMPLER_MIN_INTERVAL
        self.thread_ident: int | None = None
        self.native_id: int | None = None  # the watchdog thread's
        #: id(primitive) -> (weakref to it, label from its holders); saves a heap scan per dump
        self.holder_labels: dict[int, tuple[Any, str]] = {}
        self._throttle = _cgroup_cpu_stat()
        self._interned: dict[_StackKey, _StackKey] = {}
        # The agent's own collections: per thread running one, how deep and since when; and
        # the last ones (start, end, thread).  A program that serves diag's endpoints from
        # its own server (diag.aiohttp) runs them on its loop's thread.
        self._own_running: dict[int, tuple[int, float]] = {}
        self._own_spans: "collections.deque[tuple[float, float, int]]" = collections.deque(maxlen=64)
        #: Tasks that ended badly (fed by the sampler and the loops' exception handlers).
        self.dead = DeadTaskLog()
        # id(task) -> (id(awaited future), where it waits: (code, line) innermost first), for
        # tasks seen on the same wait in two samples: a task the GC destroys while pending has
        # its coroutine closed before anyone hears of it, so its last stack comes from here.
        self._stacks: dict[int, tuple[int, tuple[tuple[types.CodeType, int], ...]]] = {}
        self.dead.last_stack = self._last_stack
        # id(task) -> monotonic time the sampler first saw a cancellation pending on it
        self._cancels: dict[int, float] = {}

    # -- loops -----------------------------------------------------------------------
    def add_loop(self, loop: asyncio.AbstractEventLoop, starting: bool = False) -> None:
        """Start watching ``loop`` (``starting``: it begins to run now); safe from any thread,
        never raises."""
        try:
            with self._lock:
                if loop in self._beats:
                    return
                self._beats[loop] = _Beat(from_start=starting)
            self.dead.hook_loop(loop)
            if self._install_factories:
                task_origins.install_factory(loop)
        except Exception:
            pass

    def _bind_thread(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        """Note the thread that runs ``loop`` before its first heartbeat has run, so that even
        a stall that begins right away has the thread's stack and scheduler figures."""
        beat = self._beats.get(loop)
        if beat is None or beat.thread_id is not None or thread is None:
            return
        beat.native_id = thread.native_id
        beat.thread_name = thread.name
        beat.thread_id = thread.ident

    def loops(self) -> list[asyncio.AbstractEventLoop]:
        with self._lock:
            return list(self._beats.keys())

    def hook_running_loop(self) -> None:
        """Wrap ``asyncio.events._set_running_loop`` so every loop that starts is seen.

        ``asyncio._set_running_loop`` (the package's re-export, which uvloop binds when it
        is imported) is wrapped too when it is the same function.
        """
        if self._hook is not None:
            return
        watch = self

        def _set_running_loop(loop: Any) -> None:
            # The wrapped function is read at each call, so a hook beneath this one can be
            # taken out of the chain (see ``unhook_running_loop``).
            _set_running_loop.__wrapped__(loop)  # type: ignore[attr-defined]
            if loop is not None and watch._hook is _set_running_loop:  # a hook left in a chain stays quiet
                watch.add_loop(loop, starting=True)
                watch._bind_thread(loop, threading.current_thread())

        current = asyncio.events._set_running_loop
        _set_running_loop.__wrapped__ = current  # type: ignore[attr-defined]
        self._hook = _set_running_loop
        self._hooked = [asyncio.events]
        if getattr(asyncio, "_set_running_loop", None) is current:
            self._hooked.append(asyncio)
        for namespace in self._hooked:
            namespace._set_running_loop = _set_running_loop  # type: ignore[attr-defined]

    def unhook_running_loop(self) -> None:
        """Take this watch's hook out, even when another was put on top of it since."""
        hook, self._hook = self._hook, None
        if hook is None:
            return
        inner = hook.__wrapped__  # type: ignore[attr-defined]
        for namespace in self._hooked:
            node: Any = getattr(namespace, "_set_running_loop", None)
            if node is hook:
                namespace._set_running_loop = inner  # type: ignore[attr-defined]
                continue
            for _ in range(64):  # the chain of hooks above ours, each naming the one beneath
                below = getattr(node, "__wrapped__", None)
                if below is None:
                    break
                if below is hook:
                    try:
                        node.__wrapped__ = inner
                    except (AttributeError, TypeError):
                        pass
                    break
                node = below
        self._hooked = []

    # -- watchdog thread ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.dead.hook_threads()
        self.dead.hook_logger()
        self._thread = threading.Thread(target=self._run, name="diag-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None
        self.unhook_running_loop()
        for loop in self.loops():
            task_origins.uninstall_factory(loop)
        self.dead.unhook_all()

    def _run(self) -> None:
        self.thread_ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        next_sample = time.monotonic()
        slept_at, own_at = time.monotonic(), thread_schedstat(self.native_id)
        try:
            self._send_beats()  # at once: a loop hung before the watch began is timed from now, not a turn later
        except Exception:
            pass
        while not self._sleep():
            armed, self._armed = self._armed, None
            try:
                self._held_throughout(slept_at, own_at, self._stacks_as_woken(slept_at, armed))
                self._send_beats()
                now = time.monotonic()
                if now >= next_sample:
                    cost = self.sample_waits()
                    self.sample_interval = max(SAMPLER_MIN_INTERVAL, cost / SAMPLER_CPU_SHARE)
                    next_sample = time.monotonic() + self.sample_interval
                self._note_idle_figures()
                slept_at, own_at = time.monotonic(), thread_schedstat(self.native_id)
            except Exception:  # the watchdog must outlive anything odd in the target
                pass

    def _sleep(self) -> bool:
        """The watchdog's sleep between turns; True when it is told to stop.  With the C
        accelerator, an idle loop on the main thread gets its stack read as the watchdog
        wakes, by the loop thread itself at its next check between bytecodes (see
        ``_stacks_as_woken``): ``self._armed`` is (when that was asked, whether the request
        was a new one)."""
        sleep_arming = getattr(task_origins._fast, "sleep_arming", None)
        if sleep_arming is None or not _arming_opened():
            return self._stop.wait(HEARTBEAT_INTERVAL)
        main = threading.main_thread().ident
        arm = any(beat.idle_figures is not None and beat.thread_id == main and _running(loop)
                  for loop, beat in list(self._beats.items()))
        try:
            armed_at, fresh = sleep_arming(HEARTBEAT_INTERVAL, arm)
        except Exception:
            return self._stop.wait(HEARTBEAT_INTERVAL)
        self._armed = (armed_at, bool(fresh)) if armed_at >= 0 else None
        return self._stop.is_set()

    def _note_idle_figures(self) -> None:
        """Each idle loop thread's figures as the watchdog goes to sleep (see ``_held_throughout``)."""
        for beat in list(self._beats.values()):
            idle = beat.idle_since is not None and beat.sent_at is None and beat.native_id is not None
            beat.idle_figures = self._figures(beat.native_id) if idle else None

    def _stacks_as_woken(self, slept_at: float, armed: tuple[float, bool] | None = None) -> dict[int, _StackKey]:
        """The stacks of idle loops' threads when the watchdog woke ``STALL_THRESHOLD`` late:
        the loop thread that held the GIL throughout a long call (see ``_held_throughout``)
        gives it up just after that call returns.  On the main thread, with the C
        accelerator, the stack is the one the thread read itself at that very point (it was
        asked for as the watchdog woke, ``armed``): the frame that made the call.  Otherwise
        it is read here before anything gives the GIL up, and is that frame only when the
        OS handed the GIL to the watchdog first."""
        now = time.monotonic()
        late = now - slept_at - HEARTBEAT_INTERVAL
        if late <= STALL_THRESHOLD:
            return {}
        ended = None
        if armed is not None and armed[1]:
            read = task_origins._fast.ended_stack()
            # Read after the request, and just before the GIL came here: where the long call
            # returned.  A read long before that was made as the call began (the request came
            # as the loop woke from its poll into it), and the watchdog then waited out the
            # whole call for the GIL: the frames as they are now say where it ended.
            if read is not None and _read_as_call_ended(read[0], armed[0], now, late):
                ended = tuple((code.co_filename, line or 0, getattr(code, "co_qualname", code.co_name))
                              for code, line in read[1][:MAX_STALL_FRAMES])
        main = threading.main_thread().ident
        frames = sys._current_frames()
        out = {}
        for beat in list(self._beats.values()):
            if beat.idle_figures is not None and beat.thread_id is not None:
                key = ended if ended is not None and beat.thread_id == main else _stack_key(frames.get(beat.thread_id))
                if key and not _is_own_wait(key, beat.base_stack):
                    out[beat.thread_id] = key
        del frames
        return out

    def _held_throughout(self, slept_at: float, own_at: tuple[float, float] | None,
                         stacks: dict[int, _StackKey] | None = None) -> None:
        """A stall no beat was in flight for.  An idle loop gets no beat (it would hide a lost
        wake-up), so a loop that wakes from its poll into one long call holding the GIL (a
        big ``json.dumps``, a regex) is never late with one, and the watchdog, which needs
        the GIL too, cannot sample it.  What is left is the watchdog's own lateness: waking
        ``STALL_THRESHOLD`` late, not kept off a CPU (its own run-queue time), while the
        idle loop's thread ran for the time it was late, the loop held the GIL: a blocked
        stall, with no stack sampled in it; ``stacks`` (by thread) are where each loop
        thread was as the watchdog woke, kept with 0 samples: the stack as the stall ended."""
        woke = time.monotonic()
        late = woke - slept_at - HEARTBEAT_INTERVAL
        if late <= STALL_THRESHOLD:
            return
        own = thread_schedstat(self.native_id)
        if own_at is not None and own is not None and own[1] - own_at[1] >= MOSTLY * late:
            return  # the watchdog waited for a CPU: a loaded machine, nothing to tell
        for beat in list(self._beats.values()):
            start, beat.idle_figures = beat.idle_figures, None
            if start is None or beat.native_id is None:
                continue
            if self._own_overlap(slept_at, woke) >= 0.5 * late:
                continue  # the agent's own dump or proof held the GIL
            end = self._figures(beat.native_id)
            # judged over the whole span the figures cover (the expected sleep included)
            cause, reason, figures = self._judge(beat, woke - slept_at, start, end, None, slept_at)
            if cause != "blocked":
                continue  # another thread held the GIL, or nothing ran: not this loop's stall
            ended = (stacks or {}).get(beat.thread_id) if beat.thread_id is not None else None
            record = _StallRecord(time.time() - (woke - slept_at), woke, late, cause, reason, figures, 0,
                                  ((self._intern(ended), 0),) if ended else ())
            with self._lock:
                beat.history.append(record)
                beat.stalls_total += 1
                beat.stall_seconds_total += late

    def _figures(self, native_id: int | None) -> _Figures:
        thread = thread_schedstat(native_id)
        return (None if thread is None else thread[0], None if thread is None else thread[1],
                time.process_time(), _throttled_seconds(self._throttle))

    def _send_beats(self) -> None:
        for loop in self.loops():
            beat = self._beats.get(loop)
            if beat is None or beat.closing:
                continue
            if beat.ended is not None:
                self._close_stall(beat)
            if beat.sent_at is not None:
                # Sampled from the first late turn on: a stall just over the threshold still
                # gets a stack from a watchdog that is itself a little late.
                if time.monotonic() - beat.sent_at >= HEARTBEAT_INTERVAL:
                    try:
                        running = loop.is_running()
                    except Exception:
                        running = False
                    if running:
                        self._sample_stall(beat)
                    else:  # stopped with a beat in flight: not a stall, and nothing to sample
                        beat.sent_at, beat.open = None, None
                continue
            try:
                if loop.is_closed() or not loop.is_running():
                    continue
                if beat.thread_id is None:  # a loop found through its tasks: its thread, by its id
                    ident = getattr(loop, "_thread_id", None)
                    self._bind_thread(loop, next((t for t in threading.enumerate() if t.ident == ident), None))
                if self._install_factories:
                    task_origins.install_factory(loop)  # re-chain if the program replaced ours
                if self._idle_in_select(loop, beat):
                    beat.first_sent = True  # it turns: nothing from before the watch to date
                    continue
                beat.sent_figures = self._figures(beat.native_id) if beat.native_id is not None else None
                beat.before_watch = 0.0 if beat.first_sent else _overdue(loop)
                sent = time.monotonic()
                if beat.from_start and not beat.first_sent and sent - beat.watched_since <= START_BEAT_WITHIN:
                    beat.start_beat = sent
                beat.first_sent = True
                beat.sent_at = sent
                loop.call_soon_threadsafe(self._on_beat, beat)
            except Exception:
                beat.sent_at = None

    def wait_first_look(self, timeout: float) -> None:
        """Wait (on the calling thread, never the loop's) until the watchdog has looked at every
        running loop once: a query right after an attach then sees a loop that was already hung."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._thread is not None:
            if all(beat.first_sent or not _running(loop) for loop, beat in list(self._beats.items())):
                return
            time.sleep(0.01)

    def _idle_in_select(self, loop: Any, beat: _Beat) -> bool:
        """True when the loop sleeps in its poll: it is idle, and no beat is sent, for a beat
        would wake it and hide a wake-up the program lost.  On asyncio's loops, notes an
        episode of callbacks left ready while the thread sleeps (see ``UNWOKEN_MIN``); on
        uvloop's, whose ready queue cannot be read, the wait sampler looks for tasks whose
        awaited future is done while the loop sleeps (``_note_done_waits``)."""
        idle = self._idle(loop, beat)
        if idle is None:
            beat.idle_since = None
            self._woke(beat)
            return False
        if beat.idle_since is None:
            beat.idle_since = time.monotonic()
        if idle:
            self._note_unwoken(beat, idle)
        else:  # nothing ready (on uvloop: nothing to see from here)
            if beat.asleep is not None and beat.asleep.source == "ready":
                self._woke(beat)
            beat.lag = 0.0  # idle: a callback now would run at once
        return True

    def _idle(self, loop: Any, beat: _Beat) -> Any:
        """None when the loop thread is not asleep in the loop's own poll (or that cannot be
        told); else its ready queue when callbacks wait in it (asyncio's loops), or an empty
        tuple."""
        if beat.thread_id is None:
            return None
        attrs = instance_dict(loop)
        ready = attrs.get("_ready") if attrs is not None else None
        asyncio_loop = type(ready) is collections.deque
        if not asyncio_loop and beat.base_stack is None:
            return None
        # The frames of every thread are made into frame objects here: they are read and let
        # go before anything gives up the GIL, so no thread returns from a function whose
        # frame object this still holds (the frame would then keep its locals: an agent
        # answer, say, until the next collection).
        frames = sys._current_frames()
        top = frames.get(beat.thread_id)
        # A thread inside call_soon_threadsafe, between queueing its callback and writing
        # to the loop's wake-up pipe (kept from the CPU on a loaded machine): a wake-up on
        # its way, not a lost one.
        waking = bool(ready) and asyncio_loop and any(
            _inside(f, _THREADSAFE_CODE) for tid, f in frames.items() if tid != beat.thread_id)
        del frames
        if top is None or waking:
            return None
        if asyncio_loop:
            back = top.f_back
            in_poll = top.f_code in _SELECT_CODES and back is not None and back.f_code is _RUN_ONCE_CODE
            del back
        else:
            # uvloop: compiled, so an idle loop shows the bare stack beneath its callbacks, and
            # its thread sits in epoll (a C call that blocks under that stack would not)
            in_poll = _stack_key(top) == beat.base_stack
        del top
        if not in_poll or (not asyncio_loop and not in_epoll_wait(beat.native_id)):
            return None
        if not asyncio_loop:
            ready = ()
        if thread_state(beat.native_id) != "S":
            # the kernel has woken the thread (it runs, or waits for a CPU: a stall may be
            # starting), or its state cannot be read: beaten as usual
            return None
        return ready if ready else ()

    def _note_unwoken(self, beat: _Beat, ready: "collections.deque[Any]") -> None:
        now = time.monotonic()
        try:
            handles = list(itertools.islice(ready, 64))
        except RuntimeError:  # changed while read: the loop is awake after all
            return
        ids = frozenset(id(h) for h in handles)
        episode = beat.asleep
        if episode is None or not ids & episode.handles:
            self._woke(beat)
            callbacks, tasks = _describe_ready(handles[:UNWOKEN_CALLBACKS])
            if len(handles) > UNWOKEN_CALLBACKS:
                callbacks += (f"and {len(ready) - UNWOKEN_CALLBACKS} more",)
            beat.asleep = _Unwoken(now, time.time(), now, callbacks, tasks, ids)
            return
        episode.last = now
        if not episode.recorded and now - episode.first >= UNWOKEN_MIN:
            episode.recorded = True
            with self._lock:
                beat.unwoken.append(episode)
                beat.unwoken_total += 1

    def _note_done_waits(self, beat: _Beat, tasks: list[Any], now: float) -> None:
        """Tasks of an idle loop whose awaited future is done: their wake-up was queued
        without waking the loop (uvloop, whose ready queue cannot be read)."""
        ids = frozenset(id(t) for t in tasks)
        episode = beat.asleep
        if episode is None or episode.source != "tasks" or not ids & episode.handles:
            self._woke(beat)
            woken = [_wakes(t) for t in tasks[:UNWOKEN_CALLBACKS]]
            callbacks = tuple(text for _, text in woken)
            if len(tasks) > UNWOKEN_CALLBACKS:
                callbacks += (f"and {len(tasks) - UNWOKEN_CALLBACKS} more",)
            beat.asleep = _Unwoken(now, time.time(), now, callbacks, tuple(seq for seq, _ in woken), ids, "tasks")
            return
        episode.last = now
        if not episode.recorded and now - episode.first >= UNWOKEN_MIN:
            episode.recorded = True
            with self._lock:
                beat.unwoken.append(episode)
                beat.unwoken_total += 1

    @staticmethod
    def _woke(beat: _Beat) -> None:
        episode, beat.asleep = beat.asleep, None
        if episode is not None:
            episode.ongoing = False

    def unwoken(self, loop: asyncio.AbstractEventLoop) -> tuple[tuple[Unwoken, ...], int]:
        """The loop's episodes of sleeping with callbacks ready, of the last ``STALL_WINDOW``
        seconds (oldest first), and how many there were since the agent started."""
        beat = self._beats.get(loop)
        if beat is None:
            return (), 0
        now = time.monotonic()
        with self._lock:
            episodes = [e for e in beat.unwoken if now - e.last <= STALL_WINDOW]
            total = beat.unwoken_total
        current = beat.asleep
        return tuple(Unwoken(e.wall, max(0.0, (now if e is current else e.last) - e.first), e is current,
                             e.callbacks, e.tasks) for e in episodes), total

    @staticmethod
    def _on_beat(beat: _Beat) -> None:
        now = time.monotonic()
        sent, start = beat.sent_at, beat.sent_figures
        late = sent is not None and now - sent > STALL_THRESHOLD
        beat.closing = late  # no new beat until this stall is filed
        beat.sent_at = None  # over: the watchdog samples no more (the read below gives up the GIL)
        beat.last_turn = now
        if sent is not None:
            lag = beat.lag = now - sent
            if lag >= LAG_PEAK_FLOOR:
                peaks = beat.lag_peaks
                if peaks and int(peaks[-1][0]) == int(now):
                    if lag > peaks[-1][1]:
                        peaks[-1] = (now, lag)
                else:
                    peaks.append((now, lag))
        if late:
            try:
                # The stall's end, read on the loop thread itself before the watchdog's next turn.
                own = thread_schedstat(beat.native_id)
                end: _Figures = (None if own is None else own[0], None if own is None else own[1],
                                 time.process_time(), None)
                beat.ended = (sent or now, now, start, end)
            finally:
                beat.closing = False
        if not beat.base_known:
            beat.base_known = True
            if beat.thread_id is None:
                thread = threading.current_thread()
                beat.thread_id = thread.ident
                beat.thread_name = thread.name
                beat.native_id = threading.get_native_id()
            caller = sys._getframe(1)
            if not caller.f_code.co_filename.endswith("events.py"):  # called from compiled code (uvloop)
                beat.base_stack = _stack_key(caller)

    # -- stall history --------------------------------------------------------------------
    @contextlib.contextmanager
    def own_work(self) -> Iterator[None]:
        """Marks a collection of the agent's own (a dump, the proof): a stall it caused, by
        holding the GIL or by running on the loop's thread, is told apart from one the
        program caused."""
        ident = threading.get_ident()
        with self._lock:
            depth, since = self._own_running.get(ident, (0, time.monotonic()))
            self._own_running[ident] = (depth + 1, since)
        try:
            yield
        finally:
            with self._lock:
                depth, since = self._own_running.pop(ident)
                if depth > 1:
                    self._own_running[ident] = (depth - 1, since)
                else:
                    self._own_spans.append((since, time.monotonic(), ident))

    def _own_overlap(self, start: float, end: float, thread: int | None = None) -> float:
        """Seconds of [start, end] during which the agent was collecting (on ``thread`` only,
        when given)."""
        with self._lock:
            spans = [(a, b) for a, b, ident in self._own_spans if thread is None or ident == thread]
            spans += [(since, end) for ident, (_, since) in self._own_running.items() if thread is None or ident == thread]
        # merged, so that two threads collecting at once count once
        total, reach = 0.0, start
        for a, b in sorted(spans):
            a, b = max(a, reach), min(b, end)
            if b > a:
                total += b - a
                reach = b
        return total

    def _intern(self, key: _StackKey) -> _StackKey:
        """One tuple per distinct stack, so a site that stalls again and again costs once."""
        got = self._interned.get(key)
        if got is None:
            if len(self._interned) >= 4 * MAX_STALL_STACKS * 16:
                self._interned.clear()
            got = self._interned[key] = key
        return got

    def _sample_stall(self, beat: _Beat) -> None:
        """One sample of a stalled loop's thread: its stack, counted by distinct stack."""
        sent = beat.sent_at
        if sent is None or beat.thread_id is None:
            return
        stall = beat.open
        if stall is None or stall.sent_at != sent:
            stall = _OpenStall(sent)
        key = _stack_key(sys._current_frames().get(beat.thread_id))
        stall.samples += 1
        if _is_own_wait(key, beat.base_stack):
            stall.own_wait += 1
        elif in_futex_wait(beat.native_id):
            stall.lock_wait += 1
        if key in stall.stacks or len(stall.stacks) < 4 * MAX_STALL_STACKS:
            key = self._intern(key)
            stall.stacks[key] = stall.stacks.get(key, 0) + 1
        beat.open = stall

    def _judge(self, beat: _Beat, seconds: float, start: _Figures | None, end: _Figures | None,
               stall: _OpenStall | None, stall_at: float | None = None
               ) -> tuple[str, str, tuple[float | None, float | None, float | None, float | None]]:
        def delta(i: int) -> float | None:
            a = None if start is None else start[i]
            b = None if end is None else end[i]
            return None if a is None or b is None else max(0.0, b - a)

        # Linux adds a wait on the run queue when the thread gets the CPU, so one that began
        # before the beat was sent may be counted whole: no figure exceeds the stall.
        cpu, runq, throttled, proc = (None if v is None else min(v, seconds) for v in (delta(0), delta(1), delta(3), delta(2)))
        others = None if proc is None or cpu is None else max(0.0, proc - cpu)
        samples = stall.samples if stall is not None else 0
        own = stall.own_wait if stall is not None else 0
        cause, reason = classify(seconds, cpu=cpu, runqueue=runq, throttled=throttled, others_cpu=others,
                                 samples=samples, own_wait_samples=own,
                                 lock_wait_samples=stall.lock_wait if stall is not None else 0)
        if stall_at is not None and (
                ((cause, reason) in (("starved", "gil"), ("unknown", ""))
                 and self._own_overlap(stall_at, stall_at + seconds) >= 0.5 * seconds)
                or (cause == "blocked" and beat.thread_id is not None
                    and self._own_overlap(stall_at, stall_at + seconds, beat.thread_id) >= 0.5 * seconds)):
            # The GIL was the agent's (its own dump or proof), or the loop thread itself ran
            # the agent's collection for an endpoint the program serves.
            cause, reason = "starved", "diag"
        return cause, reason, (cpu, runq, throttled, others)

    def _close_stall(self, beat: _Beat) -> None:
        """File the stall the loop thread just ended (from the watchdog, or a dump that came first)."""
        with self._lock:
            ended, beat.ended = beat.ended, None
            if ended is None:
                return
            sent, ran, start, end = ended
            stall = beat.open if beat.open is not None and beat.open.sent_at == sent else None
            beat.open = None
        if end is not None and self._throttle is not None:
            end = (end[0], end[1], end[2], _throttled_seconds(self._throttle))
        seconds = ran - sent
        cause, reason, figures = self._judge(beat, seconds, start, end, stall, sent)
        stacks = () if stall is None else tuple(sorted(stall.stacks.items(), key=lambda kv: -kv[1])[:MAX_STALL_STACKS])
        before, beat.before_watch = beat.before_watch, 0.0
        record = _StallRecord(time.time() - (time.monotonic() - sent) - before, ran, seconds + before, cause, reason,
                              figures, 0 if stall is None else stall.samples, stacks, before,
                              at_start=sent == beat.start_beat)
        with self._lock:
            beat.history.append(record)
            beat.stalls_total += 1
            beat.stall_seconds_total += seconds
            if cause == "starved":
                beat.starved_total += 1
                beat.starved_seconds_total += seconds

    def stall_history(self, loop: asyncio.AbstractEventLoop) -> StallHistory:
        """The loop's stalls of the last ``STALL_WINDOW`` seconds, the current one last, as
        snapshot data; safe from any thread."""
        beat = self._beats.get(loop)
        if beat is None:
            return StallHistory()
        if beat.ended is not None:  # ended a moment ago: the watchdog has not filed it yet
            self._close_stall(beat)
        now = time.monotonic()
        wall = time.time()
        with self._lock:
            while beat.history and beat.history[0].ended_mono < now - STALL_WINDOW:
                beat.history.popleft()
            records = list(beat.history)
            totals = (beat.stalls_total, beat.stall_seconds_total, beat.starved_total, beat.starved_seconds_total)
        sent, stall = beat.sent_at, beat.open
        if sent is not None and beat.ended is None and (now - sent > STALL_THRESHOLD or _hung_before(loop, beat)):
            if stall is None or stall.sent_at != sent:
                stall = None
            seconds = now - sent
            cause, reason, figures = self._judge(beat, seconds, beat.sent_figures, self._figures(beat.native_id), stall,
                                                 sent)
            top = () if stall is None else tuple(sorted(dict(stall.stacks).items(), key=lambda kv: -kv[1])[:MAX_STALL_STACKS])
            before = beat.before_watch
            records.append(_StallRecord(wall - seconds - before, now, seconds + before, cause, reason, figures,
                                        0 if stall is None else stall.samples, top, before,
                                        at_start=sent == beat.start_beat))
            ongoing = True
        else:
            ongoing = False
        table: dict[_StackKey, int] = {}
        stalls = []
        for n, rec in enumerate(records):
            refs = tuple((table.setdefault(key, len(table)), count) for key, count in rec.stacks)
            cpu, runq, throttled, others = rec.figures
            stalls.append(Stall(rec.started_at, rec.seconds, rec.cause, rec.reason,
                                ongoing and n == len(records) - 1, cpu, runq, throttled, others, rec.samples, refs,
                                rec.before_watch, rec.at_start))
        stacks = tuple(StallStack(tuple(Frame(file, line, function, linecache.getline(file, line).strip()[:200])
                                        for file, line, function in key), _is_own_wait(key, beat.base_stack))
                       for key in table)
        return StallHistory(min(STALL_WINDOW, now - beat.watched_since), tuple(stalls), stacks, *totals)

    def loop_health(self, loop: asyncio.AbstractEventLoop) -> tuple[int | None, str, float | None, float]:
        """(thread id, thread name, last heartbeat lag, seconds stalled) of a watched loop."""
        beat = self._beats.get(loop)
        if beat is None:
            return None, "", None, 0.0
        thread_id = beat.thread_id if beat.thread_id is not None else getattr(loop, "_thread_id", None)
        stalled = 0.0
        sent = beat.sent_at
        if sent is not None:
            waiting = time.monotonic() - sent
            if waiting > STALL_THRESHOLD or _hung_before(loop, beat):
                stalled = waiting + beat.before_watch
        return thread_id, beat.thread_name, beat.lag, stalled

    def lag_peaks(self, loop: asyncio.AbstractEventLoop) -> tuple[tuple[float, float], ...]:
        """(Unix time, seconds) of the worst heartbeat lag of each second of the last
        ``LAG_PEAK_SECONDS`` that had one of at least ``LAG_PEAK_FLOOR``, oldest first."""
        beat = self._beats.get(loop)
        if beat is None:
            return ()
        peaks = tuple(beat.lag_peaks)  # one C-level copy: the loop thread may append meanwhile
        now, wall = time.monotonic(), time.time()
        return tuple((wall - (now - at), lag) for at, lag in peaks if now - at <= LAG_PEAK_SECONDS)

    # -- wait sampler -----------------------------------------------------------------------
    def sample_waits(self) -> float:
        """Note, for every waiting task, the future it waits on; returns the seconds spent."""
        start = time.monotonic()
        prev = self._waits
        new: dict[int, tuple[int, float, Any, Any]] = {}
        chain_reads = WAIT_FOR_READS
        prev_cancels = self._cancels
        cancels: dict[int, float] = {}
        prev_stacks = self._stacks
        stacks: dict[int, tuple[int, tuple[tuple[types.CodeType, int], ...]]] = {}
        budget = STACKS_PER_SAMPLE
        seen_loops: set[int] = set()
        done_waits: dict[int, tuple[_Beat, list[Any]]] = {}
        for task in iter_all_tasks():
            if future_done(task):  # kept alive by the program: it may have died of an exception
                self.dead.note_done(task)
                continue
            loop = future_field(task, "_loop")  # read, not asked: a Task subclass may override get_loop
            if id(loop) not in seen_loops:
                # A loop that started without the hook seeing it (uvloop imported before the
                # agent started) is found through its tasks.
                seen_loops.add(id(loop))
                if loop not in self._beats and loop.is_running():
                    self.add_loop(loop)
            key = id(task)
            if task_cancelling(task):
                cancels[key] = prev_cancels.get(key, start)
            waiter = future_field(task, "_fut_waiter")
            if waiter is None:
                continue
            if future_done(waiter) and not _has_ready_queue(loop):
                # woken, not yet run, on uvloop: late, or never to run (a lost wake-up)
                beat = self._beats.get(loop)
                if beat is not None and beat.idle_since is not None and beat.idle_since < start:
                    done_waits.setdefault(id(beat), (beat, []))[1].append(task)
            old = prev.get(key)
            # The same wait only if it is the same future: a new one freed and made at the same
            # address (asyncio reuses them constantly) starts a new wait.
            if old is not None and old[0] == id(waiter) and old[2]() is waiter:
                if old[3] is None and chain_reads > 0:  # seen on it twice: is it inside a wait_for?
                    chain_reads -= 1
                    old = (old[0], old[1], old[2], _weak_or_none(_wait_for_of(task)))
                new[key] = old
                kept = prev_stacks.get(key)
                if kept is not None and kept[0] == id(waiter):
                    stacks[key] = kept
                elif budget > 0:
                    budget -= 1
                    stacks[key] = (id(waiter), _suspended_at(task_coroutine(future_field(task, "_coro"))))
            else:
                try:
                    ref: Any = weakref.ref(waiter)
                except TypeError:
                    ref = _no_ref
                began, anchor = start, None
                if chain_reads > 0:
                    chain_reads -= 1
                    cond_wait = _wait_for_of(task)
                    if cond_wait is not None and old is not None and old[3] is not None and old[3]() is cond_wait:
                        began = old[1]  # woken inside the same wait_for, its predicate still false
                    anchor = _weak_or_none(cond_wait)
                new[key] = (id(waiter), began, ref, anchor)
        self._waits = new
        self._cancels = cancels
        self._stacks = stacks
        # Tasks on a done future of a loop asleep since before this sample: on uvloop the only
        # sign of a lost wake-up (asyncio's loops show their ready queue to the watchdog).
        with self._lock:
            beats = list(self._beats.values())
        for beat in beats:
            found = done_waits.get(id(beat))
            if found is not None:
                self._note_done_waits(beat, found[1], start)
            elif beat.asleep is not None and beat.asleep.source == "tasks":
                self._woke(beat)
        del done_waits
        if self.sampled_since is None:
            self.sampled_since = start
        return time.monotonic() - start

    def _last_stack(self, task: object) -> tuple[tuple[types.CodeType, int], ...]:
        """Where the sampler last saw ``task`` wait, if it saw the same wait twice."""
        rec = self._stacks.get(id(task))
        return rec[1] if rec is not None else ()

    def first_seen(self, task: asyncio.Task[Any], waiter: object) -> float | None:
        """When the sampler first saw ``task`` waiting on ``waiter`` (monotonic), if it did, or
        began the ``Condition.wait_for`` that ``task`` still waits in on a newer future."""
        rec = self._waits.get(id(task))
        if rec is None:
            return None
        if rec[0] == id(waiter) and rec[2]() is waiter:
            return rec[1]
        # Woken inside the same Condition.wait_for since that sample, its predicate still
        # false: a new future, the same wait (as the sampler counts it).
        anchor = rec[3]() if rec[3] is not None else None
        if anchor is not None and anchor is _wait_for_of(task):
            return rec[1]
        return None

    def cancel_seen(self, task: asyncio.Task[Any]) -> float | None:
        """When the sampler first saw a cancellation pending on ``task`` (monotonic), if it did."""
        return self._cancels.get(id(task))

    def describe_clock(self) -> str:
        return (f"lower bound: the agent samples each task's awaited future every "
                f"{self.sample_interval:.1f}s; a wait is counted from the first sample that saw it")
