"""Fixtures that run real node processes: `idres up` on the default topology, and topologies on free ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodes.running.topology_file import DEFAULT_TOPOLOGY
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@dataclass
class Running:
    process: subprocess.Popen[str]
    data: Path
    topology: Path | None
    urls: dict[str, str]

    def secret(self, node: str) -> str:
        env = os.environ.get("IDRES_ADMIN_SECRET")
        if env:
            return env
        secrets: dict[str, str] = json.loads((self.data / "operator-secrets.json").read_text())
        return secrets[node]


def idres(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `idres` CLI exactly as a user would (the console script of this environment)."""
    return subprocess.run(
        [sys.executable, "-m", "nodes", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def copy_topology(dest: Path) -> Path:
    """The default topology with every node moved to a free port: a user's edited copy."""
    text = DEFAULT_TOPOLOGY.read_text()
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', lambda _: f'listen = "127.0.0.1:{free_port()}"', text)
    dest.write_text(text)
    return dest


def urls_of(topology: Path | None) -> dict[str, str]:
    raw = tomllib.loads((topology or DEFAULT_TOPOLOGY).read_text())
    return {name: "http://" + spec["listen"] for name, spec in raw["nodes"].items()}


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_up(data: Path, topology: Path | None = None, env: dict[str, str] | None = None) -> Running:
    cmd = [sys.executable, "-m", "nodes", "up", "--data", str(data)]
    if topology is not None:
        cmd += ["--topology", str(topology)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl-C" in line:
            return Running(proc, data, topology, urls_of(topology))
    proc.kill()
    raise AssertionError("idres up did not come up:\n" + "".join(lines))


def stop(running: Running) -> int:
    running.process.send_signal(signal.SIGINT)
    try:
        return running.process.wait(timeout=20)
    finally:
        if running.process.poll() is None:
            running.process.kill()


def node_pids(data: Path) -> list[int]:
    """PIDs of `idres serve` processes using ``data``: what must be gone after `idres up` stops."""
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


@pytest.fixture(scope="session")
def topology_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The README's first command: `idres up` with the default topology on its default ports."""
    running = start_up(tmp_path_factory.mktemp("idres-data"))
    yield running
    stop(running)
