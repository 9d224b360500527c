"""``diag tasks`` over several processes: one merged view with a process column.

Text keeps the single-process shapes (``N tasks @ ...`` groups, Go-style tasks) and
adds, per group, one line for each process's share; a target that did not answer is
a ``FAILED`` line.  The table adds a Processes (or Process) column.
"""

from __future__ import annotations

from typing import Any, Sequence, TextIO

from rich.console import Console

from diag.analysis.merge import MergedGroup, MergedTasks, process_name
from diag.model.target_result import TargetResult, failure_line
from diag.render import fit
from diag.render import formatting as fmt
from diag.render.fit import Cell, Column
from diag.render.tasks_table import layouts, print_table
from diag.render.tasks_text import loop_line, stack_lines, task_title
from diag.wording import plural


def failure_lines(results: Sequence[TargetResult[Any]]) -> list[str]:
    """One ``FAILED`` line per target that did not answer, saying why."""
    return [f"FAILED {failure_line(r)}" for r in results if not r.ok]


def header(view: MergedTasks) -> list[str]:
    answered = view.answered
    matching = fmt.matching(sum(g.count for g in view.groups), len(view.groups), view.grouped)
    failed = len(view.results) - len(answered)
    lines = [f"diag tasks: {plural(len(view.results), 'process', 'processes')} ({len(answered)} answered, "
             f"{failed} failed), {plural(view.total_tasks, 'pending task')}, {matching}"]
    clock = next((snap.wait_clock for _, snap in answered if snap.wait_clock), "")
    lines.append(f"wait times: {clock}" if clock else "wait times: not measured")
    for result in view.results:
        snap = result.value
        if snap is None:
            continue
        taken = fmt.timestamp(snap.taken_at)
        lines.append(f"process {process_name(result)} (python {snap.process.python or '?'}) at {result.target.target}: "
                     f"{plural(snap.total_tasks, 'pending task')}, taken {taken}")
    lines += failure_lines(view.results)
    for process, snap in answered:
        lines += [f"pid {process}: {loop_line(lp)}" for lp in snap.loops]
        lines += [f"pid {process}: note: {n}" for n in snap.notes]
    return lines + [f"note: {n}" for n in view.notes]


def _share_line(group: MergedGroup, cwd: str | None) -> list[str]:
    lines = []
    for share in group.shares:
        task = share.task
        noun = "task" if task.count == 1 else "tasks"
        ids = ", ".join(str(i) for i in task.ids[:10]) + (", ..." if len(task.ids) > 10 else "")
        lines.append(f"#   pid {share.process}: {task.count} {noun} @ {fmt.wait_reason(task.wait, cwd)}, "
                     f"{fmt.created_by(task.created_by, cwd)}; task ids: {ids or task.id}")
    return lines


def footer(view: MergedTasks, cwd: str | None) -> list[str]:
    lines = []
    for process, snap in view.answered:
        for cycle in snap.await_cycles:
            chain = " -> ".join(f"task {i}" for i in cycle + cycle[:1])
            lines += ["", f"pid {process}: DEADLOCK: await cycle {chain}"]
        for loop in snap.loops:
            if loop.stalled_seconds > 0 and loop.blocking_stack:
                lines += ["", f"pid {process}: loop {loop.id} is blocked; thread "
                              f"{loop.thread_name or loop.thread_id} is at:"]
                for frame in loop.blocking_stack:
                    lines.append(f"    {fmt.where(frame, cwd)} {frame.function}")
                    if frame.source:
                        lines.append(f"        {frame.source}")
    return lines


def render_text(view: MergedTasks, out: TextIO, *, cwd: str | None = None) -> None:
    lines = header(view)
    for group in view.groups:
        task = group.task
        lines.append("")
        if view.grouped:
            noun = "task" if task.count == 1 else "tasks"
            waited = ""
            if task.state == "waiting" and task.wait.seconds is not None:
                waited = f", waiting up to {fmt.duration(task.wait.seconds)}"
            lines.append(f"{task.count} {noun} @ {fmt.wait_reason(task.wait, cwd)}{waited}: {task.state} coro {task.coro}")
            lines += stack_lines(task, cwd, "#   ")
            lines += _share_line(group, cwd)
        else:
            lines.append(f"pid {group.shares[0].process} {task_title(task, cwd)}")
            lines.append(f"coro {task.coro}")
            lines += stack_lines(task, cwd, "    ")
            lines.append(fmt.created_by(task.created_by, cwd))
    out.write(fmt.text_lines(lines + footer(view, cwd)))


def render_table(view: MergedTasks, console: Console, *, cwd: str | None = None) -> None:
    for line in header(view):
        style = "bold red" if "STALLED" in line or line.startswith("FAILED") else "dim"
        console.print(fmt.cell(line, style))
    tasks = [group.task for group in view.groups]
    if view.grouped:
        lead = [Column("Count", justify="right"), Column("Processes", floor=8)]
        leads = [[Cell.of([fit.whole(str(g.task.count))]),
                  Cell.of([fit.whole(f"{s.process}:{s.task.count}") for s in g.shares])] for g in view.groups]
    else:
        lead = [Column("Process", justify="right"), Column("Task", justify="right")]
        leads = [[Cell.of([fit.whole(g.shares[0].process)]), Cell.of([fit.whole(str(g.task.id))])]
                 for g in view.groups]
    print_table(console, layouts(lead, leads, tasks, cwd, named=not view.grouped))
    for line in footer(view, cwd):
        console.print(fmt.cell(line, "bold red" if "DEADLOCK" in line or "is blocked" in line else ""))
