"""Agent route for Prometheus: GET {prefix}/metrics (text exposition format 0.0.4).

A scrape reuses the agent's snapshot machinery: one sync snapshot without the
reachability proof (tasks, primitives, holders), from which the pure
``diag.analysis.metrics_model`` derives the families.  Scrapes close together share one
collection: a new one is taken only when the last is older than ``REUSE_MIN`` seconds
and ``REUSE_FACTOR`` times its own collection time, so diag's share of the target's
CPU stays bounded however many scrapers there are.  A failed collection never fails
the scrape: the answer is still 200, without the snapshot's metrics, and
``diag_scrape_errors_total`` counts it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Mapping

from prometheus_client import CollectorRegistry

from diag.analysis.metrics_model import Family, MetricsInputs, MetricsOptions, metric_families, snapshot_families
from diag.collect.gc_pause import paused_gc
from diag.collect.loop_watch import LoopWatch
from diag.collect.sync_collector import collect_sync
from diag.errors import DiagError
from diag.render.prometheus import CONTENT_TYPE, exposition, metrics_registry

if TYPE_CHECKING:
    from diag.agent.endpoints import Endpoints, Response

#: A snapshot younger than this is served again.
REUSE_MIN = 1.0
#: ... and so is one younger than this many times the time it took to collect.
REUSE_FACTOR = 10.0
#: A second scrape waits this long for a collection in progress, then serves the last one.
BUSY_WAIT = 5.0


class RequestCounter:
    """Handled requests by status class; written by the aiohttp middleware on the loop
    thread(s), read by scrapes on any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.enabled = False

    def add(self, status_class: str) -> None:
        with self._lock:
            self._counts[status_class] = self._counts.get(status_class, 0) + 1

    def counts(self) -> dict[str, int] | None:
        """A copy of the counts, or None when no app counts requests."""
        if not self.enabled:
            return None
        with self._lock:
            return dict(self._counts)


#: The process's request counts, shared by every app set up with ``diag.aiohttp.setup``.
REQUESTS = RequestCounter()


class Scraper:
    """Collects (or reuses) the snapshot behind a scrape and builds the families."""

    def __init__(self, watch: LoopWatch | None, options: MetricsOptions = MetricsOptions()) -> None:
        self.watch = watch
        self.options = options
        self.errors = 0
        self._lock = threading.Lock()
        self._last: tuple[float, float, tuple[Family, ...]] | None = None  # (monotonic end, seconds, families)

    def _fresh(self, now: float) -> bool:
        last = self._last
        return last is not None and now - last[0] < max(REUSE_MIN, REUSE_FACTOR * last[1])

    def snapshot(self, exclude: frozenset[int]) -> tuple[tuple[Family, ...] | None, float, float]:
        """(the families of the snapshot, or None on failure; its collection seconds; its age)."""
        if not self._fresh(time.monotonic()):
            if self._lock.acquire(timeout=BUSY_WAIT):
                try:
                    if not self._fresh(time.monotonic()):  # another scrape may have collected meanwhile
                        started = time.monotonic()
                        families = self._collect(exclude)
                        if families is None:
                            return None, 0.0, 0.0
                        ended = time.monotonic()
                        self._last = (ended, ended - started, families)
                finally:
                    self._lock.release()
        last = self._last
        if last is None:
            return None, 0.0, 0.0
        return last[2], last[1], max(0.0, time.monotonic() - last[0])

    def _collect(self, exclude: frozenset[int]) -> tuple[Family, ...] | None:
        """A snapshot's families, the snapshot made and dropped with the GC paused: kept
        for the reuse window, its objects (hundreds of thousands with as many tasks) would
        be what the program's next full collection traverses, a pause of its loop."""
        with paused_gc():
            try:
                snap = collect_sync(self.watch, proof=False, exclude=exclude, collect_budget=_collect_budget())
            except Exception:
                self.errors += 1
                return None
            try:
                return snapshot_families(snap, self.options)
            except Exception:  # a verdict tripping over an odd snapshot: serve what does not need it
                self.errors += 1
                return None
            finally:
                del snap

    def families(self, exclude: frozenset[int] = frozenset()) -> tuple[Family, ...]:
        derived, seconds, age = self.snapshot(exclude)
        inputs = MetricsInputs(None, REQUESTS.counts(), seconds, age, self.errors, self.options)
        try:
            return metric_families(inputs, derived)
        except Exception:
            self.errors += 1
            return metric_families(MetricsInputs(None, REQUESTS.counts(), scrape_errors=self.errors))


class _Scrape:
    """The exclude set of the scrape in progress, handed to the registry's collector."""

    def __init__(self, scraper: Scraper) -> None:
        self.scraper = scraper
        self.local = threading.local()

    def families(self) -> tuple[Family, ...]:
        exclude: frozenset[int] = getattr(self.local, "exclude", frozenset())
        return self.scraper.families(exclude)


def _collect_budget() -> float:
    from diag.agent import endpoints as api  # the same walk limit as every other dump

    return float(api.COLLECT_BUDGET)


def install(endpoints: "Endpoints") -> None:
    from diag.agent.endpoints import Response

    scraper = Scraper(endpoints.watch)
    scrape = _Scrape(scraper)
    registry: CollectorRegistry = metrics_registry(scrape.families)

    def metrics(query: Mapping[str, str], exclude: frozenset[int]) -> "Response":
        if query:
            raise DiagError(f"metrics takes no query parameters, got {', '.join(sorted(query))}")
        scrape.local.exclude = exclude
        try:
            body = exposition(registry)
        except Exception:  # never a 500 for a scraper: say it in the metrics instead
            scraper.errors += 1
            body = (f"# TYPE diag_scrape_errors_total counter\n"
                    f"diag_scrape_errors_total {scraper.errors}\n").encode()
        finally:
            scrape.local.exclude = frozenset()
        return Response(200, body, CONTENT_TYPE)

    endpoints.add("metrics", metrics, help="Prometheus metrics: tasks, primitives, loop lag, findings, requests",
                  paced=True)
