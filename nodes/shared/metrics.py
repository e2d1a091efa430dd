"""Prometheus metrics for every node: one registry per application, read at scrape time where possible.

Counters that change on the request path are ``prometheus_client`` counters; numbers that already
live elsewhere (cache statistics, upstream health, replication state) are read by collectors only
when ``/metrics`` is scraped, so a cache hit pays nothing for them. Upstream servers are named by
referrals, so their label set is bounded (``UpstreamMetrics``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = [
    "MAX_LABELLED_SERVERS",
    "METRICS",
    "OTHER_SERVERS",
    "NodeMetrics",
    "UpstreamMetrics",
    "count_requests",
    "counter",
    "gauge",
    "metrics_handler",
]

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

    def add_collector(self, collector: Any) -> None:
        """Register an object whose ``collect()`` yields metric families when ``/metrics`` is scraped."""
        self.registry.register(collector)

    def add_flush(self, flush: Callable[[], None]) -> None:
        """Register a function that moves tallies kept as plain integers (a hot path cannot afford a
        counter's lock) into the counters; it runs before every scrape."""
        self._flushes.append(flush)

    def render(self) -> bytes:
        for flush in self._flushes:
            flush()
        return generate_latest(self.registry)


METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics")

MAX_LABELLED_SERVERS = 16
"""Upstream servers, besides the root hints, with series of their own. A deployment's recursive node
asks a few secondaries and enterprise nodes; each labelled server costs ~20 lines of /metrics, so 16
keep a scrape near 30 KB however many servers referrals name (DESIGN.md §11: they are untrusted)."""

OTHER_SERVERS = "other"
"""The ``server`` label of the series that sums every upstream server without one of its own."""

_RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_RTT_LE = [*(repr(b) for b in _RTT_BUCKETS), "+Inf"]  # as prometheus_client spells them: 1.0, 0.0005


class _Series:
    """One server's query tallies: a count per RTT bucket (not cumulative), their sum, failures."""

    __slots__ = ("buckets", "failures", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_RTT_BUCKETS) + 1)
        self.total = 0.0
        self.failures = 0

    def merge(self, other: _Series) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.total += other.total
        self.failures += other.failures


class UpstreamMetrics:
    """Round-trip times and failures of upstream queries with a bounded set of ``server`` labels.

    The root hints (``keep``) always have series of their own; other servers get one while fewer than
    ``labelled`` hold one, and keep it until the upstream table forgets them (``forget``); every
    other server is counted under ``server="other"``. A forgotten server's tallies move into
    ``other``, so its series leave /metrics while the sums over servers never go down.
    """

    def __init__(self, keep: Iterable[str] = (), labelled: int = MAX_LABELLED_SERVERS) -> None:
        self._keep = frozenset(keep)
        self._limit = labelled
        self._series: dict[str, _Series] = {url: _Series() for url in self._keep}
        self._other = _Series()

    def observe(self, url: str, seconds: float, ok: bool) -> None:
        """Count one query to ``url`` that took ``seconds``."""
        series = self._series.get(url)
        if series is None:
            if len(self._series) - len(self._keep) < self._limit:
                series = self._series[url] = _Series()
            else:
                series = self._other
        series.buckets[bisect_left(_RTT_BUCKETS, seconds)] += 1
        series.total += seconds
        series.failures += not ok

    def forget(self, url: str) -> None:
        """``url`` left the upstream table: drop its series, its tallies now count as ``other``."""
        if url not in self._keep:
            series = self._series.pop(url, None)
            if series is not None:
                self._other.merge(series)

    def labelled(self, url: str) -> bool:
        """Whether ``url`` has series of its own (other per-server metrics show only those)."""
        return url in self._series

    def collect(self) -> Iterable[Metric]:
        """The families, read at scrape time (a collector of the node's registry)."""
        rtt = HistogramMetricFamily(
            "idres_upstream_rtt_seconds", "Round-trip time of upstream queries", labels=["server"]
        )
        failures = CounterMetricFamily(
            "idres_upstream_failures", "Failed upstream queries by server", labels=["server"]
        )
        for url, series in [*self._series.items(), (OTHER_SERVERS, self._other)]:
            cumulative, buckets = 0, []
            for le, count in zip(_RTT_LE, series.buckets, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            rtt.add_metric([url], buckets, series.total)
            failures.add_metric([url], float(series.failures))
        yield rtt
        yield failures


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
