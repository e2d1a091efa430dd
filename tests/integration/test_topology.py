"""The default topology brought up by `idres up`, used the way its users would use it."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from pyhandle.handleclient import PyHandleClient
from pyhandle.handleexceptions import HandleAuthenticationError, HandleNotFoundException

from nodes.running.seeding import DEMO_CAR, DEMO_PACK
from resolver.client import basic_auth
from tests.processes import Running, copy_topology, get_json, node_pids, request, run_idres, start_up, stop, wait_until

pytestmark = pytest.mark.integration

AUTOMAKER = "http://127.0.0.1:8300"
BATTERYMAKER = "http://127.0.0.1:8310"


def test_resolve_walks_top_secondary_enterprise(topology_up: Running) -> None:
    out = run_idres("resolve", DEMO_CAR, "--server", "http://127.0.0.1:8100")
    assert out.returncode == 0, out.stderr
    hops = [line for line in out.stdout.splitlines() if "http://127.0.0.1:" in line]
    assert [h.split("http://127.0.0.1:")[1][:4] for h in hops] == ["8100", "8200", "8300"]
    assert "CQ-EV7 electric SUV" in out.stdout and "COMPONENT" in out.stdout
    raw = run_idres("resolve", DEMO_CAR, "--server", "http://127.0.0.1:8100", "--json")
    body = json.loads(raw.stdout)
    assert body["handle"] == DEMO_CAR
    component = next(v for v in body["values"] if v["type"] == "COMPONENT")["data"]["value"]
    assert component == DEMO_PACK
    pack = json.loads(run_idres("resolve", component, "--json").stdout)
    assert any(v["type"] == "CELLS" for v in pack["values"])


def test_hosted_prefix_resolves_from_the_secondary_itself(topology_up: Running) -> None:
    out = run_idres("resolve", "88.118.9/SEAT-2026-0001", "--server", "http://127.0.0.1:8200", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["responseCode"] == 1
    status, body = get_json("http://127.0.0.1:8200/api/handles/88.118.9/SEAT-2026-0001")
    assert status == 200 and body["handle"] == "88.118.9/SEAT-2026-0001"


def test_unknown_handle_reports_not_found(topology_up: Running) -> None:
    out = run_idres("resolve", "88.118.8/NO-SUCH-CAR")
    assert out.returncode == 1 and "Handle Not Found" in out.stdout


def test_pyhandle_against_the_automaker(topology_up: Running) -> None:
    client = PyHandleClient("rest").instantiate_with_username_and_password(
        AUTOMAKER, "300:0.NA/88.118.8", topology_up.secret("automaker"), HTTPS_verify=False
    )
    handle = client.register_handle(
        "88.118.8/PYH-" + str(time.time_ns()), "https://example.cn/a", CHECKSUM="abc", MODEL="CQ-EV7"
    )
    record = client.retrieve_handle_record(handle)
    assert record["URL"] == "https://example.cn/a" and record["MODEL"] == "CQ-EV7" and record["CHECKSUM"] == "abc"
    assert client.get_value_from_handle(handle, "MODEL") == "CQ-EV7"
    generated = client.generate_and_register_handle("88.118.8", "https://example.cn/generated")
    assert generated.startswith("88.118.8/")
    assert client.get_value_from_handle(generated, "URL") == "https://example.cn/generated"
    client.modify_handle_value(handle, URL="https://example.cn/b", COLOUR="red")
    record = client.retrieve_handle_record(handle)
    assert record["URL"] == "https://example.cn/b" and record["COLOUR"] == "red"
    client.delete_handle_value(handle, "COLOUR")
    assert "COLOUR" not in client.retrieve_handle_record(handle)
    client.delete_handle(handle)
    assert client.retrieve_handle_record(handle) is None
    with pytest.raises(HandleNotFoundException, match=f"Handle {re.escape(handle)} not found"):
        client.get_value_from_handle(handle, "URL")


def test_pyhandle_with_a_wrong_secret_is_refused(topology_up: Running) -> None:
    client = PyHandleClient("rest").instantiate_with_username_and_password(
        AUTOMAKER, "300:0.NA/88.118.8", "not-the-secret", HTTPS_verify=False
    )
    with pytest.raises(HandleAuthenticationError, match=r"(?s)Insufficient permission.*wrong secret"):
        client.register_handle("88.118.8/WRONG-SECRET", "https://example.cn/x")


def test_wrong_secret_gets_401(topology_up: Running) -> None:
    body = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://x"}]}).encode()
    status, answer = request(
        "PUT",
        f"{AUTOMAKER}/api/handles/88.118.8/X",
        body,
        {"Authorization": basic_auth("300:0.NA/88.118.8", "wrong"), "Content-Type": "application/json"},
    )
    assert status == 401 and answer["responseCode"] == 403
    assert "authentication failed for 300:0.NA/88.118.8: wrong secret" in str(answer["message"]), answer


def test_automaker_operator_cannot_write_under_the_battery_maker(topology_up: Running) -> None:
    body = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://x"}]}).encode()
    creds = {
        "Authorization": basic_auth("300:0.NA/88.118.8", topology_up.secret("automaker")),
        "Content-Type": "application/json",
    }
    # The batterymaker verifies the automaker's identity at the automaker (found through the tree),
    # then finds that nothing under 88.119.6 names it as an admin.
    status, answer = request("PUT", f"{BATTERYMAKER}/api/handles/88.119.6/INTRUDER", body, creds)
    assert status == 403 and answer["responseCode"] == 401, answer
    assert re.search(r"300:0\.NA/88\.118\.8 may not .* on 88\.119\.6/INTRUDER", str(answer["message"])), answer
    status, answer = request(
        "PUT",
        f"{BATTERYMAKER}/api/handles/{DEMO_PACK}?index=9",
        json.dumps({"values": [{"index": 9, "type": "X", "data": "y"}]}).encode(),
        creds,
    )
    assert status == 403, answer
    assert re.search(rf"300:0\.NA/88\.118\.8 may not .* on {re.escape(DEMO_PACK)}", str(answer["message"])), answer
    status, _ = get_json(f"{BATTERYMAKER}/api/handles/88.119.6/INTRUDER")
    assert status == 404
    wrong = {**creds, "Authorization": basic_auth("300:0.NA/88.118.8", "wrong")}
    status, answer = request("PUT", f"{BATTERYMAKER}/api/handles/88.119.6/INTRUDER", body, wrong)
    assert status == 401 and "300:0.NA/88.118.8" in str(answer["message"]), answer


def test_unauthenticated_reads_never_show_secrets(topology_up: Running) -> None:
    for url in ("http://127.0.0.1:8100/api/handles/0.NA/88", f"{AUTOMAKER}/api/handles/0.NA/88.118.8"):
        status, body = get_json(url)
        assert status == 200
        assert all(v["type"] != "HS_SECKEY" for v in body["values"])


def test_malformed_and_oversized_requests(topology_up: Running) -> None:
    status, body = get_json(f"{AUTOMAKER}/api/handles/88.118.8")
    assert status == 400 and body["responseCode"] == 102 and "/" in str(body["message"])
    big = b'{"values": [' + b" " * 2_000_000 + b"]}"
    creds = {
        "Authorization": basic_auth("300:0.NA/88.118.8", topology_up.secret("automaker")),
        "Content-Type": "application/json",
    }
    try:
        status, body = request("PUT", f"{AUTOMAKER}/api/handles/88.118.8/BIG", big, creds)
    except (ConnectionError, urllib.error.URLError):
        pytest.fail("the node should answer 413, not drop the connection")
    assert status == 413 and body["responseCode"] == 4
    assert "exceeds the limit of" in str(body["message"]), body


def test_up_twice_keeps_data_duplicates_nothing_and_stops_every_node(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "my-topology.toml")
    data = tmp_path / "data"
    first = start_up(data, topology)
    automaker = first.urls["automaker"]
    creds = {
        "Authorization": basic_auth("300:0.NA/88.118.8", first.secret("automaker")),
        "Content-Type": "application/json",
    }
    status, _ = request(
        "PUT",
        f"{automaker}/api/handles/88.118.8/KEPT",
        json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://kept"}]}).encode(),
        creds,
    )
    assert status == 200
    # The mirror's own log grows as it applies the primary's changes: compare once it has them all.
    primary, mirror = first.urls["chongqing-top"], first.urls["chengdu-top"]
    wait_until(
        lambda: (
            get_json(mirror + "/api/replication/status")[1].get("appliedSeq", 0)
            >= get_json(primary + "/healthz")[1]["lastSeq"]
        ),
        "the mirror to apply every change of the primary",
        within=10,
    )
    seqs = {name: get_json(url + "/healthz")[1].get("lastSeq") for name, url in first.urls.items()}
    assert node_pids(data), "the nodes run as their own processes"
    assert stop(first) == 0
    assert node_pids(data) == [], "stopping `idres up` must leave no node behind"

    second = start_up(data, topology)
    try:
        status, _ = get_json(f"{automaker}/api/handles/88.118.8/KEPT")
        assert status == 200
        again = {name: get_json(url + "/healthz")[1].get("lastSeq") for name, url in second.urls.items()}
        assert again == seqs, "a second `idres up` must not write the delegations or demo data again"
        out = run_idres("resolve", DEMO_CAR, "--server", second.urls["chongqing-top"], "--json")
        assert json.loads(out.stdout)["responseCode"] == 1
    finally:
        second.process.terminate()  # SIGTERM, as a service manager would stop it
        assert second.process.wait(timeout=20) == 0
    assert node_pids(data) == []


def test_nodes_stop_themselves_when_the_launcher_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = start_up(data, copy_topology(tmp_path / "topology.toml"))
    assert node_pids(data)
    running.process.kill()  # SIGKILL: the launcher gets no chance to stop anything
    running.process.wait(timeout=10)
    wait_until(lambda: node_pids(data) == [], "the nodes to stop after their launcher died", within=15)


def test_chengdu_mirror_holds_what_chongqing_holds(topology_up: Running) -> None:
    mirrored = "http://127.0.0.1:8101/api/handles/0.NA/88.118"
    wait_until(lambda: get_json(mirrored)[0] == 200, "the mirror to hold the delegation of 88.118", within=5)
    status, body = get_json(mirrored)
    assert status == 200 and body["values"][0]["type"] == "HS_SITE"
    out = run_idres("resolve", DEMO_CAR, "--server", "http://127.0.0.1:8101", "--json")
    assert json.loads(out.stdout)["responseCode"] == 1
    write = json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://x"}]}).encode()
    status, answer = request(
        "PUT",
        "http://127.0.0.1:8101/api/handles/88/X",
        write,
        {
            "Authorization": basic_auth("300:0.NA/88", topology_up.secret("chongqing-top")),
            "Content-Type": "application/json",
        },
    )
    assert status == 503 and answer["responseCode"] == 7, "a mirror refuses writes"
    assert "chengdu-top is a mirror of chongqing-top and refuses writes" in str(answer["message"]), answer


def test_a_second_idres_up_on_busy_ports_says_so(topology_up: Running, tmp_path: Path) -> None:
    out = run_idres("up", "--data", str(tmp_path / "other"), timeout=30)
    assert out.returncode == 1
    assert "127.0.0.1:8100 (chongqing-top) is in use" in " ".join(out.stdout.split())
    assert get_json("http://127.0.0.1:8100/healthz")[0] == 200, "the running topology is untouched"
