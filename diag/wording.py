"""Counted nouns, the verbs that agree with them and a thing's other names, for
findings and headers.

Usage::

    f"{plural(n, 'task')} {agree(n, 'waits', 'wait')} for it"   # 1 task waits / 2 tasks wait
    f"second {also_named(['first'])}"                            # second (also: first)
"""

from __future__ import annotations

from typing import Sequence


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 task``, ``2 tasks``; ``many`` for an irregular plural (``1 process``, ``2 processes``)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def agree(n: int, one: str, many: str) -> str:
    """The word that agrees with a count of ``n``: ``agree(1, 'waits', 'wait')`` is ``waits``."""
    return one if n == 1 else many


def byte_count(n: int) -> str:
    """``512 bytes``, ``64 KiB``, ``2.5 MiB``: a size in the unit that reads best."""
    if n < 10 * 1024:
        return plural(n, "byte")
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def also_named(others: Sequence[str]) -> str:
    """The other names of one primitive or object, after the one shown: ``(also: first, pool)``."""
    return f"(also: {', '.join(others)})"
