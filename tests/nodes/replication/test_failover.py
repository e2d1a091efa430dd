"""Promotion, epochs and the return of an old primary, with real nodes on 127.0.0.1 and real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from nodes.replication import roles as promotion
from nodes.running.topology_file import load_topology
from resolver.config import Topology
from resolver.errors import ConfigError
from tests.conftest import auth, free_port, topology_of
from tests.nodes.replication.test_replication import Node, Pair, eventually, url_value

CHONGQING, CHENGDU = "chongqing-top", "chengdu-top"


def failover_topology(extra_mirror: bool = False) -> Topology:
    nodes: dict[str, dict[str, Any]] = {
        CHONGQING: {"role": "top", "prefix": "88", "listen": f"127.0.0.1:{free_port()}"},
        CHENGDU: {"mirror_of": CHONGQING, "listen": f"127.0.0.1:{free_port()}"},
    }
    if extra_mirror:
        nodes["xian-top"] = {"mirror_of": CHONGQING, "listen": f"127.0.0.1:{free_port()}"}
    return topology_of(nodes)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """chongqing-top owning 88 and chengdu-top mirroring it, neither started yet."""
    topology = failover_topology()
    async with ClientSession() as session:
        pair = Pair(
            Node(CHONGQING, topology, tmp_path / "chongqing.sqlite3", session),
            Node(CHENGDU, topology, tmp_path / "chengdu.sqlite3", session),
        )
        try:
            yield pair
        finally:
            await pair.mirror.stop()
            await pair.primary.stop()


async def refuses_writes(node: Node, handle: str = "88/refused") -> dict[str, Any]:
    code, body = await node.put(handle, url_value("https://example.cn/refused"))
    assert (code, body["responseCode"]) == (503, 7), f"{node.name} should refuse writes: {code} {body}"
    result: dict[str, Any] = body
    return result


def test_the_default_topology_makes_chengdu_top_a_mirror_of_chongqing_top() -> None:
    topology = load_topology()
    assert topology.node(CHENGDU).mirror_of == CHONGQING
    assert topology.node(CHENGDU).prefix == topology.node(CHONGQING).prefix == "88"


async def test_promote_chengdu_write_there_and_the_returning_chongqing_rejoins_as_a_mirror(nodes: Pair) -> None:
    chongqing, chengdu = nodes.primary, nodes.replication.follower
    await chongqing.start()
    await chengdu.start()
    alice = [*url_value("https://example.cn/alice"), {"index": 300, "type": "HS_SECKEY", "data": "alice-secret"}]
    await chongqing.put("88/alice", alice)
    await chongqing.put("88/before", url_value("https://example.cn/before"))
    await eventually(lambda: nodes.resolves_on_mirror("88/before"), 1.0, "88/before reaches chengdu-top")

    # chengdu-top goes away for a while; chongqing-top takes a write it never sees, then dies.
    await chengdu.stop()
    code, _ = await chongqing.put("88/diverged", url_value("https://example.cn/diverged"))
    assert code in (200, 201)
    await chongqing.stop()
    await chengdu.start()
    code, _ = await chengdu.call("GET", "/api/handles/88/before")
    assert code == 200, "the mirror serves reads with its primary down"
    await refuses_writes(chengdu)

    # Promotion is for the operator only.
    code, body = await chengdu.promote(headers={})
    assert (code, body["responseCode"]) == (401, 402)
    code, body = await chengdu.promote(headers=auth("300:88/alice", "alice-secret"))
    assert (code, body["responseCode"]) == (403, 401)
    code, body = await chengdu.promote()
    assert (code, body) == (200, {"responseCode": 1, "role": "primary", "epoch": 1})
    code, body = await chengdu.promote()  # idempotent on a primary taking writes
    assert (code, body) == (200, {"responseCode": 1, "role": "primary", "epoch": 1})

    code, _ = await chengdu.put("88/after", url_value("https://example.cn/after"))
    assert code in (200, 201)
    code, body = await chengdu.call("GET", "/api/handles/88/after")
    assert (code, body["values"][0]["data"]["value"]) == (200, "https://example.cn/after")
    status = await chengdu.status()
    assert (status["role"], status["epoch"], status["writable"]) == ("primary", 1, True)
    assert status["roleSource"] == "promoted"
    assert "mirror_of chongqing-top" in status["note"]

    # The old primary comes back on the same database and port: it refuses writes under epoch 0...
    await chongqing.start()
    body = await refuses_writes(chongqing)
    assert "chengdu-top" in body["message"] and chengdu.url in body["message"]
    status = await chongqing.status()
    assert status["role"] == "mirror" and status["roleSource"] == "demoted" and status["primaryNode"] == CHENGDU

    # ...copies chengdu-top's data, losing the write chengdu-top never saw, and follows it.
    async def converged() -> bool:
        old, new = await chongqing.status(), await chengdu.status()
        return bool(old["digest"] == new["digest"]) and old["appliedSeq"] == new["lastSeq"]

    await eventually(converged, 5, "the old primary holds what the new one holds")
    assert await chongqing.records() == await chengdu.records()
    assert (await chongqing.status())["epoch"] == 1
    code, _ = await chongqing.call("GET", "/api/handles/88/diverged")
    assert code == 404, "a record the new primary lacks is removed"
    code, _ = await chongqing.call("GET", "/api/handles/88/after")
    assert code == 200
    code, _ = await chengdu.put("88/later", url_value("https://example.cn/later"))
    assert code in (200, 201)

    async def followed() -> bool:
        code, _ = await chongqing.call("GET", "/api/handles/88/later")
        return code == 200

    await eventually(followed, 1.0, "a write on the new primary reaches the old one")

    # Restarts keep the stored roles, whatever the topology says.
    await chengdu.stop()
    await chengdu.start()
    code, _ = await chengdu.put("88/after-restart", url_value("https://example.cn/after-restart"))
    assert code in (200, 201), "the promoted node stays primary after a restart"
    await chongqing.stop()
    await chongqing.start()
    await refuses_writes(chongqing)
    assert (await chongqing.status())["role"] == "mirror"
    await eventually(converged, 5, "the old primary follows the new one after its restart")


async def test_a_running_old_primary_demotes_itself_when_its_mirror_is_promoted(nodes: Pair) -> None:
    chongqing, chengdu = nodes.primary, nodes.replication.follower
    await chongqing.start()
    await chengdu.start()
    await chongqing.put("88/x", url_value("https://example.cn/x"))
    await eventually(nodes.in_sync, 5, "chengdu-top catches up")
    code, body = await chengdu.promote()
    assert (code, body["epoch"]) == (200, 1)

    async def demoted() -> bool:
        return (await chongqing.status())["role"] == "mirror"

    took = await eventually(demoted, promotion.PEER_CHECK_SECONDS + 2, "chongqing-top notices the promotion")
    assert took < promotion.PEER_CHECK_SECONDS + 1.5
    body = await refuses_writes(chongqing)
    assert "chengdu-top" in body["message"]
    code, _ = await chengdu.put("88/y", url_value("https://example.cn/y"))
    assert code in (200, 201)

    async def followed() -> bool:
        code, _ = await chongqing.call("GET", "/api/handles/88/y")
        return code == 200

    await eventually(followed, 5, "the demoted node follows the promoted one")


async def test_a_restarted_primary_takes_no_write_until_its_mirror_answers(
    nodes: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(promotion, "CHECK_WAIT", 0.3)
    chongqing, chengdu = nodes.primary, nodes.replication.follower
    await chongqing.start()  # a fresh database: nothing can have superseded it, so no waiting
    code, _ = await chongqing.put("88/first", url_value("https://example.cn/first"))
    assert code in (200, 201)

    await chongqing.stop()
    await chongqing.start()  # restarted with its mirror unreachable: it may have been promoted
    body = await refuses_writes(chongqing)
    assert "checking for a promoted mirror" in body["message"]
    assert (await chongqing.status())["writable"] is False
    await chengdu.start()  # answers "mirror at epoch 0": nobody was promoted
    await eventually(chongqing.writable, 3, "chongqing-top takes writes once chengdu-top answered")
    code, _ = await chongqing.put("88/second", url_value("https://example.cn/second"))
    assert code in (200, 201)

    # With the mirror gone for good, the operator ends the wait by promoting the primary itself.
    await chengdu.stop()
    await chongqing.stop()
    await chongqing.start()
    await refuses_writes(chongqing)
    code, body = await chongqing.promote()
    assert (code, body) == (200, {"responseCode": 1, "role": "primary", "epoch": 1})
    code, _ = await chongqing.put("88/third", url_value("https://example.cn/third"))
    assert code in (200, 201)
    await chengdu.start()  # it adopts the higher epoch as it follows
    await eventually(lambda: nodes.resolves_on_mirror("88/third"), 5, "chengdu-top follows again")
    assert (await chengdu.status())["epoch"] == 1


async def test_of_two_promoted_mirrors_the_later_promotion_wins(tmp_path: Path) -> None:
    topology = failover_topology(extra_mirror=True)
    async with ClientSession() as session:
        chongqing, chengdu, xian = (
            Node(name, topology, tmp_path / f"{name}.sqlite3", session) for name in (CHONGQING, CHENGDU, "xian-top")
        )
        try:
            for node in (chongqing, chengdu, xian):
                await node.start()
            await chongqing.put("88/x", url_value("https://example.cn/x"))
            for mirror in (chengdu, xian):  # both hold the operator's HS_SECKEY before the primary goes
                await eventually(Pair(chongqing, mirror).in_sync, 5, f"{mirror.name} catches up")
            await chongqing.stop()
            assert (await chengdu.promote())[1]["epoch"] == 1
            assert (await xian.promote())[1]["epoch"] == 2, "the promotion asks the peers for their epochs"

            async def chengdu_demoted() -> bool:
                status = await chengdu.status()
                return status["role"] == "mirror" and status["primaryNode"] == "xian-top"

            await eventually(chengdu_demoted, promotion.PEER_CHECK_SECONDS + 2, "chengdu-top yields to xian-top")
            await refuses_writes(chengdu)
            await chongqing.start()  # finds xian-top at epoch 2 among its peers

            async def chongqing_demoted() -> bool:
                status = await chongqing.status()
                return status["role"] == "mirror" and status["primaryNode"] == "xian-top"

            await eventually(chongqing_demoted, 3, "the old primary yields to xian-top")  # at start, normally
            await refuses_writes(chongqing)
            code, _ = await xian.put("88/z", url_value("https://example.cn/z"))
            assert code in (200, 201)
            for node in (chengdu, chongqing):
                await eventually(lambda n=node: Pair(xian, n).resolves_on_mirror("88/z"), 5, f"88/z on {node.name}")
        finally:
            for node in (xian, chengdu, chongqing):
                await node.stop()


def test_sync_mirrors_is_a_boolean_set_on_a_primary_that_has_mirrors() -> None:
    primary = {"role": "top", "prefix": "88", "listen": "127.0.0.1:1", "sync_mirrors": True}
    mirror = {"mirror_of": "p", "listen": "127.0.0.1:2"}
    topology = topology_of({"p": primary, "m": mirror})
    assert topology.node("p").sync_mirrors is True and topology.node("m").sync_mirrors is False
    assert topology_of({"p": {**primary, "sync_mirrors": False}}).node("p").sync_mirrors is False
    with pytest.raises(ConfigError, match="no node has mirror_of"):
        topology_of({"p": primary})
    with pytest.raises(ConfigError, match="true or false"):
        topology_of({"p": {**primary, "sync_mirrors": "yes"}, "m": mirror})
    with pytest.raises(ConfigError, match="remove sync_mirrors"):
        topology_of({"p": primary, "m": {**mirror, "sync_mirrors": True}})
