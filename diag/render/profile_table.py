"""Rich tables of a profile: the top functions, or time per coroutine (``--by task``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from diag.analysis.profile_stats import ProfileView
from diag.render.formatting import cell
from diag.render.profile_text import FUNCTION_COLUMNS, TASK_COLUMNS, function_cells, header, task_cells


def render(view: ProfileView, console: Console, *, cwd: str | None = None) -> None:
    for line in header(view):
        console.print(cell(line, "dim"))
    table = Table(header_style="bold")
    columns = TASK_COLUMNS if view.query.by == "task" else FUNCTION_COLUMNS
    for name in columns:
        table.add_column(name, justify="left" if name in ("where", "function", "coroutine") else "right")
    if view.query.by == "task":
        for row in view.tasks:
            table.add_row(*map(cell, task_cells(row, cwd)))
    else:
        for n, fn in enumerate(view.functions):
            table.add_row(*map(cell, function_cells(fn, view, cwd, n)))
    console.print(table)
