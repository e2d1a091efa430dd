"""``idres status`` against the default topology brought up by ``idres up`` on free ports, as an operator
runs it: every node up and the mirror agreeing with its primary (exit 0), at 80 columns with every URL
whole, as JSON, and after ``kill -9`` of the automaker's node, that node down (exit 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Running, copy_topology, health, idres_env, start_up, stop, wait_until

pytestmark = pytest.mark.integration

WIDTH = 80


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The default topology on free ports, seeded with the demo data."""
    base = tmp_path_factory.mktemp("status")
    running = start_up(base / "data", copy_topology(base / "topology.toml"))
    yield running
    stop(running)


def idres_status(tree: Running, *args: str) -> subprocess.CompletedProcess[str]:
    """``idres status`` of the tree as a user types it, at 80 columns."""
    command = [sys.executable, "-m", "nodes", "status", "--topology", str(tree.topology), "--data", str(tree.data)]
    env = idres_env() | {"COLUMNS": str(WIDTH)}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30, env=env)


def all_well(tree: Running) -> subprocess.CompletedProcess[str]:
    """The first ``idres status`` that exits 0 (the mirror may still be applying the demo data)."""
    found: list[subprocess.CompletedProcess[str]] = []

    def ok() -> bool:
        found.append(idres_status(tree))
        return found[-1].returncode == 0

    try:
        wait_until(ok, "idres status to exit 0", within=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{found[-1].stdout}{found[-1].stderr}") from None
    return found[-1]


def serve_pid(data: Path, node: str) -> int:
    """The process of ``idres serve --node NODE`` on ``data``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in words and node.encode() in words and any(str(data).encode() in w for w in words):
                return int(entry.name)
    raise AssertionError(f"no idres serve process for {node}")


def test_a_healthy_tree_is_all_well_at_80_columns(tree: Running) -> None:
    out = all_well(tree)
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, "\n".join(line for line in lines if len(line) > WIDTH)
    assert lines[0] == "7 nodes, 7 up"
    for name, url in tree.urls.items():
        assert any(url in line.split() for line in lines), f"{name}'s URL {url} is shown whole"
        assert any(name in line.split() for line in lines), f"{name} is named"
    said = " ".join(out.stdout.split())  # the prose is wrapped between words
    assert "chengdu-top follows chongqing-top: following" in said
    assert "digest agrees" in said
    assert "upstreams marked down: none" in said
    assert lines[-1] == "All is well."


def test_the_json_report_says_every_node_is_up_and_the_mirror_agrees(tree: Running) -> None:
    all_well(tree)
    out = idres_status(tree, "--json")
    body = json.loads(out.stdout)
    assert out.returncode == 0 and body["ok"] is True and body["attention"] == []
    assert {node["name"]: node["up"] for node in body["nodes"]} == dict.fromkeys(tree.urls, True)
    nodes = {node["name"]: node for node in body["nodes"]}
    assert nodes["chongqing-top"]["role"] == "primary" and nodes["chengdu-top"]["role"] == "mirror"
    assert nodes["automaker"]["records"] > 0 and nodes["automaker"]["prefix"] == "88.118.8"
    assert nodes["recursive"]["upstreamsDown"] == []
    [link] = body["mirrors"]
    assert (link["mirror"], link["primary"], link["state"], link["digest"]) == (
        "chengdu-top",
        "chongqing-top",
        "following",
        "agrees",
    )
    assert link["lagSeq"] == 0 and link["lagSeconds"] == 0.0


def test_without_the_operator_secret_the_digest_goes_unchecked_but_nothing_is_made(
    tree: Running, tmp_path: Path
) -> None:
    if os.environ.get("IDRES_ADMIN_SECRET"):
        pytest.skip("the secret comes from the environment here")
    elsewhere = tmp_path / "no-such-data"
    command = [sys.executable, "-m", "nodes", "status", "--topology", str(tree.topology), "--data", str(elsewhere)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, env=idres_env() | {"COLUMNS": "80"})
    said = " ".join(out.stdout.split())
    assert "digests not compared: no operator secret" in said
    assert "digest unchecked" in said
    assert not elsewhere.exists(), "idres status invents no secrets"


def test_after_kill_9_of_automaker_it_is_down_and_the_exit_status_says_so(tree: Running) -> None:
    all_well(tree)
    pid = serve_pid(tree.data, "automaker")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: health(tree.urls["automaker"]) is None, "the automaker's node to stop answering")

    out = idres_status(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "7 nodes, 6 up"
    row = next(i for i, line in enumerate(lines) if line.split()[:1] == ["automaker"])
    assert "DOWN" in lines[row].split() and tree.urls["automaker"] in lines[row + 1]
    said = " ".join(out.stdout.split())
    assert "Needs attention (1):" in said
    assert "automaker: down: cannot connect" in said
    assert max(len(line) for line in lines) <= WIDTH

    body = json.loads(idres_status(tree, "--json").stdout)
    assert body["ok"] is False
    assert [(p["node"], p["message"].split(":")[0]) for p in body["attention"]] == [("automaker", "down")]
