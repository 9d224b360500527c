"""Collect what a block of code left behind: pending tasks, held permits, threads, objects.

The leak checks of ``diag.testing`` and the pytest plugin take a baseline before the
code runs and look again after.  The look is cheap when nothing is left (a pass over
asyncio's task registry, compared with a weak set); only leftovers are described in
full, with the task collector and the reachability proof.  Loops that are neither
running nor closed are given turns here, and leftovers are cancelled here: this is the
only leak-check code that touches asyncio's internals.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import types
import weakref
from typing import Any, Callable, Iterable

from diag.analysis.leftovers import LeftoverReport, PermitLeak, ThreadLeak, TypeGrowth
from diag.collect import holders, reachability, task_origins
from diag.collect.loop_watch import iter_all_tasks
from diag.collect.task_collector import (
    CollectOptions, _FrameCache, _Walker, collect_tasks, describe_primitive, holder_labels, thread_stack,
)
from diag.model.sync_snapshot import Reachability
from diag.model.task_snapshot import TaskInfo

Task = asyncio.Task[Any]
#: The proof is only run on leftovers, in a test process: keep it short.
PROOF_BUDGET = 2.0


def pending_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[Task]:
    """Every task not done, of every loop (or of ``loop``)."""
    tasks = [t for t in iter_all_tasks() if not t.done()]
    if loop is not None:
        tasks = [t for t in tasks if t.get_loop() is loop]
    return tasks


def task_set(tasks: Iterable[Task] | None = None) -> "weakref.WeakSet[Task]":
    """A set of tasks that keeps none alive (tasks hash by identity)."""
    return weakref.WeakSet(pending_tasks() if tasks is None else tasks)


def new_tasks(baseline: "weakref.WeakSet[Task]", *, loop: asyncio.AbstractEventLoop | None = None,
              exclude: Iterable[Task] = ()) -> list[Task]:
    """Pending tasks not in ``baseline`` (the fast path: no frames are read)."""
    skip = {id(t) for t in exclude}
    return [t for t in pending_tasks(loop) if t not in baseline and id(t) not in skip]


class CoroutineCodes:
    """The code objects of coroutine functions named ``module:qualname``, to know a task by
    what it runs.  A module is looked up in ``sys.modules`` only (never imported): until it
    is imported, no task can run its code."""

    def __init__(self, specs: Iterable[str]) -> None:
        # by identity: code objects compare equal by content, so an identical function
        # in another module would match by ``==``
        self.codes: dict[int, types.CodeType] = {}
        self._unresolved = list(dict.fromkeys(specs))

    def _resolve(self) -> None:
        for spec in list(self._unresolved):
            module_name, _, qualname = spec.partition(":")
            module = sys.modules.get(module_name)
            if module is None:
                continue
            self._unresolved.remove(spec)
            code = _code_of(module, qualname)
            if code is not None:
                self.codes[id(code)] = code

    def matches(self, task: Task) -> bool:
        """Whether ``task``'s own coroutine runs one of these functions (cheap: a set lookup)."""
        if self._unresolved:
            self._resolve()
        if not self.codes:
            return False
        try:
            code = getattr(task.get_coro(), "cr_code", None)
        except Exception:
            return False
        return code is not None and self.codes.get(id(code)) is code


def _code_of(module: types.ModuleType, qualname: str) -> types.CodeType | None:
    """The code object of ``module.qualname``, read from namespaces (no descriptor or
    ``__getattr__`` of the library runs)."""
    obj: Any = module
    try:
        for part in qualname.split("."):
            obj = vars(obj)[part]
        obj = getattr(obj, "__func__", obj)  # staticmethod, classmethod
        code = getattr(obj, "__code__", None)
    except Exception:  # renamed in another version of the library: nothing to match
        return None
    return code if isinstance(code, types.CodeType) else None


