"""Findings 3 (a non-ASCII Basic token), 4, 10 and 11 of issue 11, against `idres up` of a copy of the
default topology on free ports: a node never verifies a credential by calling itself, wrong secrets
are limited per identity (429 with Retry-After) while other identities go on, and a principal
without rights learns nothing of which values exist."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from nodes.running.seeding import DEMO_CAR
from resolver.client import basic_auth
from tests.processes import Running, copy_topology, request, start_up, stop

pytestmark = pytest.mark.integration

AUTOMAKER_OPERATOR = "300:0.NA/88.118.8"
BATTERYMAKER_OPERATOR = "300:0.NA/88.119.6"
_REQUESTS = re.compile(r'^idres_requests_total\{method="[A-Z]+",status="\d+"\} ([0-9.e+]+)$', re.M)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("authentication")
    running = start_up(data / "data", copy_topology(data / "topology.toml"))
    yield running
    stop(running)


def requests_served(url: str) -> float:
    """The node's count of HTTP requests answered so far (its ``/metrics``; this scrape not included)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(n) for n in _REQUESTS.findall(text))


def auth(identity: str, secret: str) -> dict[str, str]:
    return {"Authorization": basic_auth(identity, secret)}


def test_a_credential_for_a_handle_of_the_node_is_decided_without_calling_itself(up: Running) -> None:
    # Finding 4: ~600 internal requests across three nodes and a 502 after 5.5 s.
    automaker = up.urls["automaker"]
    before = requests_served(automaker)
    status, body = request("GET", f"{automaker}/api/sessions/this", headers=auth(f"1:{DEMO_CAR}", "x"))
    assert (status, body["responseCode"]) == (401, 403), body
    assert body["message"] == f"1:{DEMO_CAR} has no HS_SECKEY value at index 1, so it cannot be authenticated"
    # The node answered two requests since: the scrape before and this one; none of its own making.
    assert requests_served(automaker) - before == 2


def test_a_basic_token_that_is_not_ascii_is_a_401_saying_so(up: Running) -> None:
    # Finding 3: `-H 'Authorization: Basic é'` answered 500 (with a traceback in the log).
    status, body = request("GET", f"{up.urls['automaker']}/api/sessions/this", headers={"Authorization": "Basic é"})
    assert (status, body["responseCode"]) == (401, 403), body
    assert "the Basic credentials cannot be read" in body["message"]


def test_wrong_secrets_are_limited_and_other_identities_go_on(up: Running) -> None:
    # Finding 10: ~19 guesses a second per node, never a 429.
    automaker = up.urls["automaker"]
    answers = [
        request("GET", f"{automaker}/api/sessions/this", headers=auth(AUTOMAKER_OPERATOR, f"guess-{n}"))
        for n in range(20)
    ]
    assert [status for status, _ in answers[:10]] == [401] * 10
    status, body = answers[-1]
    assert (status, body["responseCode"]) == (429, 3), body
    assert f"too many failed logins for {AUTOMAKER_OPERATOR}: try again in" in body["message"]
    req = urllib.request.Request(f"{automaker}/api/sessions/this", headers=auth(AUTOMAKER_OPERATOR, "guess"))
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 429 and int(caught.value.headers["Retry-After"]) >= 1
    # Another identity, from the same client, at the same node: still fine.
    status, body = request(
        "GET", f"{automaker}/api/sessions/this", headers=auth(BATTERYMAKER_OPERATOR, up.secret("batterymaker"))
    )
    assert (status, body.get("id")) == (200, BATTERYMAKER_OPERATOR), body


def test_a_principal_without_rights_cannot_tell_which_values_exist(up: Running) -> None:
    # Finding 11: DELETE ?index=2 -> 403 but ?index=9 -> 400; PUT ?index=2&overwrite=false -> 409.
    car = f"{up.urls['automaker']}/api/handles/{DEMO_CAR}"
    stranger = {**auth(BATTERYMAKER_OPERATOR, up.secret("batterymaker")), "Content-Type": "application/json"}
    body = b'{"values": [{"index": %d, "type": "NOTE", "data": "x"}]}'
    pairs = [
        (request("DELETE", f"{car}?index=2", headers=stranger), request("DELETE", f"{car}?index=9", headers=stranger)),
        (
            request("PUT", f"{car}?index=2&overwrite=false", body % 2, stranger),
            request("PUT", f"{car}?index=9&overwrite=false", body % 9, stranger),
        ),
    ]
    for (status_2, body_2), (status_9, body_9) in pairs:
        assert (status_2, body_2["responseCode"]) == (status_9, body_9["responseCode"]) == (403, 401), (body_2, body_9)
        assert body_2["message"] == body_9["message"]
        assert body_2["message"].startswith(f"{BATTERYMAKER_OPERATOR} may not ")
