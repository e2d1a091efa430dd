"""Prometheus metrics for every node: one registry per application, read at scrape time where possible.

Counters that change on the request path are ``prometheus_client`` counters; numbers that already
live elsewhere (cache statistics, upstream health, replication state) are read by collectors only
when ``/metrics`` is scraped, so a cache hit pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["METRICS", "NodeMetrics", "count_requests", "counter", "gauge", "metrics_handler"]

MetricSource = Callable[[], Iterable[Metric]]

# The *_created series double every counter's output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Callback:
    """A collector that asks a function for its metric families at scrape time."""

    def __init__(self, source: MetricSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source()


class NodeMetrics:
    def __init__(self, node: str, role: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.node = node
        self.role = role
        self.requests = Counter(
            "idres_requests",
            "HTTP API requests by method and HTTP status",
            ["method", "status"],
            registry=self.registry,
        )
        self.resolutions = Counter("idres_resolutions", "Resolutions by outcome", ["outcome"], registry=self.registry)
        self.upstream_rtt = Histogram(
            "idres_upstream_rtt_seconds",
            "Round-trip time of upstream queries",
            ["server"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.upstream_failures = Counter(
            "idres_upstream_failures", "Failed upstream queries by server", ["server"], registry=self.registry
        )
        # ``labels()`` takes a lock and builds a key on every call (about 1.5 us); the children are kept.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._flushes: list[Callable[[], None]] = []

    def count_request(self, method: str, status: int, amount: int = 1) -> None:
        """Count HTTP API requests (one by default) by method and HTTP status."""
        child = self._request_children.get((method, status))
        if child is None:
            child = self._request_children[(method, status)] = self.requests.labels(method, str(status))
        child.inc(amount)

    def add_source(self, source: MetricSource) -> None:
        """Register a function that yields metric families when ``/metrics`` is scraped."""
        self.registry.register(_Callback(source))

    def add_flush(self, flush: Callable[[], None]) -> None:
        """Register a function that moves tallies kept as plain integers (a hot path cannot afford a
        counter's lock) into the counters; it runs before every scrape."""
        self._flushes.append(flush)

    def render(self) -> bytes:
        for flush in self._flushes:
            flush()
        return generate_latest(self.registry)


METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics")


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by method and HTTP status (outside the error middleware, so errors count)."""
    response = await handler(request)
    request.app[METRICS].count_request(request.method, response.status)
    return response


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
