"""``diag leaks``: findings as text (one block each) or a rich table."""

from __future__ import annotations

from typing import Sequence, TextIO

from rich.console import Console

from diag.analysis.leak_verdicts import Finding, LeakReport
from diag.render import fit
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column, Layout, Paragraph
from diag.render.tasks_table import frame_pieces, print_table
from diag.model.task_snapshot import Frame

KIND_STYLE = {"proven_leak": "bold red", "leaked_permit": "bold red", "deadlock": "bold red", "orphaned": "bold red",
          "loop_blocked": "bold red", "exhausted": "yellow", "suspect": "yellow",
          "loop_starved": "yellow", "incomplete": "bold red"}


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


def site_frames(f: Finding, cwd: str | None) -> list[Frame]:
    """The finding's frames worth a table cell: the program's own (up to three), or
    asyncio's when it has none."""
    mine = [fr for fr in f.site if not fmt.short_path(fr.file, cwd).startswith("asyncio/")]
    return (mine or list(f.site))[:3]


def where_cell(f: Finding, cwd: str | None) -> Cell:
    frames = site_frames(f, cwd)
    return Cell.of(*(frame_pieces(fr, cwd) for fr in frames)) if frames else Cell.of([fit.word("-")])


def layouts(lead: Sequence[Column], leads: Sequence[Sequence[Cell]], findings: Sequence[Finding],
            cwd: str | None) -> list[Layout]:
    """The findings table's layouts, widest first: every column; without Tasks (the title
    counts them); then the kind, title and evidence in one column beside Where."""
    out = []
    for with_count in (True, False):
        cols = list(lead) + [Column("Kind"), Column("What", floor=20), Column("Evidence", floor=24),
                             Column("Where")] + ([Column("Tasks", justify="right")] if with_count else [])
        rows = []
        for first, f in zip(leads, findings):
            cells = [Cell.of([fit.whole(f.kind)], style=KIND_STYLE.get(f.kind, "")), Cell.of(fit.words(f.title)),
                     Cell.of(fit.words(f.evidence)), where_cell(f, cwd)]
            if with_count:
                cells.append(Cell.of([fit.whole(str(f.task_count))]))
            rows.append(list(first) + cells)
        out.append(Layout(cols, rows, show_lines=True))
    rows = []
    for first, f in zip(leads, findings):
        finding = Cell((Paragraph((fit.whole(f.kind.upper()),), KIND_STYLE.get(f.kind, "")),
                        Paragraph(tuple(fit.words(f.title)), "bold"), Paragraph(tuple(fit.words(f.evidence)))))
        rows.append(list(first) + [finding, where_cell(f, cwd)])
    out.append(Layout(list(lead) + [Column("Finding", floor=30), Column("Where")], rows, show_lines=True))
    return out


def render_table(report: LeakReport, console: Console, *, cwd: str | None = None) -> None:
    for line in _summary(report):
        console.print(fmt.cell(line, "dim"))
    if not report.findings:
        return
    print_table(console, layouts([], [[] for _ in report.findings], report.findings, cwd))
