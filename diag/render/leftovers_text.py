"""The leak-check failure message: each leftover as ``diag tasks --debug 2`` shows it,
with the proof's verdict, then held permits, threads and grown object types."""

from __future__ import annotations

from diag.analysis.leftovers import LeftoverReport, verdict
from diag.render import formatting as fmt
from diag.render.tasks_text import stack_lines, task_title

#: Every failure message starts with this, then where the check ran.
PREFIX = "diag: leaks after"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(report: LeftoverReport) -> str:
    parts = []
    if report.tasks.tasks:
        parts.append(_count(len(report.tasks.tasks), "task still pending", "tasks still pending"))
    if report.permits:
        parts.append(_count(len(report.permits), "permit held by a finished task", "permits held by finished tasks"))
    if report.threads:
        parts.append(_count(len(report.threads), "thread still running", "threads still running"))
    if report.objects:
        parts.append(_count(len(report.objects), "object type grew", "object types grew"))
    return ", ".join(parts) or "nothing"


def render(report: LeftoverReport, where: str, cwd: str | None = None) -> str:
    """The whole message, one fact per line.  Describing a leftover never crashes the run
    it reports on: if it fails, the summary is shown with the error."""
    try:
        return _render(report, where, cwd)
    except Exception as err:
        return fmt.safe_text(f"{PREFIX} {where}: {summary(report)} (checked for {report.waited:.1f}s); "
                             f"the leftovers could not be described: {type(err).__name__}: {err}")


def _render(report: LeftoverReport, where: str, cwd: str | None) -> str:
    lines = [f"{PREFIX} {where}: {summary(report)} (checked for {report.waited:.1f}s)"]
    for task in report.tasks.tasks:
        lines.append("")
        lines.append(task_title(task, cwd))
        lines.append(f"coro {task.coro}")
        lines += stack_lines(task, cwd, "    ")
        lines.append(fmt.created_by(task.created_by, cwd))
        lines.append(f"verdict: {verdict(task, report.reachability)}")
    for permit in report.permits:
        who = f"task {permit.task_id}" if permit.task_id is not None else "code outside any task"
        at = " <- ".join(f"{fmt.where(f, cwd)} {f.function}" for f in permit.site) or "an unknown site"
        lines += ["", f"permit of {fmt.primitive(permit.primitive)} acquired by {who} "
                      f"at {at}, held {fmt.duration(permit.held_seconds)}; {who} has finished without releasing it"]
    for thread in report.threads:
        lines += ["", f'thread "{thread.name}" (target {thread.target}{", daemon" if thread.daemon else ""}) '
                      f"still running" + (" at:" if thread.stack else "")]
        for frame in thread.stack:
            lines.append(f"    {fmt.where(frame, cwd)} {frame.function}")
            if frame.source:
                lines.append(f"        {frame.source}")
    if report.objects:
        lines.append("")
        for growth in report.objects:
            lines.append(f"object growth: {growth.type_name} +{growth.after - growth.before} "
                         f"({growth.before} -> {growth.after})")
    lines += [f"note: {n}" for n in report.notes]
    return fmt.text_lines(lines).removesuffix("\n")
