"""JSON output: the snapshot itself (versioned schema), one object, no markup."""

from __future__ import annotations

from typing import Any, TextIO

from diag.render.formatting import json_text


def render(document: Any, out: TextIO, *, indent: int | None = 2) -> None:
    """Write ``document.to_dict()`` (or a plain dict) as JSON followed by a newline; strings
    from the target are made encodable (see ``formatting.json_text``)."""
    data = document.to_dict() if hasattr(document, "to_dict") else document
    out.write(json_text(data, indent=indent) + "\n")
