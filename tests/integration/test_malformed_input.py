"""Issue 11, finding 3, against real node processes: malformed input, with credentials or without,
is answered 400 with a Handle responseCode and a message, and leaves no traceback in the node's log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from resolver.client import basic_auth
from tests.processes import Running, copy_topology, request, start_up, stop

DIGITS = "7" * 5_000  # past Python's 4,300-digit int-string conversion limit
TWO_63 = str(2**63)
OPERATOR = "300:0.NA/88.118.8"  # automaker's operator
NESTED = "nested deeper than 32 levels"
SITE_SERVER = {"address": "127.0.0.1", "interfaces": [{"protocol": "HTTP", "port": 8300}], "publicKey": b"\x00"}


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The default topology on free ports (`idres up`), its logs under DATA/logs."""
    home = tmp_path_factory.mktemp("malformed")
    running = start_up(home / "data", copy_topology(home / "topology.toml"))
    yield running
    stop(running)


def credentials(running: Running) -> dict[str, str]:
    return {"Authorization": basic_auth(OPERATOR, running.secret("automaker"))}


def call(
    running: Running,
    node: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    *,
    signed: bool,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type} if body is not None else {}
    if signed:
        headers.update(credentials(running))
    return request(method, running.urls[node] + path, body, headers)


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# (node, method, path, body, content type, credentials, responseCode, words)
CASES: list[tuple[str, str, str, bytes | None, str, bool, int, str]] = [
    ("recursive", "GET", f"/api/handles/88.118.8/X?index={DIGITS}", None, "", False, 4, "out of range"),
    ("automaker", "GET", f"/api/handles/88.118.8/X?index={TWO_63}", None, "", False, 4, "parameter index="),
    ("automaker", "PUT", "/api/handles/88.118.8/X", deep(100_000), "application/json", False, 4, NESTED),
    ("automaker", "PUT", "/api/handles/88.118.8/X", b"\x91" * 5_000 + b"\xc0", "application/msgpack", False, 4, NESTED),
    (
        "automaker",
        "PUT",
        "/api/handles/88.118.8/X",
        b'[{"index": 1, "type": "URL", "data": "x", "ttl": ' + DIGITS.encode() + b"}]",
        "application/json",
        True,
        4,
        "integer of more than 4,300 digits",
    ),
    (
        "automaker",
        "PUT",
        "/api/handles/88.118.8/X",
        json.dumps([{"index": 1, "type": "URL", "data": "x", "ttl": DIGITS}]).encode(),
        "application/json",
        True,
        202,
        "out of range",
    ),
    (
        "automaker",
        "PUT",
        "/api/handles/88.118.8/X",
        msgpack.packb([{"index": msgpack.ExtType(1, b"x"), "type": "URL", "data": "x"}]),
        "application/msgpack",
        True,
        202,
        "index must be an integer, not a msgpack ExtType",
    ),
    (
        "automaker",
        "PUT",
        "/api/handles/88.118.8/X",
        msgpack.packb(
            [{"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": {"servers": [SITE_SERVER]}}}]
        ),
        "application/msgpack",
        True,
        202,
        "publicKey must be plain JSON, not binary data",
    ),
    ("automaker", "GET", f"/api/handles?prefix=88.118.8&page={TWO_63}&pageSize=1", None, "", True, 4, "page"),
    ("automaker", "GET", f"/api/replication/changes?after={TWO_63}", None, "", True, 4, "parameter after="),
    ("automaker", "POST", "/api/batch", deep(1_000), "application/json", True, 4, NESTED),
    ("automaker", "POST", "/api/batch", deep(300_000), "application/json", True, 4, NESTED),  # a worker's size
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[2][:40]} {c[7]}" for c in CASES])
def test_malformed_input_is_a_400(
    topology: Running, case: tuple[str, str, str, bytes | None, str, bool, int, str]
) -> None:
    node, method, path, body, content_type, signed, code, words = case
    status, answer = call(topology, node, method, path, body, content_type, signed=signed)
    assert (status, answer["responseCode"]) == (400, code), answer
    assert words in answer["message"] and len(answer["message"]) < 400, answer["message"]


def test_a_batch_line_that_cannot_be_read_fails_alone(topology: Running) -> None:
    good = {"op": "create", "handle": "88.118.8/MALFORMED-OK", "values": [{"index": 1, "type": "URL", "data": "x"}]}
    body = json.dumps(good).encode() + b"\n" + deep(1_000) + b"\n" + b"9" * 5_000 + b"\n"
    status, answer = call(topology, "automaker", "POST", "/api/batch", body, "application/x-ndjson", signed=True)
    assert (status, answer["applied"], answer["failed"]) == (200, 1, 2), answer
    assert [r["responseCode"] for r in answer["results"]] == [1, 4, 4]
    assert NESTED in answer["results"][1]["message"]
    assert "integer of more than 4,300 digits" in answer["results"][2]["message"]


def test_no_traceback_in_any_log(topology: Running) -> None:
    """Runs last: none of the requests above made a node log an internal error."""
    logs = sorted(Path(topology.data, "logs").glob("*.log"))
    assert logs, "the launcher writes one log per node"
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "internal error" not in text, f"{log.name}:\n{text[-3000:]}"
