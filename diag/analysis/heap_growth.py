"""Pure analysis of heap snapshots: the most common types, and the types that grow.

A type "grows steadily" when its count went up in every interval of a series, which
short-lived garbage rarely does; the steadiest suspects are ranked by total growth,
as ``objgraph.growth`` does for two snapshots.

Usage::

    for g in steady_growth(series.snapshots):
        print(g.name, g.growth, g.per_interval)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diag.errors import UsageError
from diag.model.heap_snapshot import HeapSnapshot, TypeCount


@dataclass(frozen=True)
class TypeGrowth:
    """Counts of one type across a series: ``first`` and ``last``, their difference
    ``growth``, and the change in each interval."""

    name: str
    first: int
    last: int
    growth: int
    per_interval: tuple[int, ...]


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"bad --filter regex {pattern!r}: {err}") from None


def type_matches(name: str, wanted: str) -> bool:
    """``CachedResponse`` matches ``pkg.mod.CachedResponse``; a dotted name must match in full."""
    return name == wanted or name.rsplit(".", 1)[-1] == wanted


def most_common(snap: HeapSnapshot, top: int, *, pattern: str | None = None,
                type_name: str | None = None) -> tuple[TypeCount, ...]:
    rx = compile_pattern(pattern)
    rows = [t for t in snap.types
            if (rx is None or rx.search(t.name)) and (type_name is None or type_matches(t.name, type_name))]
    return tuple(rows[:top])


def steady_growth(snapshots: tuple[HeapSnapshot, ...], *, top: int | None = None,
                  pattern: str | None = None) -> tuple[TypeGrowth, ...]:
    """Types whose count rose in every interval, biggest total growth first."""
    if len(snapshots) < 2:
        return ()
    rx = compile_pattern(pattern)
    counts = [{t.name: t.count for t in s.types} for s in snapshots]
    names = set().union(*counts)
    out = []
    for name in names:
        if rx is not None and not rx.search(name):
            continue
        series = [c.get(name, 0) for c in counts]
        deltas = tuple(b - a for a, b in zip(series, series[1:]))
        if all(d > 0 for d in deltas):
            out.append(TypeGrowth(name, series[0], series[-1], series[-1] - series[0], deltas))
    out.sort(key=lambda g: (-g.growth, g.name))
    return tuple(out if top is None else out[:top])


__all__ = ["TypeGrowth", "most_common", "steady_growth", "type_matches", "compile_pattern"]
