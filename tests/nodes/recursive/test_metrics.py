"""Bounded upstream metrics (nodes.shared.metrics.UpstreamMetrics), wired to the upstream table as on the node."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nodes.shared.metrics import MAX_LABELLED_SERVERS, OTHER_SERVERS, NodeMetrics, UpstreamMetrics
from resolver.upstream import UpstreamConfig, Upstreams
from tests.fakes import FakeClock

ROOTS = ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]


def make(**config: float) -> tuple[Upstreams, UpstreamMetrics, NodeMetrics, FakeClock]:
    clock = FakeClock()
    series = UpstreamMetrics(keep=ROOTS)
    node = NodeMetrics("recursive", "recursive")
    node.add_collector(series)
    upstreams = Upstreams(UpstreamConfig(**config), clock=clock, keep=ROOTS, on_forget=series.forget)  # type: ignore[arg-type]
    return upstreams, series, node, clock


def ask(upstreams: Upstreams, series: UpstreamMetrics, url: str, seconds: float, ok: bool) -> None:
    """What one query does: the resolution reports to the table, then the driver's hook to the metrics."""
    if ok:
        upstreams.success(url, seconds)
    else:
        upstreams.failure(url, "refused")
    series.observe(url, seconds, ok)


def samples(node: NodeMetrics) -> dict[tuple[str, str], float]:
    """(sample name, server label) -> value, for the per-server families."""
    found = {}
    for family in text_string_to_metric_families(node.render().decode()):
        for sample in family.samples:
            if "server" in sample.labels and "le" not in sample.labels:
                found[(sample.name, sample.labels["server"])] = sample.value
    return found


def test_hundreds_of_servers_give_a_bounded_label_set_and_a_small_scrape() -> None:
    upstreams, series, node, _ = make()
    for root in ROOTS:
        ask(upstreams, series, root, 0.002, True)
    for i in range(300):
        ask(upstreams, series, f"http://127.0.0.{i % 250 + 1}:{20000 + i}", 0.001, False)
    found = samples(node)
    servers = {server for (_, server) in found}
    assert len(servers) == len(ROOTS) + MAX_LABELLED_SERVERS + 1
    assert set(ROOTS) <= servers and OTHER_SERVERS in servers
    assert found[("idres_upstream_rtt_seconds_count", OTHER_SERVERS)] == 300 - MAX_LABELLED_SERVERS
    assert found[("idres_upstream_failures_total", OTHER_SERVERS)] == 300 - MAX_LABELLED_SERVERS
    total = sum(v for (name, _), v in found.items() if name == "idres_upstream_rtt_seconds_count")
    assert total == 302, "every query is counted once, labelled or not"
    # A histogram and a failure counter take ~1.3 KB per server label: the scrape stays ~25 KB (it
    # was ~400 KB before, one histogram per URL a referral named).
    assert len(node.render()) < (len(ROOTS) + MAX_LABELLED_SERVERS + 1) * 1_500


def test_buckets_are_cumulative_as_prometheus_reads_them() -> None:
    upstreams, series, node, _ = make()
    for seconds in (0.0004, 0.001, 0.003, 9.0):
        ask(upstreams, series, ROOTS[0], seconds, True)
    (rtt,) = [
        f for f in text_string_to_metric_families(node.render().decode()) if f.name == "idres_upstream_rtt_seconds"
    ]
    buckets = {
        s.labels["le"]: s.value for s in rtt.samples if s.name.endswith("_bucket") and s.labels["server"] == ROOTS[0]
    }
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.005"], buckets["2.5"], buckets["+Inf"]) == (1, 2, 3, 3, 4)


def test_a_forgotten_server_leaves_metrics_and_its_slot_goes_to_another() -> None:
    upstreams, series, node, clock = make(forget_after=600)
    attacker = "http://127.1.2.3:9999"
    ask(upstreams, series, attacker, 0.001, False)
    assert ("idres_upstream_rtt_seconds_count", attacker) in samples(node)
    clock.advance(601)
    ask(upstreams, series, ROOTS[0], 0.002, True)
    upstreams.forget_idle()
    found = samples(node)
    assert all(server != attacker for (_, server) in found), "its series are gone"
    assert found[("idres_upstream_rtt_seconds_count", OTHER_SERVERS)] == 1, "its count moved to other"
    assert found[("idres_upstream_failures_total", OTHER_SERVERS)] == 1
    assert ("idres_upstream_rtt_seconds_count", ROOTS[0]) in found, "the root hints stay"


def test_series_stop_at_the_table_bound_too() -> None:
    upstreams, series, node, _ = make(max_servers=4)
    for i in range(10):
        ask(upstreams, series, f"http://10.0.0.{i}:80", 0.001, True)
    labelled = {server for (_, server) in samples(node)} - {*ROOTS, OTHER_SERVERS}
    assert labelled == {f"http://10.0.0.{i}:80" for i in range(6, 10)}, "only servers the table still tracks"
