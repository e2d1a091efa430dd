"""Who may use the replication endpoints: the node's operator, and for the digest anyone the topology allows."""

from __future__ import annotations

from aiohttp import web

from nodes.authoritative.authority import AUTHORITY, Authority
from resolver.errors import AuthenticationNeeded, PermissionDenied

__all__ = ["may_read_digest", "operator_only"]


async def operator_only(request: web.Request) -> Authority:
    """The node's authority if ``request`` carries its operator's credentials; 401 or 403 otherwise.

    The change log and the snapshot carry non-public values (hashed HS_SECKEY), promote and fence
    change the node's role: only ``300:0.NA/<prefix>`` may."""
    authority = request.app[AUTHORITY]
    identity = await authority.identify(request)
    if identity is None:
        raise AuthenticationNeeded(f"replication needs the operator's credentials ({authority.operator})")
    operator = authority.operator
    if (identity.index, identity.key) != (operator.index, operator.key):
        raise PermissionDenied(f"{identity} may not replicate: only the node's operator {operator} may")
    return authority


async def may_read_digest(request: web.Request) -> bool:
    """Whether ``request`` may see the record count and digest: anyone with the topology's
    ``public_digest = true``, else the operator only. A digest tells an outsider how many identifiers
    the node holds and when that changes, which an enterprise may not want known. Credentials that
    are wrong are still refused (401), as on every other endpoint."""
    authority = request.app[AUTHORITY]
    if authority.spec.public_digest:
        return True
    identity = await authority.identify(request)
    operator = authority.operator
    return identity is not None and (identity.index, identity.key) == (operator.index, operator.key)
