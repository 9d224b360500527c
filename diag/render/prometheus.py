"""Render metric families in the Prometheus text exposition format (0.0.4), with
``prometheus_client``: a custom Collector on a registry of its own, never the global one.

Usage::

    registry = metrics_registry(lambda: metric_families(inputs))
    body = exposition(registry)              # bytes, CONTENT_TYPE
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from diag.analysis.metrics_model import Family
from diag.render.formatting import encodable

#: The text format 0.0.4, which every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def to_prometheus(family: Family) -> Metric:
    """One diag family as a prometheus_client metric family."""
    metric: GaugeMetricFamily | CounterMetricFamily
    if family.kind == "counter":
        # prometheus_client names the family without ``_total`` and appends it to the sample.
        metric = CounterMetricFamily(family.name.removesuffix("_total"), family.help, labels=family.labels)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
    for sample in family.samples:
        values = dict(sample.labels)
        metric.add_metric([encodable(values.get(name, "")) for name in family.labels], sample.value)
    return metric


class DiagCollector(Collector):
    """A prometheus_client Collector whose ``collect`` asks ``families`` for a fresh set.

    It can be registered on any registry (``prometheus_client.REGISTRY.register(c)`` adds
    diag's metrics to a program's own exposition); ``describe`` returns nothing so that
    registering does not trigger a collection.
    """

    def __init__(self, families: Callable[[], Sequence[Family]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        for family in self._families():
            yield to_prometheus(family)

    def describe(self) -> Iterable[Metric]:
        return []


def metrics_registry(families: Callable[[], Sequence[Family]]) -> CollectorRegistry:
    """A registry of its own holding one ``DiagCollector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DiagCollector(families))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text format."""
    return generate_latest(registry)


def exposition_text(families: Sequence[Family]) -> str:
    """Families straight to text (tests, offline rendering)."""
    return exposition(metrics_registry(lambda: families)).decode()
