"""A recursive node run as two worker processes on one port (``workers = 2``), as an operator runs it:
under ``idres up`` with the topology's ``workers``, and alone with ``idres serve --workers``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.running.seeding import DEMO_CAR, DEMO_PACK
from tests.processes import (
    STOP_WITHIN,
    Running,
    copy_topology,
    get_json,
    health,
    node_pids,
    run_idres,
    spawn_idres,
    start_up,
    stop,
    urls_of,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.integration


def with_workers(topology: Path, workers: int) -> Path:
    """``topology`` (a copy of the default one) with ``workers = N`` on its recursive node."""
    text = topology.read_text()
    header = '[nodes.recursive]\nrole = "recursive"\n'
    edited = text.replace(header, f"{header}workers = {workers}\n")
    assert edited != text, "the default topology's recursive node moved"
    topology.write_text(edited)
    return topology


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def worker_pids(url: str) -> list[int]:
    body = health(url)
    assert body is not None and body["alive"] == body["workers"], body
    return [w["pid"] for w in body["perWorker"]]


def answered(url: str) -> float:
    """The node's ``idres_resolutions_total{outcome="answer"}``, from whichever worker answers."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r'^idres_resolutions_total\{outcome="answer"\} (\S+)$', text, re.MULTILINE)
    assert found is not None and re.search(r"^idres_workers_answering 2\.0$", text, re.MULTILINE), text
    return float(found.group(1))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    where = tmp_path_factory.mktemp("workers")
    running = start_up(where / "data", with_workers(copy_topology(where / "topology.toml"), 2))
    wait_until(lambda: (h := health(running.urls["recursive"])) and h["alive"] == 2, "both workers to answer")
    yield running
    stop(running)


def test_requests_are_answered_by_both_workers_and_counted_by_either(up: Running) -> None:
    url = up.urls["recursive"]
    before = answered(url)
    # urllib opens a connection per request: the kernel spreads them over the two workers.
    for i in range(40):
        status, body = get_json(f"{url}/api/handles/{DEMO_CAR if i % 2 else DEMO_PACK}")
        assert status == 200 and body["responseCode"] == 1
    by = {get_json(url + "/healthz")[1]["answeredBy"] for _ in range(30)}
    assert by == {0, 1}, "both workers serve the port"
    for _ in range(6):  # whichever worker answers the scrape counts what both answered
        assert answered(url) == before + 40
    body = health(url)
    assert body is not None and (body["workers"], body["alive"], body["status"]) == (2, 2, "ok")
    assert body["cacheEntries"] == sum(w["cacheEntries"] for w in body["perWorker"]) >= 2


def test_a_killed_worker_is_started_again(up: Running) -> None:
    url = up.urls["recursive"]
    killed = worker_pids(url)[1]
    os.kill(killed, signal.SIGKILL)

    def replaced() -> bool:
        body = health(url)
        return body is not None and body["alive"] == 2 and body["perWorker"][1]["pid"] != killed

    wait_until(replaced, "worker 1 to be started again")
    assert get_json(f"{url}/api/handles/{DEMO_CAR}")[0] == 200
    log = (up.data / "logs" / "recursive.log").read_text()
    assert f"worker 1 (pid {killed}) exited with signal SIGKILL; starting it again" in log


def test_stopping_idres_up_stops_every_worker(up: Running) -> None:
    workers = worker_pids(up.urls["recursive"])
    assert stop(up) == 0
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to exit", within=STOP_WITHIN)
    assert node_pids(up.data) == []


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``idres serve --node recursive --workers 2`` alone (its topology says 1): no tree behind it.
    Its sockets' directory goes under a TMPDIR of its own, removed afterwards even after a SIGKILL."""
    sockets = Path(tempfile.mkdtemp(prefix="idres-t-"))  # short: a socket path must fit in 108 bytes
    monkeypatch.setenv("TMPDIR", str(sockets))
    topology = copy_topology(tmp_path / "topology.toml")
    url = urls_of(topology)["recursive"]
    with (tmp_path / "serve.log").open("w") as log:
        args = ["--node", "recursive", "--topology", str(topology), "--data", str(tmp_path / "data")]
        process = spawn_idres("serve", *args, "--workers", "2", stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, process)
        wait_until(lambda: (h := health(url)) and h["alive"] == 2, "both workers to answer")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(sockets, ignore_errors=True)


def test_sigterm_stops_the_workers_and_the_node_exits_0(served: tuple[subprocess.Popen[str], str]) -> None:
    process, url = served
    workers = worker_pids(url)
    assert len(workers) == 2 and process.pid not in workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_WITHIN) == 0
    assert not any(alive(pid) for pid in workers), "the node waits for its workers"
    assert health(url) is None


def test_the_workers_stop_when_their_parent_is_killed(served: tuple[subprocess.Popen[str], str]) -> None:
    process, url = served
    workers = worker_pids(url)
    process.kill()
    process.wait()
    wait_until(lambda: not any(alive(pid) for pid in workers), "the orphaned workers to stop", within=10)
    assert health(url) is None


def test_a_taken_port_or_a_node_that_is_not_recursive_is_refused(tmp_path: Path) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    common = ["--topology", str(topology), "--data", str(tmp_path / "data")]
    port = int(urls_of(topology)["recursive"].rpartition(":")[2])
    with socket.create_server(("127.0.0.1", port)):
        done = run_idres("serve", "--node", "recursive", *common, "--workers", "2")
    assert done.returncode == 1
    assert f"node recursive cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    done = run_idres("serve", "--node", "automaker", *common, "--workers", "2")
    assert done.returncode == 1
    assert "node automaker is not a recursive node (role enterprise); --workers is for recursive nodes" in done.stderr
