"""Plain-text task dumps in the shape of Go's ``goroutine?debug=1`` and ``debug=2``.

Grep-friendly and stable: no colour, no wrapping, one fact per line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, TextIO

from diag.analysis.loop_stalls import ended_stack, site_text, stall_frames, start_up, window_summary
from diag.model import task_wire
from diag.render import formatting as fmt
from diag.model.task_snapshot import CreatedBy, Frame, LoopInfo, TaskInfo, TaskSnapshot, Wait
from diag.wording import plural


def header(snap: TaskSnapshot, counts: tuple[int, int] | None = None) -> list[str]:
    """The summary lines; ``counts`` (tasks shown, entries listed) for a snapshot whose
    tasks were written before it (``Feed``)."""
    taken = fmt.timestamp(snap.taken_at)
    shown, listed = counts if counts is not None else (sum(t.count for t in snap.tasks), len(snap.tasks))
    lines = [
        f"diag tasks: pid {snap.process.pid} (python {snap.process.python or '?'}), "
        f"{plural(snap.total_tasks, 'pending task')}, {fmt.matching(shown, listed, snap.grouped)}, "
        f"taken {taken}",
        f"wait times: {snap.wait_clock}" if snap.wait_clock else "wait times: not measured",
    ]
    lines += [loop_line(lp) for lp in snap.loops]
    if snap.dead_tasks:
        lines.append(f"dead: {len(snap.dead_tasks)} tasks, threads or loop callbacks ended with an exception, or "
                     f"tasks destroyed while pending (diag tasks --dead)")
    lines += [f"note: {n}" for n in snap.notes]
    return lines


def loop_line(loop: LoopInfo) -> str:
    where = f"loop {loop.id} on thread {loop.thread_name or loop.thread_id or '?'}"
    history = stall_history_text(loop)
    if loop.stalled_seconds > 0:
        return f"{where}: STALLED for {fmt.duration(loop.stalled_seconds)} (the loop has not turned){history}"
    if not loop.running:
        return f"{where}: not running{history}"
    lag = "?" if loop.lag_seconds is None else f"{loop.lag_seconds * 1000:.1f}ms"
    return f"{where}: turning (heartbeat lag {lag}){history}"


def unwoken_text(loop: LoopInfo) -> str:
    """``; ASLEEP 2.3s with 1 callback ready (a lost wake-up: diag leaks)``, or the count of
    such episodes in the window, or nothing."""
    if not loop.unwoken:
        return ""
    current = next((u for u in loop.unwoken if u.ongoing), None)
    if current is not None:
        return (f"; ASLEEP {fmt.duration(current.seconds)} with {plural(len(current.callbacks), 'callback')} ready "
                f"(a lost wake-up: diag leaks)")
    return f"; {plural(len(loop.unwoken), 'lost wake-up')} in the last {loop.stall_window:.0f}s (diag leaks)"


def stall_history_text(loop: LoopInfo) -> str:
    """``; 5 stalls in the last 60s: 4 blocked, longest 0.8s at app.py:12 fetch_sync; 1 starved
    (runqueue), longest 0.4s``, or nothing when the agent kept no stall; then any lost
    wake-ups (``unwoken_text``)."""
    return _stalls_text(loop) + unwoken_text(loop)


def _stalls_text(loop: LoopInfo) -> str:
    if not loop.stalls or loop.stall_window <= 0:
        return ""
    parts = []
    for cause in ("blocked", "starved"):
        summary = window_summary(loop, cause, exclude_start=True)
        if not summary.count:
            continue
        text = f"{summary.count} {cause}"
        if cause == "starved":
            text += " (" + ", ".join(sorted({s.reason or "unmeasured" for s in summary.stalls})) + ")"
        text += f", longest {fmt.duration(summary.longest)}"
        if cause == "blocked" and summary.sites:
            text += f" at {site_text(summary.sites[0].frames, summary.sites[0].at_end, short=True)}"
        parts.append(text)
    unknown = sum(1 for s in loop.stalls if s.cause == "unknown" and not s.ongoing and not start_up(s))
    if unknown:
        parts.append(f"{unknown} unexplained")
    begun = [s for s in loop.stalls if start_up(s)]
    if begun:
        longest = max(begun, key=lambda s: s.seconds)
        frames = stall_frames(loop, longest)
        parts.append(f"{len(begun)} at start-up (no verdict), {fmt.duration(longest.seconds)}"
                     + (f" at {site_text(frames, ended_stack(longest), short=True)}" if frames else ""))
    n = len(loop.stalls)
    return f"; {plural(n, 'stall')} in the last {loop.stall_window:.0f}s: " + "; ".join(parts)


def frame_lines(frames: tuple[Frame, ...], cwd: str | None, prefix: str = "    ") -> list[str]:
    """``where function`` then the source line, for each frame (innermost first)."""
    lines = []
    for frame in frames:
        lines.append(f"{prefix}{fmt.where(frame, cwd)} {frame.function}")
        if frame.source:
            lines.append(f"{prefix}    {frame.source}")
    return lines


def stack_lines(task: TaskInfo, cwd: str | None, prefix: str) -> list[str]:
    lines = frame_lines(task.stack, cwd, prefix)
    if not task.stack:
        lines.append(f"{prefix}(no coroutine frames: not started, or finished)")
    return lines


def task_title(task: TaskInfo, cwd: str | None) -> str:
    main = " (main)" if task.main else ""
    return f'task {task.id} "{task.name}"{main} [{title_state(task, cwd)}]:'


def title_state(task: TaskInfo, cwd: str | None) -> str:
    """What a task's title says in brackets: its wait, for how long, its cancellation; the
    same for every task of one wait, state and cancellation."""
    waited = f", {fmt.duration(task.wait.seconds)}" if task.wait.seconds is not None and task.state == "waiting" else ""
    cancelling = ", cancelling" if task.cancelling else ""
    if task.cancel_seconds is not None:
        cancelling = f", cancel requested {fmt.duration(task.cancel_seconds)} ago"
    return f"{fmt.wait_reason(task.wait, cwd)}{waited}{cancelling}"


def render_debug2(snap: TaskSnapshot, cwd: str | None = None) -> list[str]:
    lines = header(snap)
    for task in snap.tasks:
        lines.append("")
        lines.append(task_title(task, cwd))
        lines.append(f"coro {task.coro}")
        lines += stack_lines(task, cwd, "    ")
        lines += evidence_lines(task)
        lines.append(fmt.created_by(task.created_by, cwd))
    return lines + footer(snap, cwd) + thread_lines(snap, cwd)


def evidence_lines(task: TaskInfo) -> list[str]:
    """What can end the wait, and who keeps the awaited future (``diag leaks`` reads these)."""
    wait = task.wait
    lines = []
    if wait.deadline_known and task.state == "waiting":
        if wait.deadline is None:
            lines.append("ends: nothing ends this wait on its own (no timeout or timer)")
        else:
            lines.append(f"ends: within {fmt.duration(wait.deadline)} ({wait.deadline_by})")
    if wait.owner:
        lines.append(f"future kept by {wait.owner}")
    return lines


def thread_lines(snap: TaskSnapshot, cwd: str | None) -> list[str]:
    """Every thread but the agent's, as Go's dump shows every goroutine."""
    lines = []
    for thread in snap.threads:
        role = f", executor {thread.executor}" if thread.executor else ""
        runs = f", runs the call awaited as future {thread.runs_future}" if thread.runs_future else ""
        lines += ["", f'thread {thread.id} "{thread.name}"{role}{runs}:'] + frame_lines(thread.stack, cwd)
    return lines


def dead_lines(snap: TaskSnapshot, cwd: str | None) -> list[str]:
    """The agent's log of tasks that ended badly, newest first (``diag tasks --dead``)."""
    count = len(snap.dead_tasks)
    threads = sum(1 for d in snap.dead_tasks if d.how == "thread_exception")
    callbacks = sum(1 for d in snap.dead_tasks if d.how == "callback_exception")
    tasks = count - threads - callbacks
    what_died = f"{tasks} {'task' if tasks == 1 else 'tasks'}"
    if threads:
        what_died += f", {threads} {'thread' if threads == 1 else 'threads'}"
    if callbacks:
        what_died += f", {callbacks} loop {'callback' if callbacks == 1 else 'callbacks'}"
    lines = [f"diag tasks --dead: pid {snap.process.pid}: {what_died} in the log"]
    if not snap.dead_tasks:
        lines.append("(none: no task, thread or callback of the loop has ended with an exception, and no task "
                     "was destroyed while pending, since the agent started)")
    for dead in reversed(snap.dead_tasks):
        ago = fmt.duration(dead.ended_seconds)
        if dead.how in ("thread_exception", "callback_exception"):
            if dead.how == "thread_exception":
                lines += ["", f'thread "{dead.name}" died with {dead.exception}, {ago} ago:']
            else:
                lines += ["", f"a callback of the loop raised {dead.exception}, {ago} ago ({dead.name}):"]
            lines.append(f"function {dead.coro}")
            lines += frame_lines(dead.stack, cwd)
            if dead.touched:
                lines.append(f"used: {', '.join(dead.touched)}")
            continue
        what = (f"died with {dead.exception}" if dead.how == "exception"
                else "destroyed by the GC while pending (it never finished)")
        who = f"task {dead.id}" if dead.id > 0 else "a task diag had not numbered"
        lines += ["", f'{who} "{dead.name}" {what}, {ago} ago:', f"coro {dead.coro}"]
        lines += frame_lines(dead.stack, cwd)
        if dead.touched:
            lines.append(f"used: {', '.join(dead.touched)}")
        lines.append(fmt.created_by(dead.created_by, cwd))
    return lines


