"""One frame of ``diag top`` as a rich renderable: status lines, the biggest groups of
waiting tasks, and the primitives tasks wait on.

The same renderable is shown in place by ``rich.live.Live`` on a terminal and printed
frame after frame otherwise; it carries no colour the plain form depends on.
"""

from __future__ import annotations

import datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from diag.analysis.top_summary import PrimitiveLine, RequestRate, TopSummary
from diag.render import formatting as fmt
from diag.render.tasks_text import stall_history_text
from diag.model.sync_snapshot import Holder
from diag.model.task_snapshot import LoopInfo, TaskInfo
from diag.wording import plural

#: Holders listed per primitive; the rest are counted.
MAX_HOLDERS = 2


def clock(t: float, tz: datetime.tzinfo | None = None) -> str:
    """``HH:MM:SS`` of a Unix time, in ``tz`` (local time by default)."""
    return fmt.timestamp(t, tz, "%H:%M:%S")


def title_line(summary: TopSummary, *, interval: float, hint: str = "", tz: datetime.tzinfo | None = None) -> str:
    parts = [f"diag top {summary.target}", f"pid {summary.pid} (python {summary.python or '?'})",
             clock(summary.taken_at, tz), f"every {interval:g}s"]
    if hint:
        parts.append(hint)
    return " | ".join(parts)


def status_line(summary: TopSummary, tz: datetime.tzinfo | None = None) -> str:
    if summary.outage is None:
        return "status: ok"
    out = summary.outage
    tries = plural(out.attempts, "failed attempt")
    return (f"status: target unreachable since {clock(out.since, tz)}: {out.reason} "
            f"({tries}, retrying; showing the answer of {clock(summary.taken_at, tz)})")


def tasks_line(summary: TopSummary) -> str:
    delta = ""
    if summary.tasks_delta is not None:
        delta = f" ({summary.tasks_delta:+d})"
    states = ", ".join(f"{count} {state}" for state, count in summary.states)
    return f"tasks: {summary.total_tasks} pending{delta}: {states}"


def waits_line(summary: TopSummary) -> str:
    if not summary.waits:
        return "waiting on: nothing"
    return "waiting on: " + ", ".join(f"{kind} {count}" for kind, count in summary.waits)


def loop_line(loop: LoopInfo, cwd: str | None = None, worst: float | None = None) -> str:
    """The loop's state; ``worst`` is its worst lag since the last refresh, when known."""
    where = f"loop {loop.id} on {loop.thread_name or loop.thread_id or '?'}"
    if loop.stalled_seconds > 0:
        at = ""
        if loop.blocking_stack:
            frame = loop.blocking_stack[0]
            at = f" at {fmt.where(frame, cwd)} {frame.function}"
        return f"{where}: STALLED for {fmt.duration(loop.stalled_seconds)}{at}{stall_history_text(loop)}"
    if not loop.running:
        return f"{where}: not running{stall_history_text(loop)}"
    lag = "?" if loop.lag_seconds is None else f"{loop.lag_seconds * 1000:.1f}ms"
    if worst is not None:
        lag += f", worst {worst * 1000:.1f}ms since the last refresh"
    return f"{where}: turning, lag {lag}{stall_history_text(loop)}"


def rate_text(rate: float) -> str:
    return f"{rate:.1f}" if rate < 1000 else f"{rate:.0f}"


def requests_line(requests: RequestRate) -> str:
    if requests.per_second is None:
        return f"requests/s: n/a ({requests.note})" if requests.note else "requests/s: n/a"
    line = f"requests/s: {rate_text(requests.per_second)}"
    named = [(k, v) for k, v in requests.by_series if k]
    if named:
        line += " (" + ", ".join(f"{k} {rate_text(v)}" for k, v in named) + ")"
    return line


def _where(task: TaskInfo, cwd: str | None) -> str:
    """The innermost frame outside asyncio: the code that chose to wait."""
    for frame in task.stack:
        if not fmt.short_path(frame.file, cwd).startswith("asyncio/"):
            return f"{fmt.where(frame, cwd)} {frame.function}"
    return f"{fmt.where(task.stack[0], cwd)} {task.stack[0].function}" if task.stack else "-"


def wait_text(task: TaskInfo, cwd: str | None) -> str:
    """What a group waits on, short: the wait and the primitive's name (its state is in
    the primitives table)."""
    wait = task.wait
    if wait.primitive is None:
        return fmt.wait_reason(wait, cwd)
    prim = wait.primitive  # the name its own code uses; the others are in diag tasks and sync
    return f"{wait.detail or wait.kind} {prim.named_by(wait.frame_label)[0] if prim.names else prim.id}"


