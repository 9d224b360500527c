"""Agent route of ``diag objects``: live objects by type, and why one of a type is alive.

``GET {PREFIX}/objects?budget=3&type=NAME&max_depth=12`` answers a ``diag.objects/1``
snapshot.  Both heap walks are bounded by ``budget`` seconds (capped at
``MAX_BUDGET``); growth is measured by the client, from snapshots taken apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from dataclasses import replace

from diag.agent.endpoints import Response, fit
from diag.collect import heap
from diag.errors import DiagError

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints

MAX_BUDGET = 30.0


def _options(query: Mapping[str, str]) -> heap.HeapOptions:
    raw_budget = query.get("budget") or str(heap.DEFAULT_BUDGET)
    raw_depth = query.get("max_depth") or str(heap.DEFAULT_MAX_DEPTH)
    try:
        budget = float(raw_budget)
        depth = int(raw_depth)
    except ValueError:
        raise DiagError("budget must be a number of seconds and max_depth an integer") from None
    if not 0 < budget <= MAX_BUDGET:
        raise DiagError(f"budget must be > 0 and at most {MAX_BUDGET:g} seconds")
    if not 1 <= depth <= heap.MAX_DEPTH:
        raise DiagError(f"max_depth must be between 1 and {heap.MAX_DEPTH}")
    return heap.HeapOptions(budget=budget, type_name=query.get("type") or None, max_depth=depth)


def install(endpoints: "Endpoints") -> None:
    """Add ``objects`` (GET) to ``endpoints``."""

    def objects(query: Mapping[str, str], exclude: frozenset[int]) -> Response:
        snap = heap.collect_heap(_options(query))
        return fit(lambda keep: (snap if keep is None else replace(snap, types=snap.types[:keep])).to_dict(),
                   len(snap.types), "types")

    endpoints.add("objects", objects, paced=True,
                  help=f"live objects by type (?budget=<= {MAX_BUDGET:g}s&type=NAME&max_depth=N for a "
                       "back-reference chain)")
