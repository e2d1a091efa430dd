"""The one write decider (``nodes.authoritative.writes``), differentially: its private fast path for the
operator's plain creates decides exactly as its general path, and a single PUT or DELETE through
``Authority`` decides as a batch of that one operation does."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.authoritative.authority import Authority
from nodes.authoritative.batch.endpoint import BatchStats, _apply
from nodes.authoritative.batch.prep import prepare_body
from nodes.authoritative.write_ops import PlainCreates
from nodes.authoritative.writes import BatchDecider
from resolver.auth import Identity
from resolver.codec import pack_rows, value_row
from resolver.config import Limits
from resolver.errors import HandleError
from resolver.names import parse_handle
from resolver.records import parse_put_body
from resolver.sites import site_value
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import topology_of
from tests.fakes import MemoryStorage

NOW = 1_700_000_000
LIMITS = Limits()
SPEC = topology_of(
    {"sec": {"role": "secondary", "prefix": "88.118", "hosts": ["88.118.9"], "listen": "127.0.0.1:8118"}}
).node("sec")
OPERATOR = Identity(300, "0.NA/88.118", "0.NA/88.118")
USER = Identity(300, "88.118/USER", "88.118/USER")


def values(wire: list[dict[str, Any]]) -> tuple[HandleValue, ...]:
    return parse_put_body(wire, handle_text="88.118/x", now=NOW)


def url(value: str) -> list[dict[str, Any]]:
    return [{"index": 1, "type": "URL", "data": value}, {"index": 2, "type": "MODEL", "data": "CQ-EV7"}]


def admin(permissions: str) -> list[dict[str, Any]]:
    grant = {"handle": "88.118/USER", "index": 300, "permissions": permissions}
    return [{"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": grant}}]


async def make_authority(records: dict[str, list[dict[str, Any]]]) -> Authority:
    """88.118, hosting 88.118.9 (whose HS_ADMIN lets USER add and delete handles), delegating 88.118.8,
    with ``records`` stored besides."""
    store = MemoryStorage()
    base = [
        Write("0.NA/88.118", values(admin("111111111111"))),
        Write("0.NA/88.118.9", values(admin("000000000011"))),
        Write("0.NA/88.118.8", (site_value(1, "127.0.0.1", 8300, primary=True, description="enterprise"),)),
    ]
    await store.write(base + [Write(key, values(wire)) for key, wire in records.items()])
    authority = Authority(SPEC, store, LIMITS)
    await authority.start()
    return authority


# Routed here, hosted here, delegated away, under a delegation, not registered, not ours at all.
PLAIN_TEXTS = ["88.118/a", "88.118/b", "88.118.9/a", "88.118.8/a", "88.118.8.1/a", "88.118.7/a", "88.119/a"]


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.sampled_from(PLAIN_TEXTS)),
    st.lists(st.tuples(st.sampled_from(PLAIN_TEXTS), st.integers(0, 3)), max_size=12),
)
def test_the_plain_creates_fast_path_decides_as_the_general_path(
    stored: set[str], batch: list[tuple[str, int]]
) -> None:
    creates = PlainCreates.empty()
    for n, (text, gap) in enumerate(batch):
        handle = parse_handle(text)
        creates.positions.append(n * 4 + gap)  # positions with gaps: other operations failed validation
        creates.texts.append(text)
        creates.keys.append(handle.key)
        creates.zones.append(handle.zone)
        creates.blobs.append(pack_rows([value_row(v) for v in values(url(f"https://example.cn/{n}"))]))
    size = len(batch) * 4

    async def run() -> None:
        authority = await make_authority({parse_handle(t).key: url("https://stored") for t in stored})
        fast = BatchDecider(authority, OPERATOR, creates, [])
        assert fast.plain is not None, "the operator's plain creates take the fast path"
        general = BatchDecider(authority, OPERATOR, PlainCreates.empty(), creates.ops())
        assert general.plain is None or not batch, "anything else takes the general path"
        fast_results: list[dict[str, Any]] = [{}] * size
        general_results: list[dict[str, Any]] = [{}] * size
        fast_decided = await fast.decide(fast_results)
        general_decided = await general.decide(general_results)
        assert fast_results == general_results
        assert [(w.key, w.blob) for w in fast_decided.writes] == [(w.key, w.blob) for w in general_decided.writes]
        assert (fast_decided.prefixes, fast_decided.secrets) == (general_decided.prefixes, general_decided.secrets)
        assert fast_decided.created, "the fast path checked every key absent"

    asyncio.run(run())


# A single write and its batch twin: the only words allowed to differ are how to replace instead.
SAME_WORDS = ("(overwrite=false)", "(create; upsert replaces a record)")
TEXTS = [
    "88.118/a",
    "88.118.9/a",
    "88.118.8/a",
    "88.119/a",
    "0.NA/88.118",
    "0.NA/88.118.9",
    "0.NA/88.118.7",
    "0.NA/88.118.8",
]
VALUES = [url("https://one"), url("https://two"), admin("111111111111"), admin("000000000001"), []]


async def _single(authority: Authority, identity: Identity, kind: str, text: str, wire: list[Any]) -> Any:
    handle = parse_handle(text)
    try:
        if kind == "delete":
            await authority.delete(handle, indexes=None, identity=identity)
        else:
            await authority.put(handle, values(wire), overwrite=kind == "upsert", indexes=None, identity=identity)
    except HandleError as exc:
        return exc.response_code, exc.message.replace(*SAME_WORDS)
    return 1, None


async def _batch(authority: Authority, identity: Identity, kind: str, text: str, wire: list[Any]) -> Any:
    raw = {"op": kind, "handle": text} if kind == "delete" else {"op": kind, "handle": text, "values": wire}
    prepared = prepare_body(msgpack.packb([raw]), "application/msgpack", LIMITS, NOW)
    results, _, _ = await _apply(authority, identity, prepared, BatchStats())
    return results[0]["responseCode"], results[0].get("message")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["88.118/a", "88.118.9/a", "0.NA/88.118.7"]), st.sampled_from(VALUES)),
    st.sampled_from([OPERATOR, USER]),
    st.sampled_from(["create", "upsert", "delete"]),
    st.sampled_from(TEXTS),
    st.sampled_from(VALUES),
)
def test_a_single_write_decides_as_a_batch_of_it(
    records: dict[str, list[dict[str, Any]]], identity: Identity, kind: str, text: str, wire: list[Any]
) -> None:
    async def run() -> None:
        single, batch = await make_authority(records), await make_authority(records)
        assert await _single(single, identity, kind, text, wire) == await _batch(batch, identity, kind, text, wire)
        key = parse_handle(text).key
        assert await single.store.get(key) == await batch.store.get(key)
        assert (single.zone.hosted, single.zone.delegated) == (batch.zone.hosted, batch.zone.delegated)

    asyncio.run(run())
