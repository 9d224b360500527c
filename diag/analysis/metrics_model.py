"""Prometheus metrics of one process, as plain data: ``metric_families(inputs) -> families``.  Pure.

The input is a sync snapshot taken without the reachability proof (the tasks, the
primitives and their holders), the aiohttp request counts and the scrape's own
bookkeeping.  Label values come only from small sets (task states, wait kinds,
finding kinds, status classes, loop threads) or from primitive labels, which are
grouped by name and capped: a fleet's time-series count stays bounded.

Usage::

    families = metric_families(MetricsInputs(sync_snapshot, requests={"2xx": 10}))
    text = render.prometheus.exposition_text(families)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from diag.analysis.leak_verdicts import KINDS, LeakOptions, leak_report
from diag.model.sync_snapshot import PrimitiveState, SyncSnapshot

#: Primitive series per metric at most; the rest are summed into ``primitive="<other>"``.
MAX_PRIMITIVE_SERIES = 50
UNNAMED = "<unnamed>"
OTHER = "<other>"
#: Verdicts a scrape computes: everything but ``proven_leak``, which needs the
#: reachability proof (it pauses the target; docs/metrics.md).
SCRAPE_FINDING_KINDS = tuple(k for k in KINDS if k != "proven_leak")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "cancelled")
_PERMIT_KINDS = frozenset({"lock", "condition", "semaphore", "bounded_semaphore"})


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """One metric: ``name`` is what the exposition shows (counters end in ``_total``)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[Sample, ...] = ()

    def value(self, **labels: str) -> float | None:
        """The value of the sample with exactly these labels, if present."""
        want = tuple(sorted(labels.items()))
        for s in self.samples:
            if tuple(sorted(s.labels)) == want:
                return s.value
        return None


@dataclass(frozen=True)
class MetricsOptions:
    """``max_primitive_series`` caps primitive series per metric; ``leaks`` are the
    thresholds of the verdicts behind ``diag_findings``."""

    max_primitive_series: int = MAX_PRIMITIVE_SERIES
    leaks: LeakOptions = LeakOptions()


@dataclass(frozen=True)
class MetricsInputs:
    """What one scrape saw.  ``sync`` is None when collecting it failed; ``requests``
    is None when no aiohttp app counts requests; ``collect_seconds`` and
    ``snapshot_age`` describe the snapshot served (it is reused for a moment)."""

    sync: SyncSnapshot | None
    requests: Mapping[str, int] | None = None
    collect_seconds: float = 0.0
    snapshot_age: float = 0.0
    scrape_errors: int = 0
    options: MetricsOptions = field(default_factory=MetricsOptions)


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(labels.items())


def permits_in_use(state: PrimitiveState) -> int | None:
    """Permits held now: a lock's one, a bounded semaphore's capacity minus value, else the
    holders diag tracked.  None for kinds without permits (events, queues)."""
    prim = state.primitive
    if prim.kind not in _PERMIT_KINDS:
        return None
    if prim.kind in ("lock", "condition"):
        return 1 if prim.locked else 0
    if prim.capacity is not None and prim.value is not None:
        return max(0, prim.capacity - prim.value)
    return len(state.holders)


def task_families(sync: SyncSnapshot) -> list[Family]:
    counts: dict[tuple[str, str], int] = {}
    longest: dict[str, float] = {}
    for task in sync.tasks.tasks:
        n = task.count if sync.tasks.grouped else 1
        key = (task.state, task.wait.kind)
        counts[key] = counts.get(key, 0) + n
        seconds = task.wait.seconds
        if task.state == "waiting" and seconds is not None:
            longest[task.wait.kind] = max(longest.get(task.wait.kind, 0.0), seconds)
    return [
        Family("diag_tasks", "gauge", "Pending asyncio tasks by state and wait reason.", ("state", "wait_kind"),
               tuple(Sample(_labels(state=s, wait_kind=k), float(n)) for (s, k), n in sorted(counts.items()))),
        Family("diag_task_wait_longest_seconds", "gauge",
               "Longest current wait of a waiting task, by wait reason (a lower bound, sampled about once a second).",
               ("wait_kind",),
               tuple(Sample(_labels(wait_kind=k), v) for k, v in sorted(longest.items()))),
    ]


