"""``diag sync`` over several processes: each primitive with the process that owns it."""

from __future__ import annotations

from typing import Any, Sequence, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.analysis.merge import ProcessPrimitive, process_name
from diag.multi_source import TargetResult
from diag.render.many_tasks import failure_lines
from diag.render.sync_render import holder_text, state_lines, state_text, waiters_text
from diag.sync_snapshot import SyncSnapshot


def header(results: Sequence[TargetResult[SyncSnapshot]], shown: int) -> list[str]:
    answered = [r for r in results if r.value is not None]
    live = sum(len(r.value.primitives) for r in answered if r.value is not None)
    lines = [f"diag sync: {len(results)} processes ({len(answered)} answered, {len(results) - len(answered)} failed), "
             f"{live} live primitives, {shown} shown (held, locked or waited on; --all for every one)"]
    for r in answered:
        snap = r.value
        assert snap is not None
        tracking = "holders tracked" if snap.holders_tracked else "holders NOT tracked"
        lines.append(f"process {process_name(r)} at {r.target.target}: {len(snap.primitives)} live primitives; {tracking}")
        lines += [f"pid {process_name(r)}: note: {n}" for n in snap.notes]
    return lines + failure_lines(results)


def render_text(results: Sequence[TargetResult[SyncSnapshot]], shown: Sequence[ProcessPrimitive], out: TextIO,
                *, cwd: str | None = None) -> None:
    lines = header(results, len(shown))
    for item in shown:
        lines += state_lines(item.state, cwd, f"pid {item.process}: ")
    out.write("\n".join(lines) + "\n")


def render_table(results: Sequence[TargetResult[Any]], shown: Sequence[ProcessPrimitive], console: Console,
                 *, cwd: str | None = None) -> None:
    for line in header(results, len(shown)):
        console.print(Text(line, style="bold red" if line.startswith("FAILED") else "dim"))
    table = Table(header_style="bold")
    for col in ("Process", "Kind", "Label", "Id", "State", "Holders", "Waiters"):
        table.add_column(col)
    for item in shown:
        state = item.state
        held = "\n".join(holder_text(h, cwd) for h in state.holders) or "-"
        style = "bold red" if any(not h.task_alive for h in state.holders) else ""
        table.add_row(item.process, state.primitive.kind, state.primitive.label or "?", state.primitive.id,
                      state_text(state), Text(held, style=style), waiters_text(state))
    console.print(table)
