"""The replication endpoints over HTTP (``nodes.replication.endpoints``): changes, snapshot, status and
promote, on a running primary and its mirror."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodes.replication import endpoints
from resolver.codec import unpack_values
from tests.conftest import OPERATOR_SECRET, auth, eventually
from tests.nodes.replication.pairs import MSGPACK, OP, Pair, running_pair, two_nodes, url_value


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A primary owning 88 and its mirror, both running, the mirror caught up."""
    async for running in running_pair(two_nodes(), tmp_path):
        yield running


ALICE = [*url_value("https://example.cn/alice"), {"index": 300, "type": "HS_SECKEY", "data": "alice-secret"}]


async def test_changes_and_snapshot_are_for_the_operator_only(pair: Pair) -> None:
    # Another identity that authenticates fine on the primary.
    code, _ = await pair.primary.put("88/alice", ALICE)
    assert code in (200, 201)
    for path in ("/api/replication/changes", "/api/replication/snapshot"):
        code, body = await pair.primary.call("GET", path)
        assert (code, body["responseCode"]) == (401, 402), path
        assert body["message"] == f"replication needs the operator's credentials ({OP})"
        code, body = await pair.primary.call("GET", path, headers=auth(OP, "wrong"))
        assert (code, body["responseCode"]) == (401, 403), path
        assert "wrong secret" in body["message"]
        code, body = await pair.primary.call("GET", path, headers=auth("300:88/alice", "alice-secret"))
        assert (code, body["responseCode"]) == (403, 401), path
        assert body["message"] == f"300:88/alice may not replicate: only the node's operator {OP} may"
        code, _ = await pair.primary.call("GET", path, headers=auth(OP))
        assert code == 200, path
    # The hashed operator secret was replicated, so the same credentials work on the mirror.
    await eventually(lambda: pair.resolves_on_mirror("88/alice"), 5, "88/alice reaches the mirror")
    code, _ = await pair.mirror.call("GET", "/api/replication/changes", headers=auth(OP))
    assert code == 200
    code, body = await pair.mirror.call("GET", "/api/replication/changes")
    assert (code, body["responseCode"]) == (401, 402) and "operator's credentials" in body["message"]


async def test_a_long_poll_is_woken_by_the_write_itself(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # With no periodic reread, only the write's wake-up can answer the 30 s long-poll before its end.
    monkeypatch.setattr(endpoints, "RECHECK_SECONDS", 3600.0)
    primary = pair.primary
    last = (await primary.status())["lastSeq"]
    params = {"after": str(last), "wait": "30"}
    poll = asyncio.create_task(primary.call("GET", "/api/replication/changes", params=params, headers=auth(OP)))
    await asyncio.sleep(0.2)  # let it park
    assert not poll.done(), "nothing was written yet: the long-poll waits"
    await primary.put("88/poll", url_value("https://example.cn/poll"))
    try:
        code, body = await asyncio.wait_for(poll, 10)
    except TimeoutError:
        pytest.fail("the long-poll was not woken by the write (it would answer only at the end of its wait)")
    [change] = body["changes"]
    assert code == 200 and change["key"] == "88/poll" and change["op"] == "put"
    assert body["lastSeq"] == change["seq"] == last + 1 and body["epoch"] == 0
    assert change["values"][0]["data"]["value"] == "https://example.cn/poll"  # JSON: HANDLE.NET values


async def test_changes_speak_msgpack_and_a_long_poll_with_nothing_new_answers_empty(pair: Pair) -> None:
    primary = pair.primary
    await primary.put("88/x", url_value("https://example.cn/x"))
    code, body = await primary.call(
        "GET", "/api/replication/changes", params={"after": "0", "limit": "2"}, headers={**auth(OP), **MSGPACK}
    )
    assert code == 200 and [c["seq"] for c in body["changes"]] == [1, 2]
    assert unpack_values(body["changes"][0]["values"])[0].type == "HS_SITE"  # msgpack: packed blobs

    code, body = await primary.call(
        "GET", "/api/replication/changes", params={"after": "2", "wait": "0.1"}, headers=auth(OP)
    )
    assert (code, body["changes"], body["lastSeq"]) == (200, [], 2), "the wait ended with nothing new"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"wait": "soon"}, "parameter wait='soon' is not a number of seconds"),
        ({"after": "-1"}, "after, limit and wait must not be negative"),
        ({"wait": "-1"}, "after, limit and wait must not be negative"),
    ],
)
async def test_changes_with_a_bad_parameter_is_a_400_that_names_it(
    pair: Pair, params: dict[str, str], words: str
) -> None:
    code, body = await pair.primary.call("GET", "/api/replication/changes", params=params, headers=auth(OP))
    assert (code, body["responseCode"]) == (400, 4) and words in body["message"]


