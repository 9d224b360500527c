"""``diag leaks`` over several processes: every finding with the process it was found in."""

from __future__ import annotations

from typing import Sequence, TextIO

from rich.console import Console

from diag.analysis.leak_verdicts import LeakReport
from diag.analysis.merge import ProcessFinding, process_name
from diag.model.target_result import TargetResult
from diag.render import fit
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column
from diag.render.leaks_render import finding_lines, layouts
from diag.render.tasks_table import print_table
from diag.render.many_tasks import failure_lines
from diag.wording import plural


def _summary(results: Sequence[TargetResult[LeakReport]]) -> list[str]:
    answered = [r for r in results if r.value is not None]
    total: dict[str, int] = {}
    lines = []
    for r in answered:
        report = r.value
        assert report is not None
        counts: dict[str, int] = {}
        for f in report.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
            total[f.kind] = total.get(f.kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no findings"
        lines.append(f"process {process_name(r)} at {r.target.target}: {parts}; {report.proof}")
        lines += [f"pid {process_name(r)}: note: {n}" for n in report.notes]
    parts = ", ".join(f"{n} {k}" for k, n in total.items()) or "no findings"
    head = (f"diag leaks: {plural(len(results), 'process', 'processes')} ({len(answered)} answered, {len(results) - len(answered)} "
            f"failed): {parts}")
    return [head] + lines + failure_lines(results)


def render_text(results: Sequence[TargetResult[LeakReport]], findings: Sequence[ProcessFinding], out: TextIO,
                *, cwd: str | None = None) -> None:
    lines = _summary(results)
    for item in findings:
        lines += finding_lines(item.finding, cwd, f" [pid {item.process}]")
    out.write(fmt.text_lines(lines))


def render_table(results: Sequence[TargetResult[LeakReport]], findings: Sequence[ProcessFinding], console: Console,
                 *, cwd: str | None = None) -> None:
    for line in _summary(results):
        console.print(fmt.cell(line, "bold red" if line.startswith("FAILED") else "dim"))
    if not findings:
        return
    leads = [[Cell.of([fit.whole(item.process)])] for item in findings]
    print_table(console, layouts([Column("Process")], leads, [item.finding for item in findings], cwd))
