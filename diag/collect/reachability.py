"""Prove blocked tasks leaked: nothing that could wake them can reach what they await.

Go 1.26's goroutine leak profile, the Python way.  Mark everything reachable from the
true roots (module globals, every thread's frames, each event loop with its ready and
scheduled callbacks and the I/O callbacks registered with its selector, and running
and runnable tasks).  A blocked task's own coroutine is not a root: holding a task
object lets you cancel it, not wake it.  It becomes a root only once the future it
waits on is marked, because only then can something resolve that future.  Repeat to
a fixed point; a blocked task whose future is never marked can never be woken.
A finished frame (kept by an exception's traceback: a task that died, a gathered child
that failed) is not followed either: it runs no code again, so a queue only its locals
hold can be reached by nothing that would put into it.

Marking follows what ``gc.get_referents`` lists, in C when diag's accelerator is built
(``diag._origins.mark``: no bytecode runs, so no other thread gets the GIL in the
middle), else in Python a batch at a time.  A proof cut short by its time budget proves
nothing and says so.  Objects held only by C code outside the GC's view
are not seen; asyncio's own structures (futures, handles, selector maps, queues) are
all visible to it.

The same pass tells which blocked tasks nothing reachable refers to at all, besides
the future that would wake them: fire-and-forget tasks.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import threading
import time
import weakref
from dataclasses import replace
from types import FrameType, ModuleType
from typing import Any, NamedTuple

from diag.collect import gc_pause, task_origins, wait_evidence
from diag.collect.loop_watch import _SELECT_CODES, iter_all_tasks, thread_schedstat
from diag.agent_protocol import DEFAULT_PROOF_BUDGET
from diag.collect.safe_read import future_done, future_field, instance_dict, read_attr
from diag.model.sync_snapshot import Reachability

_class_module = type.__dict__["__module__"].__get__
#: The proof stops (and says so) once it has used this much CPU time; an incomplete proof
#: proves nothing.  The program is paused meanwhile: with what the proof does around its
#: marking, under half a second by default, enough for about 400,000 objects
#: (``--proof-budget`` lets a bigger heap be proven).
DEFAULT_BUDGET = DEFAULT_PROOF_BUDGET
_PLAIN, _MINE, _MODULE, _WEAKREF, _FRAME = 0, 1, 2, 3, 4
#: Code flags of generators and coroutines: a frame of such code may be suspended, not finished.
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
#: Which blocked tasks nothing refers to is one gc.get_referrers scan whose cost grows with
#: the number of tasks asked about; above this many it is skipped (and said).
MAX_REFERRER_CHECK = 64
#: Objects whose referents one ``gc.get_referents`` call lists while marking.
MARK_SLICE = 4096
#: A sleep after a proof, so that the threads it kept waiting get the GIL at once.
HANDOFF_PAUSE = 0.001
#: Pause between the two runs of a proof that found something (the program runs meanwhile).
RECHECK_PAUSE = 0.05
#: The longest the second run waits for a loop whose thread was mid-turn at the first run
#: to run at all (a busy machine may give it no CPU for a while).
RECHECK_PATIENCE = 1.0
#: The switch interval while a run of the proof holds the GIL: how long another thread
#: waits before it asks for it (the C marking cannot be interrupted at all), and how long
#: the proof waits to get it back.
RUN_INTERVAL = 0.1
#: Runs of the proof tried, one after another, when the program's threads ran during a run
#: that found something (a run so disturbed proves nothing).
MAX_TRIES = 3


def prove(exclude_threads: frozenset[int] = frozenset(), budget: float = DEFAULT_BUDGET) -> Reachability:
    """Run the proof over this process; safe from any thread (the caller's thread is not a root).
    ``budget`` bounds the CPU time the proof spends with the program paused, over both runs
    of a proof that found something (on a machine with a CPU to spare, the pause itself):
    CPU time, so that a busy machine slows a proof down without cutting it short.  A proof
    that runs out proves nothing and says so."""
    interval = sys.getswitchinterval()
    gc_pause.pause()
    # The object graph must not change while it is marked: a timer firing half-way would
    # move a sleeper's future from one list the proof has read to one it has not.  Keep
    # the GIL for the whole proof; the program pauses for its duration (docs/leaks.md).
    exclude = exclude_threads | {threading.get_ident()}
    try:
        wall_deadline = time.monotonic() + wall_limit(budget)
        first, waits, used, marks, _ = _steady(exclude, budget, wall_deadline, interval)
        if not first.unreachable:
            return first
        # A leak stays a leak: prove it again after letting the program run a moment, and
        # keep only tasks unreachable both times, still waiting on the same future.  A
        # state caught half-way through a loop iteration does not survive this.
        sys.setswitchinterval(interval)
        # (its CPU time read now: a read of /proc gives the GIL up, which under the proof's
        # long switch interval could leave this thread waiting for it for seconds)
        marks = _with_cpu(marks)
        time.sleep(RECHECK_PAUSE)
        # A loop thread caught mid-turn may hold what wakes a task only on its evaluation
        # stack, which nothing can read (a timer handle between the heap it left and the
        # ready queue).  The second run is a new look only once that thread has run; until
        # it has (a loaded machine), wait a little more, and prove nothing for its tasks
        # if it never does.
        patience = time.monotonic() + RECHECK_PATIENCE
        stalled = {seq for seq, mark in marks.items() if not _moved(mark)}
        while stalled and time.monotonic() < patience:
            time.sleep(RECHECK_PAUSE)
            stalled = {seq for seq in stalled if not _moved(marks[seq])}
        # The budget bounds the pause of both runs together: the second gets what is left.
        left = budget - used
        if left <= 0:
            return replace(first, unreachable=(), complete=False,
                           note=f"cut short after {budget:g}s (no time left to confirm): nothing is reported as proven")
        second, waits_again, _, _, _ = _steady(exclude, left, wall_deadline, interval)
        keep = tuple(t for t in first.unreachable
                     if t in second.unreachable and waits.get(t) == waits_again.get(t) and t not in stalled)
        result = replace(second, unreachable=keep, seconds=first.seconds + second.seconds)
        dropped = [t for t in first.unreachable if t in stalled and t in second.unreachable]
        if dropped:
            note = (f"{len(dropped)} blocked {'task is' if len(dropped) == 1 else 'tasks are'} not reported as "
                    f"proven: {'its' if len(dropped) == 1 else 'their'} loop's thread, caught mid-turn, got no CPU "
                    f"between the two runs of the proof (a busy machine)")
            result = replace(result, note="; ".join(n for n in (result.note, note) if n))
        return result
    finally:
        sys.setswitchinterval(interval)
        gc_pause.resume()
        # A thread that asked for the GIL during the proof waits out the long interval it
        # began waiting with, unless the GIL is let go: let it go now, or the loop stays
        # paused for the rest of that interval while this thread goes on (encoding the answer).
        time.sleep(HANDOFF_PAUSE)


class _Run(NamedTuple):
    """One run of the proof."""

    reach: Reachability
    #: task seq -> id of the future it awaits, for the unreachable tasks
    waits: dict[int, int]
    #: CPU seconds the run used
    used: float
    #: for unreachable tasks whose loop's thread was mid-turn: where that thread was
    marks: dict[int, "_Mark"]
    #: names of the program's threads that ran Python code while the run marked
    ran: tuple[str, ...]


def _steady(exclude: frozenset[int], budget: float, wall_deadline: float, interval: float) -> _Run:
    """A run of the proof during which none of the program's threads ran, tried up to
    ``MAX_TRIES`` times within ``budget``; ``interval`` is the program's switch interval.

    The proof pauses the program by keeping the GIL.  The C marking runs no bytecode, so
    the interpreter never lets the GIL go during it; the Python marking is bytecode, and
    keeps the GIL only because the switch interval is made longer than the run, so that
    no thread asks for it.  The setting and reading around the marking are bytecode too.
    A thread that began waiting for the GIL before the
    interval changed asks once its wait times out, and the program runs a loop turn
    during the run: a timer that fires moves a sleeper's future from the loop's heap,
    not yet read, to its ready queue, already read, and the sleeper (with what it holds)
    looks unreachable.  Such a wait asks only if the GIL has not changed hands since it
    began, so each run starts by letting the GIL go once (:func:`_hold_gil`).  What is
    left of the risk is checked: a run during which the program ran is tried again (a
    run that found nothing needs no second look)."""
    used = 0.0
    ran: list[tuple[str, ...]] = []
    took = 0.0  # how long the last disturbed run took
    for _ in range(MAX_TRIES):
        _hold_gil(budget - used, interval, took)
        run = _prove(exclude, budget - used, wall_deadline)
        took = run.reach.seconds
        used += run.used
        if not run.ran or not run.reach.unreachable:
            return run._replace(used=used)
        ran.append(run.ran)
        if used >= budget or time.monotonic() >= wall_deadline:
            break
    names = ", ".join(sorted({name for names in ran for name in names}))
    note = (f"the program ran while the proof marked ({names}), in each of {len(ran)} "
            f"tries: nothing is reported as proven")
    return run._replace(reach=replace(run.reach, unreachable=(), complete=False, note=note), used=used)


def _hold_gil(budget: float, interval: float, took: float = 0.0) -> None:
    """Let the GIL go once, then keep it for a run of ``budget`` CPU seconds.

    The switch interval is ``RUN_INTERVAL`` (twice what a disturbed run before took, if
    more), set before the GIL is let go, so that every thread waits that long before it
    asks for the GIL back.  The C marking cannot be interrupted anyway; the Python one
    is bytecode, and a run longer than the interval is interrupted by any thread that
    wants the GIL, then tried again with a longer one.  Not longer from the start: a
    thread running Python code without pause keeps the GIL for the whole interval each
    time it gets it, and the proof waits that long to get it back."""
    run = min(max(RUN_INTERVAL, interval, 2 * took), budget + 5.0)
    sys.setswitchinterval(run)
    time.sleep(HANDOFF_PAUSE)


def _positions(frames: dict[int, FrameType], exclude_threads: frozenset[int]) -> dict[int, tuple[FrameType, int]]:
    """Where each of the program's threads is: its innermost frame and instruction."""
    return {ident: (top, top.f_lasti) for ident, top in frames.items()
            if ident not in exclude_threads and not _is_diag_thread(ident, top)}


def _ran_since(before: dict[int, tuple[FrameType, int]], exclude_threads: frozenset[int]) -> tuple[str, ...]:
    """The program's threads that ran Python code since ``before`` was taken.  The frames
    in ``before`` are held, so a thread that left one and came back to the same code is
    in a new frame object: only a thread that never left its frame and is back at the
    same instruction goes unseen."""
    now = _positions(sys._current_frames(), exclude_threads)
    ran = [ident for ident, (frame, lasti) in now.items()
           if ident not in before or before[ident][0] is not frame or frame.f_lasti != before[ident][1]]
    del now
    names = []
    for ident in ran:
        thread = threading._active.get(ident)  # type: ignore[attr-defined]
        names.append(thread.name if thread is not None else f"thread {ident}")
    return tuple(names)


def _stepped(states: list[tuple[Any, Any, bool]]) -> bool:
    """Has any task ended, or begun or ended a wait, since ``states`` was read?"""
    for task, waiter, done in states:
        if future_done(task) or future_field(task, "_fut_waiter") is not waiter:
            return True
        if waiter is not None and future_done(waiter) != done:
            return True
    return False


def wall_limit(budget: float) -> float:
    """The longest a proof of ``budget`` CPU seconds may pause the program on the wall
    clock, however busy the machine: twice the budget, and at least a second more."""
    return max(2 * budget, budget + 1.0)


def _spent(cpu: float, budget: float, wall: float) -> str:
    """What stopped a proof: its CPU budget, or the wall clock on a busy machine."""
    if cpu >= budget:
        return f"{budget:g}s of CPU time"
    return f"{wall:.1f}s with {cpu:.2f}s of CPU time (the machine is busy)"


#: Where a loop thread was when a run of the proof ended: (thread ident, native id, CPU
#: seconds or None, id of its innermost code, instruction offset).
_Mark = tuple[int, "int | None", "float | None", int, int]


def _moved(mark: _Mark) -> bool:
    """Has the thread run since ``mark`` (its CPU time grew, or it is elsewhere)?"""
    ident, native, cpu, code, lasti = mark
    if cpu is not None:
        now = thread_schedstat(native)
        if now is None or now[0] > cpu:
            return True
    frames = sys._current_frames()
    top = frames.get(ident)
    del frames
    moved = top is None or id(top.f_code) != code or top.f_lasti != lasti
    del top
    return moved


def _with_cpu(marks: dict[int, _Mark]) -> dict[int, _Mark]:
    """The marks with their thread's CPU time as of now, where Linux tells it."""
    cpu: dict[int, float | None] = {}
    out = {}
    for seq, (ident, native, _, code, lasti) in marks.items():
        if ident not in cpu:
            stat = thread_schedstat(native)
            cpu[ident] = None if stat is None else stat[0]
        out[seq] = (ident, native, cpu[ident], code, lasti)
    return out


def _mid_turn(loop: Any, exclude_threads: frozenset[int]) -> _Mark | None:
    """The mark of an asyncio loop's thread when it is running Python code (mid-turn, not
    asleep in its poll), else None.  uvloop's thread id is not readable: not marked."""
    ident = read_attr(loop, "_thread_id")
    if type(ident) is not int or ident in exclude_threads:
        return None  # not running, or the prover's own thread (its frames are not roots)
    frames = sys._current_frames()
    top = frames.get(ident)
    del frames
    if top is None or top.f_code in _SELECT_CODES:
        return None
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    native = getattr(thread, "native_id", None)
    mark = (ident, native, None, id(top.f_code), top.f_lasti)  # no I/O here: the proof holds the GIL
    del top
    return mark


def _prove(exclude_threads: frozenset[int], budget: float, wall_deadline: float = float("inf")) -> _Run:
    """One run of the proof.  It stops once it has used ``budget`` seconds of CPU time, or
    at ``wall_deadline`` (``time.monotonic``)."""
    started = time.monotonic()
    cpu = time.thread_time  # the proof's own CPU time: what the budget bounds
    cpu_started = cpu()
    cpu_deadline = cpu_started + budget
    wall = time.monotonic

    def clock() -> float:
        """How far past its limits the proof is: positive once either is passed."""
        return max(cpu() - cpu_deadline, wall() - wall_deadline)

    deadline = 0.0
    tasks = [t for t in iter_all_tasks() if not future_done(t)]
    loops = {id(loop): loop for loop in (future_field(t, "_loop") for t in tasks) if loop is not None}.values()
    current = set()
    for loop in loops:
        cur = asyncio.current_task(loop)
        if cur is not None:
            current.add(id(cur))

    blocked: dict[int, asyncio.Task[Any]] = {}
    wakers: dict[int, list[asyncio.Task[Any]]] = {}  # id(awaited future) -> tasks it would wake
    roots: list[Any] = []
    # Each task's wait as the run began (the futures held, so that no new one takes an id):
    # a task that stepped while the proof marked shows in it, whatever loop ran it.
    states: list[tuple[Any, Any, bool]] = []
    for task in tasks:
        waiter = future_field(task, "_fut_waiter")
        states.append((task, waiter, waiter is not None and future_done(waiter)))
        # The runner's main task is a root: asyncio.run cancels it on Ctrl-C, so its frame runs
        # again ("await asyncio.Event().wait()" to run forever is an idiom, not a leak).
        if waiter is None or id(task) in current or wait_evidence.is_main_task(task):
            roots.append(task)
        else:
            blocked[id(task)] = task
            wakers.setdefault(id(waiter), []).append(task)
    diag_namespaces: set[int] = set()
    for name, module in list(sys.modules.items()):
        namespace = instance_dict(module)
        if namespace is None:
            continue
        # diag's own state (label caches with weak references, the agent) must not make
        # anything look reachable, however it is reached (a module, a function's globals).
        if name == "diag" or name.startswith("diag."):
            diag_namespaces.add(id(namespace))
        else:
            roots.append(namespace)
    in_locals: set[int] = set()  # what executing frames hold: referenced, though the GC cannot tell
    current_frames = sys._current_frames()
    positions = _positions(current_frames, exclude_threads)
    for ident, top in current_frames.items():
        if ident in exclude_threads or _is_diag_thread(ident, top):
            continue
        frame: FrameType | None = top
        while frame is not None:
            roots.append(frame)
            # The GC does not see the locals of a frame that is executing in a thread:
            # read them, or a queue only a worker thread's local holds would look lost.
            try:
                values = list(frame.f_locals.values())
                roots.extend(values)
                in_locals.update(id(v) for v in values)
            except Exception:
                pass
            frame = frame.f_back
        del frame
    del top, current_frames
    roots.extend(loops)

    seen: set[int] = {id(r) for r in roots if id(r) not in blocked}
    referenced: set[int] = set()  # blocked tasks some marked object refers to
    activated: set[int] = set()
    # Our own bookkeeping is neither traversed nor counted as a reference to anything.
    own = {id(tasks), id(blocked), id(wakers), id(roots), id(seen), id(referenced), id(activated), id(states)}
    own |= diag_namespaces
    seen.update(own)
    frontier: list[Any] = []
    kinds: dict[type, int] = {}  # per class: _PLAIN, _MINE, _MODULE or _WEAKREF

    def kind_of(cls: type) -> int:
        kind = kinds.get(cls)
        if kind is None:
            try:
                owner: object = _class_module(cls)
            except Exception:
                owner = None
            if type(owner) is str and owner.partition(".")[0] == "diag":
                kind = _MINE  # the agent itself, wherever the program (or a thread) keeps it
            elif issubclass(cls, ModuleType):
                kind = _MODULE
            elif issubclass(cls, weakref.ReferenceType):
                kind = _WEAKREF
            elif cls is FrameType:
                kind = _FRAME
            else:
                kind = _PLAIN
            kinds[cls] = kind
        return kind

    def activate(key: int) -> None:
        """The future ``key`` is reachable: the tasks it would wake are live, and so on."""
        pending = [key]
        while pending:
            for task in wakers.get(pending.pop(), ()):
                if id(task) not in activated:
                    activated.add(id(task))
                    seen.add(id(task))
                    frontier.append(task)
                    pending.append(id(task))  # tasks awaiting this task can now be woken too

    for root in roots:
        # A blocked task held in a local is reached, not woken; the agent is never a root.
        if id(root) not in blocked and kind_of(type(root)) != _MINE:
            frontier.append(root)
            activate(id(root))
    complete = True
    is_tracked = gc.is_tracked
    seen_add = seen.add
    append = frontier.append
    if clock() > deadline:  # the roots alone took the budget (hundreds of thousands of tasks)
        complete = False
        frontier.clear()
    mark = _c_mark()
    if mark is not None and frontier:
        # The same marking in C: no bytecode runs, so no other thread gets the GIL, from
        # the first object to the last (the Python loop below is its twin).
        try:
            complete = bool(mark(frontier, seen, blocked, wakers, activated, {},
                                 cpu_deadline - cpu(), wall_deadline - wall()))
        except Exception:
            complete = False
        frontier.clear()
    while frontier:
        if clock() > deadline:
            complete = False
            break
        # A slice at a time, and the clock read between slices: one level of a big graph
        # (200,000 futures behind one Event) is seconds of work in one call otherwise.
        batch = frontier[-MARK_SLICE:]
        del frontier[-MARK_SLICE:]
        refs = gc.get_referents(*batch)
        del batch
        for n, ref in enumerate(refs):
            if not n & 0x3FFF and n and clock() > deadline:
                complete = False
                break
            if not is_tracked(ref):
                continue  # ints, strings, atomic-only containers: nothing inside to reach
            key = id(ref)
            if key in seen:
                continue
            seen_add(key)
            if key in blocked:
                continue  # reached as an object: its coroutine stays closed until its future is reached
            kind = kinds.get(type(ref))
            if kind is None:
                kind = kind_of(type(ref))
            if kind:
                if kind == _MINE:
                    continue
                if kind == _FRAME and not ref.f_code.co_flags & _RESUMABLE:
                    # Every executing frame is a root, seen already: a function's frame
                    # reached here has finished (an exception's traceback keeps it) and
                    # runs no code again.  Not followed.  (The C marking tells a finished
                    # coroutine's frame from a suspended one too; Python cannot.)
                    continue
                if kind == _MODULE:
                    # Never ask a module for its referents: on 3.12 the _asyncio module's
                    # traverse visits its free list of future iterators, objects with no
                    # references, and holding one corrupts that free list.  Its namespace
                    # is what matters.
                    ref = instance_dict(ref)
                    if ref is None or id(ref) in seen:
                        continue
                    seen_add(id(ref))
                    key = id(ref)
                elif kind == _WEAKREF:
                    # Code holding a weak reference can reach a live referent (asyncio's
                    # stream protocols hold their readers this way).
                    target = ref()
                    if (target is not None and id(target) not in seen and id(target) not in blocked
                            and kind_of(type(target)) != _MINE):
                        seen_add(id(target))
                        append(target)
                        if id(target) in wakers:
                            activate(id(target))
            append(ref)
            if key in wakers:
                activate(key)
        del refs
        if not complete:
            break

    unreachable = ([t for key, t in blocked.items() if key not in activated and not _about_to_wake(t)]
                   if complete else [])  # a proof cut short proves nothing: no time spent on it
    referenced_known = complete and len(blocked) <= MAX_REFERRER_CHECK
    if referenced_known and blocked:
        referenced = _referenced(blocked, seen, own)
        # The task a runner waits on (asyncio.run's main) is held by the runner's frame,
        # or by uvloop's C code: never fire-and-forget.
        referenced.update(k for k, t in blocked.items() if k in in_locals or wait_evidence.is_main_task(t))
    waits = {task_origins.task_seq(t): id(future_field(t, "_fut_waiter")) for t in unreachable}
    marks: dict[int, _Mark] = {}
    loop_marks: dict[int, _Mark | None] = {}
    for t in unreachable:
        loop = future_field(t, "_loop")
        if id(loop) not in loop_marks:
            loop_marks[id(loop)] = _mid_turn(loop, exclude_threads)
        mark = loop_marks[id(loop)]
        if mark is not None:
            marks[task_origins.task_seq(t)] = mark
    reach = Reachability(
        ran=True,
        unreachable=tuple(sorted(task_origins.task_seq(t) for t in unreachable)) if complete else (),
        unreferenced=tuple(sorted(task_origins.task_seq(t) for k, t in blocked.items()
                                  if k not in referenced)) if referenced_known else (),
        blocked=len(blocked), objects_marked=len(seen), seconds=time.monotonic() - started,
        complete=complete,
        note=(f"cut short after {_spent(cpu() - cpu_started, budget, wall() - started)} ({len(seen)} objects "
              f"marked): nothing is reported as proven; a bigger --proof-budget lets it finish, pausing the "
              f"program longer" if not complete else
              "" if referenced_known else
              f"fire-and-forget check skipped: {len(blocked)} blocked tasks (at most {MAX_REFERRER_CHECK})"),
    )
    ran = _ran_since(positions, exclude_threads) if unreachable else ()
    if unreachable and _stepped(states):
        ran += ("event loop",)  # uvloop runs its loop in C: only its tasks show that it ran
    del positions, states
    return _Run(reach, waits, cpu() - cpu_started, marks, ran)


def _c_mark() -> Any:
    """The C marking (``diag._origins.mark``), or None: not built, or the Python path
    asked for (``DIAG_ORIGINS=python``)."""
    return getattr(task_origins._fast, "mark", None)


def _about_to_wake(task: Any) -> bool:
    """A future already resolved wakes its task on the next loop turn."""
    waiter = future_field(task, "_fut_waiter")
    return waiter is None or future_done(waiter)


def _is_diag_thread(ident: int, top: FrameType) -> bool:
    """The agent's own threads (all named diag-*).  Not "threads running diag code": the
    loop thread runs diag's heartbeat and task factory, and its frames must stay roots."""
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return thread is not None and thread.name.startswith("diag-")


#: Objects through which asyncio itself points at a task it will wake; they do not count
#: as someone holding the task.
_WAKEUP_TYPES = ("TaskWakeupMethWrapper", "method", "builtin_function_or_method", "method-wrapper")


def _referenced(blocked: dict[int, Any], seen: set[int], own: set[int]) -> set[int]:
    """Blocked tasks that some marked object refers to, other than their wake-up callback."""
    out: set[int] = set()
    for holder in gc.get_referrers(*blocked.values()):
        if id(holder) not in seen or id(holder) in own or type(holder).__name__ in _WAKEUP_TYPES:
            continue
        for ref in gc.get_referents(holder):
            if id(ref) in blocked:
                out.add(id(ref))
    return out