def render_debug1(snap: TaskSnapshot, cwd: str | None = None) -> list[str]:
    lines = header(snap)
    for group in snap.tasks:
        noun = "task" if group.count == 1 else "tasks"
        waited = ""
        if group.state == "waiting" and group.wait.seconds is not None:
            waited = f", waiting up to {fmt.duration(group.wait.seconds)}"
        lines.append("")
        lines.append(f"{group.count} {noun} @ {fmt.wait_reason(group.wait, cwd)}{waited}: {group.state} coro {group.coro}")
        lines += stack_lines(group, cwd, "#   ")
        ids = ", ".join(str(i) for i in group.ids[:10]) + (", ..." if len(group.ids) > 10 else "")
        lines.append(f"#   {fmt.created_by(group.created_by, cwd)}; task ids: {ids or group.id}")
    return lines + footer(snap, cwd)


def footer(snap: TaskSnapshot, cwd: str | None) -> list[str]:
    lines = []
    for cycle in snap.await_cycles:
        chain = " -> ".join(f"task {i}" for i in cycle + cycle[:1])
        lines += ["", f"DEADLOCK: await cycle {chain}"]
    for loop in snap.loops:
        current = next((s for s in loop.stalls if s.ongoing), None)
        if loop.stalled_seconds > 0 and loop.blocking_stack:
            state = "is starved (ready to turn, not run)" if current is not None and current.cause == "starved" else "is blocked"
            lines += ["", f"loop {loop.id} {state}; thread {loop.thread_name or loop.thread_id} is at:"]
            lines += frame_lines(loop.blocking_stack, cwd)
    return lines


