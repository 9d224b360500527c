"""The sync snapshot: every live asyncio primitive, who holds it, who waits on it, and
(on demand) which blocked tasks nothing can ever wake.

It embeds the full task snapshot taken at the same moment, so the verdicts of
``diag leaks`` are a pure function of this one document (and can be re-run offline on
a saved file).  Schema ``diag.sync/1``; unknown fields are ignored, missing ones
defaulted.

Usage::

    snap = SyncSnapshot.from_json(text)
    for state in snap.primitives:
        print(state.primitive.label, [h.task_id for h in state.holders])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from diag.documents import finite_float, load_json, require, timestamp
from diag.errors import TargetError
from diag.model.task_snapshot import MALFORMED, NOT_JSON, Frame, Primitive, ProcessInfo, TaskSnapshot, check_schema

SCHEMA_NAME = "diag.sync"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"


@dataclass(frozen=True)
class Holder:
    """A held permit.  ``task_alive`` is False when the acquiring task has finished or
    been cancelled without releasing: the permit is leaked.  ``site`` is the acquiring
    code, innermost frame first.  ``skipped_release`` holds the lines where the acquiring
    function releases the permit itself, on every path by which it returns, when that
    function has ended while its task lives on and keeps the permit: it left by an
    exception past its own release (empty when that is not so, or not known)."""

    task_id: int | None
    task_name: str | None
    task_alive: bool
    task_state: str  # running, ready, waiting, or finished
    site: tuple[Frame, ...]
    held_seconds: float
    skipped_release: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"task_id": self.task_id, "task_name": self.task_name, "task_alive": self.task_alive,
                             "task_state": self.task_state, "site": [f.to_dict() for f in self.site],
                             "held_seconds": self.held_seconds}
        if self.skipped_release:
            d["skipped_release"] = list(self.skipped_release)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Holder:
        tid = d.get("task_id")
        name = d.get("task_name")
        return cls(None if tid is None else int(tid), None if name is None else str(name),
                   bool(d.get("task_alive", True)), str(d.get("task_state") or "finished"),
                   tuple(Frame.from_dict(f) for f in d.get("site") or ()),
                   finite_float(d.get("held_seconds") or 0.0, "held_seconds"),
                   tuple(int(n) for n in d.get("skipped_release") or ()))


@dataclass(frozen=True)
class PrimitiveState:
    """One live primitive with its holders (Lock, Semaphore, Condition: when tracked)
    and the tasks waiting on it.  ``idle_seconds`` is the time since the last acquire
    or release diag saw (None when unknown); ``handoff_seconds`` the time since the last
    release made by other code than the acquirer's (another task, a callback: permits
    handed on by design), None when diag saw none.  For an Event, ``cleared_seconds``
    is the time since its last ``clear()`` and ``cleared_by`` the task that called it
    (None: outside a task, or not seen).  For a queue that tasks wait to ``get()`` from, empty,
    ``lost`` is what its keeper keeps besides: ``(where, class name, how many, how many of
    them nothing else refers to)`` (``("Pool._holders", "Conn", 3, 3)``: a pool's items taken
    from its queue and never put back), None when not looked for or not found."""

    primitive: Primitive
    holders: tuple[Holder, ...] = ()
    waiting_tasks: tuple[int, ...] = ()
    longest_wait: float | None = None
    idle_seconds: float | None = None
    tracked: bool = False
    handoff_seconds: float | None = None
    cleared_seconds: float | None = None
    cleared_by: int | None = None
    lost: tuple[str, str, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"primitive": self.primitive.to_dict(), "holders": [h.to_dict() for h in self.holders],
             "waiting_tasks": list(self.waiting_tasks), "longest_wait": self.longest_wait,
             "idle_seconds": self.idle_seconds, "tracked": self.tracked, "handoff_seconds": self.handoff_seconds}
        if self.cleared_seconds is not None:
            d["cleared_seconds"] = self.cleared_seconds
            d["cleared_by"] = self.cleared_by
        if self.lost is not None:
            d["lost"] = {"where": self.lost[0], "type": self.lost[1], "kept": self.lost[2], "unheld": self.lost[3]}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrimitiveState:
        longest = d.get("longest_wait")
        idle = d.get("idle_seconds")
        handoff = d.get("handoff_seconds")
        cleared = d.get("cleared_seconds")
        by = d.get("cleared_by")
        return cls(Primitive.from_dict(d.get("primitive") or {}),
                   tuple(Holder.from_dict(h) for h in d.get("holders") or ()),
                   tuple(int(t) for t in d.get("waiting_tasks") or ()),
                   None if longest is None else finite_float(longest, "longest_wait"),
                   None if idle is None else finite_float(idle, "idle_seconds"),
                   bool(d.get("tracked", False)),
                   None if handoff is None else finite_float(handoff, "handoff_seconds"),
                   None if cleared is None else finite_float(cleared, "cleared_seconds"),
                   int(by) if isinstance(by, int) and not isinstance(by, bool) else None,
                   _lost(d.get("lost")))


def _lost(d: object) -> tuple[str, str, int, int] | None:
    if not isinstance(d, Mapping):
        return None
    return str(d.get("where") or ""), str(d.get("type") or ""), int(d.get("kept") or 0), int(d.get("unheld") or 0)


@dataclass(frozen=True)
class Reachability:
    """The result of the reachability proof.

    ``unreachable`` are blocked tasks whose awaited object no root can reach: nothing
    can ever wake them (proven leaks).  ``unreferenced`` are blocked tasks that nothing
    reachable refers to at all (fire-and-forget), whether or not they can be woken.
    """

    ran: bool
    unreachable: tuple[int, ...] = ()
    unreferenced: tuple[int, ...] = ()
    blocked: int = 0
    objects_marked: int = 0
    seconds: float = 0.0
    complete: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "unreachable": list(self.unreachable), "unreferenced": list(self.unreferenced),
                "blocked": self.blocked, "objects_marked": self.objects_marked, "seconds": self.seconds,
                "complete": self.complete, "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reachability:
        return cls(bool(d.get("ran", False)), tuple(int(t) for t in d.get("unreachable") or ()),
                   tuple(int(t) for t in d.get("unreferenced") or ()), int(d.get("blocked") or 0),
                   int(d.get("objects_marked") or 0), finite_float(d.get("seconds") or 0.0, "proof seconds"),
                   bool(d.get("complete", True)), str(d.get("note") or ""))


@dataclass(frozen=True)
class SyncSnapshot:
    """Primitives, tasks and (optionally) the reachability proof of one process."""

    taken_at: float
    process: ProcessInfo
    tasks: TaskSnapshot
    primitives: tuple[PrimitiveState, ...]
    reachability: Reachability = Reachability(False)
    holders_tracked: bool = False
    notes: tuple[str, ...] = ()
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "taken_at": self.taken_at, "process": self.process.to_dict(),
                "holders_tracked": self.holders_tracked, "notes": list(self.notes),
                "reachability": self.reachability.to_dict(),
                "primitives": [p.to_dict() for p in self.primitives], "tasks": self.tasks.to_dict()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> SyncSnapshot:
        if not isinstance(d, Mapping):
            raise TargetError("not a diag sync snapshot (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        require(d, ("taken_at", "tasks", "primitives"), "diag sync snapshot")
        try:
            return cls(
                taken_at=timestamp(d.get("taken_at")),
                process=ProcessInfo.from_dict(d.get("process") or {}),
                tasks=TaskSnapshot.from_dict(d.get("tasks")),
                primitives=tuple(PrimitiveState.from_dict(p) for p in d.get("primitives") or ()),
                reachability=Reachability.from_dict(d.get("reachability") or {}),
                holders_tracked=bool(d.get("holders_tracked", False)),
                notes=tuple(str(n) for n in d.get("notes") or ()),
            )
        except MALFORMED as err:
            raise TargetError(f"malformed diag sync snapshot: {err.__class__.__name__}: {err}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> SyncSnapshot:
        try:
            data = load_json(text)
        except NOT_JSON as err:
            raise TargetError(f"not a diag sync snapshot: invalid JSON ({err})") from None
        return cls.from_dict(data)
