"""``diag tasks --format json``: the ``diag.tasks/1`` document, written from a
``diag.tasks/2`` answer's tables.

A dump of many tasks is written the way ``jsonout`` writes any long list (one task a
line), but without building a dict per task and encoding it: what tasks share (a stack,
a wait's kind and primitive, a creator, a coroutine's name) is encoded once, as text,
the text of a task without its own figures once per combination of those, and each
task's line is that text joined with what is its own (id, name, the seconds of its wait).  The text is the very text ``jsonout.render`` writes
for ``task_wire.expand`` of the same document (the tests compare them byte for byte);
this way costs a fraction of that.  A short dump, a ``diag.tasks/1`` answer or a file are
written by ``jsonout.render`` as before.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, Mapping, TextIO, TypeVar

from diag.errors import TargetError
from diag.model import task_wire
from diag.render import jsonout
from diag.render.formatting import json_text

T = TypeVar("T")


class Prepared:
    """A task document ready to write: its members, and for a long compact one the text
    of each task (what ``write`` puts in place of the ``tasks`` member)."""

    def __init__(self, document: dict[str, Any], lines: list[str] | None = None) -> None:
        self.document = document
        self.lines = lines


def prepare(doc: dict[str, Any]) -> Prepared:
    """The ``diag.tasks/1`` document of an agent's answer (``/2``, or ``/1`` already read),
    every task's text made; ``TargetError`` for a malformed one, before anything is written."""
    if doc.get("schema") != task_wire.WIRE_SCHEMA:
        return Prepared(doc)
    doc = task_wire.joined(doc)
    rows = doc.get("tasks")
    if not isinstance(rows, list) or len(rows) <= jsonout.LONG_LIST:
        return Prepared(task_wire.expand(doc))
    task_wire.check(doc)
    try:
        text = _RowText()
        text.update(task_wire.TableReader(doc))
        return Prepared(task_wire.rest(doc).to_dict(), text.lines(rows))
    except TargetError:
        raise
    except (*task_wire.MALFORMED, IndexError) as err:
        raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None


