"""``diag sync`` over several processes: each primitive with the process that owns it."""

from __future__ import annotations

from typing import Any, Sequence, TextIO

from rich.console import Console

from diag.analysis.merge import ProcessPrimitive, process_name
from diag.model.sync_snapshot import SyncSnapshot
from diag.render.many_tasks import failure_lines
from diag.render import fit
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column
from diag.render.sync_render import layouts, state_lines, which_shown
from diag.render.tasks_table import print_table
from diag.model.target_result import TargetResult
from diag.wording import plural


def header(results: Sequence[TargetResult[SyncSnapshot]], shown: int, show_all: bool = False) -> list[str]:
    answered = [r for r in results if r.value is not None]
    live = sum(len(r.value.primitives) for r in answered if r.value is not None)
    lines = [f"diag sync: {plural(len(results), 'process', 'processes')} ({len(answered)} answered, "
             f"{len(results) - len(answered)} failed), {plural(live, 'live primitive')}, {shown} shown "
             f"{which_shown(show_all)}"]
    for r in answered:
        snap = r.value
        assert snap is not None
        tracking = "holders tracked" if snap.holders_tracked else "holders NOT tracked"
        lines.append(f"process {process_name(r)} at {r.target.target}: {plural(len(snap.primitives), 'live primitive')}; {tracking}")
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
    leads = [[Cell.of([fit.whole(item.process)])] for item in shown]
    print_table(console, layouts([Column("Process")], leads, [item.state for item in shown], cwd))