class TaskPins:
    """Strong references to the pending tasks a check may blame, taken as each garbage
    collection starts.  A forgotten task that nothing refers to (one waiting on an Event
    only it knows) is garbage, and whichever collection comes first would free it before
    the check can see it: asyncio would only log "Task was destroyed but it is pending!".
    Pinned, it is still pending when the check looks.  A pinned task is let go when it
    finishes (a done callback), so finished tasks are freed as without the check.

    A collection looks at the registry only when its size changed since the last look,
    and then only at tasks registered since (a set difference, in C): most collections
    cost one ``len``, whatever the number of tasks.

    Usage::

        pins = TaskPins(baseline).open()
        ...                                # the test runs; collections pin its pending tasks
        pins.close()                       # after the check
    """

    def __init__(self, baseline: "weakref.WeakSet[Task]") -> None:
        self.baseline = baseline
        self.pinned: set[Task] = set()
        self._open = False
        self._registry: set[Any] | None = None  # asyncio's registry: weak references to tasks
        self._known: set[Any] = set()
        self._size = 0  # the registry's size at the last look

    def open(self) -> TaskPins:
        self._registry = _registry_refs()
        self._known = set(self._registry) if self._registry is not None else set()
        self._size = len(self._known)
        self._open = True
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)
        return self

    def close(self) -> None:
        self._open = False
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        self.pinned = set()
        self._known = set()

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        registry = self._registry
        if phase != "start" or not self._open or registry is None:
            return
        try:  # called from whichever thread allocates: it must never raise
            size = len(registry)
            if size == self._size:
                # Nothing registered or freed since the last look (or exactly as many of
                # each: the new ones are seen at the next collection that changes the
                # count).  Most collections stop here in O(1), however many tasks there are.
                return
            self._size = size
            fresh = registry - self._known  # one C-level step: a loop in another thread cannot break it
            if not fresh:
                return
            self._known |= fresh
            if len(self._known) > 2 * len(registry) + 64:
                self._known &= registry  # forget the freed tasks' references
        except Exception:
            return
        pinned = self.pinned
        for ref in fresh:
            try:  # one task that cannot be pinned (a loop in debug mode, another thread) spoils no other
                task = ref()
                if task is not None and not task.done() and task not in self.baseline:
                    pinned.add(task)
                    task.add_done_callback(pinned.discard)
            except Exception:
                continue


def _registry_refs() -> set[Any] | None:
    """asyncio's registry of scheduled tasks, as its set of weak references (eager tasks,
    3.12+, are held strongly while they run eagerly: nothing to pin)."""
    for name in ("_scheduled_tasks", "_all_tasks"):  # 3.12+, 3.11
        registry = getattr(asyncio.tasks, name, None)
        if registry is not None:
            data = getattr(registry, "data", None)
            return data if isinstance(data, set) else None
    return None


def sift_infos(tasks: Iterable[Task]) -> dict[int, TaskInfo]:
    """Tasks described as the ignores look at them (stack, name, creator), by ``id(task)``.
    Cheaper than a dump: no source lines, and primitives are not named by what holds them
    (that is a scan of the whole heap)."""
    walker = _Walker(None, CollectOptions(source_lines=False), time.monotonic())
    out = {}
    for task in tasks:
        try:
            if not task.done():
                out[id(task)] = walker.task_info(task, False)
        except Exception:  # finishing under our feet: the next look sees it gone
            continue
    return out


def _loop_of(task: Task) -> asyncio.AbstractEventLoop | None:
    try:
        return task.get_loop()
    except Exception:
        return None


def give_turns(tasks: Iterable[Task], delay: float) -> None:
    """Let the loops of ``tasks`` run for ``delay`` seconds.

    A loop that is idle (not running, not closed) is run here; a loop running in another
    thread turns on its own, so this thread just waits.  A loop running in this thread
    cannot be re-entered: the caller (inside that loop) should ``await`` instead.
    """
    ran = False
    for loop in {lp for lp in map(_loop_of, tasks) if lp is not None}:
        try:
            if loop.is_closed() or loop.is_running():
                continue
            loop.run_until_complete(asyncio.sleep(delay))
            ran = True
        except RuntimeError:  # another loop runs in this thread
            continue
    if not ran:
        time.sleep(delay)


