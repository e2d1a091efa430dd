"""The one way tests start node processes and talk to them as a user would: the ``idres`` command, run
(``run_idres``) or left running (``spawn_idres``), ``idres serve`` for one node (``serve_node``), ``idres up``
for a whole topology (``start_up``/``stop``), and plain-HTTP requests with the standard library.

Fixtures built on these live in ``tests/integration/conftest.py``; in-process nodes are ``LocalNode`` in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE
from nodes.running.topology_file import DEFAULT_TOPOLOGY
from tests.conftest import free_port

__all__ = [
    "CLIENT_SECRET_ENV",
    "Running",
    "ServedNode",
    "copy_topology",
    "get_json",
    "health",
    "idres_env",
    "node_pids",
    "request",
    "run_idres",
    "serve_node",
    "spawn_idres",
    "start_up",
    "stop",
    "stop_node",
    "stored_values",
    "urls_of",
    "wait_healthy",
    "wait_until",
]

# `idres register` reads the client's secret from here instead of prompting (nodes/cli/main.py).
CLIENT_SECRET_ENV = "IDRES_SECRET"
# A node opens its database and binds its port in well under a second; 30 s is for a loaded CI machine.
START_WITHIN = 30.0
STOP_WITHIN = 20.0


def _idres_command(*args: str) -> list[str]:
    """The ``idres`` console script of this environment, as ``python -m nodes``."""
    return [sys.executable, "-m", "nodes", *args]


def idres_env(*, secret: str | None = None, admin_secret: str | None = None) -> dict[str, str]:
    """This process's environment for an ``idres`` command. ``secret`` is the client's secret
    (``IDRES_SECRET``; an inherited one is always dropped, so a test without it sees the prompt);
    ``admin_secret`` is the nodes' operator secret (``IDRES_ADMIN_SECRET``; inherited when not given)."""
    env = {k: v for k, v in os.environ.items() if k != CLIENT_SECRET_ENV}
    if secret is not None:
        env[CLIENT_SECRET_ENV] = secret
    if admin_secret is not None:
        env[ENV_SECRET] = admin_secret
    return env


def run_idres(
    *args: str, timeout: float = 30, secret: str | None = None, admin_secret: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``idres ARGS`` to completion exactly as a user would; its output is captured as text."""
    return subprocess.run(
        _idres_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=idres_env(secret=secret, admin_secret=admin_secret),
    )


def spawn_idres(
    *args: str, secret: str | None = None, admin_secret: str | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Start ``idres ARGS`` and leave it running (to be killed, or talked to on stdin); stdout and
    stderr are pipes of text unless ``popen`` says otherwise."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        _idres_command(*args), env=idres_env(secret=secret, admin_secret=admin_secret), text=True, **popen
    )


class ServedNode(subprocess.Popen[bytes]):
    """An ``idres serve`` process and the file its output goes to (shown when it dies too early)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            super().__init__(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def last_words(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def serve_node(topology: Path, data: Path, node: str = "automaker", *, admin_secret: str | None = None) -> ServedNode:
    """``idres serve --node NODE`` of ``topology`` with its database in ``data``; its output goes to
    ``DATA.NODE.log`` beside the data directory. Wait for it with ``wait_healthy``."""
    args = _idres_command("serve", "--node", node, "--topology", str(topology), "--data", str(data))
    return ServedNode(args, data.with_name(f"{data.name}.{node}.log"), idres_env(admin_secret=admin_secret))


def stop_node(process: subprocess.Popen[Any]) -> int | None:
    """Stop a node as a service manager would (SIGTERM), SIGKILL it if it hangs; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# -- topologies on disk ---------------------------------------------------------------------------------


def copy_topology(dest: Path) -> Path:
    """The default topology with every node moved to a free port: a user's edited copy."""
    text = DEFAULT_TOPOLOGY.read_text()
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"', text)
    dest.write_text(text)
    return dest


def urls_of(topology: Path | None, scheme: str = "http") -> dict[str, str]:
    """Each node's base URL, by name, as the topology file (the default one for None) says."""
    raw = tomllib.loads((topology or DEFAULT_TOPOLOGY).read_text())
    return {name: f"{scheme}://" + spec["listen"] for name, spec in raw["nodes"].items()}


# -- plain HTTP ---------------------------------------------------------------------------------------


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request: (status, JSON body), for error statuses too; HTTPS verified with ``context``."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    return request("GET", url)


def health(url: str) -> dict[str, Any] | None:
    """The node's ``/healthz`` body, or None while nothing (healthy) answers there."""
    try:
        status, body = get_json(url + "/healthz")
    except (OSError, ValueError):
        return None
    return body if status == 200 else None


def stored_values(url: str, handle: str) -> list[dict[str, Any]]:
    """The values the node at ``url`` holds for ``handle`` (which must exist)."""
    status, body = get_json(f"{url}/api/handles/{handle}")
    assert status == 200, f"{handle}: {status} {body}"
    values: list[dict[str, Any]] = body["values"]
    return values


def wait_until(check: Callable[[], object], what: str, within: float = 20) -> None:
    """Poll ``check`` (connection errors count as "not yet") until it is true; fail saying ``what``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


def wait_healthy(url: str, process: subprocess.Popen[Any] | None = None, within: float = START_WITHIN) -> None:
    """Wait until the node at ``url`` answers ``/healthz``; fail at once if its ``process`` exits."""

    def healthy() -> bool:
        if process is not None and process.poll() is not None:
            said = process.last_words() if isinstance(process, ServedNode) else ""
            raise AssertionError(f"the node for {url} exited with {process.returncode} before it was healthy\n{said}")
        return health(url) is not None

    wait_until(healthy, f"{url} to become healthy", within)


# -- `idres up` -----------------------------------------------------------------------------------------


@dataclass
class Running:
    """An ``idres up`` launcher and what it was started with."""

    process: subprocess.Popen[str]
    data: Path
    topology: Path | None
    urls: dict[str, str]

    def secret(self, node: str) -> str:
        """The operator secret of ``node``: the environment's, or the one generated into the data directory."""
        env = os.environ.get(ENV_SECRET)
        if env:
            return env
        secrets: dict[str, str] = json.loads((self.data / SECRETS_FILE).read_text())
        return secrets[node]


def start_up(data: Path, topology: Path | None = None, *, tls: bool = False) -> Running:
    """``idres up --data DATA [--topology TOPOLOGY] [--tls]``, returned once it says the nodes are up."""
    args = ["up", "--data", str(data)] + (["--topology", str(topology)] if topology is not None else [])
    args += ["--tls"] if tls else []
    proc = spawn_idres(*args, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl-C" in line:
            return Running(proc, data, topology, urls_of(topology, "https" if tls else "http"))
    proc.kill()
    raise AssertionError("idres up did not come up:\n" + "".join(lines))


def stop(running: Running) -> int:
    """Ctrl-C the launcher, as a user at the terminal would; its exit code."""
    running.process.send_signal(signal.SIGINT)
    try:
        return running.process.wait(timeout=STOP_WITHIN)
    finally:
        if running.process.poll() is None:
            running.process.kill()


def node_pids(data: Path) -> list[int]:
    """PIDs of ``idres serve`` processes using ``data``: what must be gone after ``idres up`` stops."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and str(data).encode() in cmdline:
                found.append(int(entry.name))
    return found
