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


def render(document: Any, out: TextIO, *, indent: int | None = 2) -> None:
    """Write ``document.to_dict()`` (or a plain dict) as JSON followed by a newline; strings
    from the target are made encodable (see ``formatting.json_text``).  Long lists at the
    top level are written an entry a line, whatever ``indent`` says."""
    data = document.to_dict() if hasattr(document, "to_dict") else document
    if isinstance(data, dict) and any(type(v) is list and len(v) > LONG_LIST for v in data.values()):
        _render_long(data, out)
        return
    out.write(json_text(data, indent=indent) + "\n")


def _render_long(data: dict[str, Any], out: TextIO) -> None:
    out.write("{")
    for n, (key, value) in enumerate(data.items()):
        out.write(("\n  " if n == 0 else ",\n  ") + json.dumps(key) + ": ")
        if type(value) is list and len(value) > LONG_LIST:
            out.write("[")
            for i, entry in enumerate(value):
                out.write(("\n    " if i == 0 else ",\n    ") + json_text(entry, indent=None))
            out.write("\n  ]")
        else:
            out.write(json_text(value, indent=None))
    out.write("\n}\n")
