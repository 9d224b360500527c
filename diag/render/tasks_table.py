"""Rich tables of tasks: one row per group (debug 1) or per task (debug 2).

The table fits the console (``diag.render.fit``): the wait's primitive, the code's
file:line and function, and the coroutine are never cut.  When the width runs short the
State column goes first (a running or ready task says so in Waits on), then the
primitives' ids (the text and JSON forms keep them), then Coroutine and Created by move
under Where.  A creator that was not recorded is one marker, explained under the table.
"""

from __future__ import annotations

from typing import Sequence

from rich.console import Console

from diag.render import fit
from diag.wording import also_named
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column, Layout, Legend, Piece
from diag.render.tasks_text import footer, header
from diag.model.task_snapshot import CreatedBy, Frame, Primitive, TaskInfo, TaskSnapshot, Wait

STATE_STYLE = {"running": "green", "ready": "cyan", "waiting": "yellow"}
NOT_RECORDED = "creator not recorded: made before diag started, or by asyncio.Task() directly"


def user_frame(task: TaskInfo, cwd: str | None) -> Frame | None:
    """The innermost frame outside asyncio: the code that chose to wait."""
    for frame in task.stack:
        if not fmt.short_path(frame.file, cwd).startswith("asyncio/"):
            return frame
    return task.stack[0] if task.stack else None


def frame_pieces(frame: Frame, cwd: str | None) -> list[Piece]:
    """``file:line function``: the path may lose directories from the left, never its name."""
    return [fit.path(fmt.where(frame, cwd)), fit.whole(frame.function)]


def primitive_pieces(prim: Primitive, name: str = "", *, with_id: bool = True) -> list[Piece]:
    """``<label (also: other) 0x.. value=0 waiters=3>`` as pieces; the label whole."""
    shown, aliases = fmt.primitive_names(prim, name)
    tokens = [fit.whole(shown)]
    if aliases:
        tokens.append(fit.whole(also_named(aliases)))
    if with_id:
        tokens.append(fit.word(prim.id))
    tokens += fit.words(fmt.primitive_state(prim))
    tokens[0] = fit.Piece("<" + tokens[0].text, tokens[0].kind)
    tokens[-1] = fit.Piece(tokens[-1].text + ">", tokens[-1].kind)
    return tokens


def wait_pieces(wait: Wait, cwd: str | None, *, with_id: bool = True) -> list[Piece]:
    """What a task waits on (``formatting.wait_reason``) as pieces."""
    if wait.primitive is None or wait.kind == "unknown":
        return fit.words(fmt.wait_reason(wait, cwd))
    pieces = [fit.whole(wait.detail or wait.kind)] + primitive_pieces(wait.primitive, wait.frame_label,
                                                                       with_id=with_id)
    rest = fmt.wait_reason(wait, cwd, with_primitive=False).removeprefix(wait.detail or wait.kind)
    return pieces + fit.words(rest)


def created_pieces(created: CreatedBy | None, cwd: str | None, legend: Legend) -> list[Piece]:
    """``handler in task 17 at app.py:88``; ``?¹`` when it was not recorded."""
    if created is None:
        return [fit.whole("?" + legend.mark(NOT_RECORDED))]
    in_task = f"in task {created.task_id}" if created.task_id is not None else "outside any task"
    return [fit.whole(created.function), fit.whole(in_task), fit.word("at"),
            fit.path(f"{fmt.short_path(created.file, cwd)}:{created.line}")]


def waited(task: TaskInfo) -> str:
    return fmt.duration(task.wait.seconds) if task.state == "waiting" and task.wait.seconds is not None else ""


