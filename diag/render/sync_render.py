"""``diag sync``: every live primitive, who holds it and who waits; table and text."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.render import formatting as fmt
from diag.sync_snapshot import Holder, PrimitiveState, SyncSnapshot


def state_text(state: PrimitiveState) -> str:
    p = state.primitive
    if p.kind in ("semaphore", "bounded_semaphore"):
        return f"value {p.value}" + (f"/{p.capacity}" if p.capacity is not None else "")
    if p.kind in ("lock", "condition"):
        return "locked" if p.locked else "unlocked"
    if p.kind == "event":
        return "set" if p.is_set else "unset"
    if p.kind == "queue":
        return f"size {p.size}/{p.maxsize or 'inf'} getters {p.getters} putters {p.putters}"
    return ""


def holder_text(holder: Holder, cwd: str | None) -> str:
    who = f"task {holder.task_id}" if holder.task_id is not None else "no task"
    if not holder.task_alive:
        who += " (FINISHED: leaked)"
    elif holder.task_state:
        who += f" ({holder.task_state})"
    at = f" at {fmt.where(holder.site[0], cwd)} {holder.site[0].function}" if holder.site else ""
    return f"{who}{at} for {fmt.duration(holder.held_seconds)}"


def waiters_text(state: PrimitiveState) -> str:
    n = len(state.waiting_tasks)
    if not n:
        return "-"
    return f"{n} (longest {fmt.duration(state.longest_wait)})"


def _interesting(snap: SyncSnapshot, show_all: bool) -> list[PrimitiveState]:
    if show_all:
        return list(snap.primitives)
    return [s for s in snap.primitives if s.holders or s.waiting_tasks or s.primitive.locked]


def which_shown(show_all: bool) -> str:
    """What the count of shown primitives counts; the hint to ``--all`` only where it is missing."""
    return "(every one, --all)" if show_all else "(held, locked or waited on; --all for every one)"


def header(snap: SyncSnapshot, shown: int, show_all: bool = False) -> list[str]:
    tracking = "holders tracked" if snap.holders_tracked else "holders NOT tracked (agent without holder tracking)"
    lines = [f"diag sync: pid {snap.process.pid}, {len(snap.primitives)} live primitives, {shown} shown "
             f"{which_shown(show_all)}; {tracking}"]
    return lines + [f"note: {n}" for n in snap.notes]


def render_text(snap: SyncSnapshot, out: TextIO, *, cwd: str | None = None, show_all: bool = False) -> None:
    states = _interesting(snap, show_all)
    lines = header(snap, len(states), show_all)
    for state in states:
        lines += state_lines(state, cwd)
    out.write(fmt.text_lines(lines))


def state_lines(state: PrimitiveState, cwd: str | None, prefix: str = "") -> list[str]:
    """One primitive in the text form: a blank line, ``[prefix]kind label id: state``,
    its holders with their acquire sites, and the waiting tasks."""
    p = state.primitive
    lines = ["", f"{prefix}{p.kind} {p.label or '?'} {p.id}: {state_text(state)}; waiters {waiters_text(state)}"]
    for holder in state.holders:
        lines.append(f"    held by {holder_text(holder, cwd)}")
        for frame in holder.site[1:]:
            lines.append(f"        from {fmt.where(frame, cwd)} {frame.function}")
    if state.waiting_tasks:
        ids = ", ".join(str(t) for t in state.waiting_tasks[:10]) + (", ..." if len(state.waiting_tasks) > 10 else "")
        lines.append(f"    waiting: tasks {ids}")
    return lines


def primitive_cells(state: PrimitiveState, cwd: str | None) -> list[Text]:
    """The columns from Kind to Waiters of one primitive."""
    p = state.primitive
    held = [holder_text(h, cwd) for h in state.holders] or ["-"]
    style = "bold red" if any(not h.task_alive for h in state.holders) else ""
    return [fmt.cell(p.kind), fmt.cell(p.label or "?"), fmt.cell(p.id), fmt.cell(state_text(state)),
            fmt.cell_lines(held, style), fmt.cell(waiters_text(state))]


def render_table(snap: SyncSnapshot, console: Console, *, cwd: str | None = None, show_all: bool = False) -> None:
    states = _interesting(snap, show_all)
    for line in header(snap, len(states), show_all):
        console.print(fmt.cell(line, "dim"))
    table = Table(header_style="bold")
    for col in ("Kind", "Label", "Id", "State", "Holders", "Waiters"):
        table.add_column(col)
    for state in states:
        table.add_row(*primitive_cells(state, cwd))
    console.print(table)
