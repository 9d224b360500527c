"""The profile snapshot: where one thread of a process spent a profiling window.

Two modes fill it.  ``yappi`` (deterministic, per function call) gives per-function
calls and own/total times plus caller -> callee edges, but no stacks: yappi keeps
only edges.  ``sample`` (a sampler thread reading the loop thread's stack about 100
times a second) gives whole stacks with counts and the task each sample ran in.
Like every snapshot it is plain data and round-trips through JSON with a ``schema``
tag; readers default the fields they do not know.

Usage::

    snap = ProfileSnapshot.from_json(text)
    for fn in snap.functions:
        print(fn.name, fn.calls, fn.own_seconds)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from diag.documents import finite_float, load_json, require, timestamp
from diag.errors import TargetError
from diag.model.task_snapshot import MALFORMED, NOT_JSON, ProcessInfo, check_schema

SCHEMA_NAME = "diag.profile"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"

MODES = ("yappi", "sample")
CLOCKS = ("wall", "cpu")


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


@dataclass(frozen=True)
class FunctionStat:
    """One function's totals over the window.

    ``calls`` counts every call, ``primitive_calls`` the non-recursive ones (yappi's
    ``nactualcall``); ``own_seconds`` excludes callees, ``total_seconds`` includes them.
    In sample mode calls are unknown (0) and times are samples times the interval.
    ``coroutine`` marks ``async def`` functions (their wall time includes awaits).
    """

    name: str
    file: str
    line: int
    calls: int = 0
    primitive_calls: int = 0
    own_seconds: float = 0.0
    total_seconds: float = 0.0
    coroutine: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "line": self.line, "calls": self.calls,
                "primitive_calls": self.primitive_calls, "own_seconds": self.own_seconds,
                "total_seconds": self.total_seconds, "coroutine": self.coroutine}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FunctionStat:
        calls = int(d.get("calls") or 0)
        return cls(str(d.get("name", "?")), str(d.get("file", "?")), int(d.get("line") or 0), calls,
                   _int_or(d.get("primitive_calls"), calls),
                   finite_float(d.get("own_seconds") or 0.0, "own_seconds"),
                   finite_float(d.get("total_seconds") or 0.0, "total_seconds"), bool(d.get("coroutine", False)))


@dataclass(frozen=True)
class CallEdge:
    """Calls from ``functions[caller]`` to ``functions[callee]`` and the callee's time in them."""

    caller: int
    callee: int
    calls: int
    primitive_calls: int
    own_seconds: float
    total_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"caller": self.caller, "callee": self.callee, "calls": self.calls,
                "primitive_calls": self.primitive_calls, "own_seconds": self.own_seconds,
                "total_seconds": self.total_seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallEdge:
        calls = int(d.get("calls") or 0)
        return cls(int(d["caller"]), int(d["callee"]), calls,
                   _int_or(d.get("primitive_calls"), calls),
                   finite_float(d.get("own_seconds") or 0.0, "own_seconds"),
                   finite_float(d.get("total_seconds") or 0.0, "total_seconds"))


@dataclass(frozen=True)
class SampleFrame:
    """A code location seen in samples: function, file and the line executing."""

    name: str
    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "line": self.line}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SampleFrame:
        return cls(str(d.get("name", "?")), str(d.get("file", "?")), int(d.get("line") or 0))


@dataclass(frozen=True)
class SampleStack:
    """A distinct stack (indices into ``frames``, outermost first), how often it was
    seen, and the task it ran in (index into ``tasks``; -1 outside any task)."""

    frames: tuple[int, ...]
    count: int
    task: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {"frames": list(self.frames), "count": self.count, "task": self.task}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SampleStack:
        return cls(tuple(int(i) for i in d.get("frames") or ()), int(d.get("count") or 0),
                   _int_or(d.get("task"), -1))


@dataclass(frozen=True)
class TaskTotal:
    """Samples charged to tasks running one coroutine function, and how many tasks that was."""

    coro: str
    samples: int
    tasks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"coro": self.coro, "samples": self.samples, "tasks": self.tasks}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskTotal:
        return cls(str(d.get("coro", "?")), int(d.get("samples") or 0), int(d.get("tasks") or 1))