def render(snap: TaskSnapshot, out: TextIO, *, cwd: str | None = None) -> None:
    if snap.grouped:
        out.write(fmt.text_lines(render_debug1(snap, cwd)))
        return
    out.write(fmt.text_lines(header(snap)))
    _Blocks(cwd).write(snap.tasks, out)
    _write_tail(snap, out, cwd)


def _write_tail(snap: TaskSnapshot, out: TextIO, cwd: str | None) -> None:
    tail = footer(snap, cwd) + thread_lines(snap, cwd)
    if tail:
        out.write(fmt.text_lines(tail))


class _Blocks:
    """Every task in full, written as it is made: the text of a stack (and of a creator)
    is made once however many tasks share it, as the compact form's tables share them.
    So is the text of a wait (tasks stuck together share their Wait object, and their
    figures): escaping is character by character, so pieces escaped apart join as the
    whole line escaped would.  The Waits of the tasks written must outlive this (the
    text of a wait is known by its identity)."""

    def __init__(self, cwd: str | None) -> None:
        self.cwd = cwd
        self.stacks: dict[tuple[Frame, ...], str] = {}
        self.creators: dict[CreatedBy | None, str] = {}
        self.states: dict[tuple[object, ...], tuple[str, str]] = {}
        self.coros: dict[str, str] = {}

    def write(self, tasks: Iterable[TaskInfo], out: TextIO) -> None:
        cwd, stacks, creators, states, coros = self.cwd, self.stacks, self.creators, self.states, self.coros
        for task in tasks:
            stack = stacks.get(task.stack)
            if stack is None:
                stack = stacks[task.stack] = fmt.text_lines(stack_lines(task, cwd, "    "))
            creator = creators.get(task.created_by)
            if creator is None:
                creator = creators[task.created_by] = fmt.text_lines([fmt.created_by(task.created_by, cwd)])
            key = (id(task.wait), task.state, task.cancelling, task.cancel_seconds)
            state = states.get(key)
            if state is None:
                evidence = evidence_lines(task)
                state = states[key] = (fmt.safe_text(title_state(task, cwd)) + "]:\n",
                                       fmt.text_lines(evidence) if evidence else "")
            coro = coros.get(task.coro)
            if coro is None:
                coro = coros[task.coro] = fmt.safe_text(f"coro {task.coro}") + "\n"
            out.write("\n" + fmt.safe_text(f'task {task.id} "{task.name}"') + (" (main) [" if task.main else " [")
                      + state[0] + coro + stack + state[1] + creator)


