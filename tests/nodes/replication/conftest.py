"""Fixtures of the replication tests: a real SQLite store for a scripted mirror's puller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resolver.storage.sqlite import SQLiteStorage


@pytest.fixture
async def mirror_store(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """An empty store, closed at the end: what a mirror's puller copies into (``scripted.following``)."""
    store = await SQLiteStorage.open(tmp_path / "mirror.sqlite3")
    try:
        yield store
    finally:
        await store.close()
