"""``diag sync``: every live primitive, who holds it and who waits; table and text."""

from __future__ import annotations

from typing import Sequence, TextIO

from rich.console import Console

from diag.render import fit
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column, Layout, Paragraph, Piece
from diag.render.tasks_table import frame_pieces, print_table
from diag.model.sync_snapshot import Holder, PrimitiveState, SyncSnapshot
from diag.wording import also_named, plural


def state_parts(state: PrimitiveState) -> list[str]:
    """``value 0/4``, ``locked``, ``size 0/1``, ``getters 1``...: the state in short parts."""
    p = state.primitive
    # permits acquired by one task and released by another or by a timer (by design)
    handed = [] if state.handoff_seconds is None else [
        f"(handed on: last released by other code than its holder's {fmt.duration(state.handoff_seconds)} ago)"]
    if p.kind in ("semaphore", "bounded_semaphore"):
        return [f"value {p.value}" + (f"/{p.capacity}" if p.capacity is not None else "")] + handed
    if p.kind in ("lock", "condition"):
        return ["locked" if p.locked else "unlocked"] + handed
    if p.kind == "event":
        return ["set" if p.is_set else "unset"]
    if p.kind == "queue":
        return [f"size {p.size}/{p.maxsize or 'inf'}", f"getters {p.getters}", f"putters {p.putters}"]
    return []


def state_text(state: PrimitiveState) -> str:
    return " ".join(state_parts(state))


def holder_text(holder: Holder, cwd: str | None, handed_on: bool = False) -> str:
    who = f"task {holder.task_id}" if holder.task_id is not None else "no task"
    if not holder.task_alive:
        who += " (finished: other code releases it)" if handed_on else " (FINISHED: leaked)"
    elif holder.skipped_release and not handed_on:
        who += f" ({holder.task_state}; LEAKED: its taker left past its release)"
    elif holder.task_state:
        who += f" ({holder.task_state})"
    at = f" at {fmt.where(holder.site[0], cwd)} {holder.site[0].function}" if holder.site else ""
    return f"{who}{at} for {fmt.duration(holder.held_seconds)}"


def waiters_parts(state: PrimitiveState) -> list[str]:
    n = len(state.waiting_tasks)
    if not n:
        return ["-"]
    return [str(n), f"(longest {fmt.duration(state.longest_wait)})"]


def waiters_text(state: PrimitiveState) -> str:
    return " ".join(waiters_parts(state))


def _interesting(snap: SyncSnapshot, show_all: bool) -> list[PrimitiveState]:
    if show_all:
        return list(snap.primitives)
    return [s for s in snap.primitives if s.holders or s.waiting_tasks or s.primitive.locked]


def which_shown(show_all: bool) -> str:
    """What the count of shown primitives counts; the hint to ``--all`` only where it is missing."""
    return "(every one, --all)" if show_all else "(held, locked or waited on; --all for every one)"


