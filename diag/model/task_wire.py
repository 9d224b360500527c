"""The compact form of a task snapshot, ``diag.tasks/2``: what the agent sends and ``-o`` saves.

In ``diag.tasks/1`` every task repeats its whole stack, file paths and all: about 880
bytes a task.  Here, as in pprof's string and location tables, what tasks share is sent
once and tasks refer to it by index:

- ``strings``: distinct strings (file names, functions, source lines, coroutines, loops,
  states);
- ``frames``: ``[file, line, function, source]``, strings as indexes;
- ``stacks``: lists of frame indexes, innermost first;
- ``waits``: distinct waits (``Wait.to_dict`` without the figures that differ from
  task to task: ``seconds``, ``time_left``, ``deadline``);
- ``creators``: distinct ``CreatedBy.to_dict`` entries;
- ``tasks``: one row per task (or group), its columns named by ``task_fields``:
  ``[id, name, coro, state, stack, wait, created_by, loop, seconds]`` (``coro``,
  ``state`` and ``loop`` string indexes, ``created_by`` null when unknown), then, only
  when the task has any, a mapping of the rarer fields: ``time_left``, ``deadline``,
  ``cancelling``, ``main``, ``cancel_seconds``, ``handling_cancel``, ``count``, ``ids``.

Every other member (process, loops, threads, dead tasks, notes, ...) is as in
``diag.tasks/1``.  The tables may come after ``tasks`` in the text: the agent streams the
rows first and the tables they filled last.

Usage::

    doc = encode(snapshot)              # a dict for json.dumps
    snapshot = decode(json.loads(text))
    plain = expand(json.loads(text))    # the same document as diag.tasks/1, as dicts
"""

from __future__ import annotations

import json
import operator
from dataclasses import fields, replace
from typing import Any, Callable, Generator, Iterable, Mapping, Sequence

from diag.documents import finite_float, require
from diag.errors import TargetError
from diag.model.task_snapshot import (
    MALFORMED, SCHEMA, SCHEMA_NAME, TASK_STATES, CreatedBy, Frame, TaskInfo, TaskSnapshot, Wait,
)

WIRE_MAJOR = 2
WIRE_SCHEMA = f"{SCHEMA_NAME}/{WIRE_MAJOR}"
#: The columns of a task row, in order; a row may carry one more member, its extras.
TASK_FIELDS = ("id", "name", "coro", "state", "stack", "wait", "created_by", "loop", "seconds")
_TABLES = ("strings", "frames", "stacks", "waits", "creators")
_WAIT_FIELDS = tuple(f.name for f in fields(Wait))
_SECONDS, _TIME_LEFT, _DEADLINE = (_WAIT_FIELDS.index(name) for name in ("seconds", "time_left", "deadline"))
#: What makes two waits one entry of the ``waits`` table: every field but the figures.
_shape_key = operator.attrgetter(*(name for name in _WAIT_FIELDS if name not in ("seconds", "time_left", "deadline")))


_new_object = object.__new__
#: The most Waits a ``Tables`` keeps to know them again by identity.
_KEPT_WAITS = 4096


