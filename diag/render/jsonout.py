"""JSON output: the snapshot itself (versioned schema), one object, no markup."""

from __future__ import annotations

import json
from typing import Any, TextIO


def render(document: Any, out: TextIO, *, indent: int | None = 2) -> None:
    """Write ``document.to_dict()`` (or a plain dict) as JSON followed by a newline."""
    data = document.to_dict() if hasattr(document, "to_dict") else document
    json.dump(data, out, indent=indent)
    out.write("\n")
