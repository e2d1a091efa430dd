"""Verifying identities held by other nodes, as IDIS's distributed authentication does.

A node knows the secrets of the identities it serves. For any other identity it finds, through the
tree from the root nodes, the node that holds the identity's handle and lets that node check the
credentials (HANDLE.NET's ``GET /api/sessions/this``); the answer is cached by ``Authority``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nodes.authoritative.authority import RemoteVerifier
from resolver.auth import Identity
from resolver.client import HandleClient
from resolver.errors import AuthenticationFailed, UpstreamError
from resolver.names import PREFIX_NA
from resolver.sites import site_servers
from resolver.values import value_from_wire

__all__ = ["remote_verifier"]


def remote_verifier(client: HandleClient, roots: Sequence[str]) -> RemoteVerifier:
    async def verify(identity: Identity, authorization: str) -> bool:
        try:
            found = await client.resolve(identity.text, roots)
        except UpstreamError as exc:
            raise UpstreamError(
                f"cannot verify {identity} now: its home node could not be reached", attempts=exc.attempts
            ) from exc
        if found.reply.status == 404:
            raise AuthenticationFailed(f"{identity} does not exist, so it cannot be authenticated")
        if found.reply.status != 200 or not found.hops:
            raise AuthenticationFailed(f"{identity} could not be found: {found.reply.body.get('message', '')}")
        target = found.hops[-1].url
        if identity.key.startswith(PREFIX_NA + "/"):
            # A prefix handle resolves at the parent, which holds the delegation; the prefix's own
            # node, named by its HS_SITE values, is the one that holds the secret.
            now = int(time.time())
            values = [
                value_from_wire(v, position=i + 1, now=now) for i, v in enumerate(found.reply.body.get("values", []))
            ]
            servers = [s for s in site_servers(values) if s.primary]
            if servers:
                target = servers[0].url
        try:
            reply = await client.request("GET", target, "/api/sessions/this", authorization=authorization)
        except UpstreamError as exc:
            raise UpstreamError(
                f"cannot verify {identity} now: its home node {target} did not answer", attempts=exc.attempts
            ) from exc
        return reply.status == 200 and reply.body.get("id") == str(identity)

    return verify
