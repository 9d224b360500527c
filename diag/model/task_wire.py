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

Sliced, for a reader that works as the answer comes (``layout=slices``): the same document
with, in place of the tables and ``tasks``, ``slices``: a list of objects each holding the
table entries first referred to in it (same members, indexes running on from the slice
before) and its ``tasks``.  The text is laid out in lines: the first line is the document
up to ``"slices": [`` (with ``taken_at`` and ``process``), then one slice a line (a comma
before every slice but the first), and the last line closes the list and holds every
other member.  JSON escapes a newline inside a string, so a reader splits on newlines;
the whole text is still one JSON document (``joined`` makes it the plain form).

Usage::

    doc = encode(snapshot)              # a dict for json.dumps
    snapshot = decode(json.loads(text))
    plain = expand(json.loads(text))    # the same document as diag.tasks/1, as dicts
    for piece in stream_slices(slices, finish, head, sliced=True): ...   # the agent's side
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
        #: by ``id`` of a Wait: (the Wait, stack, creator, coro, state, loop, their indexes)
        self._last_by_wait: dict[int, tuple[Any, ...]] = {}
        self._sent = dict.fromkeys(_TABLES, 0)

    def delta(self) -> dict[str, list[Any]]:
        """The entries each table gained since the last call (tables that gained none are
        left out): a slice's share of the tables."""
        out = {}
        for name in _TABLES:
            table: list[Any] = getattr(self, name)
            start = self._sent[name]
            if len(table) > start:
                out[name] = table[start:]
                self._sent[name] = len(table)
        return out

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
        wait, stack, created = task.wait, task.stack, task.created_by
        # Tasks stuck together share their Wait, stack and creator: the indexes of the last
        # task with this Wait are taken again when everything they come from is the same.
        last = self._last_by_wait.get(id(wait))
        if (last is not None and last[0] is wait and last[1] is stack and last[2] is created
                and last[3] == task.coro and last[4] == task.state and last[5] == task.loop):
            row: list[Any] = [task.id, task.name, *last[6], wait.seconds]
        else:
            seen = self._wait_by_id.get(id(wait))
            row = [task.id, task.name, self.string(task.coro), self.string(task.state), self.stack(stack),
                   self.wait(wait), self.creator(created), self.string(task.loop), wait.seconds]
            if seen is not None and seen[1] is wait:  # a Wait tasks share (many have their own)
                if len(self._last_by_wait) >= _KEPT_WAITS:
                    self._last_by_wait.clear()
                self._last_by_wait[id(wait)] = (wait, stack, created, task.coro, task.state, task.loop, row[2:8])
        extra: dict[str, Any] = {}
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


def first_members(snapshot: TaskSnapshot) -> dict[str, Any]:
    """What a sliced document says on its first line: when the tasks were taken, and of
    which process."""
    return {"taken_at": snapshot.taken_at, "process": snapshot.process.to_dict()}


def stream(snapshot: TaskSnapshot, slice_size: int = 2000, sliced: bool = False) -> Generator[bytes, None, None]:
    """The ``diag.tasks/2`` document of ``snapshot`` as UTF-8 JSON, in pieces: the other
    members, then the rows ``slice_size`` at a time, then the tables the rows filled.  No
    more than one slice's text is held at once, and each ``json.dumps`` call (which holds
    the GIL throughout) encodes one slice.  ``sliced``: laid out in slices (see the
    module's text)."""
    if sliced:
        tasks = snapshot.tasks
        parts = (tasks[start:start + slice_size] for start in range(0, len(tasks), slice_size))
        yield from _sliced(parts, lambda: snapshot, first_members(snapshot))
        return
    tables = Tables()
    head = json.dumps(header(snapshot))
    yield (head[:-1] + ', "tasks": [').encode()
    tasks = snapshot.tasks
    for start in range(0, len(tasks), slice_size):
        text = json.dumps([tables.row(t) for t in tasks[start:start + slice_size]])[1:-1]
        yield (text if start == 0 else ", " + text).encode()
    yield ("], " + json.dumps(tables.to_dict())[1:]).encode()


def stream_slices(slices: Iterable[Sequence[TaskInfo]], finish: Callable[[], TaskSnapshot],
                  head: Mapping[str, Any] | None = None, sliced: bool = False) -> Generator[bytes, None, None]:
    """The ``diag.tasks/2`` document of tasks described a slice at a time, as UTF-8 JSON in
    pieces: the schema, the rows of each slice as it comes, then the tables and, from
    ``finish()`` (called once the slices are done), every other member.  Neither the
    tasks nor their text are held beyond one slice.

    ``sliced``: laid out for a reader that works as it reads (see the module's text), the
    members of ``head`` (known before the first slice) on the first line."""
    if sliced:
        yield from _sliced(slices, finish, head or {})
        return
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


#: What ends the first line of a sliced document.
SLICES_OPEN = ', "slices": ['


def _sliced(slices: Iterable[Sequence[TaskInfo]], finish: Callable[[], TaskSnapshot],
            head: Mapping[str, Any]) -> Generator[bytes, None, None]:
    tables = Tables()
    first = {"schema": WIRE_SCHEMA, "task_fields": list(TASK_FIELDS), **head}
    yield (json.dumps(first)[:-1] + SLICES_OPEN + "\n").encode()
    comma = ""
    for infos in slices:
        if not infos:
            continue
        rows = [tables.row(t) for t in infos]
        part = tables.delta()
        part["tasks"] = rows
        yield (comma + json.dumps(part) + "\n").encode()
        comma = ","
    rest = header(finish())
    for name in ("schema", "task_fields", *head):
        rest.pop(name, None)
    yield ("]" + (", " + json.dumps(rest)[1:] if rest else "}")).encode()


def joined(doc: Any) -> Any:
    """A sliced ``/2`` document (``slices``) as the plain one: each table and the tasks
    joined up in order.  Anything else is returned as it is."""
    if not isinstance(doc, Mapping) or "slices" not in doc:
        return doc
    out: dict[str, Any] = {k: v for k, v in doc.items() if k != "slices"}
    try:
        parts = _list(doc, "slices")
        for name in (*_TABLES, "tasks"):
            out[name] = [entry for part in parts for entry in _list(part, name)]
    except (TypeError, AttributeError) as err:
        raise TargetError(f"malformed diag task snapshot: slices: {err}") from None
    return out


def _list(doc: Mapping[str, Any], name: str) -> Sequence[Any]:
    value = doc.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"{name} is {type(value).__name__}, not a list")
    return value


