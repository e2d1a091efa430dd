"""Who sees a node's digest (the status and ``GET /api/replication/digest``), and how two nodes that differ
find the records where they do, by buckets and then keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodes.authoritative.authority import AUTHORITY
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import auth, eventually
from tests.nodes.replication.pairs import OP, Pair, ReplicatedNode, running_pair, two_nodes, url_value

ALICE = [*url_value("https://example.cn/alice"), {"index": 300, "type": "HS_SECKEY", "data": "alice-secret"}]
AS_ALICE = auth("300:88/alice", "alice-secret")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


async def digest_of(node: ReplicatedNode, **params: str) -> dict[str, Any]:
    code, body = await node.call("GET", "/api/replication/digest", params=params, headers=auth(OP))
    assert code == 200, f"digest of {node.name}: {code} {body}"
    result: dict[str, Any] = body
    return result


async def test_the_digest_is_for_the_operator_unless_the_topology_makes_it_public(pair: Pair) -> None:
    code, _ = await pair.primary.put("88/alice", ALICE)
    assert code in (200, 201)
    for headers in ({}, AS_ALICE):
        code, status = await pair.primary.call("GET", "/api/replication/status", headers=headers)
        assert code == 200 and status["role"] == "primary" and status["lastSeq"] == 2
        assert "digest" not in status and "records" not in status, "not the operator: no digest"
    status = await pair.primary.status(operator=True)
    assert status["records"] == 2 and len(status["digest"]) == 64

    code, body = await pair.primary.call("GET", "/api/replication/digest")
    assert (code, body["responseCode"]) == (401, 402) and "for the node's operator" in body["message"]
    code, body = await pair.primary.call("GET", "/api/replication/digest", headers=AS_ALICE)
    assert (code, body["responseCode"]) == (403, 401) and "for the node's operator" in body["message"]
    code, body = await pair.primary.call("GET", "/api/replication/digest", headers=auth(OP, "wrong"))
    assert (code, body["responseCode"]) == (401, 403), "wrong credentials are refused, not ignored"

    digest = await digest_of(pair.primary)
    assert (digest["records"], digest["digest"]) == (status["records"], status["digest"])
    assert sum(count for _, count, _ in digest["buckets"]) == 2


async def test_with_public_digest_anyone_may_read_it(tmp_path: Path) -> None:
    async for pair in running_pair(two_nodes(public_digest=True), tmp_path):
        code, status = await pair.primary.call("GET", "/api/replication/status")
        assert code == 200 and status["records"] == 1 and len(status["digest"]) == 64
        code, body = await pair.primary.call("GET", "/api/replication/digest")
        assert code == 200 and body["digest"] == status["digest"]
        # The setting belongs to the node that carries it: the mirror's own spec keeps its digest private.
        code, status = await pair.mirror.call("GET", "/api/replication/status")
        assert code == 200 and "digest" not in status


async def test_two_nodes_that_differ_find_the_records_where_they_do(pair: Pair) -> None:
    for n in range(20):
        code, _ = await pair.primary.put(f"88/d-{n:02}", url_value(f"https://example.cn/{n}"))
        assert code in (200, 201)
    await eventually(pair.same_digest, 5, "the mirror holds what the primary holds")
    assert (await digest_of(pair.primary)) == (await digest_of(pair.mirror))
    # Behind replication's back: one record more on the mirror, one with another value.
    changed = (HandleValue(1, "URL", "string", "https://example.cn/changed"),)
    await pair.mirror.app[AUTHORITY].store.write([Write("88/extra", changed), Write("88/d-07", changed)])

    primary, mirror = await digest_of(pair.primary), await digest_of(pair.mirror)
    assert primary["digest"] != mirror["digest"] and mirror["records"] == primary["records"] + 1
    ours = {b: (count, h) for b, count, h in primary["buckets"]}
    theirs = {b: (count, h) for b, count, h in mirror["buckets"]}
    differing = sorted(b for b in ours.keys() | theirs.keys() if ours.get(b) != theirs.get(b))
    assert 1 <= len(differing) <= 2, "only the buckets of the two records differ"

    found: set[str] = set()
    for bucket in differing:
        listed = [dict((await digest_of(node, bucket=str(bucket)))["keys"]) for node in (pair.primary, pair.mirror)]
        found |= {k for k in listed[0].keys() | listed[1].keys() if listed[0].get(k) != listed[1].get(k)}
    assert found == {"88/extra", "88/d-07"}


async def test_a_bucket_is_listed_a_page_at_a_time(pair: Pair) -> None:
    some = (HandleValue(1, "URL", "string", "https://example.cn/p"),)
    await pair.primary.app[AUTHORITY].store.write([Write(f"88/p-{n:03}", some) for n in range(300)])
    bucket, count, _ = max((await digest_of(pair.primary))["buckets"], key=lambda b: b[1])
    assert count >= 2, "300 keys in 4,096 buckets share some"
    keys: list[str] = []
    after = ""
    while True:
        page = await digest_of(pair.primary, bucket=str(bucket), limit="1", after_key=after)
        keys += [k for k, _ in page["keys"]]
        if not page["more"]:
            break
        after = keys[-1]
    assert len(keys) == count and keys == sorted(keys)
    code, body = await pair.primary.call("GET", "/api/replication/digest", params={"bucket": "-1"}, headers=auth(OP))
    assert (code, body["responseCode"]) == (400, 4) and "bucket must not be negative" in body["message"]
