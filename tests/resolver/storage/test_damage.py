"""Damaged data is refused (resolver.storage.integrity): a file SQLite finds damaged, an emptied or removed
file a node used before, and damage found while serving, which answers 503 and is logged once."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from resolver.errors import HandleError, ServerBusy
from resolver.storage.base import Write
from resolver.storage.integrity import IDENTITY_META, check_file, marker_path
from resolver.storage.sqlite import SQLiteStorage
from tests.resolver.storage.cases import url

RECORDS = 20_000  # ~5 MB: the middle of the file is the records' B-tree pages


async def filled(path: Path) -> Path:
    """A database of RECORDS records, closed (everything checkpointed into the file itself)."""
    store = await SQLiteStorage.open(path)
    for start in range(0, RECORDS, 5000):
        await store.write([Write(f"88.118.8/VIN-{n:08d}", url(f"{n}-{'x' * 200}")) for n in range(start, start + 5000)])
    await store.close()
    return path


def damage(path: Path, size: int = 20 * 1024) -> None:
    """Overwrite ``size`` bytes in the middle of the file with noise, as a failing disk would."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(random.Random(9).randbytes(size))


async def test_a_file_damaged_in_the_middle_is_refused_with_what_sqlite_found(tmp_path: Path) -> None:
    path = await filled(tmp_path / "automaker.sqlite3")
    damage(path)
    with pytest.raises(HandleError) as refused:
        await SQLiteStorage.open(path)
    message = refused.value.message
    assert f"{path} is damaged (SQLite found: " in message
    assert "restore it from a backup or resync it from a mirror" in message
    assert "`idres check`" in message
    assert check_file(path, full=True)  # the full check agrees


async def test_a_fresh_file_opens_and_leaves_a_marker_with_its_id(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    store = await SQLiteStorage.open(path)
    try:
        identity = await store.get_meta(IDENTITY_META)
        assert identity is not None and len(identity) == 32
        assert marker_path(path).read_text().splitlines()[0] == identity
    finally:
        await store.close()
    reopened = await SQLiteStorage.open(path)  # a healthy file: the start-up check passes
    try:
        assert await reopened.get_meta(IDENTITY_META) == identity
        assert check_file(path, full=True) == []
    finally:
        await reopened.close()


@pytest.mark.parametrize("how", ["empty", "missing"])
async def test_an_emptied_file_a_node_used_is_refused_until_both_are_removed(tmp_path: Path, how: str) -> None:
    path = tmp_path / "automaker.sqlite3"
    store = await SQLiteStorage.open(path)
    await store.write([Write("88.118.8/a", url("a"))])
    await store.close()
    if how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(HandleError) as refused:
        await SQLiteStorage.open(path)
    assert refused.value.message == (
        f"storage error: {path} is {how} but this node stored data there before (see {path}.id): "
        "restore it, or remove both files to start an empty node"
    )
    assert not path.exists() or path.stat().st_size == 0  # nothing was created in its place

    path.unlink(missing_ok=True)
    marker_path(path).unlink()
    store = await SQLiteStorage.open(path)  # what the message says to do: an empty node
    try:
        assert await store.count() == 0
    finally:
        await store.close()


async def test_a_check_past_its_time_is_cut_short_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = await filled(tmp_path / "big.sqlite3")
    caplog.set_level(logging.WARNING, "idres.storage")
    store = await SQLiteStorage.open(path, check_seconds=0.0)
    try:
        assert await store.count() == RECORDS
    finally:
        await store.close()
    assert any("was cut short after 0.0 s" in r.getMessage() for r in caplog.records)
    assert check_file(path, seconds=0.0) is None


async def test_damage_found_while_serving_answers_503_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = await filled(tmp_path / "automaker.sqlite3")
    store = await SQLiteStorage.open(path)
    try:
        damage(path)  # behind the open node's back
        caplog.set_level(logging.ERROR, "idres.storage")
        # Reads of the whole change log, which visit every record too (the damaged middle of the
        # file holds pages of both; counts and the digest are kept in pages of their own).
        reads = (lambda: store.changes(0, limit=RECORDS), lambda: store.changes_packed(0, limit=RECORDS))
        for read in (*reads, reads[0]):
            with pytest.raises(ServerBusy) as failed:
                await read()
            assert failed.value.http_status == 503 and failed.value.response_code == 3
            assert failed.value.message == (
                "this server cannot read its data (its database is damaged); try another server"
            )
        logged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
        assert len(logged) == 1
        assert f"{path} is damaged (SQLite: database disk image is malformed)" in logged[0]
    finally:
        await store.close()
    assert os.path.exists(path)
