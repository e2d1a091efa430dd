"""Running one node of a topology in this process (``idres serve``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from nodes.authoritative import AuthoritativeConfig, create_app
from nodes.secrets import operator_secrets
from resolver.config import Topology
from resolver.errors import ConfigError

__all__ = ["db_path", "serve_node"]


def db_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.sqlite3"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows; the stock loop works, only slower
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve_node(topology: Topology, name: str, data_dir: Path) -> None:
    """Serve node ``name`` until SIGINT or SIGTERM, then close its database cleanly."""
    spec = topology.node(name)
    if spec.role == "recursive":
        raise ConfigError(f"node {name!r} is a recursive node, which this version cannot run yet")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    secret = operator_secrets(data_dir, [spec.mirror_of or name])[spec.mirror_of or name]
    app = create_app(AuthoritativeConfig(spec, topology, db_path(data_dir, name), secret))
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    # No access log: it halves aiohttp's throughput (aiohttp issue #2779) and the node logs errors.
    try:
        web.run_app(app, host=spec.host, port=spec.port, access_log=None, print=None, loop=loop, shutdown_timeout=5.0)
    except OSError as exc:
        raise ConfigError(f"node {name} cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}") from exc
