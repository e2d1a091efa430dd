"""What a recursive node is started with, and the application keys its modules share."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from resolver.cache import DEFAULT_CACHE_CONFIG, CacheConfig
from resolver.client import HandleClient
from resolver.config import DEFAULT_LIMITS, Limits, NodeSpec, Topology
from resolver.driver import RecursiveResolver
from resolver.upstream import DEFAULT_UPSTREAM_CONFIG, UpstreamConfig

__all__ = ["CLIENT", "RECURSIVE", "RECURSIVE_CONFIG", "RecursiveConfig"]


@dataclass(frozen=True, slots=True)
class RecursiveConfig:
    spec: NodeSpec
    topology: Topology
    cache: CacheConfig = DEFAULT_CACHE_CONFIG
    upstream: UpstreamConfig = DEFAULT_UPSTREAM_CONFIG
    limits: Limits = DEFAULT_LIMITS


RECURSIVE_CONFIG: web.AppKey[RecursiveConfig] = web.AppKey("recursive_config")
RECURSIVE: web.AppKey[RecursiveResolver] = web.AppKey("recursive")
"""The driver: set by the application's cleanup context, with the cache the factory made."""
CLIENT: web.AppKey[HandleClient] = web.AppKey("client")
"""The HTTP client the driver's transport and the forwarded requests share."""
