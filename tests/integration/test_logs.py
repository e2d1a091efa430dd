"""What the nodes log, read as an operator reads it: under ``idres up`` each node's start line and one access
line per request in ``DATA/logs``; ``idres serve`` by hand on the terminal, at a level, rotating its files,
as workers; a node that cannot bind its port creating nothing; a crash report that shows why."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nodes.running.launcher import start_nodes, stop_nodes
from nodes.running.launcher import wait_healthy as launcher_wait_healthy
from nodes.running.seeding import DEMO_CAR
from nodes.running.topology_file import load_topology
from resolver.errors import ConfigError
from tests.processes import (
    STOP_WITHIN,
    Running,
    copy_topology,
    get_json,
    run_idres,
    spawn_idres,
    start_up,
    stop,
    urls_of,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.integration

FIELDS = {"time", "node", "client", "method", "path", "status", "responseCode", "durationMs", "cache", "upstreamHops"}
SECRET = "logs-test-operator-secret"


def access_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The default topology on free ports under ``idres up``."""
    work = tmp_path_factory.mktemp("logs")
    running = start_up(work / "data", copy_topology(work / "topology.toml"))
    yield running
    if running.process.poll() is None:
        stop(running)


def test_every_node_logs_its_start_role_prefix_address_and_data_file(up: Running) -> None:
    logs = up.data / "logs"
    for name, url in up.urls.items():
        text = (logs / f"{name}.log").read_text()
        [start] = [line for line in text.splitlines() if f" {name} serving: " in line]
        assert f" INFO idres: {name} serving: " in start and f"on {url}" in start, start
        if name != "recursive":
            assert f"data {up.data.resolve() / f'{name}.sqlite3'}" in start and "replication peers:" in start, start
    log = {name: (logs / f"{name}.log").read_text() for name in up.urls}
    assert "recursive node" in log["recursive"] and "root hints: " in log["recursive"]
    assert "enterprise node, primary (as the topology says) at epoch 0, prefix 88.118.8" in log["automaker"]
    assert "top node, mirror of chongqing-top (as the topology says)" in log["chengdu-top"]
    assert "prefix 88.118 (also hosts 88.118.9)" in log["auto-secondary"]


@pytest.mark.parametrize("node", ["recursive", "chongqing-top", "chengdu-top", "auto-secondary", "automaker"])
def test_a_request_to_each_kind_of_node_leaves_one_access_line_with_every_field(up: Running, node: str) -> None:
    path = f"/api/handles/{DEMO_CAR}?type=URL&probe={node}"
    status, body = get_json(up.urls[node] + path)
    log = up.data / "logs" / f"{node}.access.log"
    wait_until(lambda: any(line["path"] == path for line in access_lines(log)), f"{node}'s access line")
    [line] = [line for line in access_lines(log) if line["path"] == path]
    assert set(line) == FIELDS
    assert (line["node"], line["client"], line["method"]) == (node, "127.0.0.1", "GET")
    assert (line["status"], line["responseCode"]) == (status, body["responseCode"])
    assert line["time"].endswith("Z") and line["durationMs"] >= 0
    if node == "recursive":
        assert line["cache"] in ("miss", "hit") and isinstance(line["upstreamHops"], int)
    else:
        assert (line["cache"], line["upstreamHops"]) == (None, None)


def test_stopping_idres_up_logs_each_node_stopping(up: Running) -> None:
    """Runs last in this module: it stops the topology."""
    assert stop(up) == 0
    for name in up.urls:
        text = (up.data / "logs" / f"{name}.log").read_text()
        assert f"{name} stopping:" in text and f"{name} stopped" in text, f"{name}.log:\n{text[-2000:]}"


# -- `idres serve` by hand ------------------------------------------------------------------------------


def serve(tmp_path: Path, *options: str, node: str = "automaker", **popen: Any) -> tuple[subprocess.Popen[str], str]:
    """``idres serve --node NODE`` of a copy of the default topology, with ``options``, once healthy."""
    topology = tmp_path / "topology.toml"
    if not topology.exists():
        copy_topology(topology)
    args = ["--node", node, "--topology", str(topology), "--data", str(tmp_path / "data"), *options]
    process = spawn_idres("serve", *args, admin_secret=SECRET, **popen)
    url = urls_of(topology)[node]
    wait_healthy(url, process)
    return process, url


def stopped(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=STOP_WITHIN)
    assert process.returncode == 0, err
    return out, err


