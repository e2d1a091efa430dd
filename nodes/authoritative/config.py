"""What an authoritative node is started with, and the application key that holds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from resolver.config import DEFAULT_LIMITS, Limits, NodeSpec, Topology

__all__ = ["CONFIG", "AuthoritativeConfig"]


@dataclass(frozen=True, slots=True)
class AuthoritativeConfig:
    spec: NodeSpec
    topology: Topology
    db_path: Path
    operator_secret: str
    limits: Limits = DEFAULT_LIMITS


CONFIG: web.AppKey[AuthoritativeConfig] = web.AppKey("config")
