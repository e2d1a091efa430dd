"""``idres status`` without sockets: what ``assess`` makes of the nodes' answers (what needs attention),
how ``print_report`` lays it out at 80 columns, and where the operator's secret comes from."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.metrics_core import Metric
from rich.console import Console

from nodes.cli.status import Answers, cache_counters, gather, known_secrets, unsettled
from nodes.cli.status_report import Report, assess
from nodes.cli.status_view import print_report
from nodes.running.local_ca import ensure_local_tls
from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE
from nodes.running.topology_file import load_topology
from nodes.shared.metrics import counter, gauge, merge_workers, render_families
from resolver.config import Topology
from resolver.tls import server_context
from tests.conftest import free_port, topology_of

TOPOLOGY = load_topology()
DIGEST = "8af55b76bef0d5af30c7ceeb6c1a13a3ae2eea1b4611466ca74803b478518cc0"


def _primary(name: str, last: int = 5, **extra: Any) -> dict[str, Any]:
    body = {"role": "primary", "node": name, "epoch": 0, "writable": True, "lastSeq": last, "records": 4}
    return {**body, "digest": DIGEST, "mirrors": {}, **extra}


def _mirror(**extra: Any) -> dict[str, Any]:
    body = {"role": "mirror", "node": "chengdu-top", "epoch": 0, "writable": False, "lastSeq": 5, "records": 4}
    body |= {"digest": DIGEST, "appliedSeq": 5, "primaryNode": "chongqing-top", "state": "following"}
    return body | {"connected": True, "lagSeq": 0, "lagSeconds": 0.0, "lastError": None, **extra}


def healthy(topology: Topology = TOPOLOGY, **status: dict[str, Any]) -> dict[str, Answers]:
    """Every node of ``topology`` answering as a healthy tree does; ``status`` replaces a node's status."""
    answers = {}
    for name, spec in topology.nodes.items():
        if spec.role == "recursive":
            health = {"status": "ok", "cacheEntries": 12, "down": []}
            answers[name] = Answers(spec, health=health, cache={"hits": 30.0, "misses": 10.0})
        else:
            body = _mirror() if spec.is_mirror else _primary(name)
            answers[name] = Answers(spec, health={"status": "ok"}, status=status.get(name.replace("-", "_"), body))
    return answers


def test_a_healthy_tree_needs_no_attention() -> None:
    report = assess(TOPOLOGY, healthy())
    assert report.ok and report.problems == ()
    assert [(link.mirror, link.primary, link.state, link.digest) for link in report.links] == [
        ("chengdu-top", "chongqing-top", "following", "agrees")
    ]
    recursive = next(row for row in report.nodes if row.kind == "recursive")
    assert (recursive.cache_entries, recursive.hit_ratio, recursive.lookups) == (12, 0.75, 40)


def test_a_node_that_does_not_answer_is_down() -> None:
    answers = healthy()
    spec = TOPOLOGY.node("automaker")
    answers["automaker"] = Answers(spec, errors={"healthz": "cannot connect (Connection refused)"})
    report = assess(TOPOLOGY, answers)
    assert not report.ok
    assert [(p.node, p.message) for p in report.problems] == [
        ("automaker", "down: cannot connect (Connection refused)")
    ]
    row = next(row for row in report.nodes if row.name == "automaker")
    assert (row.up, row.url, row.prefix) == (False, "http://127.0.0.1:8300", "88.118.8")


@pytest.mark.parametrize(
    ("mirror", "words"),
    [
        (_mirror(state="connecting", connected=False), "mirror of chongqing-top is connecting"),
        (_mirror(state="failing", connected=False, lastError="cannot connect"), "is failing: cannot connect"),
        (_mirror(lagSeconds=95.0, lagSeq=40, appliedSeq=1), "last caught up 95 s ago (40 changes behind)"),
        (_mirror(lagSeconds=None, lagSeq=3, appliedSeq=2), "never caught up"),
        (_mirror(digest="0" * 64), "holds other data than chongqing-top at seq 5: the digests differ"),
    ],
)
def test_a_mirror_not_following_lagging_or_disagreeing_needs_attention(mirror: dict[str, Any], words: str) -> None:
    report = assess(TOPOLOGY, healthy(chengdu_top=mirror), max_lag=30)
    assert [p.node for p in report.problems] == ["chengdu-top"]
    assert words in report.problems[0].message


def test_digests_at_different_sequence_numbers_are_not_compared_and_asked_again() -> None:
    answers = healthy(chengdu_top=_mirror(appliedSeq=4, lagSeq=1, digest="0" * 64, lagSeconds=0.4))
    assert unsettled(answers) == [("chengdu-top", "chongqing-top")]
    link = assess(TOPOLOGY, answers).links[0]
    assert (link.digest, link.digest_note) == (
        "unchecked",
        "not at one sequence number (applied 4, chongqing-top at 5)",
    )


def test_without_the_operator_secret_the_digest_is_unchecked_but_all_else_is_well() -> None:
    bare = {k: v for k, v in _mirror().items() if k not in ("digest", "records")}
    answers = healthy(chengdu_top=bare)
    report = assess(TOPOLOGY, answers, notes=["digests not compared: no operator secret"])
    assert report.ok and report.links[0].digest == "unchecked"
    assert report.links[0].digest_note == "no digest: the operator's credentials are needed"


