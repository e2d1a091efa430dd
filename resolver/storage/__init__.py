"""Storage: the interface nodes use, and its embedded SQLite implementation."""

from resolver.storage.base import Change, Storage, Write
from resolver.storage.sqlite import SQLiteStorage

__all__ = ["Change", "SQLiteStorage", "Storage", "Write"]
