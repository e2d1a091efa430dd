"""Fencing the old primary before a promotion (``Replication.fence``, ``POST /api/replication/fence``), with
a primary and its mirror as real nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodes.replication import roles
from nodes.replication.roles import REPLICATION, Replication
from tests.conftest import auth
from tests.nodes.replication.pairs import OP, Pair, ReplicatedNode, refuses_writes, running_pair, two_nodes, url_value


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


async def fence(target: ReplicatedNode, headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
    return await target.call(
        "POST", "/api/replication/fence", params=params, headers=auth(OP) if headers is None else headers
    )


def replication_of(node: ReplicatedNode) -> Replication:
    return node.app[REPLICATION]


async def pause_puller(node: ReplicatedNode) -> None:
    """Stop the mirror ``node`` from applying its primary's changes (as a slow link would)."""
    task = replication_of(node)._mirror_task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_fence_makes_a_primary_read_only_naming_the_promotion_and_answers_its_last_seq(pair: Pair) -> None:
    code, _ = await pair.primary.put("88/before", url_value("https://example.cn/before"))
    assert code in (200, 201)
    code, body = await fence(pair.primary, node="mirror", epoch="1")
    assert code == 200 and body["role"] == "primary" and body["node"] == "primary"
    assert body["lastSeq"] == (await pair.primary.status())["lastSeq"] > 0
    refused = await refuses_writes(pair.primary)
    assert refused["message"] == (
        "primary refuses writes: mirror is being promoted to primary (epoch 1); send writes there once it is "
        "(POST /api/replication/promote on primary takes them back)"
    )
    await replication_of(pair.primary)._check_peers()  # the mirror answers "mirror", yet the fence holds
    await refuses_writes(pair.primary)
    code, body = await pair.primary.promote()  # the operator takes the writes back
    assert (code, body["epoch"]) == (200, 1)
    code, _ = await pair.primary.put("88/after", url_value("https://example.cn/after"))
    assert code in (200, 201)


async def test_fence_is_for_the_operator_only_and_names_what_is_wrong(pair: Pair) -> None:
    code, body = await fence(pair.primary, headers={}, node="mirror", epoch="1")
    assert (code, body["responseCode"]) == (401, 402)
    code, body = await fence(pair.primary, node="mirror")
    assert (code, body["responseCode"]) == (400, 4) and "fence needs node=NAME" in body["message"]
    code, body = await fence(pair.primary, node="stranger", epoch="1")
    assert (code, body["responseCode"]) == (400, 4)
    assert body["message"] == "'stranger' is not a peer of primary: only a peer's promotion fences it"
    assert await pair.primary.writable(), "a refused fence changes nothing"


async def test_promote_waits_until_the_mirror_applied_everything_the_fenced_primary_acknowledged(pair: Pair) -> None:
    await pause_puller(pair.mirror)
    handles = [f"88/late-{n}" for n in range(5)]
    for handle in handles:
        code, _ = await pair.primary.put(handle, url_value(f"https://example.cn/{handle}"))
        assert code in (200, 201)
    mirror = replication_of(pair.mirror)
    upstream = pair.mirror.topology.node("primary")

    async def resume_later() -> None:
        await asyncio.sleep(0.3)
        await mirror._follow(upstream)  # the link recovers while the promotion waits

    resuming = asyncio.create_task(resume_later())
    code, body = await pair.mirror.promote()
    await resuming
    assert (code, body["epoch"], body["fenced"]) == (200, 1, True), body
    assert body["message"].startswith("primary was fenced (read-only); everything it acknowledged, up to its seq")
    for handle in handles:
        assert (await pair.mirror.get(handle))[0] == 200, f"{handle}, acknowledged by the old primary, is kept"
    refused = await refuses_writes(pair.primary)
    assert "mirror is being promoted" in refused["message"] or "mirror (" in refused["message"]


async def test_a_promotion_that_cannot_apply_the_fenced_writes_fails_and_leaves_the_old_primary_fenced(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "FENCE_WAIT", 0.2)
    await pause_puller(pair.mirror)
    code, _ = await pair.primary.put("88/unapplied", url_value("https://example.cn/unapplied"))
    assert code in (200, 201)
    code, body = await pair.mirror.promote()
    assert (code, body["responseCode"]) == (503, 3), body
    assert "primary was fenced (read-only) at seq" in body["message"]
    assert "so mirror was not promoted: retry the promotion" in body["message"]
    assert (await pair.mirror.status())["role"] == "mirror"
    await refuses_writes(pair.primary)  # nothing it acknowledged can be lost: it takes no more


async def test_with_the_old_primary_unreachable_the_promotion_says_it_was_not_fenced(pair: Pair) -> None:
    await pair.primary.stop()
    code, body = await pair.mirror.promote()
    assert (code, body["epoch"], body["fenced"]) == (200, 1, False)
    assert body["message"].startswith(
        "primary could not be reached to fence it: writes it acknowledged after mirror last applied its changes"
    )
    code, _ = await pair.mirror.put("88/new", url_value("https://example.cn/new"))
    assert code in (200, 201)
