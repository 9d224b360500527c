"""One refresh of ``diag top``: the sync snapshot and the target's request counter,
with when they were fetched.

``diag.sources.top_source`` fetches a ``TopSample``; ``diag.analysis.top_summary``
computes what ``diag top`` shows from two of them.  A sample round-trips through JSON
(``diag.top/1``).

Usage::

    sample = TopSample(fetched_at, time.time(), sync, MetricsSample(fetched_at, (("2xx", 10.0),)))
    assert TopSample.from_dict(json.loads(sample.to_json())) == sample
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from diag.errors import TargetError
from diag.model.sync_snapshot import SyncSnapshot
from diag.model.task_snapshot import check_schema

SCHEMA_NAME = "diag.top"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"

#: The counter ``diag top`` turns into requests per second (one series per status class).
REQUESTS_METRIC = "diag_aiohttp_requests_total"


@dataclass(frozen=True)
class MetricsSample:
    """The target's request counter at ``fetched_at`` (seconds on the viewer's monotonic
    clock: only differences between two samples mean anything).

    ``requests`` holds one ``(series, total)`` per series of the counter, ``series``
    being its label values joined by "," (``"2xx"``), or ``""`` for an unlabelled one.
    ``None`` when the target has no such counter; ``note`` then says why.
    """

    fetched_at: float
    requests: tuple[tuple[str, float], ...] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"fetched_at": self.fetched_at,
                "requests": None if self.requests is None else [[k, v] for k, v in self.requests],
                "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricsSample:
        raw = d.get("requests")
        requests = None if raw is None else tuple((str(k), float(v)) for k, v in raw)
        return cls(float(d.get("fetched_at") or 0.0), requests, str(d.get("note") or ""))


@dataclass(frozen=True)
class TopSample:
    """One refresh: the sync snapshot, the request counter, and when both were fetched
    (``fetched_at`` on the viewer's monotonic clock, ``wall`` as Unix time)."""

    fetched_at: float
    wall: float
    sync: SyncSnapshot
    metrics: MetricsSample
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "fetched_at": self.fetched_at, "wall": self.wall,
                "sync": self.sync.to_dict(), "metrics": self.metrics.to_dict()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> TopSample:
        if not isinstance(d, Mapping):
            raise TargetError("not a diag top sample (expected a JSON object)")
        check_schema(d.get("schema"), SCHEMA_NAME, SCHEMA_MAJOR)
        try:
            return cls(float(d.get("fetched_at") or 0.0), float(d.get("wall") or 0.0),
                       SyncSnapshot.from_dict(d.get("sync")), MetricsSample.from_dict(d.get("metrics") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TargetError(f"malformed diag top sample: {err.__class__.__name__}: {err}") from None
