"""Issue 11, finding 7: a delegation naming 300 servers must not grow the recursive node's state, metrics or probes."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from resolver.client import basic_auth
from resolver.sites import MAX_SITE_SERVERS
from tests.conftest import free_port
from tests.processes import Running, copy_topology, get_json, health, request, start_up, stop, wait_until

pytestmark = pytest.mark.integration

DELEGATED = "88.118.8.1"
# Spellings of two loopback addresses (127.0.0.2 is another address; the rest are 127.0.0.1).
SPELLINGS = ["127.0.0.1", "127.1", "127.0.0.2", "0x7f.0.0.1", "2130706433", "0177.0.0.1"]
FORGET_AFTER = 8  # seconds, set in the topology below so the test can watch servers being forgotten
# The default topology's /metrics is ~12 KB; each server with series of its own adds ~1.5 KB, and at
# most the 2 root hints + 16 others + "other" have them: ~40 KB. One histogram per URL was 429 KB.
METRICS_BOUND = 60_000


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("bounded")
    topology = copy_topology(tmp / "topology.toml")
    text = topology.read_text()
    table = "[nodes.recursive.upstream]\n"
    assert table in text
    topology.write_text(text.replace(table, f"{table}forget_after = {FORGET_AFTER}\n"))
    up = start_up(tmp / "data", topology)
    try:
        yield up
    finally:
        stop(up)


def _delegate_to_300_servers(running: Running) -> None:
    """The automaker operator registers 0.NA/88.118.8.1 with an HS_SITE listing 300 servers where
    nothing listens (no node of the topology, no port in use)."""
    ports = [free_port() for _ in range(50)]
    servers = [
        {"serverId": i + 1, "address": host, "interfaces": [{"query": True, "protocol": "HTTP", "port": port}]}
        for i, (host, port) in enumerate((h, p) for p in ports for h in SPELLINGS)
    ]
    assert len(servers) == 300
    site = {"primarySite": True, "attributes": [{"name": "desc", "value": "many"}], "servers": servers}
    body = {"values": [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": site}}]}
    headers = {
        "Authorization": basic_auth("300:0.NA/88.118.8", running.secret("automaker")),
        "Content-Type": "application/json",
    }
    url = f"{running.urls['automaker']}/api/handles/0.NA/{DELEGATED}"
    status, answer = request("PUT", url, json.dumps(body).encode(), headers)
    assert status in (200, 201), answer


def _resolve_a_few_times(recursive: str, times: int = 5) -> None:
    for i in range(times):
        status, body = get_json(f"{recursive}/api/handles/{DELEGATED}/X-{i}")
        assert status in (502, 504), (status, body)  # nothing listens: an upstream failure, said so


def _metrics(recursive: str) -> bytes:
    with urllib.request.urlopen(f"{recursive}/metrics", timeout=10) as r:
        return bytes(r.read())


def test_a_delegation_to_300_servers_keeps_metrics_small_and_probes_few(running: Running) -> None:
    recursive = running.urls["recursive"]
    _delegate_to_300_servers(running)
    _resolve_a_few_times(recursive)
    down = (health(recursive) or {})["down"]
    assert 0 < len(down) <= MAX_SITE_SERVERS, down
    assert len({url.rsplit(":", 1)[0] for url in down}) <= 2, "one spelling per address"
    text = _metrics(recursive)
    assert len(text) < METRICS_BOUND, f"/metrics is {len(text)} bytes"
    assert b'server="other"' in text


def test_servers_no_client_asks_for_are_forgotten_and_no_longer_probed(running: Running) -> None:
    recursive = running.urls["recursive"]
    _delegate_to_300_servers(running)
    _resolve_a_few_times(recursive, 2)
    assert (health(recursive) or {})["down"], "the delegated servers are marked down and probed"
    started = time.monotonic()
    wait_until(lambda: (health(recursive) or {}).get("down") == [], "the unused servers to be forgotten", 30)
    assert time.monotonic() - started < FORGET_AFTER + 10
    text = _metrics(recursive).decode()
    assert "127.0.0.2" not in text, "the forgotten servers' series are gone"
    assert f'server="{running.urls["chongqing-top"]}"' in text, "the root hints' stay"
