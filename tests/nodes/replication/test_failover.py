"""Promotion, demotion, epochs and sync_mirrors with real nodes on 127.0.0.1 and real SQLite files: the
operator's failover as users see it (``nodes.replication.roles`` has the rules; test_roles the unit tests)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from nodes.authoritative.authority import AUTHORITY
from nodes.replication import roles
from nodes.running.topology_file import load_topology
from resolver.errors import ConfigError
from resolver.storage import SQLiteStorage
from tests.conftest import auth, eventually, topology_of
from tests.nodes.replication.pairs import (
    OP,
    Pair,
    ReplicatedNode,
    pair_of,
    refuses_writes,
    running_pair,
    two_nodes,
    url_value,
)

CHONGQING, CHENGDU = "chongqing-top", "chengdu-top"


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Pair]:
    """chongqing-top owning 88 and chengdu-top mirroring it, neither started yet."""
    async for pair in pair_of(two_nodes(primary=CHONGQING, mirrors=(CHENGDU,)), tmp_path, CHONGQING, CHENGDU):
        yield pair


def test_the_default_topology_makes_chengdu_top_a_mirror_of_chongqing_top() -> None:
    topology = load_topology()
    assert topology.node(CHENGDU).mirror_of == CHONGQING
    assert topology.node(CHENGDU).prefix == topology.node(CHONGQING).prefix == "88"


async def test_promote_chengdu_write_there_and_the_returning_chongqing_rejoins_as_a_mirror(nodes: Pair) -> None:
    chongqing, chengdu = nodes.primary, nodes.mirror
    await chongqing.start()
    await chengdu.start()
    alice = [*url_value("https://example.cn/alice"), {"index": 300, "type": "HS_SECKEY", "data": "alice-secret"}]
    await chongqing.put("88/alice", alice)
    await chongqing.put("88/before", url_value("https://example.cn/before"))
    await eventually(lambda: nodes.resolves_on_mirror("88/before"), 5, "88/before reaches chengdu-top")

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
    assert (code, body["role"], body["epoch"], body["fenced"]) == (200, "primary", 1, False)
    assert body["message"].startswith("chongqing-top could not be reached to fence it: writes it acknowledged")
    code, body = await chengdu.promote()  # idempotent on a primary taking writes
    assert (code, body["role"], body["epoch"]) == (200, "primary", 1)

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
        old, new = await chongqing.status(operator=True), await chengdu.status(operator=True)
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

    await eventually(followed, 5, "a write on the new primary reaches the old one")

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


async def test_a_running_old_primary_demotes_itself_when_its_mirror_is_promoted(
    nodes: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "PEER_CHECK_SECONDS", 0.1)  # how often a settled primary asks its peers
    chongqing, chengdu = nodes.primary, nodes.mirror
    await chongqing.start()
    await chengdu.start()
    await chongqing.put("88/x", url_value("https://example.cn/x"))
    await eventually(nodes.in_sync, 5, "chengdu-top catches up")
    code, body = await chengdu.promote()
    assert (code, body["epoch"]) == (200, 1)

    async def demoted() -> bool:
        return bool((await chongqing.status())["role"] == "mirror")

    await eventually(demoted, 5, "chongqing-top notices the promotion at its next peer check")
    body = await refuses_writes(chongqing)
    assert body["message"] == (
        f"chongqing-top is no longer the primary: chengdu-top ({chengdu.url}) was promoted and takes the writes; "
        f"send them there"
    )
    code, _ = await chengdu.put("88/y", url_value("https://example.cn/y"))
    assert code in (200, 201)

    async def followed() -> bool:
        code, _ = await chongqing.call("GET", "/api/handles/88/y")
        return code == 200

    await eventually(followed, 5, "the demoted node follows the promoted one")


async def test_a_restarted_primary_takes_no_write_until_its_mirror_answers(
    nodes: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "CHECK_WAIT", 0.3)
    chongqing, chengdu = nodes.primary, nodes.mirror
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
    assert (code, body["role"], body["epoch"], body["fenced"]) == (200, "primary", 1, False)
    assert body["message"] == "not fenced (unreachable): chengdu-top"
    code, _ = await chongqing.put("88/third", url_value("https://example.cn/third"))
    assert code in (200, 201)
    await chengdu.start()  # it adopts the higher epoch as it follows
    await eventually(lambda: nodes.resolves_on_mirror("88/third"), 5, "chengdu-top follows again")
    assert (await chengdu.status())["epoch"] == 1


async def test_of_two_promoted_mirrors_the_later_promotion_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "PEER_CHECK_SECONDS", 0.1)
    topology = two_nodes(primary=CHONGQING, mirrors=(CHENGDU, "xian-top"))
    async with ClientSession() as session:
        chongqing, chengdu, xian = (
            ReplicatedNode(topology, name, tmp_path, session) for name in (CHONGQING, CHENGDU, "xian-top")
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
                return bool(status["role"] == "mirror" and status["primaryNode"] == "xian-top")

            await eventually(chengdu_demoted, 5, "chengdu-top yields to xian-top")
            await refuses_writes(chengdu)
            await chongqing.start()  # finds xian-top at epoch 2 among its peers

            async def chongqing_demoted() -> bool:
                status = await chongqing.status()
                return bool(status["role"] == "mirror" and status["primaryNode"] == "xian-top")

            await eventually(chongqing_demoted, 3, "the old primary yields to xian-top")  # at start, normally
            await refuses_writes(chongqing)
            code, _ = await xian.put("88/z", url_value("https://example.cn/z"))
            assert code in (200, 201)
            for node in (chengdu, chongqing):
                resolves = functools.partial(Pair(xian, node).resolves_on_mirror, "88/z")
                await eventually(resolves, 5, f"88/z reaches {node.name}")
        finally:
            for node in (xian, chengdu, chongqing):
                await node.stop()


async def test_a_mirror_refuses_data_from_a_node_at_a_lower_epoch(nodes: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "PEER_CHECK_SECONDS", 0.1)
    chongqing, chengdu = nodes.primary, nodes.mirror
    store = await SQLiteStorage.open(chengdu.db)
    await store.set_meta("epoch", "3")  # as if it had followed a primary promoted three times since
    await store.close()
    await chongqing.start()
    await chengdu.start()

    async def refused() -> bool:
        error = (await chengdu.status())["lastError"]
        return bool(error) and "epoch 0, below this node's 3" in error

    await eventually(refused, 5, "the mirror refuses the lower epoch")
    status = await chengdu.status()
    assert status["lastError"] == (
        "ReplicationError: chongqing-top is at epoch 0, below this node's 3: a promotion superseded it, "
        "so nothing it sends is applied"
    )
    assert status["epoch"] == 3 and status["appliedSeq"] is None and status["connected"] is False
    assert await chengdu.app[AUTHORITY].store.count() == 0, "nothing of the superseded node was applied"
    code, _ = await chengdu.get("0.NA/88")
    assert code == 404, "nothing of the superseded node was applied"

    # And the primary, seeing a peer at a newer epoch than its own, stops taking writes.
    async def yielded() -> bool:
        return not await chongqing.writable()

    await eventually(yielded, 5, "the primary stops taking writes")
    body = await refuses_writes(chongqing, "88/x")
    assert body["message"] == (
        "chengdu-top (epoch 3) followed a primary promoted after epoch 0, which chongqing-top missed: "
        "no writes until an operator promotes a node (POST /api/replication/promote)"
    )


# -- sync_mirrors -----------------------------------------------------------------------------------


@pytest.fixture
async def sync_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary with sync_mirrors = true and its mirror, both running, the mirror caught up."""
    async for pair in running_pair(two_nodes(sync=True), tmp_path):
        yield pair


