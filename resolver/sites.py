"""HS_SITE values: building them for a node's sites and reading the servers a referral points at."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from resolver.values import DEFAULT_TTL, HandleValue

__all__ = [
    "MAX_SITE_SERVERS",
    "SiteServer",
    "is_site_type",
    "is_site_value",
    "normal_host",
    "site_data",
    "site_servers",
    "site_value",
]

MAX_SITE_SERVERS = 16
"""Servers kept from one referral. HANDLE.NET sites have a handful of servers and a prefix a site or
two (a primary and its mirrors); a referral naming hundreds is someone making the resolver track and
probe addresses of their choosing (DESIGN.md §11), so the rest are ignored, primary sites first kept."""

_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_IPV4_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")


@dataclass(frozen=True, slots=True)
class SiteServer:
    """One server of an HS_SITE value that speaks the HTTP interface."""

    url: str  # e.g. http://127.0.0.1:8200
    primary: bool  # whether its site is a primary site (writes and auth=true go there)
    description: str = ""


def is_site_type(value_type: str) -> bool:
    """Whether a value type names a site: HS_SITE, HS_SITE.6 (IPv6) or HS_SITE.PREFIX, in any case."""
    return value_type.upper().startswith("HS_SITE")


def is_site_value(v: HandleValue) -> bool:
    """Whether ``v`` is a site a referral can follow: a site type holding site data."""
    return v.format == "site" and is_site_type(v.type)


def site_data(
    host: str, port: int, *, primary: bool, description: str, serial: int = 1, protocol: str = "HTTP"
) -> dict[str, object]:
    """HANDLE.NET's JSON form of an HS_SITE value for one node with one server speaking ``protocol``
    (``HTTP`` or ``HTTPS``, the interface protocols HANDLE.NET names for its REST API)."""
    return {
        "version": 1,
        "protocolVersion": "2.10",
        "serialNumber": serial,
        "primarySite": primary,
        "multiPrimary": False,
        "attributes": [{"name": "desc", "value": description}],
        "servers": [
            {
                "serverId": 1,
                "address": host,
                "interfaces": [{"query": True, "admin": primary, "protocol": protocol, "port": port}],
            }
        ],
    }


def site_value(
    index: int,
    host: str,
    port: int,
    *,
    primary: bool,
    description: str,
    ttl: int = DEFAULT_TTL,
    protocol: str = "HTTP",
) -> HandleValue:
    data = site_data(host, port, primary=primary, description=description, protocol=protocol)
    return HandleValue(index, "HS_SITE", "site", data, ttl)


def _ipv4(host: str) -> str | None:
    """``host`` as a dotted quad if it is an IPv4 address in any spelling that resolvers accept
    (``127.1``, ``0x7f.0.0.1``, ``2130706433``: inet_aton's rules, as the WHATWG URL standard's IPv4
    parser), else None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(p) for p in parts):
        return None
    numbers = []
    for part in parts:
        if part.startswith("0x"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not part.isdigit() or "8" in part or "9" in part:
                return None
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


_MAX_ADDRESS = 300  # characters: a host name has at most 253, an IPv6 address in brackets 47


def normal_host(address: str) -> str | None:
    """The one spelling of a site server's address used in URLs, or None if it is no address: an
    IPv4 address as a dotted quad, IPv6 compressed in brackets, a host name in lower case without a
    trailing dot. So differently spelt copies of one server count once."""
    return None if len(address) > _MAX_ADDRESS else _normal_host(address)


# Memoised: each referral, and each use of a cached one, reads its sites' addresses again, a
# twentieth of a cache miss's CPU before. Pure and bounded (entries and their length), so safe
# whatever addresses hostile referrals name.
@functools.lru_cache(maxsize=4096)
def _normal_host(address: str) -> str | None:
    host = address.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    host = host.removesuffix(".")
    dotted = _ipv4(host)
    if dotted is not None:
        return dotted
    if _IPV4_PART.fullmatch(host.rpartition(".")[2]):
        return None  # numeric like an IPv4 address, but not one (127.0.0.256): resolvers refuse it too
    return host if _HOSTNAME.fullmatch(host) else None


def site_servers(values: Sequence[HandleValue]) -> list[SiteServer]:
    """The HTTP servers named by HS_SITE values, primary sites first (their order kept otherwise):
    each server once (by scheme, normalised address and port), at most ``MAX_SITE_SERVERS``."""
    found: list[SiteServer] = []
    for v in values:
        if not is_site_value(v):
            continue
        primary = bool(v.value.get("primarySite", True))
        desc = next((a["value"] for a in v.value.get("attributes", []) if a.get("name") == "desc"), "")
        for server in v.value.get("servers", []):
            for iface in server.get("interfaces", []):
                if iface.get("protocol") in ("HTTP", "HTTPS") and iface.get("query", True):
                    scheme = iface["protocol"].lower()
                    host = normal_host(str(server.get("address", "")))
                    port = iface.get("port")
                    if host is None or type(port) is not int or not 0 < port < 65536:
                        continue  # not an address a URL can name: nothing to ask
                    found.append(SiteServer(f"{scheme}://{host}:{port}", primary, desc))
    unique: dict[str, SiteServer] = {}
    for site in sorted(found, key=lambda s: not s.primary):
        unique.setdefault(site.url, site)
        if len(unique) == MAX_SITE_SERVERS:
            break
    return list(unique.values())