def header(snap: SyncSnapshot, shown: int, show_all: bool = False) -> list[str]:
    tracking = "holders tracked" if snap.holders_tracked else "holders NOT tracked (agent without holder tracking)"
    lines = [f"diag sync: pid {snap.process.pid}, {plural(len(snap.primitives), 'live primitive')}, {shown} shown "
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
    name = fmt.primitive_name(p) if p.label else "?"
    lines = ["", f"{prefix}{p.kind} {name} {p.id}: {state_text(state)}; waiters {waiters_text(state)}"]
    for holder in state.holders:
        lines.append(f"    held by {holder_text(holder, cwd, state.handoff_seconds is not None)}")
        for frame in holder.site[1:]:
            lines.append(f"        from {fmt.where(frame, cwd)} {frame.function}")
    if state.waiting_tasks:
        ids = ", ".join(str(t) for t in state.waiting_tasks[:10]) + (", ..." if len(state.waiting_tasks) > 10 else "")
        lines.append(f"    waiting: {plural(len(state.waiting_tasks), 'task')} ({ids})")
    return lines


def first_holder(state: PrimitiveState) -> Holder:
    """The holder to show when there is room for one: a leaked one, else the longest held."""
    return min(state.holders, key=lambda h: (h.task_alive and not h.skipped_release, -h.held_seconds))


def holder_pieces(holder: Holder, cwd: str | None, handed_on: bool = False) -> list[Piece]:
    """``task 12 waiting 6.4s at app.py:236 worker``: a holder in short pieces."""
    who = f"task {holder.task_id}" if holder.task_id is not None else "no task"
    state = (("finished" if handed_on else "LEAKED") if not holder.task_alive
             else f"{holder.task_state} LEAKED" if holder.skipped_release and not handed_on else holder.task_state)
    pieces = [fit.whole(who)] + ([fit.whole(state)] if state else []) + [fit.whole(fmt.duration(holder.held_seconds))]
    if holder.site:
        pieces += [fit.word("at"), *frame_pieces(holder.site[0], cwd)]
    return pieces


def holders_cell(state: PrimitiveState, cwd: str | None) -> Cell:
    """One holder, the one that matters most, and how many more (the text form lists all)."""
    handed_on = state.handoff_seconds is not None
    style = "bold red" if not handed_on and any(not h.task_alive or h.skipped_release for h in state.holders) else ""
    if not state.holders:
        return Cell.of([fit.word("-")])
    pieces = holder_pieces(first_holder(state), cwd, handed_on)
    more = len(state.holders) - 1
    if more:
        pieces.append(fit.whole(f"(+{plural(more, 'more holder')})"))
    return Cell.of(pieces, style=style)


def layouts(lead: Sequence[Column], leads: Sequence[Sequence[Cell]], states: Sequence[PrimitiveState],
            cwd: str | None) -> list[Layout]:
    """The primitives table's layouts, widest first: every column; without Id; with Kind
    joined to the label; then State and Waiters under it too; then the holder as well;
    ``lead`` columns (Process) first."""
    out = []
    for with_id, joined in ((True, False), (False, False), (False, True)):
        cols = list(lead) + ([Column("Primitive")] if joined else [Column("Kind"), Column("Label")])
        cols += ([Column("Id")] if with_id else []) + [Column("State"), Column("Holders"), Column("Waiters")]
        rows = []
        for first, state in zip(leads, states):
            p = state.primitive
            cells = ([Cell.of(primitive_pieces(state))] if joined
                     else [Cell.of([fit.whole(p.kind)]), Cell.of(primitive_pieces(state)[1:])])
            if with_id:
                cells.append(Cell.of([fit.whole(p.id)]))
            cells += [Cell.of([fit.whole(t) for t in state_parts(state)]), holders_cell(state, cwd),
                      Cell.of([fit.whole(t) for t in waiters_parts(state)])]
            rows.append(list(first) + cells)
        out.append(Layout(cols, rows))
    for apart in (True, False):
        rows = []
        for first, state in zip(leads, states):
            about = [primitive_pieces(state), [fit.whole(t) for t in state_parts(state)],
                     [fit.word("waiters:")] + [fit.whole(t) for t in waiters_parts(state)]]
            held = holders_cell(state, cwd)
            if apart:
                rows.append(list(first) + [Cell.of(*about), held])
            else:  # the holder under the primitive, in its colour
                by = ((Paragraph((fit.word("held"), fit.word("by"), *held.paragraphs[0].pieces), held.style),)
                      if state.holders else ())
                rows.append(list(first) + [Cell(tuple(Paragraph(tuple(p)) for p in about) + by)])
        cols = [Column("Primitive"), Column("Holders")] if apart else [Column("Primitive, holders")]
        out.append(Layout(list(lead) + cols, rows))
    return out


def primitive_pieces(state: PrimitiveState) -> list[Piece]:
    """The kind, the label (``?`` when none) and its other names."""
    p = state.primitive
    shown, aliases = fmt.primitive_names(p)
    pieces = [fit.whole(p.kind), fit.whole(shown if p.label else "?")]
    return pieces + ([fit.whole(also_named(aliases))] if aliases else [])


def render_table(snap: SyncSnapshot, console: Console, *, cwd: str | None = None, show_all: bool = False) -> None:
    states = _interesting(snap, show_all)
    for line in header(snap, len(states), show_all):
        console.print(fmt.cell(line, "dim"))
    print_table(console, layouts([], [[] for _ in states], states, cwd))
