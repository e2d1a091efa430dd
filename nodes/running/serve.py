"""Running one node of a topology in this process (``idres serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from nodes.authoritative.app import AuthoritativeConfig, create_app
from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.running.operator_secrets import operator_secrets
from nodes.shared.loop import new_event_loop
from resolver.config import Topology
from resolver.errors import ConfigError, HandleError
from resolver.tls import server_context

__all__ = ["LAUNCHER_PID_ENV", "db_path", "serve_node"]

# Set by `idres up` for the nodes it starts: a node whose launcher died (even by SIGKILL) stops itself
# instead of lingering with nobody to stop it.
LAUNCHER_PID_ENV = "IDRES_LAUNCHER_PID"


def db_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.sqlite3"


def _stop_when_orphaned(launcher_pid: int) -> Callable[[web.Application], AsyncIterator[None]]:
    async def watch(app: web.Application) -> AsyncIterator[None]:
        async def poll() -> None:
            while os.getppid() == launcher_pid:
                await asyncio.sleep(1.0)
            logging.getLogger("idres").warning("launcher %d is gone; stopping", launcher_pid)
            os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as Ctrl-C

        task = asyncio.create_task(poll())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return watch


def serve_node(topology: Topology, name: str, data_dir: Path) -> None:
    """Serve node ``name`` until SIGINT or SIGTERM, then close its database cleanly."""
    spec = topology.node(name)
    ssl_context = server_context(spec)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    if spec.role == "recursive":
        app = create_recursive_app(RecursiveConfig(spec, topology, cache=spec.cache, upstream=spec.upstream))
    else:
        secret = operator_secrets(data_dir, [spec.mirror_of or name])[spec.mirror_of or name]
        app = create_app(AuthoritativeConfig(spec, topology, db_path(data_dir, name), secret))
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit():
        app.cleanup_ctx.append(_stop_when_orphaned(int(launcher)))
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    # No access log: it halves aiohttp's throughput (aiohttp issue #2779) and the node logs errors.
    try:
        web.run_app(
            app,
            host=spec.host,
            port=spec.port,
            ssl_context=ssl_context,
            access_log=None,
            print=None,
            loop=loop,
            shutdown_timeout=5.0,
        )
    except OSError as exc:
        raise ConfigError(f"node {name} cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}") from exc
    except HandleError as exc:
        # Raised while the node starts, before it serves anything: its database refused (damaged, or
        # emptied after use: resolver.storage.integrity). The node stops with the reason, no traceback.
        raise ConfigError(f"node {name} cannot start: {exc.message}") from exc