async def test_snapshot_streams_every_record_with_its_secret_hashed(pair: Pair) -> None:
    await pair.primary.put("88/s", url_value("https://example.cn/s"))
    code, lines = await pair.primary.call("GET", "/api/replication/snapshot", headers=auth(OP))
    assert code == 200
    header, *records, trailer = lines
    assert header == {"responseCode": 1, "lastSeq": 2, "epoch": 0, "node": "primary"}
    assert [r["key"] for r in records] == ["0.NA/88", "88/s"]
    seckey = next(v for v in records[0]["values"] if v["type"] == "HS_SECKEY")
    assert seckey["data"]["value"].startswith("pbkdf2-sha256$") and OPERATOR_SECRET not in json.dumps(lines)
    assert trailer == {"responseCode": 1, "done": True, "count": 2}
    code, lines = await pair.primary.call(
        "GET", "/api/replication/snapshot", params={"after_key": "0.NA/88"}, headers=auth(OP)
    )
    assert [line.get("key") for line in lines[1:-1]] == ["88/s"] and lines[-1]["count"] == 1


async def test_status_reports_roles_epochs_sequence_numbers_lag_and_a_digest(pair: Pair) -> None:
    await pair.primary.put("88/x", url_value("https://example.cn/x"))
    await eventually(pair.same_digest, 5, "the mirror holds what the primary holds")
    primary, mirror = await pair.primary.status(operator=True), await pair.mirror.status(operator=True)
    assert primary["role"] == "primary" and primary["epoch"] == 0 and primary["writable"] is True
    assert primary["roleSource"] == "topology" and "note" not in primary and primary["syncMirrors"] is False
    assert primary["records"] == mirror["records"] == 2 and len(primary["digest"]) == 64
    assert primary["mirrors"]["mirror"]["appliedSeq"] == primary["lastSeq"] == 2  # what it polled after
    assert primary["mirrors"]["mirror"]["lagSeq"] == 0
    assert mirror["role"] == "mirror" and mirror["epoch"] == 0 and mirror["writable"] is False
    assert mirror["primaryNode"] == "primary" and mirror["primaryEpoch"] == 0 and mirror["lagSeq"] == 0
    assert mirror["connected"] is True and mirror["lagSeconds"] == 0.0 and mirror["lastError"] is None
    assert mirror["message"] == f"mirror is a mirror of primary and refuses writes; send them to {pair.primary.url}"
    # The mirror's own log holds what it applied: a node can be followed by a mirror of its own.
    assert mirror["lastSeq"] >= 2
    _, light = await pair.primary.call("GET", "/api/replication/status", params={"digest": "false"}, headers=auth(OP))
    assert "digest" not in light and light["epoch"] == 0


async def test_healthz_says_mirror_from_the_same_role_as_the_status(pair: Pair) -> None:
    for node, mirror in ((pair.primary, False), (pair.mirror, True)):
        code, health = await node.call("GET", "/healthz")
        assert code == 200 and health["mirror"] is mirror
        assert (await node.status())["role"] == ("mirror" if mirror else "primary")


async def test_promote_is_for_the_operator_only_and_idempotent(pair: Pair) -> None:
    code, _ = await pair.primary.put("88/alice", ALICE)
    assert code in (200, 201)
    code, body = await pair.primary.promote(headers={})
    assert (code, body["responseCode"]) == (401, 402) and "operator's credentials" in body["message"]
    code, body = await pair.primary.promote(headers=auth("300:88/alice", "alice-secret"))
    assert (code, body["responseCode"]) == (403, 401) and "may not replicate" in body["message"]
    code, body = await pair.primary.promote()  # a primary taking writes: nothing changes
    assert (code, body) == (
        200,
        {"responseCode": 1, "role": "primary", "epoch": 0, "fenced": True, "message": "primary is the primary already"},
    )


async def test_a_msgpack_changes_page_stops_at_its_byte_budget_and_the_mirror_still_catches_up(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages are bounded in bytes as well as in changes, so a mirror's capped client can always read one
    # (nodes.replication.follower.PAGE_BYTES); here the budget is one small record.
    monkeypatch.setattr(endpoints, "PAGE_BYTES", 10)
    for n in range(3):
        code, _ = await pair.primary.put(f"88/paged-{n}", url_value(f"https://example.cn/paged/{n}"))
        assert code in (200, 201)
    status = await pair.primary.status()
    after = status["lastSeq"] - 3
    code, body = await pair.primary.call(
        "GET", "/api/replication/changes", params={"after": str(after), "limit": "100"}, headers={**auth(OP), **MSGPACK}
    )
    assert code == 200
    assert [c["seq"] for c in body["changes"]] == [after + 1], "one change past the budget, never none"
    assert body["lastSeq"] == after + 3, "the mirror learns there is more"
    await eventually(pair.in_sync, 10, "the mirror catches up page by page")
    assert (await pair.mirror.get("88/paged-2"))[0] == 200
