"""``diag leaks``: findings as text (one block each) or a rich table."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diag.analysis.leak_verdicts import Finding, LeakReport
from diag.render import formatting as fmt

KIND_STYLE = {"proven_leak": "bold red", "leaked_permit": "bold red", "deadlock": "bold red",
          "loop_blocked": "bold red", "exhausted": "yellow", "suspect": "yellow",
          "loop_starved": "yellow"}


def _summary(report: LeakReport) -> list[str]:
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no findings"
    return [f"diag leaks: pid {report.process.pid}: {parts}", report.proof] + [f"note: {n}" for n in report.notes]


def finding_lines(f: Finding, cwd: str | None, tag: str = "") -> list[str]:
    """One finding in the text form: a blank line, ``KIND[ tag]: title``, evidence, site, tasks."""
    lines = ["", f"{f.kind.upper()}{tag}: {f.title}", f"    {f.evidence}"]
    for frame in f.site[:6]:
        lines.append(f"    at {fmt.where(frame, cwd)} {frame.function}")
        if frame.source:
            lines.append(f"        {frame.source}")
    if f.tasks:
        shown = ", ".join(f"{t.id} {t.name!r}" for t in f.tasks[:8])
        more = f" and {f.task_count - 8} more" if f.task_count > 8 else ""
        lines.append(f"    tasks: {shown}{more}")
    return lines


def render_text(report: LeakReport, out: TextIO, *, cwd: str | None = None) -> None:
    lines = _summary(report)
    for f in report.findings:
        lines += finding_lines(f, cwd)
    out.write(fmt.text_lines(lines))


def finding_cells(f: Finding, cwd: str | None) -> list[Text]:
    """The columns from Kind to Tasks of one finding."""
    where = [f"{fmt.where(fr, cwd)} {fr.function}" for fr in f.site[:3]] or ["-"]
    return [fmt.cell(f.kind, KIND_STYLE.get(f.kind, "")), fmt.cell(f.title), fmt.cell(f.evidence),
            fmt.cell_lines(where), fmt.cell(str(f.task_count))]


def render_table(report: LeakReport, console: Console, *, cwd: str | None = None) -> None:
    for line in _summary(report):
        console.print(fmt.cell(line, "dim"))
    if not report.findings:
        return
    table = Table(header_style="bold", show_lines=True)
    for col in ("Kind", "What", "Evidence", "Where", "Tasks"):
        table.add_column(col)
    for f in report.findings:
        table.add_row(*finding_cells(f, cwd))
    console.print(table)