def test_upstreams_the_recursive_node_marks_down_are_named_by_node() -> None:
    answers = healthy()
    answers["recursive"].health = {"status": "ok", "cacheEntries": 3, "down": ["http://127.0.0.1:8100"]}
    report = assess(TOPOLOGY, answers)
    assert [(p.node, p.message) for p in report.problems] == [("recursive", "marks upstreams down: chongqing-top")]


def test_a_primary_refusing_writes_or_promoted_against_the_topology_needs_attention() -> None:
    refusal = "chongqing-top refuses writes: chengdu-top is being promoted"
    fenced = _primary("chongqing-top", writable=False, message=refusal)
    report = assess(TOPOLOGY, healthy(chongqing_top=fenced))
    assert [p.message for p in report.problems] == [f"refuses writes: {refusal}"]
    promoted = _primary("chengdu-top", epoch=1, note="promoted (epoch 1): primary although the topology says mirror_of")
    report = assess(TOPOLOGY, healthy(chengdu_top=promoted))
    assert [p.message for p in report.problems] == [promoted["note"]]
    assert report.links == (), "a promoted mirror follows no one"


def test_cache_counters_are_read_from_a_nodes_metrics_summed_over_workers() -> None:
    def worker(hits: float, misses: float, entries: float) -> list[Metric]:
        return [
            counter("idres_cache_hits", "hits", hits),
            counter("idres_cache_misses", "misses", misses),
            gauge("idres_cache_entries", "entries", entries),
        ]

    text = render_families(merge_workers([(0, worker(5, 1, 2)), (1, worker(2, 2, 3))])).decode()
    assert cache_counters(text) == {"hits": 7.0, "misses": 3.0, "entries": 5.0}


# -- the layout ------------------------------------------------------------------------------------


def rendered(report: Report, width: int = 80) -> list[str]:
    out = io.StringIO()
    print_report(Console(file=out, width=width, color_system=None), report)
    return out.getvalue().splitlines()


def test_at_80_columns_nothing_is_wider_and_every_url_is_whole() -> None:
    answers = healthy()
    answers["automaker"] = Answers(TOPOLOGY.node("automaker"), errors={"healthz": "cannot connect"})
    lines = rendered(assess(TOPOLOGY, answers))
    assert max(len(line) for line in lines) <= 80
    words = [word for line in lines for word in line.split()]
    for spec in TOPOLOGY.nodes.values():
        assert spec.url in words and spec.name in words, f"{spec.name} and {spec.url} are shown whole"
    said = " ".join(words)
    assert "chengdu-top follows chongqing-top: following" in said and "digest agrees" in said
    assert "Needs attention (1):" in said and "automaker: down: cannot connect" in said


def test_long_names_and_urls_fold_rather_than_get_cut() -> None:
    topology = topology_of(
        {"a-rather-long-top-level-node-name": {"role": "top", "prefix": "88", "listen": "10.200.30.40:65000"}}
    )
    lines = rendered(assess(topology, healthy(topology)), width=60)
    assert max(len(line) for line in lines) <= 60
    assert "…" not in "\n".join(lines)
    assert any("http://10.200.30.40:65000" in line for line in lines)


def test_a_healthy_report_ends_saying_so() -> None:
    assert rendered(assess(TOPOLOGY, healthy()))[-1] == "All is well."


def test_the_json_report_round_trips() -> None:
    body = json.loads(json.dumps(assess(TOPOLOGY, healthy()).to_json()))
    assert body["ok"] is True and [n["name"] for n in body["nodes"]] == list(TOPOLOGY.nodes)
    assert body["mirrors"][0]["digest"] == "agrees" and body["attention"] == []


# -- the operator's secret -------------------------------------------------------------------------


def test_the_secret_comes_from_the_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SECRET, "from-env")
    secrets, missing = known_secrets(tmp_path, TOPOLOGY)
    assert missing is None and secrets["chongqing-top"] == "from-env" and "chengdu-top" not in secrets


def test_the_secret_file_is_read_and_never_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SECRET, raising=False)
    secrets, missing = known_secrets(tmp_path / "typo", TOPOLOGY)
    assert secrets == {} and missing is not None and "IDRES_ADMIN_SECRET is not set" in missing
    assert not (tmp_path / "typo").exists(), "a status invents no secret"
    (tmp_path / SECRETS_FILE).write_text(json.dumps({"automaker": "s3"}))
    assert known_secrets(tmp_path, TOPOLOGY) == ({"automaker": "s3"}, None)


# -- over HTTPS ------------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _replication_status(request: web.Request) -> web.Response:
    return web.json_response({"responseCode": 1, "role": "primary", "epoch": 2, "writable": True, "lastSeq": 9})


async def test_nodes_on_https_are_asked_trusting_the_local_ca_and_refused_without_it(tmp_path: Path) -> None:
    plain = topology_of({"top": {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"}})
    topology = ensure_local_tls(plain, tmp_path)
    spec = topology.node("top")
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/replication/status", _replication_status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, spec.host, spec.port, ssl_context=server_context(spec)).start()
    try:
        trusted = assess(topology, await gather(topology, {}, cafile=topology.tls_ca))
        [row] = trusted.nodes
        assert (row.url, row.up, row.role, row.epoch, row.last_seq) == (spec.url, True, "primary", 2, 9)
        assert spec.url.startswith("https://") and trusted.ok

        untrusted = assess(topology, await gather(topology, {}, cafile=None))
        assert not untrusted.ok and "certificate" in untrusted.problems[0].message.lower()
    finally:
        await runner.cleanup()
