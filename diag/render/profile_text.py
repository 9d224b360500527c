"""Plain-text profiles, pprof ``-top`` style: one function (or task) per line, no colour."""

from __future__ import annotations

from typing import TextIO

from diag.analysis.profile_stats import ProfileView, TaskRow, per_call
from diag.model.profile_snapshot import FunctionStat
from diag.render.formatting import safe_text, short_path, text_lines, timestamp

FUNCTION_COLUMNS = ("calls", "own s", "own %", "total s", "total %", "per call ms", "where", "function")
TASK_COLUMNS = ("tasks", "seconds", "share", "coroutine", "where")


def header(view: ProfileView) -> list[str]:
    snap = view.snapshot
    taken = timestamp(snap.taken_at)
    what = (f"yappi, {snap.clock} clock" if snap.mode == "yappi"
            else f"sampling, {snap.samples} samples every {snap.interval * 1000:.1f}ms")
    lines = [f"diag profile: pid {snap.process.pid} (python {snap.process.python or '?'}), {what}, "
             f"{snap.duration:.1f}s on thread {snap.thread_name or '?'}, taken {taken}"]
    if view.base is not None:
        lines.append(f"difference: this profile minus the base taken {timestamp(view.base.taken_at)}, per function")
        lines.append("negative: less in this profile than in the base (less time, fewer calls, a cheaper call); "
                     "per call ms: this profile's time per call minus the base's")
    if view.query.by == "function" and not all(view.shared):
        lines.append(f"own % and total % are of the {view.total_seconds:.1f}s window; rows marked - have none: "
                     f"an async def's times under yappi's wall clock include its awaits, which overlap across "
                     f"its tasks")
    if view.query.by == "task":
        lines.append(f"time per coroutine ({'sampled time of tasks running it' if snap.mode == 'sample' else 'yappi total of each async def; wall clock includes awaits'}), "
                     f"top {len(view.tasks)}")
    else:
        lines.append(f"{view.matched} functions{' matching' if view.query.pattern else ''}, "
                     f"top {len(view.functions)} by {view.query.sort}")
    lines += [f"note: {n}" for n in snap.notes]
    return lines


def _share(seconds: float, total: float) -> str:
    return f"{100 * seconds / total:.1f}%" if total > 0 else "-"


def function_cells(fn: FunctionStat, view: ProfileView, cwd: str | None, row: int | None = None) -> tuple[str, ...]:
    """The cells of ``fn``, the ``row``-th of ``view.functions`` (its per-call figure is there)."""
    pc = view.per_call[row] if row is not None and row < len(view.per_call) else per_call(fn)
    sampled = view.snapshot.mode == "sample"
    signed = "+" if view.base is not None else ""
    shared = view.shared[row] if row is not None and row < len(view.shared) else True
    return tuple(safe_text(c) for c in (
        "-" if sampled else str(fn.calls),
        f"{fn.own_seconds:.4f}", _share(fn.own_seconds, view.total_seconds) if shared else "-",
        f"{fn.total_seconds:.4f}", _share(fn.total_seconds, view.total_seconds) if shared else "-",
        "-" if pc is None or sampled else f"{pc * 1000:{signed}.4f}",
        f"{short_path(fn.file, cwd)}:{fn.line}", fn.name,
    ))


def task_cells(row: TaskRow, cwd: str | None) -> tuple[str, ...]:
    where = f"{short_path(row.file, cwd)}:{row.line}" if row.file else "-"
    cells = (str(row.tasks), f"{row.seconds:.4f}", f"{100 * row.share:.1f}%", row.coro, where)
    return tuple(safe_text(c) for c in cells)


def render(view: ProfileView, out: TextIO, *, cwd: str | None = None) -> None:
    lines = header(view)
    if view.query.by == "task":
        rows = [TASK_COLUMNS] + [task_cells(r, cwd) for r in view.tasks]
    else:
        rows = [FUNCTION_COLUMNS] + [function_cells(f, view, cwd, n) for n, f in enumerate(view.functions)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.rjust(w) if i < len(r) - 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    out.write(text_lines(lines))
