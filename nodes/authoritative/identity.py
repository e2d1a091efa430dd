"""Verifying identities held by other nodes, as IDIS's distributed authentication does.

A node knows the secrets of the identities it serves. For any other identity it walks the tree from
the top-level nodes (``resolver.walk``, the walk every resolution makes) to the node that holds the
identity's handle, and lets that node check the credentials (HANDLE.NET's ``GET
/api/sessions/this``); the answer is cached by ``Authority``. Two rules keep that walk honest:

- A "not found" from one server of a step is confirmed by the step's other servers before the
  identity is said not to exist: a top-level node whose database was emptied answers 404 for every
  prefix handle, and its mirror may still know it (issue 11, finding 9), as a 5xx is failed over.
- The node asking never calls itself: if the tree names it as the identity's home, it refuses
  (asking itself would ask the tree again, and again: issue 11, finding 4).
- The client's header goes only to the identity's home as the walk finds it: the server that
  answered the identity's own handle (for ``0.NA/P``, the primary site its HS_SITE values name for
  P). That is a server the tree names for the identity's own prefix, so ``resolver.trust`` allows
  it; the walk accepts a referral only from a step above it (``resolver.resolution``), so no other
  delegation can name that home (issue 11, finding 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from nodes.authoritative.authority import RemoteVerifier
from resolver.auth import Identity
from resolver.client import HandleClient, HttpTransport
from resolver.errors import AuthenticationFailed, UpstreamError
from resolver.names import parse_handle
from resolver.resolution import Answer, NotFound, Resolution, prefix_unregistered
from resolver.sites import SiteServer, site_servers
from resolver.trust import channel_allowed, same_server
from resolver.upstream import UpstreamConfig, Upstreams
from resolver.walk import WALK_UPSTREAM, Transport, drive, walk

__all__ = ["remote_verifier"]

# Walks after a "not found" to hear the other servers of the step that answered it: a primary and a
# mirror or two, so a few are enough; the bound keeps a site listing many servers from costing more.
MAX_CONFIRMATIONS = 3


async def _confirmed(resolution: Resolution, transport: Transport, upstreams: Upstreams) -> Resolution:
    """``resolution``, or if it ended "not found", the first walk from another server of the step
    that answered it which finds the handle (the step's other servers asked in turn)."""
    asked = {hop.url for hop in resolution.hops}
    current = resolution
    for _ in range(MAX_CONFIRMATIONS):
        if not isinstance(current.result, NotFound):
            return current
        others = [s for s in current.step_servers if s.url not in asked]
        if not others:
            break
        left = max(0.0, current.time_left())  # what is left of the walk's budget, not a fresh one
        if current.prefix is None:
            retry = Resolution(current.handle, others, upstreams, deadline=left)
        else:
            retry = Resolution(current.handle, (), upstreams, start=(current.prefix, others), deadline=left)
        await drive(retry, transport)
        asked.update(hop.url for hop in retry.hops)
        if isinstance(retry.result, Answer):
            return retry
        if isinstance(retry.result, NotFound):
            current = retry
        else:
            asked.update(s.url for s in retry.step_servers)  # failed: the first "not found" stands
    return resolution


def remote_verifier(
    client: HandleClient,
    roots: Sequence[str],
    config: UpstreamConfig = WALK_UPSTREAM,
    *,
    trusted: Sequence[str] = (),
    allow_plain: bool = False,
) -> RemoteVerifier:
    """Check credentials of identities held elsewhere, finding their home node from ``roots`` (URLs
    of the top-level nodes, in the order to ask them). The client's header travels only over HTTPS
    or to this machine, or over plain HTTP to the ``trusted`` servers when ``allow_plain``."""
    transport = HttpTransport(client)
    hints = [SiteServer(url, True) for url in roots]
    upstreams = Upstreams(config)  # health learnt across logins: a node that is down is asked last

    async def verify(identity: Identity, authorization: str, own_url: str) -> bool:
        handle = parse_handle(identity.text)
        resolution = await _confirmed(await walk(handle, hints, transport, upstreams), transport, upstreams)
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
        if same_server(target, own_url):
            raise AuthenticationFailed(
                f"{identity} cannot be authenticated: the tree names this node ({target}) as its home, "
                "but this node holds no HS_SECKEY value for it"
            )
        if not channel_allowed(target, trusted, allow_plain=allow_plain):
            raise AuthenticationFailed(
                f"{identity} cannot be verified here: its home node {target} is reached over plain HTTP, "
                "and this node sends credentials only over HTTPS or to this machine"
            )
        try:
            reply = await client.request("GET", target, "/api/sessions/this", authorization=authorization)
        except UpstreamError as exc:
            raise UpstreamError(
                f"cannot verify {identity} now: its home node {target} did not answer", attempts=exc.attempts
            ) from exc
        return reply.status == 200 and reply.body.get("id") == str(identity)

    return verify
