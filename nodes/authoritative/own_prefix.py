"""The node's own prefix handle (0.NA/<prefix>): its sites and the operator's admin values and secret."""

from __future__ import annotations

import asyncio
import logging
import time

from nodes.authoritative.authority import Authority
from resolver.auth import hash_secret, verify_secret
from resolver.config import NodeSpec, Topology
from resolver.names import prefix_handle
from resolver.sites import is_site_value, site_value
from resolver.storage import Write
from resolver.values import HandleValue

__all__ = ["ensure_own_prefix_handle", "own_prefix_values"]

log = logging.getLogger("idres.authoritative")


def own_prefix_values(topology: Topology, spec: NodeSpec, hashed_secret: str) -> tuple[HandleValue, ...]:
    """The node's own prefix handle: its sites, HS_ADMIN -> the admin group at 200, which lists the
    operator identity 300:0.NA/<prefix>, whose HS_SECKEY is at 300 (Technical Manual §3.6 layout)."""
    assert spec.prefix is not None
    me = prefix_handle(spec.prefix)
    sites = tuple(
        site_value(
            i,
            site.host,
            site.port,
            primary=not site.is_mirror,
            description=site.description or site.name,
            protocol=site.scheme.upper(),  # HTTPS when the node serves TLS
        )
        for i, site in enumerate(topology.sites_of(spec.mirror_of or spec.name), start=1)
    )
    return (
        *sites,
        HandleValue(100, "HS_ADMIN", "admin", {"handle": me, "index": 200, "permissions": "111111111111"}),
        HandleValue(200, "HS_VLIST", "vlist", [{"handle": me, "index": 300}]),
        HandleValue(300, "HS_SECKEY", "string", hashed_secret, permissions="1100"),
    )


async def ensure_own_prefix_handle(authority: Authority, topology: Topology, secret: str) -> None:
    """Write the node's prefix handle if it is missing or out of date; a restart with the same
    topology and secret writes nothing. Called at start, before replication serves or copies it."""
    spec = authority.spec
    key = prefix_handle(spec.prefix or "")
    current = await authority.store.get(key)
    old = current.by_index() if current else {}
    seckey = old.get(300)
    if (
        seckey is not None
        and seckey.type == "HS_SECKEY"
        and await asyncio.to_thread(verify_secret, secret, seckey.value)
    ):
        hashed = seckey.value
    else:
        hashed = await asyncio.to_thread(hash_secret, secret)
        if seckey is not None:
            # Said, not done silently: a shell without the secret the node was started with, or a
            # typo in an EnvironmentFile, changes what the operator logs in with (issue 13).
            log.warning(
                "%s: the operator secret of 300:%s is not the one this node was started with before; "
                "the new one replaces it (the old one no longer logs in)",
                spec.name,
                key,
            )
    wanted = own_prefix_values(topology, spec, hashed)
    now = int(time.time())
    merged = dict(old)
    for v in wanted:
        previous = old.get(v.index)
        # The admin values are only a starting point: an operator who edits them (adds members to
        # the group at 200, say) keeps the edits across restarts. Sites and the secret follow config.
        kept = previous is not None and (
            previous.same_content(v) or (v.type in ("HS_ADMIN", "HS_VLIST") and previous.type == v.type)
        )
        merged[v.index] = previous if kept and previous is not None else v.with_timestamp(now)
    # Sites of a topology that shrank must not linger.
    for index, v in old.items():
        if is_site_value(v) and index not in {w.index for w in wanted}:
            del merged[index]
    if current is None or merged != old:
        values = tuple(sorted(merged.values(), key=lambda v: v.index))
        await authority.store.write([Write(key, values)])
        authority.zone.learn(spec.prefix or "", values)