def cancel(tasks: Iterable[Task], timeout: float = 1.0) -> None:
    """Cancel leftovers so they do not spill into what runs next; waits for idle loops to
    unwind them (at most ``timeout``), asks running ones from their own thread."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Task]] = {}
    for task in tasks:
        loop = _loop_of(task)
        if loop is not None and not task.done():
            by_loop.setdefault(loop, []).append(task)
    for loop, group in by_loop.items():
        try:
            if loop.is_closed():
                continue
            if loop.is_running():
                for task in group:
                    loop.call_soon_threadsafe(task.cancel)
                continue
            for task in group:
                task.cancel()
            loop.run_until_complete(asyncio.wait(group, timeout=timeout))
        except Exception:
            continue


# -- loops about to close ---------------------------------------------------------------------
_close_callbacks: list[Callable[[asyncio.AbstractEventLoop], None]] = []
_original_cancel_all: Callable[[asyncio.AbstractEventLoop], None] | None = None


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for callback in list(_close_callbacks):
        try:
            callback(loop)
        except Exception:  # a check must never stop the loop from closing
            pass
    original = _original_cancel_all
    if original is None:  # removed while this call was on its way
        original = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]
    original(loop)


def run_interrupted() -> bool:
    """Whether the loop is closing because KeyboardInterrupt or SystemExit escaped its run
    (the exception in flight while ``asyncio.Runner`` closes).  Its tasks were not left
    behind: the run never finished, and ``asyncio.run`` cancels them by design."""
    return isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit))


def on_runner_close(callback: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    """Call ``callback(loop)`` when ``asyncio.run`` (or an ``asyncio.Runner``, as
    pytest-asyncio's loop fixtures use) is about to cancel the loop's remaining tasks:
    the last moment leftovers can be seen before they are cancelled for good."""
    global _original_cancel_all
    if _original_cancel_all is None:
        _original_cancel_all = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]
        asyncio.runners._cancel_all_tasks = _cancel_all_tasks  # type: ignore[attr-defined]
    _close_callbacks.append(callback)


def remove_runner_close(callback: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    global _original_cancel_all
    if callback in _close_callbacks:
        _close_callbacks.remove(callback)
    if not _close_callbacks and _original_cancel_all is not None:
        asyncio.runners._cancel_all_tasks = _original_cancel_all  # type: ignore[attr-defined]
        _original_cancel_all = None


# -- permits -------------------------------------------------------------------------------
class PermitLog:
    """The Locks and Semaphores acquired while it is open (weakly: a primitive that dies
    cannot hold anyone up).  Opening it turns on holder tracking if it was off."""

    def __init__(self) -> None:
        self.acquired: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.since = time.monotonic()
        self._installed_holders = False

    def open(self) -> PermitLog:
        if not holders.installed():
            holders.install()
            self._installed_holders = True
        self.since = time.monotonic()
        holders.add_acquire_log(self.acquired)
        return self

    def close(self) -> None:
        holders.remove_acquire_log(self.acquired)
        if self._installed_holders:
            holders.uninstall()
            self._installed_holders = False

    def held(self) -> list[tuple[Any, holders.HolderRecord]]:
        """Permits taken since ``open`` whose acquiring task has finished (cheap: no labels)."""
        if not len(self.acquired):
            return []
        alive = {task_origins.task_seq(t) for t in pending_tasks()}
        return [(p, rec) for p in list(self.acquired) for rec in holders.records(p)
                if rec.since >= self.since and (rec.task_id is None or rec.task_id not in alive)]

    @staticmethod
    def describe(held: list[tuple[Any, holders.HolderRecord]]) -> tuple[PermitLeak, ...]:
        """``held`` as data, each primitive named by what holds it."""
        frames = _FrameCache(True)
        now = time.monotonic()
        labels = holder_labels([p for p, _ in held]) if held else {}
        out = []
        for primitive, rec in held:
            prim = describe_primitive(primitive, labels.get(id(primitive), ""))
            if prim is None:
                continue
            site = tuple(frames.get(code, task_origins.origin_line(code, offset)) for code, offset in rec.site)
            out.append(PermitLeak(prim, rec.task_id, site, max(0.0, now - rec.since)))
        return tuple(out)


# -- threads and objects ------------------------------------------------------------------------
def threads_now() -> "weakref.WeakSet[threading.Thread]":
    return weakref.WeakSet(threading.enumerate())


def new_threads(before: "weakref.WeakSet[threading.Thread]") -> list[threading.Thread]:
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t not in before and t is not me and t.is_alive()]


def describe_threads(threads: Iterable[threading.Thread]) -> tuple[ThreadLeak, ...]:
    frames = _FrameCache(True)
    out = []
    for th in threads:
        target = getattr(th, "_target", None)
        name = getattr(target, "__qualname__", None) or type(th).__qualname__
        out.append(ThreadLeak(th.name, th.ident, str(name), th.daemon, thread_stack(th.ident, frames, 16)))
    return tuple(out)


def type_counts() -> dict[str, int]:
    """Live objects per type (after a full collection), as objgraph counts them."""
    import objgraph  # type: ignore[import-untyped]

    gc.collect()
    counts: dict[str, int] = objgraph.typestats(shortnames=False)
    return counts


# -- the full description ---------------------------------------------------------------------
def describe(tasks: Iterable[Task], *, permits: tuple[PermitLeak, ...] = (),
             threads: tuple[ThreadLeak, ...] = (), objects: tuple[TypeGrowth, ...] = (),
             waited: float = 0.0, proof: bool = True) -> LeftoverReport:
    """Leftover tasks as ``diag tasks --debug 2`` sees them, plus the proof's verdict."""
    wanted = {task_origins.task_seq(t) for t in tasks}
    snap = collect_tasks(None)
    snap = snap.with_tasks(tuple(t for t in snap.tasks if t.id in wanted))
    result = Reachability(False)
    if proof and any(t.state == "waiting" for t in snap.tasks):
        result = reachability.prove(budget=PROOF_BUDGET)
    return LeftoverReport(tasks=snap, reachability=result, permits=permits, threads=threads,
                          objects=objects, waited=waited)


__all__ = [
    "CoroutineCodes", "PermitLog", "TaskPins", "cancel", "describe", "describe_threads", "give_turns", "new_tasks",
    "new_threads", "on_runner_close", "pending_tasks", "remove_runner_close", "run_interrupted", "sift_infos",
    "task_set", "threads_now", "type_counts",
]