async def test_with_sync_mirrors_an_acknowledged_write_is_already_on_the_mirror(sync_pair: Pair) -> None:
    primary, mirror = sync_pair.primary, sync_pair.mirror
    for n in range(20):
        code, _ = await primary.put(f"88/s-{n}", url_value(f"https://example.cn/s-{n}"))
        assert code in (200, 201)
        code, body = await mirror.get(f"88/s-{n}")  # no waiting: it is there
        assert (code, body["values"][0]["data"]["value"]) == (200, f"https://example.cn/s-{n}")
    code, _ = await primary.call("DELETE", "/api/handles/88/s-0", headers=auth(OP))
    assert code == 200
    code, _ = await mirror.get("88/s-0")
    assert code == 404

    gate = asyncio.Semaphore(16)  # concurrent sync writes share the mirror's round trips

    async def put(n: int) -> None:
        async with gate:
            code, _ = await primary.put(f"88/c-{n}", url_value(f"https://example.cn/c-{n}"))
            assert code in (200, 201)
            code, _ = await mirror.get(f"88/c-{n}")
            assert code == 200

    await asyncio.gather(*(put(n) for n in range(100)))
    status = await primary.status()
    assert status["syncMirrors"] is True and status["mirrors"]["mirror"]["appliedSeq"] == status["lastSeq"]


async def test_with_sync_mirrors_and_the_mirror_down_a_write_fails_but_stays_committed(
    sync_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "SYNC_ACK_TIMEOUT", 0.2)
    primary = sync_pair.primary
    await sync_pair.mirror.stop()
    code, body = await primary.put("88/unconfirmed", url_value("https://example.cn/unconfirmed"))
    assert (code, body["responseCode"]) == (503, 2)
    assert "committed on primary" in body["message"] and "no mirror confirmed it within 0.2 s" in body["message"]
    assert "read it back before retrying" in body["message"]
    # Committed all the same: the primary serves it, and the mirror gets it when it returns.
    code, _ = await primary.get("88/unconfirmed")
    assert code == 200
    await sync_pair.mirror.start()
    await eventually(lambda: sync_pair.resolves_on_mirror("88/unconfirmed"), 5, "the mirror gets it on its return")
    code, _ = await primary.put("88/confirmed", url_value("https://example.cn/confirmed"))
    assert code in (200, 201)
    assert await sync_pair.resolves_on_mirror("88/confirmed")


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
