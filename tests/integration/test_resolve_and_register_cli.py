"""Issue 13 as a user meets it: ``idres resolve`` at 80 columns, the trace of an unregistered prefix, and
``idres register`` from a script, against the default topology started with ``idres up`` (free ports)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodes.running.seeding import DEMO_CAR
from tests.conftest import free_port
from tests.processes import Running, copy_topology, get_json, idres_env, start_up, stop
from tests.resolver.bulk.cars import write_csv

pytestmark = pytest.mark.integration

OPERATOR = "300:0.NA/88.118.8"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("issue13-cli")
    running = start_up(work / "data", copy_topology(work / "topology.toml"))
    yield running
    stop(running)


def idres(*args: str, secret: str | None = None, timeout: float = 60, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``idres ARGS`` as run from an 80-column terminal's shell (COLUMNS=80), with no terminal on stdin."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    env = {**idres_env(secret=secret), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "nodes", *args], env=env, capture_output=True, text=True, timeout=timeout, **popen
    )


def assert_80_columns(text: str) -> None:
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"lines wider than 80 columns: {wide}"
    assert "…" not in text, "a cell was cut short"


# -- idres resolve and traces ---------------------------------------------------------------------------------


def test_resolve_at_80_columns_shows_every_address_and_value_whole(tree: Running) -> None:
    done = idres("resolve", DEMO_CAR, "--server", tree.urls["chongqing-top"])
    assert done.returncode == 0, done.stderr
    assert_80_columns(done.stdout)
    lines = done.stdout.splitlines()
    for name in ("chongqing-top", "auto-secondary", "automaker"):
        assert any(tree.urls[name] in line for line in lines), f"{tree.urls[name]} whole on a line"
    _, body = get_json(f"{tree.urls['automaker']}/api/handles/{DEMO_CAR}")
    for value in body["values"]:
        data = value["data"]["value"] if isinstance(value["data"], dict) else value["data"]
        if isinstance(data, str) and " " not in data:  # a URL, an identifier: one word, on one line
            assert any(data in line for line in lines), f"{data} whole on a line"
        assert value["timestamp"] in done.stdout
    assert "https://automaker.example.cn/vehicles/LFV3A23C5K3000417" in done.stdout


def test_the_trace_of_an_unregistered_prefix_names_both_top_nodes(tree: Running) -> None:
    status, body = get_json(f"{tree.urls['recursive']}/api/handles/88.122/Z?trace=true")
    assert status == 404 and body["responseCode"] == 100
    assert [(hop["address"], hop["outcome"]) for hop in body["trace"]] == [
        (tree.urls["chongqing-top"], "failure"),
        (tree.urls["chengdu-top"], "failure"),
    ]
    assert all("not responsible" in hop["detail"] for hop in body["trace"])


def test_resolve_of_an_unregistered_prefix_shows_the_hops_through_the_recursive_node(tree: Running) -> None:
    done = idres("resolve", "88.120/X", "--server", tree.urls["recursive"])
    assert done.returncode == 1
    assert_80_columns(done.stdout)
    assert "88.120/X: Handle Not Found (responseCode 100)" in done.stdout
    for name in ("chongqing-top", "chengdu-top"):
        assert f"via {tree.urls[name]}" in done.stdout
    # Each top node's "failure: not responsible: ..." (wrapped within its column at 80 columns).
    assert done.stdout.count("failure:") == 2 and done.stdout.count("responsible") == 2


def test_resolve_refuses_a_server_without_a_scheme(tree: Running) -> None:
    bare = tree.urls["recursive"].removeprefix("http://")
    done = idres("resolve", DEMO_CAR, "--server", bare)
    assert done.returncode == 2
    assert f"did you mean http://{bare}" in " ".join(done.stderr.split())


# -- idres register from a script -------------------------------------------------------------------------------


def register(
    tree: Running, path: Path, *args: str, server: str | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    server = server or tree.urls["automaker"]
    return idres("register", str(path), "--server", server, "--user", OPERATOR, *args, **kw)


def test_register_with_no_secret_and_no_terminal_exits_2_naming_idres_secret(tree: Running, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 5)
    done = register(tree, tmp_path / "cars.csv")
    assert done.returncode == 2
    assert "set IDRES_SECRET" in done.stderr and "Aborted" not in done.stderr and "GetPassWarning" not in done.stderr


def test_register_to_a_refused_port_fails_in_seconds_naming_the_server(tree: Running, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 5)
    server = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = register(tree, tmp_path / "cars.csv", server=server, secret=tree.secret("automaker"))
    assert done.returncode == 2 and time.monotonic() - started < 5
    said = " ".join(done.stderr.split())
    assert f"cannot reach {server}" in said and "nothing to resume" in said
    assert not (tmp_path / "cars.csv.idres-checkpoint").exists()


def test_register_without_a_scheme_names_the_url_to_use(tree: Running, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 5)
    bare = tree.urls["automaker"].removeprefix("http://")
    done = register(tree, tmp_path / "cars.csv", server=bare, secret=tree.secret("automaker"))
    assert done.returncode == 2
    assert f"{bare} has no scheme: did you mean http://{bare}" in " ".join(done.stderr.split())


def test_a_mistyped_run_keeps_the_earlier_report_and_checkpoint(tree: Running, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    write_csv(path, 20, seed=13, extra="88.118.8/bad\x07,x,,,,,,\n")
    secret = tree.secret("automaker")
    first = register(tree, path, secret=secret)
    assert first.returncode == 1, first.stderr
    checkpoint, report = path.with_name("cars.csv.idres-checkpoint"), path.with_name("cars.csv.rejected.jsonl")
    kept = checkpoint.read_bytes(), report.read_bytes()
    for mistake in (
        {"server": f"http://127.0.0.1:{free_port()}", "secret": secret},  # a wrong port
        {"secret": "not-the-secret"},  # refused at the first batch
    ):
        done = register(tree, path, **mistake)
        assert done.returncode == 2, done.stderr
        assert (checkpoint.read_bytes(), report.read_bytes()) == kept
    # A run that does start replaces them: one rejection, not the earlier one and this one.
    again = register(tree, path, "--op", "upsert", secret=secret)
    assert again.returncode == 1 and len(report.read_text().splitlines()) == 1


def test_ctrl_c_before_the_first_batch_points_to_no_checkpoint(tree: Running, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 5)
    with socket.socket() as silent:  # takes the connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        server = f"http://127.0.0.1:{silent.getsockname()[1]}"
        args = ["register", str(tmp_path / "cars.csv"), "--server", server, "--user", OPERATOR]
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodes", *args],
            env={**idres_env(secret=tree.secret("automaker")), "COLUMNS": "80"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(30)
        held, _ = silent.accept()  # the command is waiting for its first answer
        with held:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "nothing to resume" in err
    assert "idres-checkpoint" not in err and "--resume" not in err
    assert not (tmp_path / "cars.csv.idres-checkpoint").exists()
