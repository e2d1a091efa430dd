"""Operator secrets (nodes.running.operator_secrets): IDRES_ADMIN_SECRET wins; otherwise one secret per node,
generated once, kept in the data directory with mode 0600, and the same for nodes started at once."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE, operator_secrets

NODES = ["chongqing-top", "chengdu-top", "automaker"]


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SECRET, raising=False)


def test_the_environment_secret_wins_for_every_node_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SECRET, "from-the-environment")
    assert operator_secrets(tmp_path / "data", NODES) == {name: "from-the-environment" for name in NODES}
    assert not (tmp_path / "data").exists()


def test_an_empty_environment_secret_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SECRET, "")
    secrets = operator_secrets(tmp_path, NODES)
    assert all(len(secret) >= 20 for secret in secrets.values()), secrets


def test_each_node_gets_its_own_secret_generated_once_and_kept(tmp_path: Path) -> None:
    first = operator_secrets(tmp_path / "data", NODES)
    assert list(first) == NODES
    assert len(set(first.values())) == len(NODES), "each node has its own secret"
    assert all(len(secret) >= 20 for secret in first.values()), "18 random bytes, URL-safe base64"
    assert operator_secrets(tmp_path / "data", NODES) == first, "a second start reads the same secrets"
    assert json.loads((tmp_path / "data" / SECRETS_FILE).read_text()) == first


def test_a_new_node_is_added_without_changing_the_others(tmp_path: Path) -> None:
    before = operator_secrets(tmp_path, NODES[:2])
    after = operator_secrets(tmp_path, [*NODES, "batterymaker"])
    assert {name: after[name] for name in before} == before
    assert after["batterymaker"] not in before.values()
    assert operator_secrets(tmp_path, ["automaker"]) == {"automaker": after["automaker"]}


def test_the_secrets_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    operator_secrets(tmp_path, NODES)
    path = tmp_path / SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # loosened by hand: the next start tightens it again
    operator_secrets(tmp_path, NODES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_nodes_started_at_once_agree_on_every_secret(tmp_path: Path) -> None:
    """Each node of `idres up` asks for its own secret as it starts; the lock makes them agree."""
    names = [f"node-{i}" for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda name: operator_secrets(tmp_path, [name]), names))
    stored = json.loads((tmp_path / SECRETS_FILE).read_text())
    assert sorted(stored) == sorted(names), "no node's secret was lost to a concurrent write"
    assert {name: secret for answer in answers for name, secret in answer.items()} == stored