def layouts(lead: Sequence[Column], leads: Sequence[Sequence[Cell]], tasks: Sequence[TaskInfo],
            cwd: str | None, *, named: bool = False) -> list[Layout]:
    """The task table's layouts, widest first, with ``lead`` columns (Count, Task,
    Process...) and their cells ``leads`` before the task's own; ``named`` adds the task's
    name (a column of its own while there is room, then atop the task's cell)."""
    full: list[Layout] = []
    for state, with_id in ((True, True), (False, True), (False, False)):
        legend = Legend()
        cols = list(lead) + ([Column("Name")] if named else []) + ([Column("State")] if state else []) + [
            Column("Waits on"), Column("Waited", justify="right"), Column("Coroutine"), Column("Where"),
            Column("Created by")]
        rows = []
        for first, task in zip(leads, tasks):
            frame = user_frame(task, cwd)
            cells = [Cell.of([name_piece(task)])] if named else []
            if state:
                cells.append(Cell.of([fit.whole(task.state)], style=STATE_STYLE.get(task.state, "")))
            cells += [Cell.of(wait_pieces(task.wait, cwd, with_id=with_id)), Cell.of([fit.word(waited(task))]),
                      Cell.of([fit.whole(task.coro)]),
                      Cell.of(frame_pieces(frame, cwd) if frame is not None else [fit.word("-")]),
                      Cell.of(created_pieces(task.created_by, cwd, legend))]
            rows.append(list(first) + cells)
        full.append(Layout(cols, rows, notes=legend.lines()))
    return full + [merged(lead, leads, tasks, cwd, named, wait_apart=True),
                   merged(lead, leads, tasks, cwd, named, wait_apart=False)]


def name_piece(task: TaskInfo) -> Piece:
    """A task's name: whole unless it is very long (a name is not a place in the code)."""
    return fit.whole(task.name) if len(task.name) <= 32 else fit.word(task.name)


def merged(lead: Sequence[Column], leads: Sequence[Sequence[Cell]], tasks: Sequence[TaskInfo], cwd: str | None,
           named: bool, *, wait_apart: bool) -> Layout:
    """The narrow layouts: Coroutine and Created by under Where; and, narrower still, the
    wait above them in one column; the task's name quoted atop."""
    legend = Legend()
    rows = []
    for first, task in zip(leads, tasks):
        frame = user_frame(task, cwd)
        where: list[list[Piece]] = [frame_pieces(frame, cwd) if frame is not None else [fit.word("-")]]
        if frame is None or task.coro != frame.function:
            where.append([fit.word("coro"), fit.whole(task.coro)])
        where.append([fit.word("created"), fit.word("by"), *created_pieces(task.created_by, cwd, legend)])
        wait = wait_pieces(task.wait, cwd, with_id=False)
        name = [[fit.Piece(f'"{p.text}"', p.kind) for p in [name_piece(task)]]] if named else []
        if wait_apart:
            cells = [Cell.of(*name, wait), Cell.of([fit.word(waited(task))]), Cell.of(*where)]
        else:
            cells = [Cell.of([fit.word(waited(task))]), Cell.of(*name, wait, *where)]
        rows.append(list(first) + cells)
    cols = list(lead) + ([Column("Waits on"), Column("Waited", justify="right"), Column("Where")] if wait_apart
                         else [Column("Waited", justify="right"), Column("Waits on, where")])
    return Layout(cols, rows, notes=legend.lines())


def print_table(console: Console, candidates: Sequence[Layout]) -> None:
    """The layout that fits ``console``, then its legend."""
    table, notes = fit.fit_table(candidates, console.width)
    console.print(table)
    for note in notes:
        console.print(fmt.cell(note, "dim"))


def render(snap: TaskSnapshot, console: Console, *, cwd: str | None = None) -> None:
    for line in header(snap):
        style = "bold red" if "STALLED" in line else "dim"
        console.print(fmt.cell(line, style))
    if snap.grouped:
        lead = [Column("Count", justify="right")]
        leads = [[Cell.of([fit.whole(str(t.count))])] for t in snap.tasks]
    else:
        lead = [Column("Task", justify="right")]
        leads = [[Cell.of([fit.whole(str(t.id))])] for t in snap.tasks]
    print_table(console, layouts(lead, leads, snap.tasks, cwd, named=not snap.grouped))
    for line in footer(snap, cwd):
        console.print(fmt.cell(line, "bold red" if line.startswith(("DEADLOCK", "loop")) else ""))
