"""Every typed ``web.AppKey`` the nodes use, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from resolver.client import HandleClient

if TYPE_CHECKING:
    from nodes.authoritative import AuthoritativeConfig
    from nodes.authority import Authority
    from nodes.metrics import NodeMetrics
    from nodes.recursive import RecursiveConfig
    from nodes.replication import Replication
    from resolver.driver import RecursiveResolver

__all__ = ["AUTHORITY", "CLIENT", "CONFIG", "METRICS", "RECURSIVE", "RECURSIVE_CONFIG", "REPLICATION"]

CONFIG: web.AppKey[AuthoritativeConfig] = web.AppKey("config")
AUTHORITY: web.AppKey[Authority] = web.AppKey("authority")
CLIENT: web.AppKey[HandleClient] = web.AppKey("client")
REPLICATION: web.AppKey[Replication] = web.AppKey("replication")
METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics")
RECURSIVE_CONFIG: web.AppKey[RecursiveConfig] = web.AppKey("recursive_config")
RECURSIVE: web.AppKey[RecursiveResolver] = web.AppKey("recursive")