def primitive_families(sync: SyncSnapshot, max_series: int) -> list[Family]:
    """Permits in use and waiters, summed per (kind, label), the busiest ``max_series`` kept."""
    groups: dict[tuple[str, str], list[int]] = {}  # (kind, label) -> [permits in use, waiters, has permits]
    for state in sync.primitives:
        prim = state.primitive
        in_use = permits_in_use(state)
        waiters = prim.waiters if prim.waiters is not None else len(state.waiting_tasks)
        if not prim.label and not in_use and not waiters:
            continue  # an idle anonymous primitive says nothing
        g = groups.setdefault((prim.kind, prim.label or UNNAMED), [0, 0, 0])
        g[0] += in_use or 0
        g[1] += waiters
        g[2] |= in_use is not None
    ranked = sorted(groups.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
    kept, folded = ranked[:max_series], ranked[max_series:]
    other: dict[str, list[int]] = {}
    for (kind, _label), g in folded:
        o = other.setdefault(kind, [0, 0, 0])
        o[0] += g[0]
        o[1] += g[1]
        o[2] |= g[2]
    rows = [(kind, label, g) for (kind, label), g in kept] + [(kind, OTHER, g) for kind, g in sorted(other.items())]
    return [
        Family("diag_primitive_permits_in_use", "gauge",
               "Held permits of asyncio locks, conditions and semaphores, summed per primitive label.",
               ("kind", "primitive"),
               tuple(Sample(_labels(kind=k, primitive=lb), float(g[0])) for k, lb, g in rows if g[2])),
        Family("diag_primitive_waiters", "gauge",
               "Tasks waiting on asyncio primitives, summed per primitive label.",
               ("kind", "primitive"),
               tuple(Sample(_labels(kind=k, primitive=lb), float(g[1])) for k, lb, g in rows)),
        Family("diag_primitive_series_folded", "gauge",
               f"Primitive labels beyond the cap of {max_series}, summed into primitive=\"{OTHER}\".",
               (), (Sample((), float(len(folded))),)),
    ]


def loop_families(sync: SyncSnapshot) -> list[Family]:
    lag, stalled, stalls, stall_seconds = [], [], [], []
    seen: set[str] = set()
    for loop in sync.tasks.loops:
        name = loop.thread_name or str(loop.thread_id or loop.id)
        if name in seen:  # two loops on one thread name: tell them apart
            name = f"{name} {loop.id}"
        seen.add(name)
        if loop.lag_seconds is not None:
            lag.append(Sample(_labels(thread=name), loop.lag_seconds))
        stalled.append(Sample(_labels(thread=name), loop.stalled_seconds))
        for cause, count, seconds in (
                ("blocked", loop.stalls_total - loop.starved_total, loop.stall_seconds_total - loop.starved_seconds_total),
                ("starved", loop.starved_total, loop.starved_seconds_total)):
            stalls.append(Sample(_labels(thread=name, cause=cause), float(max(0, count))))
            stall_seconds.append(Sample(_labels(thread=name, cause=cause), max(0.0, seconds)))
    return [
        Family("diag_loop_lag_seconds", "gauge",
               "Delay of the agent's last heartbeat on each event loop.", ("thread",), tuple(lag)),
        Family("diag_loop_stalled_seconds", "gauge",
               "How long each event loop has not turned (0 while it turns).", ("thread",), tuple(stalled)),
        Family("diag_loop_stalls_total", "counter",
               "Finished stalls of each event loop (0.1 s or more without turning) since the agent started: "
               "starved (ready, given no CPU or GIL) or blocked (every other one).", ("thread", "cause"),
               tuple(stalls)),
        Family("diag_loop_stall_seconds_total", "counter",
               "Time each event loop spent in those stalls, by cause.", ("thread", "cause"), tuple(stall_seconds)),
    ]


def finding_families(sync: SyncSnapshot, options: LeakOptions) -> list[Family]:
    report = leak_report(sync, options)
    findings = dict.fromkeys(SCRAPE_FINDING_KINDS, 0)
    tasks = dict.fromkeys(SCRAPE_FINDING_KINDS, 0)
    for f in report.findings:
        if f.kind in findings:
            findings[f.kind] += 1
            tasks[f.kind] += f.task_count
    return [
        Family("diag_findings", "gauge",
               "diag leaks verdicts by kind, without the reachability proof (no proven_leak).", ("kind",),
               tuple(Sample(_labels(kind=k), float(n)) for k, n in findings.items())),
        Family("diag_finding_tasks", "gauge", "Tasks involved in the verdicts, by kind.", ("kind",),
               tuple(Sample(_labels(kind=k), float(n)) for k, n in tasks.items())),
    ]


def request_family(requests: Mapping[str, int]) -> Family:
    classes = sorted(set(STATUS_CLASSES[1:5]) | set(requests))  # 2xx..5xx always, from zero
    return Family("diag_aiohttp_requests_total", "counter",
                  "Requests handled by aiohttp apps set up with diag.aiohttp.setup, by status class "
                  "(diag's own endpoints not counted).", ("status_class",),
                  tuple(Sample(_labels(status_class=c), float(requests.get(c, 0))) for c in classes))


def snapshot_families(sync: SyncSnapshot, options: MetricsOptions = MetricsOptions()) -> tuple[Family, ...]:
    """The families derived from the snapshot alone: tasks, primitives, loops, findings."""
    return tuple(task_families(sync) + primitive_families(sync, options.max_primitive_series)
                 + loop_families(sync) + finding_families(sync, options.leaks))


def metric_families(inputs: MetricsInputs, derived: tuple[Family, ...] | None = None) -> tuple[Family, ...]:
    """Every family of one scrape; parts whose input is missing are left out.  ``derived``
    is ``snapshot_families`` of the scrape's snapshot when already computed (then
    ``inputs.sync`` may be None: the snapshot itself need not be kept)."""
    sync = inputs.sync
    have = sync is not None or derived is not None
    out: list[Family] = []
    if derived is not None:
        out += derived
    elif sync is not None:
        out += snapshot_families(sync, inputs.options)
    if inputs.requests is not None:
        out.append(request_family(inputs.requests))
    out += [
        Family("diag_scrape_collect_seconds", "gauge",
               "Time the agent took to collect the snapshot behind these metrics.", (),
               (Sample((), inputs.collect_seconds),) if have else ()),
        Family("diag_scrape_snapshot_age_seconds", "gauge",
               "Age of that snapshot: scrapes close together share one collection.", (),
               (Sample((), inputs.snapshot_age),) if have else ()),
        Family("diag_scrape_errors_total", "counter",
               "Scrapes whose collection failed (their answer lacks the task, primitive, loop and finding metrics).",
               (), (Sample((), float(inputs.scrape_errors)),)),
    ]
    return tuple(out)
