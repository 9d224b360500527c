"""``diag sync`` over several processes: each primitive with the process that owns it."""

from __future__ import annotations

from typing import Any, Sequence, TextIO

from rich.console import Console
from rich.table import Table

from diag.analysis.merge import ProcessPrimitive, process_name
from diag.multi_source import TargetResult
from diag.render.many_tasks import failure_lines
from diag.render import formatting as fmt
from diag.render.sync_render import primitive_cells, state_lines, which_shown
from diag.sync_snapshot import SyncSnapshot


def header(results: Sequence[TargetResult[SyncSnapshot]], shown: int, show_all: bool = False) -> list[str]:
    answered = [r for r in results if r.value is not None]
    live = sum(len(r.value.primitives) for r in answered if r.value is not None)
    lines = [f"diag sync: {len(results)} processes ({len(answered)} answered, {len(results) - len(answered)} failed), "
             f"{live} live primitives, {shown} shown {which_shown(show_all)}"]
    for r in answered:
        snap = r.value
        assert snap is not None
        tracking = "holders tracked" if snap.holders_tracked else "holders NOT tracked"
        lines.append(f"process {process_name(r)} at {r.target.target}: {len(snap.primitives)} live primitives; {tracking}")
        lines += [f"pid {process_name(r)}: note: {n}" for n in snap.notes]
    return lines + failure_lines(results)


def render_text(results: Sequence[TargetResult[SyncSnapshot]], shown: Sequence[ProcessPrimitive], out: TextIO,
                *, cwd: str | None = None, show_all: bool = False) -> None:
    lines = header(results, len(shown), show_all)
    for item in shown:
        lines += state_lines(item.state, cwd, f"pid {item.process}: ")
    out.write(fmt.text_lines(lines))


def render_table(results: Sequence[TargetResult[Any]], shown: Sequence[ProcessPrimitive], console: Console,
                 *, cwd: str | None = None, show_all: bool = False) -> None:
    for line in header(results, len(shown), show_all):
        console.print(fmt.cell(line, "bold red" if line.startswith("FAILED") else "dim"))
    table = Table(header_style="bold")
    for col in ("Process", "Kind", "Label", "Id", "State", "Holders", "Waiters"):
        table.add_column(col)
    for item in shown:
        table.add_row(fmt.cell(item.process), *primitive_cells(item.state, cwd))
    console.print(table)
