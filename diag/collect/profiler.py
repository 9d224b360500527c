"""Profile the event loop's thread for a window and return a ``ProfileSnapshot``.

This is the only module that touches yappi and the sampler thread.  Both modes run
the whole window themselves (start, wait, stop, read, clear) so a client that goes
away mid-way cannot leave a profiler installed: ``yappi.stop()`` and
``yappi.clear_stats()`` run in ``finally`` blocks on the calling thread.  Only one
profile runs at a time in a process (yappi is process-global); a second request is
refused as busy instead of queueing.

- ``yappi``: every call of the loop thread, wall or CPU clock, with caller -> callee
  edges.  Costs the target 35-75 % of its throughput (wall clock) and more (CPU), and
  its wall clock slows down sharply with many live instances of one coroutine
  function, so it is refused above ``TASK_LIMIT`` live tasks unless forced.
- ``sample``: a ``diag-sampler`` thread reads the loop thread's stack
  (``sys._current_frames``) and its current task about ``SAMPLE_HZ`` times a second;
  a few microseconds of work per sample.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import linecache
import os
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Iterator

from diag.collect.loop_watch import LoopWatch, iter_all_tasks
from diag.collect.safe_read import future_field, type_name
from diag.collect.task_collector import process_info
from diag.errors import DiagError
from diag.loop_frames import IDLE, TURN, loop_frame
from diag.model.profile_snapshot import (
    CLOCKS, MODES, CallEdge, FunctionStat, ProfileSnapshot, SampleFrame, SampleStack, TaskTotal,
)

#: Longest window the agent accepts, in seconds.
MAX_SECONDS = 60.0
DEFAULT_SECONDS = 5.0
#: Above this many live tasks, wall-clock yappi is refused unless forced.
TASK_LIMIT = 2000
SAMPLE_HZ = 100.0
#: Deepest stack a sample keeps (innermost frames are kept).
MAX_SAMPLE_DEPTH = 256
#: The frame charged with CPU time the loop thread spent where no sample saw it.
UNSEEN = "(on the CPU between samples, not seen)"
#: Most functions a yappi snapshot keeps (the busiest, by total time).
MAX_FUNCTIONS = 20_000

_busy = threading.Lock()


class ProfileRefused(DiagError):
    """The profile cannot run now or here; ``str(err)`` says why and what to do instead."""


@dataclass(frozen=True)
class ProfileOptions:
    """One profile request: ``seconds`` of ``mode`` (yappi|sample) with ``clock`` (wall|cpu)."""

    seconds: float = DEFAULT_SECONDS
    mode: str = "yappi"
    clock: str = "wall"
    force: bool = False
    max_tasks: int = TASK_LIMIT
    hz: float = SAMPLE_HZ

    def validate(self) -> None:
        if self.mode not in MODES:
            raise DiagError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.clock not in CLOCKS:
            raise DiagError(f"clock must be one of {', '.join(CLOCKS)}, not {self.clock!r}")
        if self.mode == "sample" and self.clock != "wall":
            raise DiagError("sample mode reads stacks at wall-clock intervals; --clock cpu needs --mode yappi")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise DiagError(f"seconds must be > 0 and at most {MAX_SECONDS:g}")
        if self.max_tasks < 0:
            raise DiagError("max_tasks must be >= 0")
        if not 1 <= self.hz <= 1000:
            raise DiagError("hz must be between 1 and 1000")


@dataclass(frozen=True)
class LoopThread:
    """The thread to profile and, if known, the event loop it runs."""

    ident: int
    name: str
    loop: asyncio.AbstractEventLoop | None


def loop_thread(watch: LoopWatch | None) -> LoopThread:
    """The thread of the loop to profile: the main thread's loop if it runs one, else the
    first running loop the agent watches, else the main thread."""
    main = threading.main_thread()
    found: list[LoopThread] = []
    for loop in watch.loops() if watch is not None else []:
        try:
            if loop.is_closed() or not loop.is_running():
                continue
        except Exception:
            continue
        ident = watch.loop_health(loop)[0] if watch is not None else None
        if ident is None:
            continue
        name = next((t.name for t in threading.enumerate() if t.ident == ident), "?")
        found.append(LoopThread(ident, name, loop))
    for candidate in found:
        if candidate.ident == main.ident:
            return candidate
    if found:
        return found[0]
    return LoopThread(main.ident or 0, main.name, None)


def status() -> dict[str, Any]:
    """Whether a profile is being taken and whether any profiler is installed."""
    try:
        import yappi  # type: ignore[import-untyped]
        yappi_running = bool(yappi.is_running())
    except ImportError:  # a process diag attached to from another Python version
        yappi_running = False
    return {"busy": _busy.locked(), "yappi_running": yappi_running,
            "sampler_running": any(t.name == "diag-sampler" and t.is_alive() for t in threading.enumerate()),
            "max_seconds": MAX_SECONDS, "task_limit": TASK_LIMIT}


def take_profile(options: ProfileOptions, target: LoopThread) -> ProfileSnapshot:
    """Profile ``target`` for ``options.seconds``; ``ProfileRefused`` when busy or unsafe."""
    options.validate()
    if not _busy.acquire(blocking=False):
        raise ProfileRefused("busy: a profile is already being taken in this process; retry when it ends")
    try:
        if options.mode == "sample":
            return _sample(options, target)
        return _yappi(options, target)
    finally:
        _busy.release()


# -- yappi -----------------------------------------------------------------------------------

def _yappi(options: ProfileOptions, target: LoopThread) -> ProfileSnapshot:
    try:
        import yappi  # type: ignore[import-untyped]
    except ImportError:
        raise ProfileRefused(f"yappi is not installed for this process's Python "
                             f"{sys.version_info[0]}.{sys.version_info[1]}: use --mode sample") from None

    if yappi.is_running():
        raise ProfileRefused("busy: yappi is already running in the target (started by someone else)")
    notes: list[str] = []
    if options.clock == "wall":
        live = len(iter_all_tasks())
        if live > options.max_tasks:
            if not options.force:
                raise ProfileRefused(
                    f"refused: {live} live tasks (limit {options.max_tasks}); yappi's wall clock slows the "
                    f"target down sharply with many live coroutines; use --mode sample (or --force)")
            notes.append(f"forced: wall-clock yappi with {live} live tasks (limit {options.max_tasks})")
    if yappi_keeps_coroutines(yappi):
        if not options.force:
            raise ProfileRefused(
                "refused: this yappi keeps a reference to every coroutine it sees suspend or return "
                "(sumerc/yappi#217, yappi 1.7.6 and older), so the target would keep them all for good; "
                "use --mode sample (nothing left behind), or --force to accept the leak")
        notes.append("forced: this yappi keeps a reference to every coroutine it saw suspend or return "
                     "during the window (sumerc/yappi#217); they stay in the target")
    yappi.set_clock_type(options.clock)
    yappi.clear_stats()
    taken_at = time.time()
    started = time.monotonic()
    try:
        yappi.start(builtins=False, profile_threads=True)
        time.sleep(options.seconds)
    finally:
        yappi.stop()
    duration = time.monotonic() - started
    try:
        functions, edges, more = _read_yappi(yappi, target.ident)
    finally:
        yappi.clear_stats()
    if more:
        notes.append(f"kept the {MAX_FUNCTIONS} functions with the most total time; {more} more were dropped")
    if not functions:
        notes.append(f"no calls recorded on thread {target.name}")
    return ProfileSnapshot(
        taken_at=taken_at, process=process_info(), mode="yappi", clock=options.clock, seconds=options.seconds,
        duration=duration, thread_name=target.name, functions=functions, edges=edges, notes=tuple(notes))


#: The last yappi release whose ``IS_SUSPENDED`` keeps the coroutines it sees.
LAST_LEAKING_YAPPI = (1, 7, 6)


def yappi_keeps_coroutines(yappi: Any) -> bool:
    """Whether this yappi leaks a reference to each coroutine it sees leave a frame: up
    to 1.7.6, on 3.11 and later, its ``IS_SUSPENDED`` never releases the strong reference
    ``PyFrame_GetGenerator`` returns, so every coroutine a profile sees stays alive for
    good, and no yappi call (``clear_stats`` included) gives it back (sumerc/yappi#217).
    Told by the installed version: probing it would mean starting yappi once more."""
    if sys.version_info < (3, 11):
        return False
    release = _yappi_release(getattr(yappi, "__file__", None))
    return release is None or release <= LAST_LEAKING_YAPPI  # not found: assume the worst


@functools.lru_cache(maxsize=4)
def _yappi_release(module_file: str | None) -> tuple[int, ...] | None:
    """yappi's version, from the ``yappi-X.Y.Z.dist-info`` beside the module: one directory
    read, once.  ``importlib.metadata`` walks every distribution on ``sys.path`` instead, and
    on a loop thread that never lets go of the GIL each of its thousands of file system
    calls waits a whole switch interval for it back (27 s, measured)."""
    name = None
    if module_file:
        try:
            names = os.listdir(os.path.dirname(module_file))
        except OSError:
            names = []
        found = [n for n in names if n.lower().startswith("yappi-") and n.endswith(".dist-info")]
        if len(found) == 1:
            name = found[0][len("yappi-"):-len(".dist-info")]
    if name is None:
        try:
            from importlib.metadata import version

            name = version("yappi")
        except Exception:
            return None
    parts = tuple(int(part) for part in name.split(".")[:3] if part.isdigit())
    return parts or None


def _read_yappi(yappi: Any, thread_ident: int) -> tuple[tuple[FunctionStat, ...], tuple[CallEdge, ...], int]:
    ctx = next((t.id for t in yappi.get_thread_stats() if t.tid == thread_ident), None)
    if ctx is None:
        return (), (), 0
    stats = sorted(yappi.get_func_stats(filter={"ctx_id": ctx}), key=lambda s: -float(s.ttot))
    more = max(0, len(stats) - MAX_FUNCTIONS)
    stats = stats[:MAX_FUNCTIONS]
    index: dict[int, int] = {}
    functions: list[FunctionStat] = []
    coroutine_cache: dict[tuple[str, int], bool] = {}
    by_file = _modules_by_file()
    codes: dict[str, dict[int, types.CodeType]] = {}
    for stat in stats:
        index[int(stat.index)] = len(functions)
        file, line = str(stat.module), int(stat.lineno)
        functions.append(FunctionStat(
            name=str(stat.name), file=file, line=line, calls=int(stat.ncall), primitive_calls=int(stat.nactualcall),
            own_seconds=float(stat.tsub), total_seconds=float(stat.ttot),
            coroutine=_is_coroutine(file, line, coroutine_cache, _codes_of_file(file, by_file, codes))))
    edges: list[CallEdge] = []
    for stat in stats:
        caller = index[int(stat.index)]
        for child in stat.children:
            callee = index.get(int(child.index))
            if callee is None:
                continue
            edges.append(CallEdge(caller, callee, int(child.ncall), int(child.nactualcall),
                                  float(child.tsub), float(child.ttot)))
    return tuple(functions), tuple(edges), more


def _modules_by_file() -> dict[str, types.ModuleType]:
    """The loaded modules by their file, read from memory."""
    out: dict[str, types.ModuleType] = {}
    for module in list(sys.modules.values()):
        if not issubclass(type(module), types.ModuleType):
            continue  # some libraries put other objects in sys.modules
        try:
            file = object.__getattribute__(module, "__dict__").get("__file__")
        except Exception:
            continue
        if isinstance(file, str):
            out.setdefault(file, module)
    return out


def _codes_of_file(file: str, by_file: dict[str, types.ModuleType],
                   done: dict[str, dict[int, types.CodeType]]) -> dict[int, types.CodeType] | None:
    module = by_file.get(file)
    if module is None:
        return None
    found = done.get(file)
    if found is None:
        found = done[file] = _module_codes(module)
    return found


def _unwrapped_codes(node: Any) -> Iterator[types.CodeType]:
    """The code objects of a namespace entry: a function, and what a staticmethod,
    classmethod or ``functools.wraps`` wrapper holds."""
    for _ in range(8):
        try:
            if type(node) is types.FunctionType:
                yield node.__code__
            if type(node) in (staticmethod, classmethod):
                node = node.__func__
                continue
            space = object.__getattribute__(node, "__dict__") if type(node) is types.FunctionType else None
            node = space.get("__wrapped__") if type(space) is dict else None
        except Exception:
            return
        if node is None:
            return


def _module_codes(module: types.ModuleType) -> dict[int, types.CodeType]:
    """The module's functions and its classes' methods (two levels of classes), by the line
    they start at (yappi's line), found through the namespaces' own dicts: no attribute
    hook of the program's runs."""
    out: dict[int, types.CodeType] = {}
    space = object.__getattribute__(module, "__dict__")
    file = space.get("__file__")
    spaces: list[tuple[Any, int]] = [(space, 0)]
    seen: set[int] = set()
    while spaces:
        space, depth = spaces.pop()
        try:
            values = list(space.values())
        except Exception:
            continue
        for value in values:
            if issubclass(type(value), type):
                if depth < 2 and id(value) not in seen:
                    seen.add(id(value))
                    try:
                        spaces.append((type.__getattribute__(value, "__dict__"), depth + 1))
                    except Exception:
                        pass
                continue
            for code in _unwrapped_codes(value):
                if code.co_filename == file:
                    out.setdefault(code.co_firstlineno, code)
    return out


def _is_coroutine(file: str, line: int, cache: dict[tuple[str, int], bool],
                  codes: dict[int, types.CodeType] | None = None) -> bool:
    """Whether the function defined at ``file:line`` is ``async def``: from its code object
    when the loaded module has it (``codes``, see ``_module_codes``), else from its source
    (decorators skipped).  Reading the source is a file read, and on a loop thread that
    never lets go of the GIL for long (one turning through ``select(0)``), each read
    waits long for the GIL back."""
    key = (file, line)
    found = cache.get(key)
    code = None if found is not None or codes is None else codes.get(line)
    if code is not None:
        found = cache[key] = bool(code.co_flags & inspect.CO_COROUTINE)
    if found is None:
        found = False
        for offset in range(8):
            text = linecache.getline(file, line + offset).lstrip()
            if not text.startswith("@"):
                found = text.startswith("async def ")
                break
        cache[key] = found
    return found


# -- sampling ----------------------------------------------------------------------------------

class _Sampler:
    """Stack counts of one thread; all per-sample state is keyed by code object ids."""

    def __init__(self, target: LoopThread, period: float = 1.0 / SAMPLE_HZ) -> None:
        self.target = target
        self.period = period
        self.frames: list[SampleFrame] = []
        self.frame_index: dict[tuple[int, int], int] = {}
        self.pinned: list[types.CodeType] = []  # keeps the ids in the caches valid
        # Time each stack (and task) was seen for: a sample stands for the time since the
        # previous one, so samples delayed while the target held the GIL (CPU-bound
        # Python) count for as long as they were delayed, not as one tick.
        self.stacks: dict[tuple[int, tuple[int, ...]], float] = {}
        self.task_index: dict[int, int] = {}
        self.task_coros: list[str] = []
        self.task_samples: list[float] = []
        self.task_ids: list[set[int]] = []
        self.samples = 0
        self.errors = 0
        # The loop thread's CPU clock: a sample that was late and finds the loop idle
        # (the target held the GIL, then the loop went back to its poll before the sampler
        # got in) stood for CPU time the loop spent elsewhere, not for idle time.
        self.cpu_clock: int | None = None
        try:
            self.cpu_clock = time.pthread_getcpuclockid(target.ident)
            time.clock_gettime(self.cpu_clock)
        except (AttributeError, OSError, OverflowError):
            self.cpu_clock = None
        self.last_cpu: float | None = None
        self.last_busy: tuple[int, tuple[int, ...]] | None = None  # the previous sample's key, if busy
        self.unseen_index: int | None = None
        self.moved = 0.0  # periods moved from the idle poll to the code that ran before it

    def loop_cpu(self) -> float | None:
        if self.cpu_clock is None:
            return None
        try:
            return time.clock_gettime(self.cpu_clock)
        except OSError:  # the thread has ended
            self.cpu_clock = None
            return None

    def sample(self, weight: float = 1.0) -> None:
        cpu = self.loop_cpu()
        frame = sys._current_frames().get(self.target.ident)
        if frame is None:
            return
        task_idx = -1
        if self.target.loop is not None:
            try:
                task = asyncio.current_task(self.target.loop)
            except Exception:
                task = None
            if task is not None:
                task_idx = self._task(task)
        stack: list[int] = []
        index = self.frame_index
        while frame is not None and len(stack) < MAX_SAMPLE_DEPTH:
            code = frame.f_code
            key = (id(code), frame.f_lineno or 0)
            idx = index.get(key)
            if idx is None:
                idx = index[key] = len(self.frames)
                self.frames.append(SampleFrame(getattr(code, "co_qualname", code.co_name), code.co_filename, key[1]))
                self.pinned.append(code)
            stack.append(idx)
            frame = frame.f_back
        del frame
        stack.reverse()
        skey = (task_idx, tuple(stack))
        in_loop = task_idx < 0 and bool(stack) and self._in_loop(stack[-1])
        ran = None if cpu is None or self.last_cpu is None else (cpu - self.last_cpu) / self.period
        self.last_cpu = cpu
        if in_loop and ran is not None and weight > 1.5:
            # Late, and the loop is back in its poll (or its turn on the way there): the
            # periods it spent on the CPU beyond this sample's own were the code that held
            # the GIL, i.e. the busy stack seen before (or, if none was, code no sample saw).
            moved = min(max(0.0, ran), weight - 1.0)
            if moved > 0.5:
                other = self.last_busy if self.last_busy is not None else (-1, (self._unseen(),))
                self.stacks[other] = self.stacks.get(other, 0.0) + moved
                if other[0] >= 0:
                    self.task_samples[other[0]] += moved
                self.moved += moved
                weight -= moved
        self.last_busy = None if in_loop else skey
        self.stacks[skey] = self.stacks.get(skey, 0.0) + weight
        self.samples += 1
        if task_idx >= 0:
            self.task_samples[task_idx] += weight

    def _in_loop(self, leaf: int) -> bool:
        """Is this frame the loop's own wait for events or its turn between two waits, where
        none of the program's code runs?  (Not the handle running a callback: its own time
        is the callback's C code, maybe the very code that held the GIL.)"""
        frame = self.frames[leaf]
        return loop_frame(frame.file, frame.name) in (IDLE, TURN)

    def _unseen(self) -> int:
        if self.unseen_index is None:
            self.unseen_index = len(self.frames)
            self.frames.append(SampleFrame(UNSEEN, "", 0))
        return self.unseen_index

    def _task(self, task: asyncio.Task[Any]) -> int:
        coro = future_field(task, "_coro")  # read, not asked: a Task subclass may override get_coro
        kind = type(coro)
        code = (coro.cr_code if kind is types.CoroutineType  # type: ignore[union-attr]
                else coro.gi_code if kind is types.GeneratorType else None)  # type: ignore[union-attr]
        key = id(code) if code is not None else id(kind)
        idx = self.task_index.get(key)
        if idx is None:
            idx = self.task_index[key] = len(self.task_coros)
            name = getattr(code, "co_qualname", code.co_name) if code is not None else None
            self.task_coros.append(str(name or type_name(coro)))
            self.task_samples.append(0.0)
            self.task_ids.append(set())
            if code is not None:
                self.pinned.append(code)
        ids = self.task_ids[idx]
        if len(ids) < 100_000:
            ids.add(id(task))
        return idx

    def run(self, seconds: float, hz: float) -> float:
        period = 1.0 / hz
        started = time.monotonic()
        deadline = started + seconds
        next_at = started
        last = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_at:
                try:
                    self.sample((now - last) / period)  # in periods: 1.0 when on time
                except Exception:  # a frame torn down under us: skip this sample
                    self.errors += 1
                last = now
                next_at += period
                if next_at < now:  # fell behind (GIL held by the target): do not burst
                    next_at = now + period
            time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
        return time.monotonic() - started


def _sample(options: ProfileOptions, target: LoopThread) -> ProfileSnapshot:
    if target.ident == threading.get_ident():
        raise ProfileRefused("cannot sample the thread that asked for the profile")
    sampler = _Sampler(target, 1.0 / options.hz)
    taken_at = time.time()
    measured = [0.0]

    def body() -> None:
        measured[0] = sampler.run(options.seconds, options.hz)

    thread = threading.Thread(target=body, name="diag-sampler", daemon=True)
    thread.start()
    thread.join()
    duration = measured[0] or options.seconds
    notes: list[str] = []
    if sampler.errors:
        notes.append(f"{sampler.errors} samples skipped (stack changed while read)")
    if target.loop is None:
        notes.append("no event loop found on the sampled thread: samples are not charged to tasks")
    # Counts are in sampling periods (weights summed per stack, then rounded), so
    # count x interval is the time a stack was seen for, delayed samples included.
    period = 1.0 / options.hz
    stacks = tuple(SampleStack(frames, round(weight), task)
                   for (task, frames), weight in sorted(sampler.stacks.items(), key=lambda kv: -kv[1])
                   if round(weight) > 0)
    tasks = tuple(TaskTotal(coro, round(w), len(ids))
                  for coro, w, ids in zip(sampler.task_coros, sampler.task_samples, sampler.task_ids))
    ticks = sum(s.count for s in stacks)
    if sampler.moved >= 1:
        notes.append(f"{sampler.moved * period:.2f}s the loop thread spent on the CPU before late samples "
                     f"found it idle is charged to the busy stack seen before (or to \"{UNSEEN}\")")
    if sampler.samples and ticks > sampler.samples * 1.05:
        notes.append(f"{sampler.samples} samples taken; some were late (the target held the GIL), "
                     f"so each counts for the time since the one before: {ticks} periods of {period * 1000:.0f}ms")
    return ProfileSnapshot(
        taken_at=taken_at, process=process_info(), mode="sample", clock="wall", seconds=options.seconds,
        duration=duration, thread_name=target.name, frames=tuple(sampler.frames), stacks=stacks, tasks=tasks,
        samples=ticks, interval=period,
        notes=tuple(notes))


def on_event_loop_thread() -> bool:
    """Whether the caller runs inside a running event loop (a profile there would block it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


__all__ = ["MAX_SECONDS", "DEFAULT_SECONDS", "TASK_LIMIT", "SAMPLE_HZ", "ProfileOptions", "ProfileRefused",
           "LoopThread", "loop_thread", "status", "take_profile", "on_event_loop_thread"]
