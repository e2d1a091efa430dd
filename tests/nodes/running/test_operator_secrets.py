"""Operator secrets (nodes.running.operator_secrets): IDRES_ADMIN_SECRET wins; otherwise one secret per node,
generated once, kept in the data directory with mode 0600, and the same for nodes started at once; never
invented by mistake (issue 13, finding 5), and a database holding another secret is found."""

from __future__ import annotations

import asyncio
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE, operator_secrets, secret_mismatches
from resolver.auth import hash_secret
from resolver.errors import ConfigError
from resolver.storage.base import Write
from resolver.storage.sqlite import SQLiteStorage
from resolver.values import HandleValue

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
    first = operator_secrets(tmp_path / "data", NODES, create=True)  # as `idres up` asks, on a new directory
    assert list(first) == NODES
    assert len(set(first.values())) == len(NODES), "each node has its own secret"
    assert all(len(secret) >= 20 for secret in first.values()), "18 random bytes, URL-safe base64"
    assert operator_secrets(tmp_path / "data", NODES) == first, "a second start reads the same secrets"
    assert operator_secrets(tmp_path / "data", NODES, create=False) == first, "and so does `idres seed`"
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


def test_seed_never_makes_a_secret_and_a_mistyped_directory_stays_uncreated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        operator_secrets(tmp_path / "d5", NODES, create=False)
    assert f"no operator secret for {', '.join(NODES)}: {tmp_path / 'd5'} does not exist" in str(refused.value)
    assert "Give the --data directory the nodes were started with" in str(refused.value)
    assert not (tmp_path / "d5").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"operator-secrets.json holds no secret for chongqing-top"):
        operator_secrets(tmp_path / "empty", NODES, create=False)
    assert list((tmp_path / "empty").iterdir()) == [], "nothing written"


def test_serve_makes_a_secret_only_in_a_directory_that_exists(tmp_path: Path) -> None:
    """`idres serve` (create=None): a compose volume or a directory made for it is where a new node
    starts; a mistyped --data names no directory, and nothing is made there."""
    with pytest.raises(ConfigError, match=r"create .*d5 first"):
        operator_secrets(tmp_path / "d5", ["automaker"])
    assert not (tmp_path / "d5").exists()
    assert len(operator_secrets(tmp_path, ["automaker"])["automaker"]) >= 20


def test_a_node_started_with_the_environment_secret_never_gets_a_new_one(tmp_path: Path) -> None:
    """Started with IDRES_ADMIN_SECRET, then from a shell without it: the node's database is there, and
    a new random secret would silently replace the one its operators use."""
    (tmp_path / "automaker.sqlite3").write_bytes(b"")
    for create in (True, None, False):
        with pytest.raises(ConfigError) as refused:
            operator_secrets(tmp_path, ["automaker", "batterymaker"], create=create)
        message = str(refused.value)
        assert "holds no operator secret for automaker, yet it was started before" in message, message
        assert f"Set {ENV_SECRET} to that same secret in this shell" in message
    assert not (tmp_path / SECRETS_FILE).exists(), "not even batterymaker's secret was made"


def _started_with(data: Path, name: str, prefix: str, secret: str) -> None:
    """A node's database as a start with ``secret`` leaves it: its prefix handle holds the secret's hash."""

    async def write() -> None:
        store = await SQLiteStorage.open(data / f"{name}.sqlite3")
        seckey = HandleValue(300, "HS_SECKEY", "string", hash_secret(secret), permissions="1100")
        await store.write([Write(f"0.NA/{prefix}", (seckey,))])
        await store.close()

    asyncio.run(write())


def test_a_database_holding_another_secret_is_a_mismatch(tmp_path: Path) -> None:
    _started_with(tmp_path, "automaker", "88.118.8", "the-old-secret")
    _started_with(tmp_path, "batterymaker", "88.119.6", "the-battery-secret")
    prefixes = {"automaker": "88.118.8", "batterymaker": "88.119.6", "chongqing-top": "88"}
    right = {"automaker": "the-old-secret", "batterymaker": "the-battery-secret", "chongqing-top": "x"}
    assert secret_mismatches(tmp_path, prefixes, right) == [], "chongqing-top has no database: nothing to compare"
    wrong = {**right, "automaker": "a-new-secret"}
    assert secret_mismatches(tmp_path, prefixes, wrong) == ["automaker"]
    (tmp_path / "chongqing-top.sqlite3").write_bytes(b"not a database" * 100)
    assert secret_mismatches(tmp_path, prefixes, right) == [], "an unreadable file is the node's own to refuse"
