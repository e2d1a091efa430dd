"""Storage: the interface nodes use, and its embedded SQLite implementation."""

from resolver.storage.base import Change, PackedChange, Storage, Write
from resolver.storage.sqlite import SQLiteStorage

__all__ = ["Change", "PackedChange", "SQLiteStorage", "Storage", "Write"]
