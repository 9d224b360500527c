"""Small, shared ways of turning snapshot values into words (used by every renderer)."""

from __future__ import annotations

import os
import re

from diag.task_snapshot import CreatedBy, Frame, Primitive, Wait

_LIB_RX = re.compile(r".*/(?:site-packages|dist-packages)/|.*/lib/python3\.\d+/")


def short_path(path: str, cwd: str | None = None) -> str:
    """``asyncio/locks.py`` for the stdlib, ``aiohttp/web.py`` for packages, else relative to cwd."""
    m = _LIB_RX.match(path)
    if m:
        return path[m.end():]
    cwd = os.getcwd() if cwd is None else cwd
    if cwd and path.startswith(cwd.rstrip(os.sep) + os.sep):
        return path[len(cwd.rstrip(os.sep)) + 1:]
    return path


def duration(seconds: float | None) -> str:
    """Go-like durations: 0.4s, 12s, 5m03s, 2h05m."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def where(frame: Frame, cwd: str | None = None) -> str:
    return f"{short_path(frame.file, cwd)}:{frame.line}"


def primitive(prim: Primitive) -> str:
    """``<work_pool 0x7f3a.. value=0/16 waiters=3>``"""
    parts = [prim.label or prim.kind, prim.id]
    if prim.kind in ("semaphore", "bounded_semaphore"):
        cap = f"/{prim.capacity}" if prim.capacity is not None else ""
        parts.append(f"value={prim.value}{cap}")
    elif prim.kind in ("lock", "condition"):
        parts.append("locked" if prim.locked else "unlocked")
    elif prim.kind == "event":
        parts.append("set" if prim.is_set else "unset")
    elif prim.kind == "queue":
        parts.append(f"size={prim.size}/{prim.maxsize or 'inf'}")
        if prim.getters:
            parts.append(f"getters={prim.getters}")
        if prim.putters:
            parts.append(f"putters={prim.putters}")
        return "<" + " ".join(parts) + ">"
    if prim.waiters is not None:
        parts.append(f"waiters={prim.waiters}")
    return "<" + " ".join(parts) + ">"


def wait_reason(wait: Wait, cwd: str | None = None) -> str:
    """What a task waits on, in one line: ``Semaphore.acquire <pool 0x.. value=0 waiters=3>``."""
    kind = wait.kind
    if kind in ("running", "ready"):
        return kind
    text = wait.detail or kind
    if wait.primitive is not None:
        text += " " + primitive(wait.primitive)
    if kind == "sleep" and wait.time_left is not None:
        text += f" ({duration(wait.time_left)} left)"
    if kind == "task" and len(wait.tasks) == 1:
        text = f"await task {wait.tasks[0]}"
    elif wait.tasks:
        shown = ", ".join(str(t) for t in wait.tasks[:5]) + (", ..." if len(wait.tasks) > 5 else "")
        text += f" (tasks {shown})"
    if wait.created_at is not None:
        text += f" (future created at {where(wait.created_at, cwd)})"
    if kind == "unknown":
        text = f"unknown wait ({wait.detail})" if wait.detail else "unknown wait"
    return text


def created_by(created: CreatedBy | None, cwd: str | None = None) -> str:
    """``created by handler in task 17 at app.py:88`` (Go's ``created by``)."""
    if created is None:
        return "created by ? (not recorded: made before diag started, or by asyncio.Task() directly)"
    in_task = f" in task {created.task_id}" if created.task_id is not None else " outside any task"
    return f"created by {created.function}{in_task} at {short_path(created.file, cwd)}:{created.line}"