class TableReader:
    """The tables of a ``/2`` document, each entry checked and built once; ``add`` takes a
    slice's share of them (entries numbered on from those already read)."""

    def __init__(self, doc: Mapping[str, Any] | None = None) -> None:
        self.strings: list[str] = []
        self.frames: list[Frame] = []
        self.frame_dicts: list[dict[str, Any]] = []
        self.stacks: list[tuple[Frame, ...]] = []
        self.stack_dicts: list[list[dict[str, Any]]] = []
        self.waits: list[Wait] = []
        self.wait_args: list[tuple[Any, ...]] = []
        self.wait_dicts: list[dict[str, Any]] = []
        self.creators: list[CreatedBy] = []
        self.creator_dicts: list[dict[str, Any]] = []
        if doc is not None:
            self.add(doc)

    def add(self, part: Mapping[str, Any]) -> None:
        """Read the table entries of ``part`` (a whole document, or a slice)."""
        self.strings.extend(str(s) for s in _list(part, "strings"))
        frames = [Frame(self.string(f[0]), int(f[1] or 0), self.string(f[2]),
                        self.string(f[3]) if len(f) > 3 else "") for f in _list(part, "frames")]
        self.frames.extend(frames)
        self.frame_dicts.extend(f.to_dict() for f in frames)
        for s in _list(part, "stacks"):
            at = [self.index(i, self.frames) for i in s]
            self.stacks.append(tuple(self.frames[n] for n in at))
            self.stack_dicts.append([self.frame_dicts[n] for n in at])
        waits = [replace(Wait.from_dict(w), deadline_known=bool(w.get("deadline_known"))) for w in _list(part, "waits")]
        self.waits.extend(waits)
        self.wait_args.extend(tuple(getattr(w, name) for name in _WAIT_FIELDS) for w in waits)
        # the dicts printed are those of the waits read: a wait of an unknown kind says "unknown"
        self.wait_dicts.extend(_shape_dict(w) for w in waits)
        creators = [CreatedBy.from_dict(c) for c in _list(part, "creators")]
        self.creators.extend(creators)
        self.creator_dicts.extend(c.to_dict() for c in creators)

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


