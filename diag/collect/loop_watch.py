"""Which event loops the process runs, whether they turn, and how long tasks have waited.

``LoopWatch`` learns about loops from a hook on asyncio's ``_set_running_loop`` (every
loop that starts running, in any thread) and from tasks seen in dumps.  A watchdog
thread sends each running loop a heartbeat with ``call_soon_threadsafe``: a beat that
has not run after a while means the loop is stalled, and the loop thread's current
stack (from ``sys._current_frames``) says on what.  The same thread samples every
task's awaited future about once a second, so a dump can say how long a task has
waited on the same object: a lower bound, exact to the sampling interval.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from diag.collect import task_origins
from diag.collect.dead_tasks import DeadTaskLog
from diag.collect.safe_read import future_done, future_field, task_cancelling

HEARTBEAT_INTERVAL = 0.1
#: A loop whose heartbeat is older than this is reported as stalled.
STALL_THRESHOLD = 0.25
#: The wait sampler may use at most this share of one core; with many tasks it samples less often.
SAMPLER_CPU_SHARE = 0.01
SAMPLER_MIN_INTERVAL = 1.0


@dataclass
class _Beat:
    """Heartbeat state of one loop (mutated by the watchdog and the loop thread)."""

    thread_id: int | None = None
    thread_name: str = ""
    sent_at: float | None = None  # monotonic time of the beat in flight, None when none is
    last_turn: float = field(default_factory=time.monotonic)
    lag: float | None = None


def _no_ref() -> None:
    """Stands for a weak reference to a future that cannot have one: never the same future."""
    return None


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
        # id(task) -> (id(awaited future), monotonic time first seen waiting on it, weak ref to it)
        self._waits: dict[int, tuple[int, float, Any]] = {}
        self.sampled_since: float | None = None
        self.sample_interval = SAMPLER_MIN_INTERVAL
        self.thread_ident: int | None = None
        #: id(primitive) -> (weakref to it, label from its holders); saves a heap scan per dump
        self.holder_labels: dict[int, tuple[Any, str]] = {}
        #: Tasks that ended badly (fed by the sampler and the loops' exception handlers).
        self.dead = DeadTaskLog()
        # id(task) -> monotonic time the sampler first saw a cancellation pending on it
        self._cancels: dict[int, float] = {}

    # -- loops -----------------------------------------------------------------------
    def add_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching ``loop``; safe from any thread, never raises."""
        try:
            with self._lock:
                if loop in self._beats:
                    return
                self._beats[loop] = _Beat()
            self.dead.hook_loop(loop)
            if self._install_factories:
                task_origins.install_factory(loop)
        except Exception:
            pass

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
                watch.add_loop(loop)

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
        next_sample = time.monotonic()
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            try:
                self._send_beats()
                now = time.monotonic()
                if now >= next_sample:
                    cost = self.sample_waits()
                    self.sample_interval = max(SAMPLER_MIN_INTERVAL, cost / SAMPLER_CPU_SHARE)
                    next_sample = time.monotonic() + self.sample_interval
            except Exception:  # the watchdog must outlive anything odd in the target
                pass

    def _send_beats(self) -> None:
        for loop in self.loops():
            beat = self._beats.get(loop)
            if beat is None or beat.sent_at is not None:
                continue
            try:
                if loop.is_closed() or not loop.is_running():
                    continue
                if self._install_factories:
                    task_origins.install_factory(loop)  # re-chain if the program replaced ours
                beat.sent_at = time.monotonic()
                loop.call_soon_threadsafe(self._on_beat, beat)
            except Exception:
                beat.sent_at = None

    @staticmethod
    def _on_beat(beat: _Beat) -> None:
        now = time.monotonic()
        if beat.sent_at is not None:
            beat.lag = now - beat.sent_at
        beat.sent_at = None
        beat.last_turn = now
        if beat.thread_id is None:
            thread = threading.current_thread()
            beat.thread_id = thread.ident
            beat.thread_name = thread.name

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
            if waiting > STALL_THRESHOLD:
                stalled = waiting
        return thread_id, beat.thread_name, beat.lag, stalled

    # -- wait sampler -----------------------------------------------------------------------
    def sample_waits(self) -> float:
        """Note, for every waiting task, the future it waits on; returns the seconds spent."""
        start = time.monotonic()
        prev = self._waits
        new: dict[int, tuple[int, float, Any]] = {}
        prev_cancels = self._cancels
        cancels: dict[int, float] = {}
        seen_loops: set[int] = set()
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
            old = prev.get(key)
            # The same wait only if it is the same future: a new one freed and made at the same
            # address (asyncio reuses them constantly) starts a new wait.
            if old is not None and old[0] == id(waiter) and old[2]() is waiter:
                new[key] = old
            else:
                try:
                    ref: Any = weakref.ref(waiter)
                except TypeError:
                    ref = _no_ref
                new[key] = (id(waiter), start, ref)
        self._waits = new
        self._cancels = cancels
        if self.sampled_since is None:
            self.sampled_since = start
        return time.monotonic() - start

    def first_seen(self, task: asyncio.Task[Any], waiter: object) -> float | None:
        """When the sampler first saw ``task`` waiting on ``waiter`` (monotonic), if it did."""
        rec = self._waits.get(id(task))
        if rec is None or rec[0] != id(waiter) or rec[2]() is not waiter:
            return None
        return rec[1]

    def cancel_seen(self, task: asyncio.Task[Any]) -> float | None:
        """When the sampler first saw a cancellation pending on ``task`` (monotonic), if it did."""
        return self._cancels.get(id(task))

    def describe_clock(self) -> str:
        return (f"lower bound: the agent samples each task's awaited future every "
                f"{self.sample_interval:.1f}s; a wait is counted from the first sample that saw it")
