"""Finding 12 of issue 11 (no TLS anywhere), against `idres up --tls` of a copy of the default topology
on free ports: every node serves HTTPS with a certificate of the local CA made under the data
directory; the nodes talk to each other over it (referrals, writes forwarded by the recursive node,
replication to the Chengdu mirror, identity checks between enterprises) and the delegations they
write advertise HTTPS; a client that does not trust the CA, or speaks plain HTTP, gets nothing."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.running.seeding import DEMO_CAR
from resolver.client import basic_auth
from tests.processes import Running, copy_topology, request, run_idres, start_up, stop, wait_until

pytestmark = pytest.mark.integration

AUTOMAKER_OPERATOR = "300:0.NA/88.118.8"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("tls")
    running = start_up(data / "data", copy_topology(data / "topology.toml"), tls=True)
    yield running
    stop(running)


def ca_file(up: Running) -> Path:
    return up.data / "tls" / "ca.pem"


@pytest.fixture(scope="module")
def trusting(up: Running) -> ssl.SSLContext:
    """What `curl --cacert DATA/tls/ca.pem` trusts."""
    return ssl.create_default_context(cafile=str(ca_file(up)))


def test_every_node_serves_https_with_a_certificate_of_the_local_ca(up: Running, trusting: ssl.SSLContext) -> None:
    for name, url in up.urls.items():
        assert url.startswith("https://127.0.0.1:"), url
        status, body = request("GET", url + "/healthz", context=trusting)
        assert status == 200 and body["status"] == "ok", (name, body)
    keys = sorted(p.name for p in (up.data / "tls").glob("*-key.pem"))
    assert keys == sorted([*(f"{name}-key.pem" for name in up.urls), "ca-key.pem"])
    assert all((up.data / "tls" / k).stat().st_mode & 0o077 == 0 for k in keys), "private keys are the owner's only"


def test_a_resolution_through_the_recursive_node_walks_the_tree_over_https(
    up: Running, trusting: ssl.SSLContext
) -> None:
    status, body = request("GET", f"{up.urls['recursive']}/api/handles/{DEMO_CAR}?trace=true", context=trusting)
    assert status == 200, body
    assert body["values"][0]["data"]["value"] == "https://automaker.example.cn/vehicles/LFV3A23C5K3000417"
    addresses = [hop["address"] for hop in body["trace"]]
    assert addresses == [up.urls["chongqing-top"], up.urls["auto-secondary"], up.urls["automaker"]], body["trace"]


def test_delegations_and_own_prefix_handles_advertise_https(up: Running, trusting: ssl.SSLContext) -> None:
    for url, handle in ((up.urls["chongqing-top"], "0.NA/88.118"), (up.urls["automaker"], "0.NA/88.118.8")):
        status, body = request("GET", f"{url}/api/handles/{handle}?type=HS_SITE", context=trusting)
        assert status == 200, body
        interfaces = [i for v in body["values"] for s in v["data"]["value"]["servers"] for i in s["interfaces"]]
        assert interfaces and {i["protocol"] for i in interfaces} == {"HTTPS"}, (handle, interfaces)


def test_a_client_that_does_not_trust_the_ca_or_speaks_plain_http_gets_nothing(up: Running) -> None:
    url = f"{up.urls['recursive']}/api/handles/{DEMO_CAR}"
    with pytest.raises(urllib.error.URLError) as untrusted:
        urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError), untrusted.value
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url.replace("https://", "http://"), timeout=10)


def test_writes_identity_checks_and_replication_go_over_https(up: Running, trusting: ssl.SSLContext) -> None:
    operator = {"Authorization": basic_auth(AUTOMAKER_OPERATOR, up.secret("automaker"))}
    body = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://automaker.example.cn/tls"}]}).encode()
    headers = {**operator, "Content-Type": "application/json"}
    # Forwarded by the recursive node to the automaker node, over HTTPS.
    status, answer = request(
        "PUT", f"{up.urls['recursive']}/api/handles/88.118.8/TLS-1?overwrite=false", body, headers, context=trusting
    )
    assert status == 201, answer
    # The batterymaker node verifies the automaker's identity at its home node, over HTTPS.
    status, answer = request("GET", f"{up.urls['batterymaker']}/api/sessions/this", headers=operator, context=trusting)
    assert (status, answer.get("authenticated"), answer.get("id")) == (200, True, AUTOMAKER_OPERATOR), answer
    # The Chengdu mirror copies the top node's writes over HTTPS, the top operator's secret included.
    top = {"Authorization": basic_auth("300:0.NA/88", up.secret("chongqing-top")), "Content-Type": "application/json"}
    status, answer = request(
        "PUT", f"{up.urls['chongqing-top']}/api/handles/88/TLS-TOP?overwrite=false", body, top, context=trusting
    )
    assert status == 201, answer
    wait_until(
        lambda: request("GET", f"{up.urls['chengdu-top']}/api/handles/88/TLS-TOP", context=trusting)[0] == 200,
        "the Chengdu mirror to copy 88/TLS-TOP",
    )


def test_idres_resolve_takes_the_ca_with_cacert(up: Running) -> None:
    server = up.urls["recursive"]
    done = run_idres("resolve", DEMO_CAR, "--server", server, "--json", "--cacert", str(ca_file(up)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["handle"] == DEMO_CAR
    refused = run_idres("resolve", DEMO_CAR, "--server", server, "--json")  # the system's CAs only
    assert refused.returncode == 1
    assert "certificate" in refused.stderr, refused.stderr
