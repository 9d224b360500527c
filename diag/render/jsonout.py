"""JSON output: the snapshot itself (versioned schema), one object, no markup."""

from __future__ import annotations

import json
from typing import Any, TextIO

from diag.render.formatting import json_text

#: A top-level list longer than this is written one compact entry a line (a 100,000-task
#: dump): indented member by member, Python's JSON encoder runs in pure Python, and
#: took 5.6 s for the 130 MB of such a dump; this way it takes under one, and each task
#: is one line for grep.
LONG_LIST = 1000


def render(document: Any, out: TextIO, *, indent: int | None = 2, shared: tuple[str, ...] = ()) -> None:
    """Write ``document.to_dict()`` (or a plain dict) as JSON followed by a newline; strings
    from the target are made encodable (see ``formatting.json_text``).  Long lists at the
    top level are written an entry a line, whatever ``indent`` says.  ``shared`` names keys
    of those entries whose values many entries share (the very same list or dict, such as
    the stack of 100,000 tasks stuck in one place): each such value is encoded once."""
    data = document.to_dict() if hasattr(document, "to_dict") else document
    if isinstance(data, dict) and any(type(v) is list and len(v) > LONG_LIST for v in data.values()):
        _render_long(data, out, shared)
        return
    out.write(json_text(data, indent=indent) + "\n")


def _render_long(data: dict[str, Any], out: TextIO, shared: tuple[str, ...],
                 texts: dict[str, list[str]] | None = None) -> None:
    out.write("{")
    for n, (key, value) in enumerate(data.items()):
        out.write(("\n  " if n == 0 else ",\n  ") + json.dumps(key) + ": ")
        if texts is not None and key in texts:
            _write_lines(texts[key], out)
        elif type(value) is list and len(value) > LONG_LIST:
            out.write("[")
            entry_text = _SharedValues(shared).entry_text if shared else _plain_entry
            for i, entry in enumerate(value):
                out.write(("\n    " if i == 0 else ",\n    ") + entry_text(entry))
            out.write("\n  ]")
        else:
            out.write(json_text(value, indent=None))
    out.write("\n}\n")


def _write_lines(entries: list[str], out: TextIO, step: int = 1000) -> None:
    if not entries:
        out.write("[]")
        return
    for start in range(0, len(entries), step):
        out.write(("[\n    " if start == 0 else ",\n    ") + ",\n    ".join(entries[start:start + step]))
    out.write("\n  ]")


def render_texts(data: dict[str, Any], out: TextIO, key: str, entries: list[str]) -> None:
    """Write ``data`` as ``render`` writes a document with a long list, the entries of the
    list under ``key`` given as their text, one a line (``data[key]`` itself is not read)."""
    _render_long(data, out, (), {key: entries})


def _plain_entry(entry: Any) -> str:
    return json_text(entry, indent=None)


#: Stands for a shared value while the rest of an entry is encoded.  After its key, the
#: encoded text ``"KEY": "\u0000shared\u0000"`` cannot come from inside a string (whose
#: quotes are escaped), so the first match in an entry's text is the top-level key's.
_PLACEHOLDER = "\x00shared\x00"


class _SharedValues:
    """Entries encoded with the named keys' values taken from a cache by identity."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        #: key -> (its text with the placeholder, the same up to the value)
        self.marks = {key: (json.dumps(key) + ": " + json.dumps(_PLACEHOLDER), json.dumps(key) + ": ") for key in keys}
        #: id -> (the value, kept alive so that its id stays its own; its text)
        self.texts: dict[int, tuple[Any, str]] = {}

    def entry_text(self, entry: Any) -> str:
        if type(entry) is not dict:
            return json_text(entry, indent=None)
        copy: dict[str, Any] | None = None
        spliced = []
        for key in self.keys:
            value = entry.get(key)
            if type(value) is not list and type(value) is not dict:
                continue
            known = self.texts.get(id(value))
            if known is None:
                known = self.texts[id(value)] = (value, json_text(value, indent=None))
            if copy is None:
                copy = entry.copy()
            copy[key] = _PLACEHOLDER
            spliced.append((key, known[1]))
        if copy is None:
            return json_text(entry, indent=None)
        text = json_text(copy, indent=None)
        for key, value_text in spliced:
            mark, prefix = self.marks[key]
            text = text.replace(mark, prefix + value_text, 1)
        return text
