"""TLS contexts for a node's server socket and for the HTTPS clients that talk to other nodes.

What is served and what is trusted comes from the topology (``NodeSpec.tls_cert``/``tls_key``, the
topology's ``[tls] ca``); this module only turns those files into ``ssl`` contexts, once, at start.
"""

from __future__ import annotations

import ssl

import aiohttp

from resolver.config import NodeSpec
from resolver.errors import ConfigError

__all__ = ["client_connector", "client_context", "node_session", "server_context"]


def server_context(spec: NodeSpec) -> ssl.SSLContext | None:
    """The context node ``spec`` serves HTTPS with, None when it serves plain HTTP."""
    if spec.tls_cert is None or spec.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(spec.tls_cert, spec.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"node {spec.name}: cannot load its TLS certificate {spec.tls_cert} and key {spec.tls_key}: {exc}"
        ) from exc
    return context


def client_context(cafile: str | None) -> ssl.SSLContext:
    """A verifying client context: certificates must chain to ``cafile`` (a PEM bundle) when given,
    else to the system's trust store, and name the host asked."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificates {cafile}: {exc}") from exc


def client_connector(cafile: str | None, *, limit: int = 100, limit_per_host: int = 0) -> aiohttp.TCPConnector:
    """A connector for sessions that talk to nodes, with TCPConnector's connection limits."""
    return aiohttp.TCPConnector(ssl=client_context(cafile), limit=limit, limit_per_host=limit_per_host)


def node_session(cafile: str | None, *, limit: int = 100, limit_per_host: int = 0) -> aiohttp.ClientSession:
    """A session for talking to nodes: ``client_connector``'s TLS and limits, and no cookie jar.

    Nodes set no cookies, and a server named by a referral is untrusted (DESIGN §11). aiohttp's
    default jar keeps every cookie a server at a host name sets, for as long as the process runs,
    and sends them back with later requests: memory a hostile upstream could grow without bound.
    ``DummyCookieJar`` keeps none. Call it from a coroutine (a session belongs to the running loop)."""
    return aiohttp.ClientSession(
        connector=client_connector(cafile, limit=limit, limit_per_host=limit_per_host),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
