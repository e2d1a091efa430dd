"""Running one node of a topology in this process (``idres serve``), or its workers (``workers = N``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from aiohttp import web

from nodes.authoritative.app import AuthoritativeConfig, create_app
from nodes.recursive.app import RecursiveConfig, create_recursive_app
from nodes.recursive.workers import WorkerSlot
from nodes.running.operator_secrets import operator_secrets
from nodes.running.workers import check_port_free, run_workers
from nodes.shared.access_log import ACCESS_LOGGER, access_logger_class
from nodes.shared.logs import LogSettings, configure, logs_to_file
from nodes.shared.loop import new_event_loop
from resolver.config import NodeSpec, Topology
from resolver.errors import ConfigError, HandleError
from resolver.tls import server_context

__all__ = ["LAUNCHER_PID_ENV", "db_path", "listen", "serve", "serve_node", "serve_worker"]

# Set by `idres up` for the nodes it starts: a node whose launcher died (even by SIGKILL) stops itself
# instead of lingering with nobody to stop it.
LAUNCHER_PID_ENV = "IDRES_LAUNCHER_PID"
BACKLOG = 128  # aiohttp's default: connections the kernel queues while the node is busy
SHUTDOWN_TIMEOUT = 5.0  # seconds open requests get to finish after SIGTERM or Ctrl-C

log = logging.getLogger("idres")


def db_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"{name}.sqlite3"


def listen(spec: NodeSpec, *, reuse_port: bool = False) -> list[socket.socket]:
    """Sockets bound to node ``spec``'s address (each address its host name has, as aiohttp binds),
    listening already unless they are a worker's (``reuse_port``: a worker starting would queue
    connections it cannot answer yet). Bound before the node creates anything (its data directory,
    database or operator secret), so a node that cannot serve leaves nothing behind (issue 13): a
    ConfigError naming the address if one cannot be bound."""
    where = f"node {spec.name} cannot listen on {spec.host}:{spec.port}"
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: TIME_WAIT is no user
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio: IPv4 has its own
            sock.bind(address)
            if not reuse_port:
                sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"{where}: {exc.strerror or exc}") from exc
    return sockets


@contextlib.contextmanager
def _failures_logged() -> Iterator[None]:
    """A refusal to start is logged too when the log goes to a file (on a terminal the CLI says it)."""
    try:
        yield
    except ConfigError as exc:
        if logs_to_file():
            log.error("%s", exc)
        raise


def _stop_when_orphaned(launcher_pid: int) -> Callable[[web.Application], AsyncIterator[None]]:
    async def watch(app: web.Application) -> AsyncIterator[None]:
        async def poll() -> None:
            while os.getppid() == launcher_pid:
                await asyncio.sleep(1.0)
            log.warning("launcher %d is gone; stopping", launcher_pid)
            os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as Ctrl-C

        task = asyncio.create_task(poll())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return watch


def _stopping(label: str) -> Callable[[web.Application], Awaitable[None]]:
    async def announce(app: web.Application) -> None:
        log.info("%s stopping: open requests get %g s to finish", label, SHUTDOWN_TIMEOUT)

    return announce


def _log_args(logs: LogSettings) -> list[str]:
    """The ``idres serve`` options that give a worker the supervisor's logging."""
    args = ["--log-level", logs.level, "--log-max-bytes", str(logs.max_bytes), "--log-backups", str(logs.backups)]
    if logs.file is not None:
        args += ["--log-file", str(logs.file.resolve())]
    if logs.access_log is not None:
        args.append("--access-log" if logs.access_log else "--no-access-log")
    return args


