"""Prometheus metrics for every node: one registry per application, read at scrape time where possible.

Counters that change on the request path are ``prometheus_client`` counters; numbers that already
live elsewhere (cache statistics, upstream health, replication state) are read by collectors only
when ``/metrics`` is scraped, so a cache hit pays nothing for them. Upstream servers are named by
referrals, so their label set is bounded (``UpstreamMetrics``). A node run as several worker
processes merges its workers' families into one scrape (``merge_workers``).
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
    "SUMMED_GAUGES",
    "WORKER_LABEL",
    "NodeMetrics",
    "UpstreamMetrics",
    "count_requests",
    "counter",
    "families_from_wire",
    "families_to_wire",
    "gauge",
    "merge_workers",
    "metrics_handler",
    "render_families",
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

    def families(self) -> list[Metric]:
        """The metric families a scrape would show now (the flushes run first), as objects."""
        for flush in self._flushes:
            flush()
        return list(self.registry.collect())


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


# -- several worker processes, one node ------------------------------------------------------------

SUMMED_GAUGES = frozenset({"idres_cache_entries"})
"""Gauges whose sum over a node's workers means something (each worker holds its own cache, so the
node holds the sum). Every other gauge (a server's smoothed RTT, whether a worker marks it down) is
one worker's view and is kept per worker under the ``worker`` label."""

WORKER_LABEL = "worker"


def merge_workers(by_worker: Iterable[tuple[int, Iterable[Metric]]]) -> list[Metric]:
    """One node's families from its workers' ``(index, families)``: counters, histograms and
    summaries summed sample by sample (same name, same labels), so rates and quantiles over the node
    come out right; the gauges of ``SUMMED_GAUGES`` summed too; every other gauge kept per worker
    with a ``worker`` label. Families keep the order in which they were first seen."""
    merged: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, families in by_worker:
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                sums[family.name] = {}
            if family.type == "gauge" and family.name not in SUMMED_GAUGES:
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, WORKER_LABEL: str(index)}, sample.value)
                continue
            totals = sums[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                totals[key] = totals.get(key, 0.0) + sample.value
    for name, totals in sums.items():
        for (sample_name, labels), value in totals.items():
            merged[name].add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def families_to_wire(families: Iterable[Metric]) -> list[list[Any]]:
    """Metric families as plain lists (for JSON): what one worker sends the worker merging a scrape."""
    return [
        [f.name, f.documentation, f.type, f.unit, [[s.name, s.labels, s.value] for s in f.samples]] for f in families
    ]


def families_from_wire(wire: Any) -> list[Metric]:
    """The families ``families_to_wire`` wrote; ValueError or TypeError if ``wire`` is not such a list."""
    families = []
    for name, documentation, typ, unit, samples in wire:
        family = Metric(str(name), str(documentation), str(typ), str(unit))
        for sample_name, labels, value in samples:
            family.add_sample(str(sample_name), {str(k): str(v) for k, v in dict(labels).items()}, float(value))
        families.append(family)
    return families


def render_families(families: Iterable[Metric]) -> bytes:
    """``families`` in the Prometheus text format, as ``NodeMetrics.render`` writes a registry."""
    fixed = list(families)
    return generate_latest(_Callback(lambda: fixed))


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
