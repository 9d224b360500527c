"""``diag tasks --format text --debug 2`` of many tasks: what tasks share (a stack, a
creator, the text of one wait) is made once, and the dump is the same text as made task
by task, controls escaped alike."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from diag.model.task_snapshot import TaskInfo, TaskSnapshot
from diag.model.task_wire import decode, encode
from diag.render import formatting as fmt
from diag.render import tasks_text
from tests.diag.test_tasks_json import _many


def _task_by_task(snap: TaskSnapshot, cwd: str) -> str:
    """The dump made line by line from each task, nothing shared."""
    out = [fmt.text_lines(tasks_text.header(snap))]
    for task in snap.tasks:
        evidence = tasks_text.evidence_lines(task)
        out.append(fmt.text_lines(["", tasks_text.task_title(task, cwd), f"coro {task.coro}"])
                   + fmt.text_lines(tasks_text.stack_lines(task, cwd, "    "))
                   + (fmt.text_lines(evidence) if evidence else "")
                   + fmt.text_lines([fmt.created_by(task.created_by, cwd)]))
    tail = tasks_text.footer(snap, cwd) + tasks_text.thread_lines(snap, cwd)
    if tail:
        out.append(fmt.text_lines(tail))
    return "".join(out)


def _varied_states(snap: TaskSnapshot) -> TaskSnapshot:
    """Tasks that share a Wait (five wait times in all) but differ in what the title says besides it: the main
    task, cancellation requested, a ready task, a name that would forge a line."""
    tasks: list[TaskInfo] = []
    for n, t in enumerate(snap.tasks):
        if t.wait.seconds is not None:  # waits that began in one sample, a few apart
            t = replace(t, wait=replace(t.wait, seconds=float(n % 5)))
        if n % 7 == 1:
            t = replace(t, cancelling=True, cancel_seconds=float(n % 3))
        elif n % 7 == 2:
            t = replace(t, cancelling=True)
        elif n % 7 == 3:
            t = replace(t, main=True, name="main\x1b[2J\nforged line")
        elif n % 7 == 4:
            t = replace(t, state="ready")
        tasks.append(t)
    return replace(snap, tasks=tuple(tasks))


def test_the_dump_is_the_text_made_task_by_task() -> None:
    snap = decode(json.loads(json.dumps(encode(_varied_states(_many(1500))))))
    waits = {id(t.wait) for t in snap.tasks}
    assert len(waits) < len(snap.tasks) / 2  # read back, tasks of one wait and figures share it
    out = io.StringIO()
    tasks_text.render(snap, out, cwd="/srv")
    text = out.getvalue()
    assert text == _task_by_task(snap, "/srv")
    assert "\x1b" not in text and 'task 1003 "main\\x1b[2J\\nforged line" (main) [' in text
    assert text.count("\ntask ") == len(snap.tasks)