class Feed(task_wire.SliceReader):
    """Writes a task answer to ``out`` as it comes (``Source.tasks_feed``).

    An answer of a few tasks (``jsonout.LONG_LIST`` or fewer) is kept as it came and
    written whole once it is in, as ``write`` writes it.  A longer one is written a slice
    at a time as the slices arrive, while the agent describes the next: the members the
    first line holds (``schema``, ``taken_at``, ``process``), then ``tasks``, a task a
    line, then every other member once the last line is in.  The tasks' lines are those
    of the whole answer; the document differs only in where ``tasks`` stands.  If the
    answer breaks off, what was written is not a whole document (the list is never
    closed), and the error says why."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self._text = _RowText()
        self._kept: list[dict[str, Any]] | None = []  # the slices, while they are few
        self._rows = 0
        self._first = True  # no task written yet

    def whole(self, doc: dict[str, Any]) -> None:
        write(prepare(doc), self.out)

    def rows(self, rows: list[Any], part: dict[str, Any]) -> None:
        if self._kept is not None:
            self._kept.append(part)
            self._rows += len(rows)
            if self._rows <= jsonout.LONG_LIST:
                return
            rows = [row for kept in self._kept for row in kept["tasks"]]
            self._text.update(self.tables)
            lines = self._text.lines(rows)  # all made before the first byte is written
            first = task_wire.rest({**self.head, "tasks": []}).to_dict()
            self.out.write("{\n  " + ",\n  ".join(f"{json.dumps(key)}: {json_text(first[key], indent=None)}"
                                                   for key in _FIRST) + ',\n  "tasks": ')
            self._kept = None
        else:
            self._text.update(self.tables)
            lines = self._text.lines(rows)
        if lines:
            self.out.write(("[\n    " if self._first else ",\n    ") + ",\n    ".join(lines))
            self._first = False

    def tail(self, doc: dict[str, Any]) -> None:
        if self._kept is not None:
            write(prepare({**doc, "slices": self._kept}), self.out)
            return
        task_wire.check({**doc, "tasks": []})
        rest = task_wire.rest(doc).to_dict()
        self.out.write("[]" if self._first else "\n  ]")
        for key, value in rest.items():
            if key not in _FIRST and key != "tasks":
                self.out.write(f",\n  {json.dumps(key)}: {json_text(value, indent=None)}")
        self.out.write("\n}\n")


#: The members a sliced answer's first line holds, written before the tasks.
_FIRST = ("schema", "taken_at", "process")


def write(prepared: Prepared, out: TextIO) -> None:
    """Write a prepared document as ``jsonout.render`` writes it."""
    if prepared.lines is None:
        jsonout.render(prepared.document, out, shared=task_wire.SHARED_KEYS)
    else:
        jsonout.render_texts(prepared.document, out, "tasks", prepared.lines)


def _number(value: float | None) -> str:
    """A figure as ``json.dumps`` writes it."""
    if value is None:
        return "null"
    return float.__repr__(value) if value - value == 0 else json.dumps(value)


def _string(text: str) -> str:
    """A string as ``json_text`` writes it (ASCII, a lone surrogate made U+FFFD)."""
    return encode_basestring_ascii(text) if text.isascii() else json_text(text, indent=None)


def _entry(texts: list[T], i: Any) -> T:
    """``texts[i]`` for an index as the tables check it (``TableReader.index``)."""
    if type(i) is int and 0 <= i < len(texts):
        return texts[i]
    return texts[task_wire.TableReader.index(i, texts)]


def _figure(value: Any, what: str, infinite: bool = False) -> str:
    """A figure of a row, checked as ``task_wire.seconds`` checks it, as JSON text."""
    if type(value) is float and value - value == 0:
        return float.__repr__(value)
    return _number(task_wire.seconds(value, what, infinite))


class _RowText:
    """The text of each task row, from the tables' entries each encoded once."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.stacks: list[str] = []
        self.creators: list[str] = []
        #: per wait: (text up to its seconds, text after them, whether it has a deadline)
        self.waits: list[tuple[str, str, bool]] = []
        #: the text around the figures of a row without extras, by its indexes
        self.combos: dict[tuple[Any, ...], tuple[str, str]] = {}

    def update(self, tables: task_wire.TableReader) -> None:
        """Encode the entries ``tables`` gained since the last call."""
        self.strings += [_string(s) for s in tables.strings[len(self.strings):]]
        self.stacks += [json_text(s, indent=None) for s in tables.stack_dicts[len(self.stacks):]]
        self.creators += [json_text(c, indent=None) for c in tables.creator_dicts[len(self.creators):]]
        self.waits += [self._wait(shape) for shape in tables.wait_dicts[len(self.waits):]]

    @staticmethod
    def _wait(shape: dict[str, Any]) -> tuple[str, str, bool]:
        head = ('{"kind": ' + json_text(shape.get("kind", "unknown"), indent=None) + ', "detail": '
                + json_text(shape.get("detail", ""), indent=None) + ', "seconds": ')
        tail = "".join(", " + json.dumps(k) + ": " + json_text(v, indent=None) for k, v in shape.items()
                       if k not in ("kind", "detail", "deadline_known"))
        return head, tail, bool(shape.get("deadline_known"))

    def _parts(self, coro: Any, state: Any, stack: Any, wait: Any, created: Any, loop: Any) -> tuple[str, str]:
        """The text of a task without extras around its own figures: before its wait's
        seconds (after its name), and after them."""
        head, tail, deadline_known = _entry(self.waits, wait)
        before = "".join((', "coro": ', _entry(self.strings, coro), ', "state": ', _entry(self.strings, state),
                          ', "stack": ', _entry(self.stacks, stack), ', "wait": ', head))
        after = "".join((tail, ', "deadline": null' if deadline_known else "",
                         '}, "created_by": ', "null" if created is None else _entry(self.creators, created),
                         ', "loop": ', _entry(self.strings, loop), ', "cancelling": false}'))
        return before, after

    def lines(self, rows: list[Any]) -> list[str]:
        """Each row's text, in order; an error for the first malformed one.  Most rows
        have no extras, and many share every index: their text is made once per such
        combination (``_parts``) and joined with the row's id, name and seconds."""
        combos = self.combos
        out = []
        for row in rows:
            tid, name, coro, state, stack, wait, created, loop, sec = row[:9]
            if type(name) is not str:
                name = str(name)
            name_text = encode_basestring_ascii(name) if name.isascii() else _string(name)
            sec_text = (float.__repr__(sec) if type(sec) is float and sec - sec == 0
                        else _figure(sec, "wait seconds"))
            if len(row) > 9 and isinstance(row[9], Mapping) and row[9]:
                out.append(self._with_extras(row, name_text, sec_text))
                continue
            key = (coro, state, stack, wait, created, loop)
            parts = combos.get(key)
            if parts is None:
                parts = combos[key] = self._parts(coro, state, stack, wait, created, loop)
            out.append("".join(('{"id": ', str(int(tid)), ', "name": ', name_text, parts[0], sec_text, parts[1])))
        return out

    def _with_extras(self, row: list[Any], name_text: str, sec_text: str) -> str:
        extra = row[9]
        head, tail, deadline_known = _entry(self.waits, row[5])
        wait_text = head + sec_text + tail
        if deadline_known:
            wait_text += ', "deadline": ' + _figure(extra.get("deadline"), "deadline", True)
        if "time_left" in extra:
            wait_text += ', "time_left": ' + _figure(extra["time_left"], "time_left", True)
        text = "".join((
            '{"id": ', str(int(row[0])), ', "name": ', name_text,
            ', "coro": ', _entry(self.strings, row[2]), ', "state": ', _entry(self.strings, row[3]),
            ', "stack": ', _entry(self.stacks, row[4]), ', "wait": ', wait_text,
            '}, "created_by": ', "null" if row[6] is None else _entry(self.creators, row[6]),
            ', "loop": ', _entry(self.strings, row[7]),
            ', "cancelling": true' if extra.get("cancelling", False) else ', "cancelling": false',
        ))
        if extra.get("main"):
            text += ', "main": true'
        if extra.get("cancel_seconds") is not None:
            text += ', "cancel_seconds": ' + _figure(extra["cancel_seconds"], "cancel_seconds")
        if extra.get("handling_cancel"):
            text += ', "handling_cancel": true'
        if "count" in extra:
            text += (', "count": ' + str(int(extra["count"])) + ', "ids": ['
                     + ", ".join(str(int(n)) for n in extra.get("ids") or ()) + "]")
        return text + "}"


__all__ = ["Feed", "Prepared", "prepare", "write"]