class Tables:
    """The tables a run of rows fills as it is built: each value gets its index on first
    sight, so rows can be sent before the tables are complete."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.frames: list[list[int]] = []
        self.stacks: list[list[int]] = []
        self.waits: list[dict[str, Any]] = []
        self.creators: list[dict[str, Any]] = []
        self._string: dict[str, int] = {}
        self._frame: dict[Frame, int] = {}
        self._stack: dict[tuple[Frame, ...], int] = {}
        self._stack_by_id: dict[int, tuple[int, tuple[Frame, ...]]] = {}
        self._wait: dict[tuple[Any, ...], int] = {}
        self._wait_by_id: dict[int, tuple[int, Wait]] = {}
        self._creator: dict[CreatedBy, int] = {}

    def string(self, text: str) -> int:
        n = self._string.get(text)
        if n is None:
            n = self._string[text] = len(self.strings)
            self.strings.append(text)
        return n

    def frame(self, frame: Frame) -> int:
        n = self._frame.get(frame)
        if n is None:
            n = self._frame[frame] = len(self.frames)
            self.frames.append([self.string(frame.file), frame.line, self.string(frame.function),
                                self.string(frame.source)])
        return n

    def stack(self, stack: tuple[Frame, ...]) -> int:
        # the collector shares one tuple among the tasks of one stack: found by identity
        # first, and kept alive meanwhile so that its id cannot be reused
        seen = self._stack_by_id.get(id(stack))
        if seen is not None and seen[1] is stack:
            return seen[0]
        n = self._stack.get(stack)
        if n is None:
            n = self._stack[stack] = len(self.stacks)
            self.stacks.append([self.frame(f) for f in stack])
        self._stack_by_id[id(stack)] = (n, stack)
        return n

    def wait(self, wait: Wait) -> int:
        # tasks stuck together share one Wait: found by identity first, as stacks are (the
        # Waits kept alive for that are bounded: most tasks have one of their own)
        seen = self._wait_by_id.get(id(wait))
        if seen is not None and seen[1] is wait:
            return seen[0]
        key = _shape_key(wait)
        n = self._wait.get(key)
        if n is None:
            n = self._wait[key] = len(self.waits)
            self.waits.append(_shape_dict(wait))
        if len(self._wait_by_id) >= _KEPT_WAITS:
            self._wait_by_id.clear()
        self._wait_by_id[id(wait)] = (n, wait)
        return n

    def creator(self, created: CreatedBy | None) -> int | None:
        if created is None:
            return None
        n = self._creator.get(created)
        if n is None:
            n = self._creator[created] = len(self.creators)
            self.creators.append(created.to_dict())
        return n

    def row(self, task: TaskInfo) -> list[Any]:
        """The task's row, filling the tables with what it refers to."""
        row: list[Any] = [task.id, task.name, self.string(task.coro), self.string(task.state),
                          self.stack(task.stack), self.wait(task.wait), self.creator(task.created_by),
                          self.string(task.loop), task.wait.seconds]
        extra: dict[str, Any] = {}
        wait = task.wait
        if wait.time_left is not None:
            extra["time_left"] = wait.time_left
        if wait.deadline is not None:
            extra["deadline"] = wait.deadline
        if task.cancelling:
            extra["cancelling"] = True
        if task.main:
            extra["main"] = True
        if task.cancel_seconds is not None:
            extra["cancel_seconds"] = task.cancel_seconds
        if task.handling_cancel:
            extra["handling_cancel"] = True
        if task.count != 1 or task.ids:
            extra["count"] = task.count
            extra["ids"] = list(task.ids)
        if extra:
            row.append(extra)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"strings": self.strings, "frames": self.frames, "stacks": self.stacks, "waits": self.waits,
                "creators": self.creators}


def _shape_dict(wait: Wait) -> dict[str, Any]:
    """A wait's entry in the ``waits`` table: its ``to_dict`` without the per-task figures."""
    d = wait.to_dict()
    del d["seconds"]
    d.pop("time_left", None)
    d.pop("deadline", None)
    if wait.deadline_known:
        d["deadline_known"] = True
    return d


def header(snapshot: TaskSnapshot) -> dict[str, Any]:
    """Every member of the ``/2`` document but the tasks and tables, in order."""
    d = snapshot.to_dict_without_tasks()
    d["schema"] = WIRE_SCHEMA
    d["task_fields"] = list(TASK_FIELDS)
    return d


def encode(snapshot: TaskSnapshot) -> dict[str, Any]:
    """The ``diag.tasks/2`` document of ``snapshot``."""
    tables = Tables()
    doc = header(snapshot)
    doc["tasks"] = [tables.row(t) for t in snapshot.tasks]
    doc.update(tables.to_dict())
    return doc


def stream(snapshot: TaskSnapshot, slice_size: int = 2000) -> Generator[bytes, None, None]:
    """The ``diag.tasks/2`` document of ``snapshot`` as UTF-8 JSON, in pieces: the other
    members, then the rows ``slice_size`` at a time, then the tables the rows filled.  No
    more than one slice's text is held at once, and each ``json.dumps`` call (which holds
    the GIL throughout) encodes one slice."""
    tables = Tables()
    head = json.dumps(header(snapshot))
    yield (head[:-1] + ', "tasks": [').encode()
    tasks = snapshot.tasks
    for start in range(0, len(tasks), slice_size):
        text = json.dumps([tables.row(t) for t in tasks[start:start + slice_size]])[1:-1]
        yield (text if start == 0 else ", " + text).encode()
    yield ("], " + json.dumps(tables.to_dict())[1:]).encode()


