"""Merging the metrics of a node's worker processes into one scrape (nodes.shared.metrics.merge_workers)."""

from __future__ import annotations

import json

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from nodes.shared.metrics import (
    NodeMetrics,
    UpstreamMetrics,
    families_from_wire,
    families_to_wire,
    gauge,
    merge_workers,
    render_families,
)

ROOT = "http://127.0.0.1:8100"


def worker(requests: int, hits: int, entries: int, rtts: list[float], srtt: float) -> list[Metric]:
    """One worker's families, as its registry gives them at scrape time."""
    metrics = NodeMetrics("recursive", "recursive")
    upstream = UpstreamMetrics(keep=[ROOT])
    metrics.add_collector(upstream)
    for seconds in rtts:
        upstream.observe(ROOT, seconds, ok=True)
    metrics.count_request("GET", 200, requests)
    metrics.add_source(
        lambda: [
            gauge("idres_cache_entries", "Entries", entries),
            gauge("idres_upstream_srtt_seconds", "SRTT", srtt, {"server": ROOT}),
        ]
    )
    metrics.resolutions.labels("answer").inc(hits)
    return metrics.families()


def scrape(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What Prometheus reads from the rendered text: (sample name, sorted labels) -> value."""
    text = render_families(families).decode()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)), "each family appears once"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_counters_and_histograms_are_summed_over_workers() -> None:
    merged = scrape(merge_workers([(0, worker(7, 5, 3, [0.001, 0.003], 0.002)), (1, worker(4, 2, 1, [0.001], 0.004))]))
    assert merged[("idres_requests_total", (("method", "GET"), ("status", "200")))] == 11
    assert merged[("idres_resolutions_total", (("outcome", "answer"),))] == 7
    assert merged[("idres_upstream_rtt_seconds_count", (("server", ROOT),))] == 3
    assert merged[("idres_upstream_rtt_seconds_bucket", (("le", "0.001"), ("server", ROOT)))] == 2
    assert merged[("idres_upstream_rtt_seconds_sum", (("server", ROOT),))] == pytest.approx(0.005)


def test_cache_entries_are_summed_and_other_gauges_kept_per_worker() -> None:
    merged = scrape(merge_workers([(0, worker(1, 0, 3, [], 0.002)), (1, worker(1, 0, 1, [], 0.004))]))
    assert merged[("idres_cache_entries", ())] == 4, "each worker holds its own cache: the node holds the sum"
    srtt = {labels: v for (name, labels), v in merged.items() if name == "idres_upstream_srtt_seconds"}
    assert srtt == {
        (("server", ROOT), ("worker", "0")): 0.002,
        (("server", ROOT), ("worker", "1")): 0.004,
    }, "a smoothed RTT is one worker's view: a sum of two would mean nothing"


def test_one_worker_merges_to_what_it_reports_alone() -> None:
    alone = worker(3, 2, 5, [0.002], 0.002)
    assert scrape(merge_workers([(0, alone)])) == {
        k: v for k, v in scrape(alone).items() if k[0] != "idres_upstream_srtt_seconds"
    } | {("idres_upstream_srtt_seconds", (("server", ROOT), ("worker", "0"))): 0.002}


def test_families_survive_the_trip_between_workers_as_json() -> None:
    families = worker(9, 4, 2, [0.001, 0.5], 0.01)
    back = families_from_wire(json.loads(json.dumps(families_to_wire(families))))
    assert render_families(back) == render_families(families)
