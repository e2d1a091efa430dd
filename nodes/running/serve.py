"""Running one node of a topology in this process (``idres serve``), or its workers (``workers = N``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from nodes.authoritative.app import AuthoritativeConfig, create_app
from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.recursive.workers import WorkerSlot
from nodes.running.operator_secrets import operator_secrets
from nodes.running.workers import run_workers
from nodes.shared.loop import new_event_loop
from resolver.config import Topology
from resolver.errors import ConfigError, HandleError
from resolver.tls import server_context

__all__ = ["LAUNCHER_PID_ENV", "db_path", "serve", "serve_node", "serve_worker"]

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


def serve(topology: Topology, name: str, data_dir: Path, workers: int | None, cli_args: Sequence[str]) -> int:
    """Serve node ``name``: in this process, or as ``workers`` processes (None: the topology's
    ``workers``) when it is a recursive node with more than one; the exit status. ``cli_args`` are
    the ``idres serve`` options (topology, data, TLS) each worker is started with too."""
    spec = topology.node(name)
    if workers is not None and spec.role != "recursive":
        raise ConfigError(f"node {name} is not a recursive node (role {spec.role}); --workers is for recursive nodes")
    count = spec.workers if workers is None else workers
    if count == 1:
        serve_node(topology, name, data_dir)
        return 0
    server_context(spec)  # a certificate that cannot be loaded stops the node here, not in each worker
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")

    def command(index: int, directory: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "nodes", "serve", "--node", name, *cli_args),
            *("--workers", str(count), "--worker", str(index), "--worker-dir", str(directory)),
        ]

    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    # The workers watch this process as nodes watch `idres up`: they stop when it is gone.
    env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
    try:
        return run_workers(spec, count, command, env, int(launcher) if launcher.isdigit() else None)
    except ConfigError as exc:
        raise ConfigError(f"node {name} {exc}") from exc


def serve_worker(topology: Topology, name: str, data_dir: Path, index: int, count: int, directory: Path) -> None:
    """Serve as worker ``index`` of ``count`` of recursive node ``name`` (``idres serve --worker``,
    started by ``run_workers``), its siblings' sockets in ``directory``."""
    serve_node(topology, name, data_dir, WorkerSlot(index, count, directory))


def serve_node(topology: Topology, name: str, data_dir: Path, worker: WorkerSlot | None = None) -> None:
    """Serve node ``name`` until SIGINT or SIGTERM, then close its database cleanly; as one of the
    recursive node's ``worker`` processes when given (its port bound with SO_REUSEPORT)."""
    spec = topology.node(name)
    ssl_context = server_context(spec)
    label = name if worker is None else f"{name}[{worker.index}]"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(levelname)s %(message)s")
    if spec.role == "recursive":
        config = RecursiveConfig(spec, topology, cache=spec.cache, upstream=spec.upstream)
        app = create_recursive_app(config, worker)
    elif worker is not None:
        raise ConfigError(f"node {name} is not a recursive node (role {spec.role}); only those run workers")
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
            reuse_port=True if worker is not None else None,
        )
    except OSError as exc:
        raise ConfigError(f"node {name} cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}") from exc
    except HandleError as exc:
        # Raised while the node starts, before it serves anything: its database refused (damaged, or
        # emptied after use: resolver.storage.integrity). The node stops with the reason, no traceback.
        raise ConfigError(f"node {name} cannot start: {exc.message}") from exc
