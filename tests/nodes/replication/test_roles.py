"""Roles, epochs, promotion and sync acks of one node (``nodes.replication.roles``), over an in-memory store;
peers that must answer are small scripted status endpoints on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nodes.authoritative.authority import Authority
from nodes.authoritative.config import AuthoritativeConfig
from nodes.replication import roles
from nodes.replication.acks import AckTracker, ChangeFeed
from nodes.replication.roles import Replication, StartingRole, replicating, starting_role
from resolver.config import DEFAULT_LIMITS, NodeSpec, Topology
from resolver.errors import NotReplicated, ReadOnly
from tests.conftest import OPERATOR_SECRET, FakeClock
from tests.fakes import MemoryStorage
from tests.nodes.replication.pairs import two_nodes

Started = Callable[..., AbstractAsyncContextManager[Replication]]


@pytest.fixture
def topology() -> Topology:
    """primary owning 88, mirrored by "mirror" and "other" (the primary's peers), on free ports."""
    return two_nodes(mirrors=("mirror", "other"))


async def stored(meta: dict[str, str]) -> MemoryStorage:
    store = MemoryStorage()
    for name, value in meta.items():
        await store.set_meta(name, value)
    return store


@pytest.fixture
def node(topology: Topology, tmp_path: Path) -> Started:
    """Start one node of ``topology`` over a store holding ``meta``, as the node's start-up does."""

    @asynccontextmanager
    async def start(name: str, store: MemoryStorage | None = None) -> AsyncIterator[Replication]:
        store = store or MemoryStorage()
        spec = topology.node(name)
        role = await starting_role(store, spec)
        authority = Authority(spec, store, DEFAULT_LIMITS, read_only=role.is_mirror)
        config = AuthoritativeConfig(spec, topology, tmp_path / f"{name}.sqlite3", OPERATOR_SECRET)
        async with replicating(authority, config, role) as replication:
            yield replication

    return start


@asynccontextmanager
async def peer_answering(spec: NodeSpec, status: dict[str, Any]) -> AsyncIterator[None]:
    """A stand-in for ``spec``'s node on its port that answers ``/api/replication/status`` with ``status``."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"responseCode": 1, **status})

    app = web.Application()
    app.router.add_get("/api/replication/status", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, spec.host, spec.port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def refusal(replication: Replication) -> str:
    """The message of the 503/7 a client write to this node gets."""
    with pytest.raises(ReadOnly) as refused:
        await replication.authority.admit_write()
    return refused.value.message


# -- the role, decided once ----------------------------------------------------------------------


async def test_the_topology_decides_the_role_of_a_fresh_database(topology: Topology) -> None:
    primary = await starting_role(MemoryStorage(), topology.node("primary"))
    assert primary == StartingRole("primary", "topology", "", None, writes_own_prefix_handle=True)
    mirror = await starting_role(MemoryStorage(), topology.node("mirror"))
    assert mirror == StartingRole("mirror", "topology", "primary", None, writes_own_prefix_handle=False)
    assert mirror.is_mirror and not primary.is_mirror


async def test_a_stored_role_wins_over_the_topology(topology: Topology) -> None:
    demoted = await starting_role(
        await stored({"role": "mirror", "following": "mirror", "epoch": "3"}), topology.node("primary")
    )
    assert demoted == StartingRole("mirror", "demoted", "mirror", 3, writes_own_prefix_handle=False)
    promoted = await starting_role(await stored({"role": "primary", "epoch": "1"}), topology.node("mirror"))
    # A promoted mirror holds its primary's prefix handle already: it does not write its own.
    assert promoted == StartingRole("primary", "promoted", "", 1, writes_own_prefix_handle=False)
    again = await starting_role(await stored({"role": "primary", "epoch": "2"}), topology.node("primary"))
    assert again == StartingRole("primary", "promoted", "", 2, writes_own_prefix_handle=True)


async def test_a_fresh_primary_takes_writes_at_epoch_0_and_observes_the_authority(node: Started) -> None:
    store = MemoryStorage()
    async with node("primary", store) as replication:
        assert (replication.role, replication.epoch, replication.role_source) == ("primary", 0, "topology")
        assert replication.checked and not replication.authority.read_only
        await replication.authority.admit_write()  # no refusal
        assert await store.get_meta("epoch") == "0"
        assert replication.note() is None
        with pytest.raises(RuntimeError, match="already has a write observer"):
            replication.authority.observe(replication)


async def test_a_mirror_refuses_writes_naming_its_primary(node: Started, topology: Topology) -> None:
    async with node("mirror") as replication:
        assert replication.role == "mirror" and replication.mirror is not None
        assert replication.mirror.name == "primary"
        message = await refusal(replication)
        assert (
            message == f"mirror is a mirror of primary and refuses writes; send them to {topology.node('primary').url}"
        )


async def test_a_demoted_node_whose_new_primary_left_the_topology_waits_for_an_operator(node: Started) -> None:
    async with node("primary", await stored({"role": "mirror", "following": "gone", "epoch": "1"})) as replication:
        assert replication.role == "mirror" and replication.role_source == "demoted"
        assert (
            replication.mirror is not None and replication.mirror.last_error == "'gone' is not a node of the topology"
        )
        assert await refusal(replication) == "primary is a mirror of 'gone', which the topology lacks"
        note = replication.note()
        assert note is not None and note.startswith("demoted: follows gone")


# -- a restarted primary checks its peers ---------------------------------------------------------


async def test_a_restarted_primary_with_no_peer_answering_refuses_writes_until_promoted(
    node: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "CHECK_WAIT", 0.05)  # how long a write waits for the peers' answers
    store = await stored({"epoch": "0"})  # it ran before: a peer may have been promoted meanwhile
    async with node("primary", store) as replication:
        assert not replication.checked
        message = await refusal(replication)
        assert "restarted as a primary" in message and "each of its peers (mirror, other)" in message
        assert "checking for a promoted mirror" in message

        assert (await replication.promote()).epoch == 1  # the operator vouches for it
        await replication.authority.admit_write()
        assert (replication.role, replication.role_source, replication.epoch) == ("primary", "promoted", 1)
        assert (await store.get_meta("role"), await store.get_meta("epoch")) == ("primary", "1")
        assert (await replication.promote()).epoch == 1, "promoting a primary that takes writes changes nothing"


async def test_a_primary_settles_once_every_peer_answers_as_a_mirror_of_its_epoch(
    node: Started, topology: Topology
) -> None:
    mirror_status = {"role": "mirror", "epoch": 0}
    async with (
        peer_answering(topology.node("mirror"), mirror_status),
        peer_answering(topology.node("other"), mirror_status),
        node("primary", await stored({"epoch": "0"})) as replication,
    ):
        assert replication.checked and replication.conflict is None
        await replication.authority.admit_write()


async def test_a_primary_demotes_itself_when_a_peer_was_promoted_past_its_epoch(
    node: Started, topology: Topology
) -> None:
    store = await stored({"epoch": "0", "applied_seq": "7"})
    other = topology.node("other")
    async with (
        peer_answering(topology.node("mirror"), {"role": "mirror", "epoch": 2}),
        peer_answering(other, {"role": "primary", "epoch": 2}),
        node("primary", store) as replication,
    ):
        assert (replication.role, replication.role_source) == ("mirror", "demoted")
        assert replication.mirror is not None and replication.mirror.name == "other"
        message = await refusal(replication)
        assert message == (
            f"primary is no longer the primary: other ({other.url}) was promoted and takes the writes; send them there"
        )
        meta = {name: await store.get_meta(name) for name in ("role", "following", "resync", "applied_seq")}
        assert meta == {"role": "mirror", "following": "other", "resync": "1", "applied_seq": ""}


async def test_two_primaries_at_the_same_epoch_stop_writes_until_an_operator_promotes_one(
    node: Started, topology: Topology
) -> None:
    async with (
        peer_answering(topology.node("mirror"), {"role": "primary", "epoch": 0}),
        peer_answering(topology.node("other"), {"role": "mirror", "epoch": 0}),
        node("primary", await stored({"epoch": "0"})) as replication,
    ):
        message = await refusal(replication)
        assert message.startswith("primary and mirror all claim to be the primary at epoch 0")
        assert message.endswith("no writes until an operator promotes a node (POST /api/replication/promote)")
        assert (await replication.promote()).epoch == 1, "the promotion raises the epoch above every peer's"
        await replication.authority.admit_write()


async def test_a_promoted_mirror_says_how_its_role_differs_from_the_topology(node: Started) -> None:
    async with node("mirror") as replication:
        assert (await replication.promote()).epoch == 1
        assert replication.role == "primary" and replication.mirror is None
        assert replication.note() == (
            "promoted (epoch 1): primary although the topology says mirror_of primary; the stored role wins"
        )


# -- synchronous acknowledgement -----------------------------------------------------------------


async def test_with_sync_mirrors_a_write_is_acknowledged_once_a_mirror_applied_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "SYNC_ACK_TIMEOUT", 0.05)
    topology = two_nodes(sync=True)
    spec = topology.node("primary")
    authority = Authority(spec, MemoryStorage(), DEFAULT_LIMITS)
    config = AuthoritativeConfig(spec, topology, tmp_path / "p.sqlite3", OPERATOR_SECRET)
    async with replicating(authority, config, await starting_role(authority.store, spec)) as replication:
        assert replication.sync
        with pytest.raises(NotReplicated) as unconfirmed:
            await authority.acknowledge(5)
        assert unconfirmed.value.http_status == 503 and unconfirmed.value.response_code == 2
        assert unconfirmed.value.message.startswith("the write was committed on primary (seq 5) but no mirror")
        assert "confirmed it within 0.05 s (sync_mirrors)" in unconfirmed.value.message

        replication.acks.report("mirror", 5)
        await authority.acknowledge(5)  # a mirror holds it: acknowledged
        await authority.acknowledge(0)  # nothing changed: nothing to wait for


async def test_without_sync_mirrors_a_write_is_acknowledged_at_once(node: Started) -> None:
    async with node("primary") as replication:
        await replication.authority.acknowledge(99)  # nobody reported seq 99, and nobody needs to


def test_the_ack_tracker_keeps_each_mirrors_highest_seq_and_when_it_reported() -> None:
    clock = FakeClock(10.0)
    acks = AckTracker(clock)
    acks.report("a", 5)
    clock.advance(1)
    acks.report("a", 3)  # a late, lower report does not move it back
    acks.report("b", 4)
    assert acks.applied == {"a": (5, 11.0), "b": (4, 11.0)} and acks.best() == 5


async def test_the_ack_tracker_wakes_a_waiter_when_a_mirror_reports() -> None:
    acks = AckTracker()
    waiting = asyncio.create_task(acks.wait(3, timeout=30))
    await asyncio.sleep(0)
    acks.report("a", 2)
    await asyncio.sleep(0)
    assert not waiting.done(), "seq 2 is not seq 3"
    acks.report("a", 3)
    assert await waiting is True
    assert await acks.wait(4, timeout=0) is False


async def test_the_change_feed_wakes_every_long_poll_and_closes_for_shutdown() -> None:
    feed = ChangeFeed()
    woken = [asyncio.create_task(feed.event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    feed.notify()
    assert await asyncio.gather(*woken) == [True, True, True]
    assert not feed.event.is_set(), "the next write needs a fresh event"
    feed.close()
    assert feed.closing
