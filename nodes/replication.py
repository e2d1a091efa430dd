"""Pull replication between a primary and its mirrors (placeholder until replication lands)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["setup_replication"]


def setup_replication(app: web.Application) -> None:
    """Add the replication endpoints and, on a mirror, the task that pulls from the primary."""
