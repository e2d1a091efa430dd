"""Before the first batch: the server's URL has a scheme and a host, and something answers there.

Without these checks a mistyped ``--server`` cost half a minute of retries (a refused port is retried
like a node that crashed mid-load) or an aiohttp message about an invalid URL (issue 13). A run
that has not sent a batch has nothing to lose by stopping at once, so both are checked up front.
"""

from __future__ import annotations

import urllib.parse

import aiohttp

from resolver.client import describe_failure
from resolver.errors import FatalError

__all__ = ["PREFLIGHT_TIMEOUT", "check_reachable", "url_problem"]

# A node answers /healthz in milliseconds, and in well under a second while it commits batches of
# another client; 10 s leaves room for a TLS handshake over a slow link and still fails in seconds.
PREFLIGHT_TIMEOUT = 10.0


def url_problem(server: str) -> str | None:
    """Why ``server`` is no base URL to send requests to (for people, naming the fix); None when it is one."""
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https"):
        if "://" in server:
            return f"{server} has the scheme {parts.scheme!r}: use http:// or https://"
        return f"{server} has no scheme: did you mean http://{server} (or https://{server} for a node serving HTTPS)?"
    if not parts.hostname:
        return f"{server} names no host, e.g. {parts.scheme}://127.0.0.1:8300"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return f"{server}: the port must be a number from 1 to 65535"
    if parts.query or parts.fragment:
        return f"{server}: give the node's base URL, without a query or fragment"
    return None


async def check_reachable(session: aiohttp.ClientSession, server: str, timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """One GET of ``server``'s ``/healthz``: FatalError naming the server when nothing answers there
    (a refused port, a name that does not resolve, a certificate that does not verify, no answer
    within ``timeout``). Any HTTP answer will do: whether the node takes batches, and these
    credentials, the batch endpoint says."""
    url = server.rstrip("/") + "/healthz"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False):
            pass
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        _, reason = describe_failure(exc)
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise FatalError(
            f"cannot reach {server}: {reason}. Is the node running, and are the address and port right?"
        ) from exc
