"""``diag tasks --format json``: the ``diag.tasks/1`` document, written from a
``diag.tasks/2`` answer's tables.

A dump of many tasks is written the way ``jsonout`` writes any long list (one task a
line), but without building a dict per task and encoding it: what tasks share (a stack,
a wait's kind and primitive, a creator, a coroutine's name) is encoded once, as text, when
a row first refers to it, and each task's line is that text joined with what is its own
(id, name, the seconds of its wait).  The text is the very text ``jsonout.render`` writes
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
    rows = doc.get("tasks")
    if not isinstance(rows, list) or len(rows) <= jsonout.LONG_LIST:
        return Prepared(task_wire.expand(doc))
    task_wire.check(doc)
    try:
        return Prepared(task_wire.rest(doc).to_dict(), _RowText(task_wire.TableReader(doc)).lines(rows))
    except TargetError:
        raise
    except (*task_wire.MALFORMED, IndexError) as err:
        raise TargetError(f"malformed diag task snapshot: {err.__class__.__name__}: {err}") from None


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

    def __init__(self, tables: task_wire.TableReader) -> None:
        self.strings = [_string(s) for s in tables.strings]
        self.stacks = [json_text(s, indent=None) for s in tables.stack_dicts]
        self.creators = [json_text(c, indent=None) for c in tables.creator_dicts]
        #: per wait: (text up to its seconds, text after them, whether it has a deadline)
        self.waits = [self._wait(shape) for shape in tables.wait_dicts]

    @staticmethod
    def _wait(shape: dict[str, Any]) -> tuple[str, str, bool]:
        head = ('{"kind": ' + json_text(shape.get("kind", "unknown"), indent=None) + ', "detail": '
                + json_text(shape.get("detail", ""), indent=None) + ', "seconds": ')
        tail = "".join(", " + json.dumps(k) + ": " + json_text(v, indent=None) for k, v in shape.items()
                       if k not in ("kind", "detail", "deadline_known"))
        return head, tail, bool(shape.get("deadline_known"))

    def lines(self, rows: list[Any]) -> list[str]:
        """Each row's text, in order; an error for the first malformed one."""
        strings, stacks, creators, waits = self.strings, self.stacks, self.creators, self.waits
        out = []
        for row in rows:
            extra = row[9] if len(row) > 9 and isinstance(row[9], Mapping) else {}
            head, tail, deadline_known = _entry(waits, row[5])
            wait = head + _figure(row[8], "wait seconds") + tail
            if deadline_known:
                wait += ', "deadline": ' + _figure(extra.get("deadline"), "deadline", True)
            if "time_left" in extra:
                wait += ', "time_left": ' + _figure(extra["time_left"], "time_left", True)
            name = row[1] if type(row[1]) is str else str(row[1])
            text = ('{"id": ' + str(int(row[0])) + ', "name": '
                    + (encode_basestring_ascii(name) if name.isascii() else _string(name))
                    + ', "coro": ' + _entry(strings, row[2]) + ', "state": ' + _entry(strings, row[3])
                    + ', "stack": ' + _entry(stacks, row[4]) + ', "wait": ' + wait
                    + '}, "created_by": ' + ("null" if row[6] is None else _entry(creators, row[6]))
                    + ', "loop": ' + _entry(strings, row[7])
                    + (', "cancelling": true' if extra.get("cancelling", False) else ', "cancelling": false'))
            if extra:
                if extra.get("main"):
                    text += ', "main": true'
                if extra.get("cancel_seconds") is not None:
                    text += ', "cancel_seconds": ' + _figure(extra["cancel_seconds"], "cancel_seconds")
                if extra.get("handling_cancel"):
                    text += ', "handling_cancel": true'
                if "count" in extra:
                    text += (', "count": ' + str(int(extra["count"])) + ', "ids": ['
                             + ", ".join(str(int(n)) for n in extra.get("ids") or ()) + "]")
            out.append(text + "}")
        return out


__all__ = ["Prepared", "prepare", "write"]