class Feed(task_wire.SliceReader):
    """Writes a full task dump as it comes (``Source.tasks_feed``).  A dump of one slice
    (the agent's 2,000 tasks) is written as ``render`` writes it, once it is all in.  A
    longer one is written a slice at a time as the slices arrive: a first line saying so,
    every task, then the summary ``render`` puts first (counts, loops, notes), the
    deadlocks and the threads.  What comes after a damaged part is not written: the
    error says what happened, and what was written stays true."""

    def __init__(self, out: TextIO, cwd: str | None) -> None:
        super().__init__()
        self.out = out
        self.cwd = cwd
        self._figured: dict[tuple[object, ...], Wait] = {}
        self._first: list[TaskInfo] | None = None  # the first slice, until a second comes
        self._blocks: _Blocks | None = None  # once the tasks are written as they come
        self._shown = 0
        self._listed = 0

    def whole(self, doc: dict[str, Any]) -> None:
        render(TaskSnapshot.from_dict(doc), self.out, cwd=self.cwd)

    def tail(self, doc: dict[str, Any]) -> None:
        doc = {**doc, "tasks": []}
        task_wire.check(doc)
        snap = task_wire.rest(doc)
        if self._blocks is None:
            render(replace(snap, tasks=tuple(self._first or ())), self.out, cwd=self.cwd)
            return
        self.out.write("\n" + fmt.text_lines(header(snap, (self._shown, self._listed))))
        _write_tail(snap, self.out, self.cwd)

    def rows(self, rows: list[Any], part: dict[str, Any]) -> None:
        tasks = task_wire.decode_rows(rows, self.tables, self._figured)
        self._shown += sum(t.count for t in tasks)
        self._listed += len(tasks)
        if self._blocks is None:
            if self._first is None:
                self._first = tasks
                return
            first = task_wire.rest({**self.head, "tasks": []})
            self.out.write(fmt.text_lines([
                f"diag tasks: pid {first.process.pid} (python {first.process.python or '?'}), every task as the "
                f"agent describes it, taken {fmt.timestamp(first.taken_at)}; the summary follows them"]))
            self._blocks = _Blocks(self.cwd)
            self._blocks.write(self._first, self.out)
            self._first = None
        self._blocks.write(tasks, self.out)