def stream_slices(slices: Iterable[Sequence[TaskInfo]], finish: Callable[[], TaskSnapshot]
                  ) -> Generator[bytes, None, None]:
    """The ``diag.tasks/2`` document of tasks described a slice at a time, as UTF-8 JSON in
    pieces: the schema, the rows of each slice as it comes, then the tables and, from
    ``finish()`` (called once the slices are done), every other member.  Neither the
    tasks nor their text are held beyond one slice."""
    tables = Tables()
    yield (json.dumps({"schema": WIRE_SCHEMA, "task_fields": list(TASK_FIELDS)})[:-1] + ', "tasks": [').encode()
    first = True
    for infos in slices:
        if not infos:
            continue
        text = json.dumps([tables.row(t) for t in infos])[1:-1]
        yield (text if first else ", " + text).encode()
        first = False
    rest = header(finish())
    del rest["schema"], rest["task_fields"]
    yield ("], " + json.dumps(tables.to_dict())[1:-1] + ", " + json.dumps(rest)[1:]).encode()


def _list(doc: Mapping[str, Any], name: str) -> Sequence[Any]:
    value = doc.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"{name} is {type(value).__name__}, not a list")
    return value


class TableReader:
    """The tables of a ``/2`` document, each entry checked and built once."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.strings = [str(s) for s in _list(doc, "strings")]
        self.frames = [Frame(self.string(f[0]), int(f[1] or 0), self.string(f[2]),
                             self.string(f[3]) if len(f) > 3 else "") for f in _list(doc, "frames")]
        self.stacks = [tuple(self._frame(i) for i in s) for s in _list(doc, "stacks")]
        self.frame_dicts = [f.to_dict() for f in self.frames]
        self.stack_dicts = [[self.frame_dicts[self.index(i, self.frames)] for i in s] for s in _list(doc, "stacks")]
        self.waits = [replace(Wait.from_dict(w), deadline_known=bool(w.get("deadline_known")))
                      for w in _list(doc, "waits")]
        self.wait_args = [tuple(getattr(w, name) for name in _WAIT_FIELDS) for w in self.waits]
        # the dicts printed are those of the waits read: a wait of an unknown kind says "unknown"
        self.wait_dicts = [_shape_dict(w) for w in self.waits]
        self.creators = [CreatedBy.from_dict(c) for c in _list(doc, "creators")]
        self.creator_dicts = [c.to_dict() for c in self.creators]

    @staticmethod
    def index(i: Any, table: Sequence[Any]) -> int:
        n = int(i)
        if not 0 <= n < len(table):
            raise IndexError(f"index {n} outside a table of {len(table)}")
        return n

    def _frame(self, i: Any) -> Frame:
        return self.frames[self.index(i, self.frames)]

    def string(self, i: Any) -> str:
        return self.strings[self.index(i, self.strings)]


def seconds(value: Any, what: str, infinite: bool = False) -> float | None:
    return None if value is None else finite_float(value, what, infinite=infinite)


def check(doc: Any) -> None:
    if not isinstance(doc, Mapping):
        raise TargetError("not a diag task snapshot (expected a JSON object)")
    require(doc, ("taken_at", "tasks"), "diag task snapshot")
    fields = doc.get("task_fields")
    if fields is not None and list(fields)[: len(TASK_FIELDS)] != list(TASK_FIELDS):
        raise TargetError(f"malformed diag task snapshot: task_fields {fields!r} are not {list(TASK_FIELDS)!r}")


def rest(doc: Mapping[str, Any]) -> TaskSnapshot:
    """The snapshot of every member but the tasks, read as in ``diag.tasks/1``."""
    rest = {k: v for k, v in doc.items() if k not in _TABLES and k != "task_fields"}
    rest.update(schema=SCHEMA, tasks=[])
    return TaskSnapshot.from_dict(rest)


def decode(doc: Any) -> TaskSnapshot:
    """The snapshot of a ``diag.tasks/2`` document; ``TargetError`` for anything else."""
    check(doc)
    try:
        tables = TableReader(doc)
        tasks = []
        # tasks stuck together have the same figures too (their waits began in one sample
        # of the agent): they share one Wait, as they did in the agent
        figured: dict[tuple[Any, ...], Wait] = {}
        for row in _list(doc, "tasks"):
            extra = row[9] if len(row) > 9 and isinstance(row[9], Mapping) else {}
            n = tables.index(row[5], tables.waits)
            wait = tables.waits[n]
            wait_seconds = seconds(row[8], "wait seconds")
            time_left = seconds(extra.get("time_left"), "time_left", True)
            deadline = seconds(extra.get("deadline"), "deadline", True)
            if wait_seconds is not None or time_left is not None or deadline is not None:
                key = (n, wait_seconds, time_left, deadline)
                shared = figured.get(key)
                if shared is None:
                    # built from the template's fields, positionally: dataclasses.replace
                    # would look every field up again
                    args = list(tables.wait_args[n])
                    args[_SECONDS], args[_TIME_LEFT], args[_DEADLINE] = wait_seconds, time_left, deadline
                    shared = figured[key] = Wait(*args)
                wait = shared
            state = tables.string(row[3])
            # the frozen dataclass's __init__ sets each field through object.__setattr__:
            # the same object is made here with its fields set at once
            info: TaskInfo = _new_object(TaskInfo)
            info.__dict__.update(
                id=int(row[0]), name=str(row[1]), coro=tables.string(row[2]),
                state=state if state in TASK_STATES else "waiting",
                stack=tables.stacks[tables.index(row[4], tables.stacks)], wait=wait,
                created_by=None if row[6] is None else tables.creators[tables.index(row[6], tables.creators)],
                loop=tables.string(row[7]), cancelling=bool(extra.get("cancelling", False)),
                count=int(extra.get("count", 1)), ids=tuple(int(i) for i in extra.get("ids") or ()),
                main=bool(extra.get("main", False)),
                cancel_seconds=seconds(extra.get("cancel_seconds"), "cancel_seconds"),
                handling_cancel=bool(extra.get("handling_cancel", False)),
            )
            tasks.append(info)
        return replace(rest(doc), tasks=tuple(tasks))
    except TargetError:
        raise
    except (*MALFORMED, IndexError) as err:
        raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None


#: Keys of an expanded task whose values tasks share (one list or dict per table entry).
SHARED_KEYS = ("stack", "created_by")


def expand(doc: Any) -> dict[str, Any]:
    """A ``diag.tasks/2`` document as the ``diag.tasks/1`` document of the same snapshot,
    built from the tables as plain dicts (tasks of one stack share its list): what
    ``--format json`` prints, without a dataclass per task on the way."""
    check(doc)
    try:
        tables = TableReader(doc)
        tasks = []
        for row in _list(doc, "tasks"):
            extra = row[9] if len(row) > 9 and isinstance(row[9], Mapping) else {}
            shape = tables.wait_dicts[tables.index(row[5], tables.wait_dicts)]
            wait: dict[str, Any] = {"kind": shape.get("kind", "unknown"), "detail": shape.get("detail", ""),
                                    "seconds": seconds(row[8], "wait seconds")}
            wait.update((k, v) for k, v in shape.items() if k not in ("kind", "detail", "deadline_known"))
            if shape.get("deadline_known"):
                wait["deadline"] = seconds(extra.get("deadline"), "deadline", True)
            if "time_left" in extra:
                wait["time_left"] = seconds(extra["time_left"], "time_left", True)
            task: dict[str, Any] = {
                "id": int(row[0]), "name": str(row[1]), "coro": tables.string(row[2]),
                "state": tables.string(row[3]),
                "stack": tables.stack_dicts[tables.index(row[4], tables.stack_dicts)], "wait": wait,
                "created_by": None if row[6] is None else tables.creator_dicts[
                    tables.index(row[6], tables.creator_dicts)],
                "loop": tables.string(row[7]), "cancelling": bool(extra.get("cancelling", False)),
            }
            if extra.get("main"):
                task["main"] = True
            if extra.get("cancel_seconds") is not None:
                task["cancel_seconds"] = seconds(extra["cancel_seconds"], "cancel_seconds")
            if extra.get("handling_cancel"):
                task["handling_cancel"] = True
            if "count" in extra:
                task["count"] = int(extra["count"])
                task["ids"] = [int(i) for i in extra.get("ids") or ()]
            tasks.append(task)
        out = rest(doc).to_dict()
        out["tasks"] = tasks
        return out
    except TargetError:
        raise
    except (*MALFORMED, IndexError) as err:
        raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None


__all__ = ["WIRE_SCHEMA", "WIRE_MAJOR", "TASK_FIELDS", "SHARED_KEYS", "MALFORMED", "Tables", "TableReader", "header", "encode",
           "stream", "decode", "expand", "check", "rest", "seconds"]
