"""Pure analysis of profile snapshots: function totals, sort, top, filter, diff, per task.

Sample-mode snapshots hold stacks, not calls; ``function_stats`` turns them into the
same per-function rows as yappi's (own = samples on top of the stack, total = samples
with the function anywhere on it, times the sampling interval), so one table serves
both.  No I/O, no clock.

Usage::

    view = profile_view(snap, ProfileQuery(sort="total", top=20))
    for fn in view.functions:
        print(fn.name, fn.total_seconds)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from diag import loop_frames
from diag.errors import UsageError
from diag.model.profile_snapshot import FunctionStat, ProfileSnapshot

SORT_KEYS = ("own", "total", "calls", "percall")
BY = ("function", "task")
NO_TASK = "(no task: loop machinery, callbacks, idle)"


@dataclass(frozen=True)
class ProfileQuery:
    """``sort`` one of SORT_KEYS (biggest first); ``top`` rows at most; ``pattern`` a regex on
    function name or file path; ``by`` function or task."""

    sort: str = "own"
    top: int = 30
    pattern: str | None = None
    by: str = "function"

    def validate(self) -> None:
        if self.sort not in SORT_KEYS:
            raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}, not {self.sort!r}")
        if self.by not in BY:
            raise UsageError(f"--by must be one of {', '.join(BY)}, not {self.by!r}")
        if self.top < 1:
            raise UsageError("--top must be at least 1")
        compile_pattern(self.pattern)


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"bad --filter regex {pattern!r}: {err}") from None


@dataclass(frozen=True)
class TaskRow:
    """Time charged to one coroutine function: sampled time of tasks running it (sample
    mode), or yappi's total for the ``async def`` (wall clock includes its awaits)."""

    coro: str
    seconds: float
    tasks: int
    share: float
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class ProfileView:
    """What a renderer shows: the snapshot, the rows kept, and how they were chosen.

    ``matched`` counts rows before ``top``; ``base`` is set for a difference
    (values are then new minus base).  ``total_seconds`` is what the percentages are
    of: the window.  ``shared`` says, per row, whether it gets a percentage: under
    yappi's wall clock an ``async def``'s times include its awaits, which overlap
    across its tasks (asyncio.sleep's own time can be many windows long), so they are
    no share of the window.  ``per_call`` holds each row's seconds per call (for a
    difference: this profile's per call minus the base's), ``None`` when unknown.
    """

    snapshot: ProfileSnapshot
    functions: tuple[FunctionStat, ...]
    tasks: tuple[TaskRow, ...]
    query: ProfileQuery
    matched: int
    total_seconds: float
    base: ProfileSnapshot | None = None
    per_call: tuple[float | None, ...] = ()
    shared: tuple[bool, ...] = ()


def per_call(fn: FunctionStat) -> float | None:
    return fn.total_seconds / fn.calls if fn.calls else None


def function_stats(snap: ProfileSnapshot) -> tuple[FunctionStat, ...]:
    """Per-function totals: yappi's own, or derived from the samples."""
    if snap.mode != "sample":
        return snap.functions
    key_of = [(f.name, f.file) for f in snap.frames]
    own: dict[tuple[str, str], int] = {}
    total: dict[tuple[str, str], int] = {}
    line: dict[tuple[str, str], int] = {}
    for f in snap.frames:
        k = (f.name, f.file)
        line[k] = min(line.get(k, f.line), f.line)
    for stack in snap.stacks:
        if not stack.frames:
            continue
        leaf = key_of[stack.frames[-1]]
        own[leaf] = own.get(leaf, 0) + stack.count
        for k in {key_of[i] for i in stack.frames}:
            total[k] = total.get(k, 0) + stack.count
    dt = snap.interval
    return tuple(FunctionStat(name, file, line[(name, file)], own_seconds=own.get((name, file), 0) * dt,
                              total_seconds=n * dt) for (name, file), n in total.items())


def _sort_value(fn: FunctionStat, key: str) -> float:
    if key == "calls":
        return float(fn.calls)
    if key == "total":
        return fn.total_seconds
    if key == "percall":
        return per_call(fn) or 0.0
    return fn.own_seconds


def _merged(functions: tuple[FunctionStat, ...]) -> dict[tuple[str, str, int], FunctionStat]:
    """One entry per (name, file, line); yappi can report one function more than once."""
    out: dict[tuple[str, str, int], FunctionStat] = {}
    for f in functions:
        k = (f.name, f.file, f.line)
        prev = out.get(k)
        out[k] = f if prev is None else replace(
            prev, calls=prev.calls + f.calls, primitive_calls=prev.primitive_calls + f.primitive_calls,
            own_seconds=prev.own_seconds + f.own_seconds, total_seconds=prev.total_seconds + f.total_seconds)
    return out


def diff_functions(new: tuple[FunctionStat, ...], base: tuple[FunctionStat, ...]) -> tuple[FunctionStat, ...]:
    """``new`` minus ``base`` per function (matched by name, file and line), like ``pprof -base``."""
    old = _merged(base)
    cur = _merged(new)
    out = []
    for k, f in cur.items():
        b = old.get(k)
        if b is None:
            out.append(f)
            continue
        out.append(replace(f, calls=f.calls - b.calls, primitive_calls=f.primitive_calls - b.primitive_calls,
                           own_seconds=f.own_seconds - b.own_seconds,
                           total_seconds=f.total_seconds - b.total_seconds))
    for k, b in old.items():
        if k not in cur:
            out.append(replace(b, calls=-b.calls, primitive_calls=-b.primitive_calls,
                               own_seconds=-b.own_seconds, total_seconds=-b.total_seconds))
    return tuple(out)