class SliceReader:
    """Takes a task answer a part at a time (``Source.tasks_feed``): a whole document
    (``whole``), or a sliced one's first line (checked and kept as ``head``), each slice
    (its table entries read into ``tables``, then its rows handed to ``rows``) and its
    last line (``tail``, with the first line's members).  What a malformed part raises
    becomes one ``TargetError``."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.tables = TableReader()

    def __call__(self, kind: str, part: dict[str, Any]) -> None:
        if kind == "whole":
            self.whole(part)
            return
        try:
            if kind == "head":
                check({**part, "tasks": []})
                self.head = part
            elif kind == "slice":
                rows = part.get("tasks")
                if not isinstance(rows, list):
                    raise TypeError(f"a slice's tasks are {type(rows).__name__}, not a list")
                self.tables.add(part)
                self.rows(rows, part)
            else:
                self.tail({**self.head, **part})
        except TargetError:
            raise
        except (*MALFORMED, IndexError) as err:
            raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None

    def whole(self, doc: dict[str, Any]) -> None:
        raise NotImplementedError

    def rows(self, rows: list[Any], part: dict[str, Any]) -> None:
        raise NotImplementedError

    def tail(self, doc: dict[str, Any]) -> None:
        raise NotImplementedError


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
    rest = {k: v for k, v in doc.items() if k not in _TABLES and k not in ("task_fields", "slices")}
    rest.update(schema=SCHEMA, tasks=[])
    return TaskSnapshot.from_dict(rest)


def decode(doc: Any) -> TaskSnapshot:
    """The snapshot of a ``diag.tasks/2`` document; ``TargetError`` for anything else."""
    doc = joined(doc)
    check(doc)
    try:
        tasks = decode_rows(_list(doc, "tasks"), TableReader(doc), {})
        return replace(rest(doc), tasks=tuple(tasks))
    except TargetError:
        raise
    except (*MALFORMED, IndexError) as err:
        raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None


def decode_rows(rows: Iterable[Any], tables: TableReader, figured: dict[tuple[Any, ...], Wait]) -> list[TaskInfo]:
    """The tasks of ``rows``, read with ``tables``.  Tasks stuck together have the same
    figures too (their waits began in one sample of the agent): they share one Wait, as
    they did in the agent, kept in ``figured`` (pass the same dict for the slices of one
    document).  Malformed rows raise what reading them raises (see ``MALFORMED``)."""
    tasks = []
    for row in rows:
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
    return tasks


#: Keys of an expanded task whose values tasks share (one list or dict per table entry).
SHARED_KEYS = ("stack", "created_by")


def expand(doc: Any) -> dict[str, Any]:
    """A ``diag.tasks/2`` document as the ``diag.tasks/1`` document of the same snapshot,
    built from the tables as plain dicts (tasks of one stack share its list): what
    ``--format json`` prints, without a dataclass per task on the way."""
    doc = joined(doc)
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


__all__ = ["WIRE_SCHEMA", "WIRE_MAJOR", "TASK_FIELDS", "SHARED_KEYS", "MALFORMED", "SLICES_OPEN", "Tables", "TableReader", "SliceReader",
           "header", "first_members", "encode", "stream", "stream_slices", "joined", "decode", "decode_rows", "expand", "check", "rest",
           "seconds"]