def serve(
    topology: Topology,
    name: str,
    data_dir: Path,
    workers: int | None,
    cli_args: Sequence[str],
    logs: LogSettings | None = None,
) -> int:
    """Serve node ``name``: in this process, or as ``workers`` processes (None: the topology's
    ``workers``) when it is a recursive node with more than one; the exit status. ``cli_args`` are
    the ``idres serve`` options (topology, data, TLS) each worker is started with too, ``logs`` where
    and how it logs (each worker the same, its lines naming it)."""
    logs = logs or LogSettings()
    spec = topology.node(name)
    if workers is not None and spec.role != "recursive":
        raise ConfigError(f"node {name} is not a recursive node (role {spec.role}); --workers is for recursive nodes")
    count = spec.workers if workers is None else workers
    if count == 1:
        serve_node(topology, name, data_dir, logs=logs)
        return 0
    server_context(spec)  # a certificate that cannot be loaded stops the node here, not in each worker

    def command(index: int, directory: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "nodes", "serve", "--node", name, *cli_args, *_log_args(logs)),
            *("--workers", str(count), "--worker", str(index), "--worker-dir", str(directory)),
        ]

    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    # The workers watch this process as nodes watch `idres up`: they stop when it is gone.
    env = {**os.environ, LAUNCHER_PID_ENV: str(os.getpid())}
    try:
        check_port_free(spec.host, spec.port)  # before the log file is opened: a refused start creates nothing
    except ConfigError as exc:
        raise ConfigError(f"node {name} {exc}") from exc
    configure(name, logs)
    with _failures_logged():
        try:
            return run_workers(spec, count, command, env, int(launcher) if launcher.isdigit() else None)
        except ConfigError as exc:
            raise ConfigError(f"node {name} {exc}") from exc


def serve_worker(
    topology: Topology,
    name: str,
    data_dir: Path,
    index: int,
    count: int,
    directory: Path,
    logs: LogSettings | None = None,
) -> None:
    """Serve as worker ``index`` of ``count`` of recursive node ``name`` (``idres serve --worker``,
    started by ``run_workers``), its siblings' sockets in ``directory``."""
    serve_node(topology, name, data_dir, WorkerSlot(index, count, directory), logs=logs)


def serve_node(
    topology: Topology, name: str, data_dir: Path, worker: WorkerSlot | None = None, *, logs: LogSettings | None = None
) -> None:
    """Serve node ``name`` until SIGINT or SIGTERM, then close its database cleanly; as one of the
    recursive node's ``worker`` processes when given (its port bound with SO_REUSEPORT). Its port is
    bound first: a node that cannot listen creates nothing. ``logs``: where and how it logs."""
    logs = logs or LogSettings()
    spec = topology.node(name)
    if worker is not None and spec.role != "recursive":
        raise ConfigError(f"node {name} is not a recursive node (role {spec.role}); only those run workers")
    ssl_context = server_context(spec)
    sockets = listen(spec, reuse_port=worker is not None)
    try:
        label = name if worker is None else f"{name}[{worker.index}]"
        configure(label, logs)
        with _failures_logged():
            _run(topology, spec, data_dir, worker, sockets, ssl_context, label, logs)
    finally:
        for sock in sockets:
            sock.close()


def _run(
    topology: Topology,
    spec: NodeSpec,
    data_dir: Path,
    worker: WorkerSlot | None,
    sockets: list[socket.socket],
    ssl_context: ssl.SSLContext | None,
    label: str,
    logs: LogSettings,
) -> None:
    name = spec.name
    if spec.role == "recursive":
        config = RecursiveConfig(spec, topology, cache=spec.cache, upstream=spec.upstream)
        app = create_recursive_app(config, worker)
    else:
        secret = operator_secrets(data_dir, [spec.mirror_of or name])[spec.mirror_of or name]
        app = create_app(AuthoritativeConfig(spec, topology, db_path(data_dir, name), secret))
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit():
        app.cleanup_ctx.append(_stop_when_orphaned(int(launcher)))
    app.on_shutdown.append(_stopping(label))
    # The access log through aiohttp's own hook, no middleware (nodes.shared.access_log); the
    # topology's access_log unless --access-log / --no-access-log said otherwise.
    access = spec.access_log if logs.access_log is None else logs.access_log
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        web.run_app(
            app,
            sock=sockets,
            ssl_context=ssl_context,
            access_log=logging.getLogger(ACCESS_LOGGER) if access else None,
            access_log_class=access_logger_class(name, recursive=spec.role == "recursive"),
            print=None,
            loop=loop,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
    except OSError as exc:
        raise ConfigError(f"node {name} cannot start: {exc.strerror or exc}") from exc
    except HandleError as exc:
        # Raised while the node starts, before it serves anything: its database refused (damaged, or
        # emptied after use: resolver.storage.integrity). The node stops with the reason, no traceback.
        raise ConfigError(f"node {name} cannot start: {exc.message}") from exc
