"""Rich tables of tasks: one row per group (debug 1) or per task (debug 2)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from diag.render import formatting as fmt
from diag.render.tasks_text import footer, header
from diag.task_snapshot import TaskInfo, TaskSnapshot

STATE_STYLE = {"running": "green", "ready": "cyan", "waiting": "yellow"}


def innermost_user_frame(task: TaskInfo, cwd: str | None) -> str:
    for frame in task.stack:
        path = fmt.short_path(frame.file, cwd)
        if not path.startswith("asyncio/"):
            return f"{path}:{frame.line} {frame.function}"
    return f"{fmt.where(task.stack[0], cwd)} {task.stack[0].function}" if task.stack else "-"


def task_cells(task: TaskInfo, cwd: str | None) -> list[Any]:
    """The columns from State to Created by, for a task or a group's representative."""
    waited = fmt.duration(task.wait.seconds) if task.state == "waiting" and task.wait.seconds is not None else ""
    created = fmt.created_by(task.created_by, cwd).removeprefix("created by ")
    return [fmt.cell(task.state, STATE_STYLE.get(task.state, "")), fmt.cell(fmt.wait_reason(task.wait, cwd)),
            fmt.cell(waited), fmt.cell(task.coro), fmt.cell(innermost_user_frame(task, cwd)), fmt.cell(created)]


def render(snap: TaskSnapshot, console: Console, *, cwd: str | None = None) -> None:
    for line in header(snap):
        style = "bold red" if "STALLED" in line else "dim"
        console.print(fmt.cell(line, style))
    table = Table(show_lines=False, header_style="bold")
    if snap.grouped:
        table.add_column("Count", justify="right")
    else:
        table.add_column("Task", justify="right")
        table.add_column("Name")
    table.add_column("State")
    table.add_column("Waits on")
    table.add_column("Waited", justify="right")
    table.add_column("Coroutine")
    table.add_column("Where")
    table.add_column("Created by")
    for task in snap.tasks:
        first = [fmt.cell(str(task.count))] if snap.grouped else [fmt.cell(str(task.id)), fmt.cell(task.name)]
        table.add_row(*first, *task_cells(task, cwd))
    console.print(table)
    for line in footer(snap, cwd):
        console.print(fmt.cell(line, "bold red" if line.startswith(("DEADLOCK", "loop")) else ""))