def task_rows(snap: ProfileSnapshot) -> tuple[TaskRow, ...]:
    """Time per coroutine function, biggest first."""
    if snap.mode == "sample":
        total = snap.samples or 1
        rows = [TaskRow(t.coro, t.samples * snap.interval, t.tasks, t.samples / total) for t in snap.tasks]
        outside = snap.samples - sum(t.samples for t in snap.tasks)
        if outside > 0:
            rows.append(TaskRow(NO_TASK, outside * snap.interval, 0, outside / total))
    else:
        window = snap.duration or 1.0
        rows = [TaskRow(f.name, f.total_seconds, f.primitive_calls, f.total_seconds / window, f.file, f.line)
                for f in snap.functions if f.coroutine]
    rows.sort(key=lambda r: (-r.seconds, r.coro))
    return tuple(rows)


def has_share(snap: ProfileSnapshot, fn: FunctionStat) -> bool:
    """Whether ``fn``'s times are a share of the window: not an ``async def``'s under
    yappi's wall clock (they include its awaits), nor anything longer than the window."""
    if snap.mode == "yappi" and snap.clock == "wall" and fn.coroutine:
        return False
    window = snap.duration if snap.mode == "yappi" else snap.samples * snap.interval
    return abs(fn.own_seconds) <= window * 1.0005 and abs(fn.total_seconds) <= window * 1.0005


def per_call_change(new: tuple[FunctionStat, ...], base: tuple[FunctionStat, ...]
                    ) -> dict[tuple[str, str, int], float | None]:
    """For a difference: this profile's seconds per call minus the base's, per function
    (``None`` where either side made no call)."""
    old = _merged(base)
    out: dict[tuple[str, str, int], float | None] = {}
    for k, f in _merged(new).items():
        b = old.get(k)
        now, before = per_call(f), (per_call(b) if b is not None else None)
        out[k] = None if now is None or before is None else now - before
    return out


def profile_view(snap: ProfileSnapshot, query: ProfileQuery, base: ProfileSnapshot | None = None) -> ProfileView:
    """Rows to show: filtered, sorted (by absolute change for a diff), cut to ``top``."""
    query.validate()
    functions = function_stats(snap)
    changes: dict[tuple[str, str, int], float | None] | None = None
    if base is not None:
        changes = per_call_change(functions, function_stats(base))
        functions = diff_functions(functions, function_stats(base))
    rx = compile_pattern(query.pattern)
    if rx is not None:
        functions = tuple(f for f in functions if rx.search(f.file) or rx.search(f.name))
    if base is not None:
        def change(f: FunctionStat) -> float:
            if query.sort == "percall" and changes is not None:  # the column shown: per call now minus before
                return changes.get((f.name, f.file, f.line)) or 0.0
            return _sort_value(f, query.sort)

        ordered = sorted(functions, key=lambda f: (-abs(change(f)), f.name))
    else:
        ordered = sorted(functions, key=lambda f: (-_sort_value(f, query.sort), f.name))
    tasks = task_rows(snap)
    if rx is not None:
        tasks = tuple(t for t in tasks if rx.search(t.coro) or rx.search(t.file))
    kept = tuple(ordered[: query.top])
    per = tuple(per_call(f) if changes is None else changes.get((f.name, f.file, f.line)) for f in kept)
    window = snap.duration if snap.mode == "yappi" else snap.samples * snap.interval
    shared = tuple(has_share(snap, f) for f in kept)
    return ProfileView(snap, kept, tasks[: query.top], query, len(ordered), window, base, per, shared)


def loop_frame(fn: FunctionStat) -> str | None:
    """What kind of loop machinery ``fn`` is, or None: "idle" for the loop's wait for
    events (its selector, or the code that started a compiled loop such as uvloop) and
    asyncio.sleep (whose own time under yappi's wall clock is the wait), "scheduling"
    for the loop's turn and the handle that runs each callback (``diag.loop_frames``)."""
    kind = loop_frames.loop_frame(fn.file, fn.name)
    if kind is None:
        return None
    return "idle" if kind == loop_frames.IDLE else "scheduling"


def loop_hint(view: ProfileView) -> str | None:
    """One line for stderr when the first row is the loop's own waiting or scheduling
    rather than the program's code, saying what shows the code; None otherwise."""
    if view.base is not None or view.query.by != "function" or not view.functions:
        return None
    lead = view.functions[0]
    kind = loop_frame(lead)
    if kind is None:
        return None
    snap = view.snapshot
    name = f"asyncio.{lead.name}" if lead.file.endswith("tasks.py") else lead.name
    if snap.mode == "yappi":
        return (f"hint: the top row is the event loop's own {name}, not the program's code: yappi charges a "
                f"blocking call made in a coroutine (time.sleep, a slow C call) to the loop's frames, and its wall "
                f"clock counts awaits as own time; the default --mode sample charges the call to the coroutine "
                f"that made it")
    if kind == "idle":
        share = lead.own_seconds / view.total_seconds if view.total_seconds > 0 else 0.0
        return (f"hint: the loop waited for events ({lead.name}) {100 * share:.0f}% of the window; the rows after it "
                f"are the code that ran, blocking calls included (--by task sums them per coroutine)")
    return (f"hint: the top row is the loop's own {lead.name}: time in C code a callback called directly, with no "
            f"Python frame of its own; --mode yappi --clock cpu times C calls under their Python caller")


__all__ = ["SORT_KEYS", "BY", "NO_TASK", "ProfileQuery", "ProfileView", "TaskRow", "function_stats",
           "diff_functions", "task_rows", "profile_view", "per_call", "per_call_change", "has_share",
           "compile_pattern", "loop_frame", "loop_hint"]
