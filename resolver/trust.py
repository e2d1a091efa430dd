"""Which servers may be sent a client's credentials: the one rule the recursive node and identity checks share.

Any enterprise can delegate a sub-prefix to any address it likes, so a server the tree names is
untrusted (DESIGN §11). A client's ``Authorization`` header (its secret, for Basic) goes only to a
server that the tree names for the identity's own prefix or a prefix under it, or that the operator
trusts (the nodes of its topology and the topology's ``trusted_servers``); everything else is
answered without contacting anyone (issue 11, finding 1). The servers the tree names for a prefix
are those of the deepest delegation covering it: for the identity's own prefix that is its home,
which holds its secret already; under it, a delegation its own organisation (or one it delegated
to) chose. Only a delegation elsewhere, by another organisation, can name a server it did not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from resolver.auth import Identity
from resolver.names import is_under, parse_handle

__all__ = [
    "channel_allowed",
    "identity_prefix",
    "is_this_machine",
    "is_trusted",
    "may_receive_credentials",
    "private_channel",
    "same_server",
]

_THIS_MACHINE = ("localhost", "localhost.")


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ("", port) if host in _THIS_MACHINE else (host, port)
    # Loopback and the unspecified address (a node listening on 0.0.0.0) are all this machine.
    return ("", port) if address.is_loopback or address.is_unspecified else (str(address), port)


def is_this_machine(address: str | None) -> bool:
    """Whether a peer's address (``request.remote``) is this machine: a loopback address, IPv4-mapped
    too, or no IP address at all (a Unix socket)."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def private_channel(url: str) -> bool:
    """Whether a request to ``url`` cannot be read on the way: HTTPS, or a server on this machine."""
    found = _host_port(url)
    return url.lower().startswith("https://") or (found is not None and found[0] == "")


def channel_allowed(url: str, trusted: Iterable[str], *, allow_plain: bool) -> bool:
    """Whether a client's credentials may travel to ``url`` at all: over a private channel, or over
    plain HTTP to a server the operator trusts when it allows that (``allow_plain_credentials``)."""
    return private_channel(url) or (allow_plain and is_trusted(url, trusted))


def same_server(url: str, other: str) -> bool:
    """Whether ``url`` and ``other`` name the same server: same port, and the same host or both this
    machine (``localhost``, any loopback address, ``0.0.0.0``); the scheme does not matter."""
    a, b = _host_port(url), _host_port(other)
    return a is not None and a == b


def is_trusted(server_url: str, trusted: Iterable[str]) -> bool:
    """Whether ``server_url`` is one of the ``trusted`` servers (compared as ``same_server`` does)."""
    return any(same_server(server_url, url) for url in trusted)


def identity_prefix(identity: Identity) -> str:
    """The prefix an identity belongs to: P for ``0.NA/P``, else its handle's prefix (normalised)."""
    return parse_handle(identity.key).zone


def may_receive_credentials(
    identity: Identity | None, route_prefix: str | None, server_url: str, trusted: Iterable[str]
) -> bool:
    """Whether ``server_url``, which the tree names for ``route_prefix`` (None: no prefix, trusted
    servers only), may be sent the credentials of ``identity`` (None: credentials this node cannot
    read, which go to trusted servers only): the route is the identity's own prefix or under it, or
    the server is trusted."""
    if identity is not None and route_prefix is not None and is_under(route_prefix, identity_prefix(identity)):
        return True
    return is_trusted(server_url, trusted)
