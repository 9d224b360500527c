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

import time
from typing import Callable

from diag.errors import TargetError, UsageError
from diag.model.sync_snapshot import SyncSnapshot
from diag.model.top_sample import REQUESTS_METRIC, MetricsSample, TopSample
from diag.sources.source import HOST_PORT, LIVE_FORMS, AgentSource, agent_url, is_url

METRICS_ENDPOINT = "metrics"
#: A metrics page larger than this is not read to the end (and not parsed).
MAX_METRICS_BYTES = 4 * 1024 * 1024


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


__all__ = ["METRICS_ENDPOINT", "open_top_source", "fetch_sync", "fetch_metrics", "fetch_sample", "get_text",
           "parse_requests"]
