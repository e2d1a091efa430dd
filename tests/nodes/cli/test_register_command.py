"""``idres register`` as a command: killed halfway and resumed, credentials, the secret prompt, bad input.

The CLI runs as a subprocess (``spawn_idres``) against ``FakeNode``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from resolver.bulk.register import load_checkpoint
from tests.processes import spawn_idres
from tests.resolver.bulk.cars import write_csv
from tests.resolver.bulk.fake_node import IDENTITY, SECRET, FakeNode, node_message
from tests.resolver.bulk.runs import report_lines


def register(*args: str, secret: str | None = SECRET, **popen: Any) -> subprocess.Popen[str]:
    """``idres register ARGS`` with ``secret`` in IDRES_SECRET (None: it prompts for one)."""
    return spawn_idres("register", *args, secret=secret, **popen)


def test_cli_kill_halfway_and_resume_lands_every_identifier_exactly_once(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    data = write_csv(path, 3000, extra="88.118.8/bad\x07,x,,,,,,\n")
    node.delay = 0.05  # commit, then answer a little later: at the kill some commits are unacknowledged
    args = [str(path), "--server", node.url, "--user", IDENTITY, "--batch-size", "50", "--concurrency", "4"]
    proc = register(*args)
    checkpoint = path.with_name("cars.csv.idres-checkpoint")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = load_checkpoint(checkpoint)
        if found is not None and found.lines >= 1000:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    interrupted = load_checkpoint(checkpoint)
    assert interrupted is not None and 1000 <= interrupted.lines < 3000 and not interrupted.complete
    assert len(node.records) >= interrupted.records  # and often more: committed, not yet acknowledged

    proc = register(*args, "--resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # the one bad row
    assert "rejected 1," in out
    assert sorted(node.records) == sorted(r[0] for r in data)
    assert set(node.creates.values()) == {1}  # each created exactly once
    [bad] = report_lines(path.with_name("cars.csv.rejected.jsonl"))
    assert (bad["line"], bad["responseCode"], bad["message"]) == (3002, 102, node_message("88.118.8/bad\x07"))
    final = load_checkpoint(checkpoint)
    assert final is not None and final.complete and final.applied + final.verified == 3000


def test_cli_wrong_secret_exits_2(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    proc = register(str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY, secret="wrong")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"refused the credentials of {IDENTITY}" in err
    assert not node.records


def test_cli_takes_the_secret_from_a_prompt_never_from_the_command_line(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    base = [str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY]
    for option in ("--secret", "--password"):
        proc = register(*base, option, SECRET)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and f"No such option '{option}'" in err
    # A terminal on standard input (a new session: getpass must not find the test runner's own).
    terminal, tty = os.openpty()
    try:
        proc = register(*base, secret=None, stdin=tty, start_new_session=True)
        os.close(tty)
        assert proc.stderr is not None
        prompt = b""
        while b"Secret of 300:0.NA/88.118.8: " not in prompt:  # getpass flushes what came before it
            assert select.select([proc.stderr], [], [], 60)[0], f"no prompt: {prompt!r}"
            chunk = os.read(proc.stderr.fileno(), 1024)
            assert chunk, f"the command ended before its prompt: {prompt!r}"
            prompt += chunk
        os.write(terminal, (SECRET + "\n").encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
    assert proc.returncode == 0, err
    assert SECRET not in out + err + prompt.decode()
    assert len(node.records) == 10


def test_cli_with_no_secret_and_no_terminal_exits_2_saying_to_set_idres_secret(node: FakeNode, tmp_path: Path) -> None:
    """As under cron or CI: no getpass warning, no "Aborted!", not the status of rejected records."""
    write_csv(tmp_path / "cars.csv", 10)
    for stdin in (subprocess.DEVNULL, subprocess.PIPE):
        proc = register(str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY, secret=None, stdin=stdin)
        _, err = proc.communicate(SECRET + "\n" if stdin == subprocess.PIPE else None, timeout=60)
        assert proc.returncode == 2
        assert "set IDRES_SECRET" in err and "no terminal" in err
        assert "Aborted" not in err and "GetPassWarning" not in err
    assert node.requests == 0


def test_cli_option_errors_name_the_choices(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    base = [str(tmp_path / "cars.csv"), "--server", node.url, "--user", IDENTITY]
    for args, words in [
        (["--format", "xml"], "'xml' is not one of 'csv', 'jsonl'"),
        (["--op", "insert"], "'insert' is not one of 'create', 'upsert'"),
        (["--batch-size", "0"], "0 is not in the range 1<=x<=10000"),
        (["--concurrency", "many"], "'many' is not a valid integer"),
    ]:
        proc = register(*base, *args)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and words in " ".join(err.split()), err
    (tmp_path / "cars.txt").write_text((tmp_path / "cars.csv").read_text())
    proc = register(str(tmp_path / "cars.txt"), *base[1:])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "give --format csv or --format jsonl" in " ".join(err.split())
    proc = register(str(tmp_path / "cars.txt"), *base[1:], "--format", "CSV")  # any case will do
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert node.requests == 1 and len(node.records) == 10


def test_cli_bad_input_exits_2_with_a_message(node: FakeNode, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("name,URL\n88.118.8/A,u\n")
    proc = register(str(tmp_path / "bad.csv"), "--server", node.url, "--user", IDENTITY)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert 'the first column of the header must be "handle"' in err
    (tmp_path / "data.txt").write_text("x")
    proc = register(str(tmp_path / "data.txt"), "--server", node.url, "--user", IDENTITY)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cannot tell the format" in err
    proc = register(str(tmp_path / "bad.csv"), "--server", node.url, "--user", "nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--user" in err and "expected INDEX:HANDLE" in " ".join(err.split())
    assert not node.records
