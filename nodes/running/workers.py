"""A recursive node as several worker processes on one port (``workers = N``): start, restart, stop.

``idres serve`` is then the workers' supervisor and serves nothing itself. It checks that the port
is free, makes a private directory for the workers' sockets (``nodes.recursive.workers``), and
starts N ``idres serve ... --worker K`` processes, each binding the port with SO_REUSEPORT so the
kernel spreads connections over them. A worker that exits on its own is started again, at most
``MAX_RESTARTS`` times in ``RESTART_WINDOW`` (``RestartBudget``); past that the node stops with
status 1, for its service manager to act on. SIGTERM and SIGINT stop every worker (SIGKILL after
``STOP_WITHIN``). The workers are in their own process group, so a Ctrl-C at a terminal reaches
them once, through the supervisor; each watches the supervisor's process id and stops when it is
gone, even after a SIGKILL (``IDRES_LAUNCHER_PID``, as nodes started by ``idres up`` do).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from resolver.config import NodeSpec
from resolver.errors import ConfigError

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW", "STOP_WITHIN", "RestartBudget", "check_port_free", "run_workers"]

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
"""A worker started again more than 5 times in 60 s is failing at start (a bad certificate, a port
taken meanwhile), not crashing now and then: retrying for ever would hide it. systemd's default
start limit is the same idea (5 starts in 10 s)."""

STOP_WITHIN = 8.0
"""Seconds the workers get to stop after SIGTERM: aiohttp's 5 s for open requests (serve.py's
shutdown_timeout) and a margin, within the 10 s ``idres up`` gives a node before it kills it."""

POLL_SECONDS = 0.1  # how soon a dead worker is noticed (a wait on N children at once, without threads)

log = logging.getLogger("idres")


class RestartBudget:
    """Whether one more restart of a worker is allowed at ``now``: at most ``limit`` in ``window``."""

    def __init__(self, limit: int = MAX_RESTARTS, window: float = RESTART_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Count a restart at ``now`` if the budget has room; False (nothing counted) if it has none."""
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


def check_port_free(host: str, port: int) -> None:
    """ConfigError if anything listens on ``host:port``. The workers bind it with SO_REUSEPORT, which
    would let them share it silently with another process of this user that set it too (an old copy
    of the node), so the supervisor first binds it without."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no user
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _stop(workers: dict[int, subprocess.Popen[bytes]]) -> None:
    for process in workers.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN
    for index, process in workers.items():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d (pid %d) did not stop within %g s; killing it", index, process.pid, STOP_WITHIN)
            process.kill()
            process.wait()


def run_workers(
    spec: NodeSpec,
    count: int,
    command: Callable[[int, Path], list[str]],
    env: Mapping[str, str],
    launcher_pid: int | None = None,
) -> int:
    """Run ``count`` workers of recursive node ``spec`` until SIGTERM or SIGINT (then 0), until a
    worker exhausts its restarts (then 1), or until ``launcher_pid`` is no longer this process's
    parent (then 0). ``command(index, directory)`` is worker ``index``'s command line, ``env`` its
    environment."""
    check_port_free(spec.host, spec.port)
    stopping: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    directory = Path(tempfile.mkdtemp(prefix=f"idres-{spec.name}-"))  # 0700: only this user reaches the sockets
    workers: dict[int, subprocess.Popen[bytes]] = {}
    budgets = {index: RestartBudget() for index in range(count)}

    def start(index: int) -> None:
        workers[index] = process = subprocess.Popen(
            command(index, directory), env=dict(env), stdin=subprocess.DEVNULL, process_group=0
        )
        log.info("worker %d started (pid %d)", index, process.pid)

    status = 0
    try:
        log.info("starting %d workers on %s:%d (SO_REUSEPORT), each with its own cache", count, spec.host, spec.port)
        for index in range(count):
            start(index)
        while not stopping:
            if launcher_pid is not None and os.getppid() != launcher_pid:
                log.warning("launcher %d is gone; stopping", launcher_pid)
                break
            for index, process in list(workers.items()):
                code = process.poll()
                if code is None or stopping:
                    continue
                if not budgets[index].allow(time.monotonic()):
                    log.error(
                        "worker %d exited with %s, its %d restart(s) within %g s are used up; stopping the node",
                        index,
                        _status(code),
                        MAX_RESTARTS,
                        RESTART_WINDOW,
                    )
                    status = 1
                    break
                log.warning("worker %d (pid %d) exited with %s; starting it again", index, process.pid, _status(code))
                start(index)
            if status:
                break
            time.sleep(POLL_SECONDS)
        log.info("stopping %d workers", count)
    finally:
        _stop(workers)
        shutil.rmtree(directory, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
