"""Verifying identities held by other nodes, as IDIS's distributed authentication does.

A node knows the secrets of the identities it serves. For any other identity it walks the tree from
the top-level nodes (``resolver.walk``, the walk every resolution makes) to the node that holds the
identity's handle, and lets that node check the credentials (HANDLE.NET's ``GET
/api/sessions/this``); the answer is cached by ``Authority``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodes.authoritative.authority import RemoteVerifier
from resolver.auth import Identity
from resolver.client import HandleClient, HttpTransport
from resolver.errors import AuthenticationFailed, UpstreamError
from resolver.names import parse_handle
from resolver.resolution import Answer, prefix_unregistered
from resolver.sites import SiteServer, site_servers
from resolver.upstream import UpstreamConfig, Upstreams
from resolver.walk import WALK_UPSTREAM, walk

__all__ = ["remote_verifier"]


def remote_verifier(
    client: HandleClient, roots: Sequence[str], config: UpstreamConfig = WALK_UPSTREAM
) -> RemoteVerifier:
    """Check credentials of identities held elsewhere, finding their home node from ``roots`` (URLs
    of the top-level nodes, in the order to ask them)."""
    transport = HttpTransport(client)
    hints = [SiteServer(url, True) for url in roots]
    upstreams = Upstreams(config)  # health learnt across logins: a node that is down is asked last

    async def verify(identity: Identity, authorization: str) -> bool:
        handle = parse_handle(identity.text)
        resolution = await walk(handle, hints, transport, upstreams)
        failed = resolution.failed
        if failed is not None and not prefix_unregistered(failed):
            why = "" if failed.attempts else f" ({failed.message})"  # a deadline, too many referrals
            raise UpstreamError(
                f"cannot verify {identity} now: its home node could not be reached{why}", attempts=failed.attempts
            ) from failed
        if not isinstance(resolution.result, Answer):  # not found, or no node serves its prefix
            raise AuthenticationFailed(f"{identity} does not exist, so it cannot be authenticated")
        assert resolution.answered_by is not None
        target = resolution.answered_by.url
        if handle.is_prefix_handle:
            # A prefix handle resolves at the parent, which holds the delegation; the prefix's own
            # node, named by its HS_SITE values, is the one that holds the secret.
            servers = [s for s in site_servers(resolution.result.values) if s.primary]
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