def _section(title: str) -> Table:
    """A borderless table titled like the frame's other sections."""
    return Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, pad_edge=False,
                 title=Text(title), title_justify="left", title_style="bold")


def groups_table(summary: TopSummary, cwd: str | None = None) -> Table:
    table = _section(f"stuck tasks, biggest groups ({len(summary.groups)} of {summary.groups_total})")
    table.add_column("Count", justify="right")
    table.add_column("Waits on", overflow="fold")
    table.add_column("Longest", justify="right")
    table.add_column("Coroutine", overflow="fold")
    table.add_column("Where", overflow="fold")
    for group in summary.groups:
        table.add_row(fmt.cell(str(group.count)), fmt.cell(wait_text(group, cwd)),
                      fmt.cell(fmt.duration(group.wait.seconds)), fmt.cell(group.coro), fmt.cell(_where(group, cwd)))
    return table


def holder_text(holder: Holder, handed_on: bool = False) -> str:
    who = f"task {holder.task_id}" if holder.task_id is not None else "no task"
    state = (("finished" if handed_on else "LEAKED") if not holder.task_alive
             else f"{holder.task_state} LEAKED" if holder.skipped_release and not handed_on else holder.task_state)
    return f"{who} {state} {fmt.duration(holder.held_seconds)}"


def holders_text(line: PrimitiveLine) -> str:
    holders = line.state.holders
    if not holders:
        owned = line.state.primitive.kind in ("lock", "condition", "semaphore", "bounded_semaphore")
        return "not tracked" if owned and not line.state.tracked else "-"
    shown = ", ".join(holder_text(h, line.state.handoff_seconds is not None) for h in holders[:MAX_HOLDERS])
    if len(holders) > MAX_HOLDERS:
        shown += f", +{len(holders) - MAX_HOLDERS} more"
    if line.leaked:
        shown += f" ({line.leaked} leaked)"
    return shown


def in_use_text(line: PrimitiveLine) -> str:
    if line.in_use is None:
        return "-"
    if line.capacity is None:
        return f"{line.in_use}/inf" if line.state.primitive.kind == "queue" else str(line.in_use)
    return f"{line.in_use}/{line.capacity}"


def primitives_table(summary: TopSummary) -> Table:
    table = _section(f"primitives with waiters ({len(summary.primitives)} of {summary.primitives_total})")
    table.add_column("Kind")
    table.add_column("Label", overflow="fold")
    table.add_column("In use", justify="right")
    table.add_column("Waiters", justify="right")
    table.add_column("Longest", justify="right")
    table.add_column("Holders", overflow="fold")
    for line in summary.primitives:
        p = line.state.primitive
        style = "bold red" if line.leaked else ""
        table.add_row(fmt.cell(p.kind), fmt.cell(p.label or p.id), fmt.cell(in_use_text(line)),
                      fmt.cell(str(line.waiters)), fmt.cell(fmt.duration(line.state.longest_wait)),
                      fmt.cell(holders_text(line), style))
    return table


def render(summary: TopSummary, *, interval: float, hint: str = "", cwd: str | None = None,
           tz: datetime.tzinfo | None = None) -> RenderableType:
    """The whole frame.  ``hint`` (such as "q quits") goes on the title line; times are
    shown in ``tz`` (local time by default)."""
    body = "dim" if summary.stale else ""
    parts: list[RenderableType] = [
        fmt.cell(title_line(summary, interval=interval, hint=hint, tz=tz), "bold"),
        fmt.cell(status_line(summary, tz), "bold red" if summary.stale else "green"),
        fmt.cell(tasks_line(summary), body),
        fmt.cell(waits_line(summary), body),
    ]
    for n, loop in enumerate(summary.loops):
        style = "bold red" if loop.stalled_seconds > 0 else "yellow" if loop.stalls else body
        worst = summary.worst_lags[n] if n < len(summary.worst_lags) else None
        parts.append(fmt.cell(loop_line(loop, cwd, worst), style))
    if not summary.loops:
        parts.append(Text("loop: none seen by the agent", style=body))
    parts.append(fmt.cell(requests_line(summary.requests), body))
    for cycle in summary.await_cycles:
        chain = " -> ".join(f"task {i}" for i in cycle + cycle[:1])
        parts.append(Text(f"DEADLOCK: await cycle {chain}", style="bold red"))
    parts.append(Text(""))
    if summary.groups:
        parts.append(groups_table(summary, cwd))
    else:
        parts.append(Text("stuck tasks: none", style=body))
    parts.append(Text(""))
    if summary.primitives:
        parts.append(primitives_table(summary))
    else:
        parts.append(Text("primitives with waiters: none", style=body))
    return Group(*parts)
