"""`idres up`, `idres seed` as a user at an 80-column terminal meets them (issue 13, findings 1, 2, 5, 6):
whole URLs, commands that run when pasted, no secret or directory made by mistake, a secret mismatch said
in words, and Enter to start an exited node again under `idres up`, so Ctrl-C stops it with the others."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE
from nodes.running.seeding import DEMO_CAR
from resolver.client import basic_auth
from tests.processes import (
    copy_topology,
    node_pids,
    request,
    serve_node,
    stop_node,
    urls_of,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.integration


def user_env(secret: str | None = None) -> dict[str, str]:
    """A user's shell at an 80-column terminal, with ``IDRES_ADMIN_SECRET`` only when given."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_SECRET, "IDRES_SECRET")}
    env["COLUMNS"] = "80"
    return {**env, ENV_SECRET: secret} if secret is not None else env


def idres(cwd: Path, *args: str, secret: str | None = None) -> tuple[int, str]:
    """Run ``idres ARGS`` to completion in ``cwd``: exit code and output, as one line of words."""
    done = subprocess.run(
        [sys.executable, "-m", "nodes", *args],
        cwd=cwd,
        env=user_env(secret),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


class Terminal:
    """``idres up ARGS`` left running in ``cwd``: what it printed so far, and its stdin to press Enter on."""

    def __init__(self, cwd: Path, *args: str, secret: str | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodes", "up", *args],
            cwd=cwd,
            env=user_env(secret),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, after: int = 0, within: float = 60) -> int:
        """The index of the first line from ``after`` that holds ``text``, once it is printed."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for i, line in enumerate(self.lines[after:], start=after):
                if text in line:
                    return i
            if self.process.poll() is not None and not any(text in line for line in self.lines[after:]):
                time.sleep(0.2)  # the reader may still be behind
                if not any(text in line for line in self.lines[after:]):
                    break
            time.sleep(0.05)
        raise AssertionError(f"idres up never printed {text!r}:\n" + "\n".join(self.lines))

    def command_after(self, index: int) -> list[str]:
        """The command printed on the lines after ``index``: indented, continued with ``\\``."""
        lines = []
        for line in self.lines[index + 1 :]:
            lines.append(line)
            if not line.endswith("\\"):
                return lines
        raise AssertionError(f"no command after line {index}:\n" + "\n".join(self.lines))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.close()


def pid_of(data: Path, name: str) -> int:
    found = [pid for pid in node_pids(data) if f"\0{name}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(found) == 1, found
    return found[0]


def test_at_80_columns_every_line_fits_and_every_command_runs_as_printed(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    urls = urls_of(topology)
    up = Terminal(tmp_path, "--data", "data", "--topology", "topology.toml")
    terminals.append(up)
    up.wait_for("Press Ctrl-C to stop every node.")
    shown = list(up.lines)
    assert [line for line in shown if len(line) > 80] == []
    text = "\n".join(shown)
    for url in urls.values():
        assert f"{url} " in text or f"{url}\n" in text, f"{url} is shown whole, port included"
    for identity in ("300:0.NA/88", "300:0.NA/88.118.8", "300:0.NA/88.119.6"):
        assert identity in text
    assert "…" not in text
    assert "Data directory: data (new)" in shown

    # Each command under "Try:" pasted into a shell, from the directory `idres up` was started in.
    tried = up.wait_for("Try:")
    resolve = up.command_after(tried)
    assert resolve[0].split()[1:3] == ["resolve", DEMO_CAR] and "idres" in resolve[0].split()[0]
    pasted = subprocess.run(
        ["sh", "-c", "\n".join(resolve)], cwd=tmp_path, env=user_env(), capture_output=True, text=True, timeout=60
    )
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    curl = up.command_after(tried + len(resolve))
    assert "trace=true" in curl[0]
    pasted = subprocess.run(["sh", "-c", "\n".join(curl)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    answer = json.loads(pasted.stdout)
    assert answer["responseCode"] == 1 and "trace" in answer, answer

    # `idres seed` on the running nodes: again at 80 columns, and it changes nothing.
    seeded = subprocess.run(
        [sys.executable, "-m", "nodes", "seed", "--data", "data", "--topology", "topology.toml"],
        cwd=tmp_path,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    assert [line for line in seeded.stdout.splitlines() if len(line) > 80] == []
    assert "auto-secondary  0.NA/88.118.8                   delegation to automaker" in seeded.stdout

    # A node that dies: Enter starts it again under `idres up` ...
    data = tmp_path / "data"
    os.kill(pid_of(data, "automaker"), signal.SIGKILL)
    exited = up.wait_for("node automaker exited with status -9; the other nodes keep running.")
    said = up.wait_for("Press Enter here to start automaker again", after=exited)
    assert up.process.stdin is not None
    up.process.stdin.write("\n")
    up.process.stdin.flush()
    up.wait_for("Starting automaker again", after=said)
    wait_healthy(urls["automaker"])

    # ... or the printed `idres serve` command, pasted: it runs, and `idres up` says it did not stop it.
    os.kill(pid_of(data, "batterymaker"), signal.SIGKILL)
    said = up.wait_for("Press Enter here to start batterymaker again", after=said)
    by_hand_command = up.command_after(up.wait_for("Or start it yourself", after=said))
    assert all(len(line) <= 80 for line in by_hand_command), by_hand_command
    by_hand = subprocess.Popen(
        ["sh", "-c", "exec " + "\n".join(by_hand_command).lstrip()],
        cwd=tmp_path,
        env=user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(urls["batterymaker"], by_hand)
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=30) == 0
        up.wait_for("batterymaker still runs at")
        said_at_stop = " ".join(" ".join(up.lines).split())
        assert f"batterymaker still runs at {urls['batterymaker']}: this `idres up` did not start it" in said_at_stop
        assert node_pids(data) == [], "every node `idres up` started, the one started again on Enter too, stopped"
        assert by_hand.poll() is None
        assert [line for line in up.lines if len(line) > 80] == [], "the reports of exited nodes fit too"
    finally:
        stop_node(by_hand)


def test_seed_with_a_mistyped_data_directory_creates_nothing(tmp_path: Path) -> None:
    code, said = idres(tmp_path, "seed", "--data", "d5", "--wait", "1")
    assert code == 1
    assert "idres seed cannot start: no operator secret for chongqing-top" in said, said
    assert "d5 does not exist. Give the --data directory the nodes were started with" in said, said
    code, said = idres(tmp_path, "seed", "--data", "d5", "--tls", "--wait", "1")
    assert code == 1 and "no local CA in" in said, said
    assert list(tmp_path.iterdir()) == [], "no directory, no secrets, no CA"


@pytest.mark.parametrize("tls", [False, True])
def test_up_refused_for_a_port_in_use_creates_nothing(tmp_path: Path, tls: bool) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    host, port = urls_of(topology)["automaker"].removeprefix("http://").split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        code, said = idres(tmp_path, "up", "--data", "new", "--topology", "topology.toml", *(["--tls"] if tls else []))
    assert code == 1
    assert f"idres up cannot start: {host}:{port} (automaker) is in use" in said, said
    assert not (tmp_path / "new").exists()


def test_a_secret_other_than_the_one_a_node_was_started_with_is_refused_in_words(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    topology = copy_topology(tmp_path / "topology.toml")
    data = tmp_path / "data"
    data.mkdir()
    node = serve_node(topology, data, "automaker", admin_secret="the-first-secret")
    automaker = urls_of(topology)["automaker"]
    try:
        wait_healthy(automaker, node)
    finally:
        stop_node(node)

    # From a shell without the variable: no new secret is made for it.
    code, said = idres(tmp_path, "up", "--data", "data", "--topology", "topology.toml")
    assert code == 1
    assert "holds no operator secret for automaker, yet it was started before" in said, said
    assert f"Set {ENV_SECRET} to that same secret in this shell" in said, said
    assert not (data / SECRETS_FILE).exists()

    # With another secret: refused, with the way to change it on purpose.
    code, said = idres(tmp_path, "up", "--data", "data", "--topology", "topology.toml", secret="a-second-secret")
    assert code == 1
    assert f"automaker was last started with another operator secret than the one from ${ENV_SECRET}" in said, said
    assert "to change it on purpose: idres up --replace-secrets" in said, said

    up = Terminal(
        tmp_path, "--data", "data", "--topology", "topology.toml", "--replace-secrets", secret="a-second-secret"
    )
    terminals.append(up)
    up.wait_for("Press Ctrl-C to stop every node.")
    for secret, authenticated in (("a-second-secret", True), ("the-first-secret", False)):
        status, body = request(
            "GET", automaker + "/api/sessions/this", headers={"Authorization": basic_auth("300:0.NA/88.118.8", secret)}
        )
        assert body.get("authenticated", False) is authenticated, (status, body)
    # `idres seed` with the old secret: said before it writes anything.
    code, said = idres(tmp_path, "seed", "--data", "data", "--topology", "topology.toml", secret="the-first-secret")
    assert code == 1
    assert "last started with another operator secret than the one from $IDRES_ADMIN_SECRET" in said, said
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=30) == 0
    wait_until(lambda: node_pids(data) == [], "every node to stop")
