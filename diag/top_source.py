"""What ``diag top`` fetches on each refresh, through the same ``AgentSource`` as the
other commands: the sync snapshot (every primitive and every task, taken at one
instant) and, where the target exposes it, its request counter in Prometheus text
format at ``{prefix}/metrics``.

A missing or unreadable metrics endpoint is not an error: the sample says why there
is no counter, and ``diag top`` shows "n/a".  A failing sync fetch is: it raises
``TargetError`` like every other source.

Usage::

    source = open_top_source("http://127.0.0.1:8080", timeout=5)
    sample = fetch_sample(source)
    print(sample.sync.tasks.total_tasks, sample.metrics.requests)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from diag.errors import TargetError, UsageError
from diag.source import HOST_PORT, LIVE_FORMS, AgentSource, agent_url, is_url
from diag.sync_snapshot import SyncSnapshot
from diag.task_snapshot import check_schema

SCHEMA_NAME = "diag.top"
SCHEMA_MAJOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}"

METRICS_ENDPOINT = "metrics"
#: The counter ``diag top`` turns into requests per second (one series per status class).
REQUESTS_METRIC = "diag_aiohttp_requests_total"
#: A metrics page larger than this is not read to the end (and not parsed).
MAX_METRICS_BYTES = 4 * 1024 * 1024


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


def open_top_source(target: str, timeout: float) -> AgentSource:
    """The live target to watch; saved files are refused (there is nothing to refresh)."""
    if not (is_url(target) or HOST_PORT.fullmatch(target) or "://" in target):
        raise UsageError(f"bad target {target[:100]!r}: diag top watches a live process: {LIVE_FORMS}")
    return AgentSource(agent_url(target, None), timeout)


def fetch_sync(source: AgentSource) -> SyncSnapshot:
    """Primitives and every task, without the reachability proof."""
    return source.snapshot(source.get("sync", {"proof": "0"}), SyncSnapshot.from_dict)


def get_text(source: AgentSource, endpoint: str) -> tuple[int, str]:
    """GET ``{prefix}/{endpoint}`` as text: (HTTP status, body).  Transport failures
    raise ``TargetError``; the status is left to the caller."""
    return source.get_text(endpoint, MAX_METRICS_BYTES)


def parse_requests(text: str) -> tuple[tuple[str, float], ...] | None:
    """The ``REQUESTS_METRIC`` series of a Prometheus text page, or ``None`` if absent.
    ``ValueError`` when the page is not Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, float] = {}
    found = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != REQUESTS_METRIC:
                continue
            found = True
            key = ",".join(v for _, v in sorted(sample.labels.items()))
            series[key] = series.get(key, 0.0) + float(sample.value)
    return tuple(sorted(series.items())) if found else None


def fetch_metrics(source: AgentSource, clock: Callable[[], float] = time.monotonic) -> MetricsSample:
    """The request counter now; never raises: a missing counter comes back with a note."""
    started = clock()
    try:
        status, text = get_text(source, METRICS_ENDPOINT)
    except TargetError as err:
        return MetricsSample(clock(), None, f"metrics endpoint failed: {_after_name(str(err), source.name)}")
    # The counter was read somewhere between sending and receiving: take the middle.
    at = (started + clock()) / 2
    if status == 404:
        return MetricsSample(at, None, "the target serves no metrics endpoint")
    if status == 401:
        return MetricsSample(at, None, "the metrics endpoint wants a token (set DIAG_AGENT_TOKEN)")
    if status != 200:
        return MetricsSample(at, None, f"the metrics endpoint answered HTTP {status}")
    try:
        requests = parse_requests(text)
    except (ValueError, TypeError, IndexError) as err:
        return MetricsSample(at, None, f"the metrics page is not Prometheus text ({err})")
    if requests is None:
        return MetricsSample(at, None, f"no {REQUESTS_METRIC} in the target's metrics")
    return MetricsSample(at, requests)


def fetch_sample(source: AgentSource, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> TopSample:
    """One refresh; ``TargetError`` when the target does not answer the sync fetch."""
    sync = fetch_sync(source)
    metrics = fetch_metrics(source, clock)
    return TopSample(clock(), wall(), sync, metrics)


def _after_name(message: str, name: str) -> str:
    return message[len(name) + 2:] if message.startswith(name + ": ") else message


__all__ = ["SCHEMA", "METRICS_ENDPOINT", "REQUESTS_METRIC", "MetricsSample", "TopSample", "open_top_source",
           "fetch_sync", "fetch_metrics", "fetch_sample", "get_text", "parse_requests"]