def test_at_a_terminal_the_log_goes_to_stderr_and_the_access_log_to_stdout(tmp_path: Path) -> None:
    process, url = serve(tmp_path)
    get_json(url + "/api/handles/88.118.8/NOT-THERE")
    out, err = stopped(process)
    [line] = [json.loads(text) for text in out.splitlines() if "NOT-THERE" in text]
    assert (line["status"], line["responseCode"], line["node"]) == (404, 100, "automaker")
    assert "automaker serving: enterprise node" in err and "automaker stopped: database" in err
    assert "NOT-THERE" not in err


def test_log_level_warning_hides_the_info_lines_and_no_access_log_hides_the_requests(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "automaker.log"
    args = ("--log-file", str(log), "--log-level", "warning", "--no-access-log")
    process, url = serve(tmp_path, *args)
    assert get_json(url + "/healthz")[0] == 200
    stopped(process)
    assert " INFO " not in log.read_text() and "serving:" not in log.read_text()
    assert access_lines(tmp_path / "logs" / "automaker.access.log") == []
    process, url = serve(tmp_path, "--log-file", str(log))  # the default level: INFO
    stopped(process)
    assert "automaker serving: " in log.read_text()


def test_a_real_nodes_logs_rotate_past_their_size(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "automaker.log"
    process, url = serve(tmp_path, "--log-file", str(log), "--log-max-bytes", "4000", "--log-backups", "2")
    for _ in range(120):  # ~150 bytes a line: 18 KB of access log
        get_json(url + "/healthz")
    stopped(process)
    rotated = sorted(p.name for p in log.parent.iterdir() if p.name.startswith("automaker.access.log"))
    assert rotated == ["automaker.access.log", "automaker.access.log.1", "automaker.access.log.2"]
    assert all((log.parent / name).stat().st_size < 4000 + 400 for name in rotated)
    assert access_lines(log.parent / "automaker.access.log")[-1]["path"] == "/healthz"


def test_a_serve_whose_port_is_taken_creates_nothing_and_names_the_address(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    port = int(urls_of(topology)["automaker"].rpartition(":")[2])
    data = tmp_path / "new-data"
    with socket.create_server(("127.0.0.1", port)):
        args = ["--node", "automaker", "--topology", str(topology), "--data", str(data)]
        done = run_idres("serve", *args, "--log-file", str(data / "logs" / "automaker.log"), admin_secret=SECRET)
    assert done.returncode == 1
    assert f"node automaker cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert not data.exists(), "no data directory, database, secret or log file"


def test_the_crash_report_of_idres_up_shows_why_a_node_stopped(tmp_path: Path) -> None:
    topology_path = copy_topology(tmp_path / "topology.toml")
    topology = load_topology(topology_path)
    only = replace(topology, nodes={"automaker": topology.node("automaker")})
    port = topology.node("automaker").port
    with socket.create_server(("127.0.0.1", port)):
        nodes = start_nodes(only, topology_path, tmp_path / "data")
        try:

            async def wait() -> None:
                async with aiohttp.ClientSession() as session:
                    await launcher_wait_healthy(session, nodes, timeout=20)

            with pytest.raises(ConfigError) as refused:
                asyncio.run(wait())
        finally:
            stop_nodes(nodes)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in str(refused.value)
    assert "automaker.stderr.log" in str(refused.value)


def test_the_workers_of_a_recursive_node_log_to_one_file_each_line_naming_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sockets = Path(tempfile.mkdtemp(prefix="idres-t-"))  # short: a socket path must fit in 108 bytes
    monkeypatch.setenv("TMPDIR", str(sockets))
    log = tmp_path / "logs" / "recursive.log"
    try:
        process, url = serve(tmp_path, "--workers", "2", "--log-file", str(log), node="recursive")
        wait_until(lambda: log.read_text().count(" serving: recursive node") == 2, "both workers' start lines")
        for probe in range(8):
            get_json(f"{url}/healthz?probe={probe}")
        stopped(process)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    text = log.read_text()
    assert " recursive INFO idres: starting 2 workers" in text
    for worker in (0, 1):
        serving = f"recursive serving: recursive node on {url} (worker {worker} of 2)"
        assert f" recursive[{worker}] INFO idres: {serving}" in text
        assert f" recursive[{worker}] INFO idres: recursive stopped" in text
    lines = access_lines(tmp_path / "logs" / "recursive.access.log")
    probes = sorted(line["path"] for line in lines if "probe" in line["path"])
    assert probes == [f"/healthz?probe={i}" for i in range(8)]
