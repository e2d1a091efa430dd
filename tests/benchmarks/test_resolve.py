"""The pure parts of the load benchmarks: wrk output, the Lua script and its paths, topologies, analysis."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from benchmarks.baseline import create_baseline_app
from benchmarks.failover import SCENARIOS, Sample, analyse, per_second
from benchmarks.tools import (
    SPREAD_LUA,
    parse_duration,
    parse_prometheus,
    parse_wrk,
    percentile,
    request_path,
    summarize,
    write_paths,
)
from benchmarks.topology import AUTOMAKER_MIRROR, COLD_RECURSIVE, topology_text
from nodes.running.topology_file import DEFAULT_TOPOLOGY
from resolver.codec import JSON, encode
from resolver.config import parse_topology

WRK_TEXT = """Running 10s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.10ms  812.00us  31.02ms   93.12%
    Req/Sec    15.71k   601.22    16.50k    79.00%
  Latency Distribution
     50%    3.99ms
     75%    4.20ms
     90%    4.61ms
     99%    7.51ms
  156341 requests in 10.00s, 120.98MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  15633.52
Transfer/sec:     12.10MB
"""


def test_durations_in_wrk_units_become_milliseconds() -> None:
    assert parse_duration("812.00us") == pytest.approx(0.812)
    assert parse_duration("4.10ms") == pytest.approx(4.1)
    assert parse_duration("2.01s") == pytest.approx(2010)
    assert parse_duration("1.00m") == pytest.approx(60_000)
    with pytest.raises(ValueError):
        parse_duration("fast")


def test_wrk_text_output_is_read_when_the_script_printed_nothing() -> None:
    result = parse_wrk(WRK_TEXT)
    assert result.requests == 156341 and result.seconds == pytest.approx(10.0)
    assert result.rps == pytest.approx(15633.52)
    assert result.latency_ms["p50"] == pytest.approx(3.99) and result.latency_ms["p99"] == pytest.approx(7.51)
    assert result.latency_ms["max"] == pytest.approx(31.02)
    assert result.errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.non_2xx == 5 and result.failed == 3


def test_the_json_line_of_spread_lua_wins_over_the_text() -> None:
    line = (
        'IDRES-WRK-JSON {"requests":1000,"duration_us":2000000,"bytes":5,'
        '"errors":{"connect":0,"read":0,"write":0,"status":4,"timeout":0},'
        '"latency_us":{"mean":900.5,"stdev":10.0,"min":100,"max":9000,'
        '"p50":800,"p75":900,"p90":1000,"p99":2500,"p99.9":7000,"p99.99":8999}}'
    )
    result = parse_wrk(WRK_TEXT + line + "\n")
    assert result.requests == 1000 and result.rps == pytest.approx(500)
    assert result.latency_ms["p99.9"] == pytest.approx(7.0) and result.latency_ms["p50"] == pytest.approx(0.8)
    assert result.non_2xx == 4 and result.failed == 0


def test_wrk_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="no summary"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_reads_the_paths_file_and_prints_what_parse_wrk_reads() -> None:
    lua = SPREAD_LUA.read_text()
    assert "io.lines(file)" in lua and 'wrk.format("GET", path)' in lua
    assert "IDRES-WRK-JSON " in lua and "percentile(99.9)" in lua
    # Every key parse_wrk reads is printed by done().
    for key in ('"requests"', '"duration_us"', '"errors"', '"latency_us"', '"p99.9"', '"status"'):
        assert key in lua


def test_paths_are_encoded_as_the_resolver_client_encodes_handles(tmp_path: Path) -> None:
    assert request_path("88.118.8/VIN-001") == "/api/handles/88.118.8/VIN-001"
    assert request_path("88.118.8/a b?c#d") == "/api/handles/88.118.8/a%20b%3Fc%23d"
    assert request_path("88.118.8/车") == "/api/handles/88.118.8/%E8%BD%A6"
    out = tmp_path / "paths"
    assert write_paths(out, ["88/A", "88/B c"]) == 2
    assert out.read_text().splitlines() == ["/api/handles/88/A", "/api/handles/88/B%20c"]
    with pytest.raises(ValueError):
        write_paths(out, [])


def test_percentiles_are_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([7.0], 99.9) == 7.0
    figures = summarize([3.0, 1.0, 2.0])
    assert figures["p50"] == 2.0 and figures["max"] == 3.0 and figures["count"] == 3


def test_prometheus_text_is_read_by_name_and_labels() -> None:
    text = (
        "# HELP idres_cache_hits_total x\n# TYPE idres_cache_hits_total counter\n"
        "idres_cache_hits_total 12.0\n"
        'idres_upstream_rtt_seconds_count{server="http://127.0.0.1:1"} 3.0\n'
    )
    samples = parse_prometheus(text)
    assert samples[("idres_cache_hits_total", ())] == 12.0
    assert samples[("idres_upstream_rtt_seconds_count", (("server", "http://127.0.0.1:1"),))] == 3.0


def test_the_benchmark_topology_moves_every_port_and_adds_its_nodes() -> None:
    base = DEFAULT_TOPOLOGY.read_text()
    text = topology_text(base, automaker_mirror=True)
    topology = parse_topology(tomllib.loads(text))
    default = parse_topology(tomllib.loads(base))
    assert set(topology.nodes) == {*default.nodes, COLD_RECURSIVE, AUTOMAKER_MIRROR}
    assert not {n.port for n in topology.nodes.values()} & {n.port for n in default.nodes.values()}
    cold = topology.node(COLD_RECURSIVE)
    assert cold.role == "recursive" and cold.cache.max_ttl == 0 and cold.cache.stale_window == 0
    assert [s.name for s in topology.sites_of("automaker")] == ["automaker", AUTOMAKER_MIRROR]
    kept = parse_topology(tomllib.loads(topology_text(base, move_ports=False)))
    assert kept.node("recursive").port == default.node("recursive").port


async def test_both_baselines_answer_the_bytes_a_node_would() -> None:
    payload = {"responseCode": 1, "handle": "88.118.8/X", "values": [{"index": 1, "type": "URL"}]}
    for mode in ("preencoded", "encode"):
        async with TestClient(TestServer(create_baseline_app({"88.118.8/X": payload}, mode))) as client:
            resp = await client.get("/api/handles/88.118.8/X")
            assert resp.status == 200 and await resp.read() == encode(payload, JSON)
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            resp = await client.get("/api/handles/88.118.8/Y")
            assert resp.status == 404 and json.loads(await resp.read())["responseCode"] == 100


def _samples() -> list[Sample]:
    top = SCENARIOS["top"]
    out = []
    for i in range(300):  # 100 req/s for 3 s; the kill at 1.0 s
        due = i / 100
        if due < 1.0:
            out.append(Sample(due, due + 0.002, 200, top.victim))
        elif due < 1.05:
            out.append(Sample(due, due + 0.030, 200, top.backup, failed_over=True))  # the failover costs 30 ms
        elif due < 2.0:
            out.append(Sample(due, due + 0.003, 200, top.backup))
        else:
            out.append(Sample(due, due + 0.002, 200, top.victim))
    out.append(Sample(1.5, 1.6, 0, "", "ClientOSError: reset"))
    return sorted(out, key=lambda s: s.due)


def test_failover_analysis_finds_the_kill_second_the_backup_and_the_return() -> None:
    events = {"kill": 1.0, "restart": 1.9, "restarted": 2.0}
    figures = analyse(_samples(), events, SCENARIOS["top"])
    assert figures["requests"] == 301 and figures["failed"] == 1
    assert figures["failures"][0]["error"].startswith("ClientOSError")
    assert figures["p99_before_kill_ms"] == pytest.approx(2.0)
    assert figures["p99_kill_second_ms"] == pytest.approx(30.0)  # the 100th of 101 latencies
    assert figures["max_kill_second_ms"] == pytest.approx(100.0)  # the failed request took 100 ms
    assert figures["first_backup_answer_after_kill_s"] == pytest.approx(0.03)
    assert figures["last_slow_request_after_kill_s"] == pytest.approx(0.6)  # the failure ended at 1.6 s
    assert figures["backup_alone_after_kill_s"] == pytest.approx(0.6)  # so did the last detour
    assert figures["requests_that_failed_over"] == 6  # five detours and the failed request
    assert figures["primary_again_after_restart_s"] == pytest.approx(0.102)  # due 2.0 + 2 ms, restart at 1.9
    rows = per_second(_samples(), SCENARIOS["top"].backup, SCENARIOS["top"].victim)
    assert [r["second"] for r in rows] == [0, 1, 2]
    assert rows[0]["by_primary"] == 100 and rows[1]["by_backup"] == 100 and rows[1]["failed"] == 1
    assert rows[1]["p50_ms"] == pytest.approx(3.0)
