"""HS_SITE values: building them for a node's sites and reading the servers a referral points at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resolver.values import DEFAULT_TTL, HandleValue

__all__ = ["SiteServer", "is_site_type", "is_site_value", "site_data", "site_servers", "site_value"]


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


def site_data(host: str, port: int, *, primary: bool, description: str, serial: int = 1) -> dict[str, object]:
    """HANDLE.NET's JSON form of an HS_SITE value for one node with one HTTP server."""
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
                "interfaces": [{"query": True, "admin": primary, "protocol": "HTTP", "port": port}],
            }
        ],
    }


def site_value(
    index: int, host: str, port: int, *, primary: bool, description: str, ttl: int = DEFAULT_TTL
) -> HandleValue:
    return HandleValue(index, "HS_SITE", "site", site_data(host, port, primary=primary, description=description), ttl)


def site_servers(values: Sequence[HandleValue]) -> list[SiteServer]:
    """The HTTP servers named by HS_SITE values, primary sites first (their order kept otherwise)."""
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
                    host = server["address"]
                    if ":" in host and not host.startswith("["):
                        host = f"[{host}]"  # IPv6 literal
                    found.append(SiteServer(f"{scheme}://{host}:{iface['port']}", primary, desc))
    return sorted(found, key=lambda s: not s.primary)