@dataclass(frozen=True)
class ProfileSnapshot:
    """One profiling window of one thread (the event loop's).

    ``seconds`` is the window asked for, ``duration`` the one measured; ``interval``
    is the mean time between samples (sample mode).  ``samples`` counts every sample,
    ``stacks`` and ``tasks`` break them down.  ``notes`` says what was cut or refused.
    """

    taken_at: float
    process: ProcessInfo
    mode: str
    clock: str
    seconds: float
    duration: float
    thread_name: str = ""
    functions: tuple[FunctionStat, ...] = ()
    edges: tuple[CallEdge, ...] = ()
    frames: tuple[SampleFrame, ...] = ()
    stacks: tuple[SampleStack, ...] = ()
    tasks: tuple[TaskTotal, ...] = ()
    samples: int = 0
    interval: float = 0.0
    notes: tuple[str, ...] = ()
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "taken_at": self.taken_at, "process": self.process.to_dict(),
            "mode": self.mode, "clock": self.clock, "seconds": self.seconds, "duration": self.duration,
            "thread_name": self.thread_name, "samples": self.samples, "interval": self.interval,
            "notes": list(self.notes),
            "functions": [f.to_dict() for f in self.functions],
            "edges": [e.to_dict() for e in self.edges],
            "frames": [f.to_dict() for f in self.frames],
            "stacks": [s.to_dict() for s in self.stacks],
            "tasks": [t.to_dict() for t in self.tasks],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> ProfileSnapshot:
        """Build from parsed JSON; raises ``TargetError`` for anything that is not a profile."""
        if not isinstance(d, Mapping):
            raise TargetError("not a diag profile (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        require(d, ("taken_at", "mode"), "diag profile")
        try:
            mode = str(d.get("mode") or "yappi")
            clock = str(d.get("clock") or "wall")
            snap = cls(
                taken_at=timestamp(d.get("taken_at")),
                process=ProcessInfo.from_dict(d.get("process") or {}),
                mode=mode if mode in MODES else "yappi",
                clock=clock if clock in CLOCKS else "wall",
                seconds=finite_float(d.get("seconds") or 0.0, "seconds"),
                duration=finite_float(d.get("duration") or 0.0, "duration"),
                thread_name=str(d.get("thread_name") or ""),
                functions=tuple(FunctionStat.from_dict(f) for f in d.get("functions") or ()),
                edges=tuple(CallEdge.from_dict(e) for e in d.get("edges") or ()),
                frames=tuple(SampleFrame.from_dict(f) for f in d.get("frames") or ()),
                stacks=tuple(SampleStack.from_dict(s) for s in d.get("stacks") or ()),
                tasks=tuple(TaskTotal.from_dict(t) for t in d.get("tasks") or ()),
                samples=int(d.get("samples") or 0),
                interval=finite_float(d.get("interval") or 0.0, "interval"),
                notes=tuple(str(n) for n in d.get("notes") or ()),
            )
        except MALFORMED as err:
            raise TargetError(f"malformed diag profile: {err.__class__.__name__}: {err}") from None
        n_funcs, n_frames, n_tasks = len(snap.functions), len(snap.frames), len(snap.tasks)
        if any(not (0 <= e.caller < n_funcs and 0 <= e.callee < n_funcs) for e in snap.edges) or any(
                not all(0 <= i < n_frames for i in s.frames) or not -1 <= s.task < n_tasks for s in snap.stacks):
            raise TargetError("malformed diag profile: an index points outside its table")
        return snap

    @classmethod
    def from_json(cls, text: str | bytes) -> ProfileSnapshot:
        try:
            data = load_json(text)
        except NOT_JSON as err:
            raise TargetError(f"not a diag profile: invalid JSON ({err})") from None
        return cls.from_dict(data)


__all__ = ["SCHEMA", "MODES", "CLOCKS", "FunctionStat", "CallEdge", "SampleFrame", "SampleStack", "TaskTotal",
           "ProfileSnapshot"]
