"""Operator secrets: from IDRES_ADMIN_SECRET, or generated once per node and kept in the data directory.

A secret is never invented by mistake (issue 13, finding 5): a mistyped ``--data`` used to get new
random secrets, and so did a node started before with ``IDRES_ADMIN_SECRET`` when the variable was
missing from the next shell, which silently replaced the secret its operators used. So a new secret
is made only for a node that has no database yet, and only where the caller may initialise (``idres
up``, or ``idres serve`` in a data directory that exists); ``secret_mismatches`` tells whether a
node's database holds another secret than the one it is about to be started with.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from resolver.auth import verify_secret
from resolver.codec import unpack_values
from resolver.errors import ConfigError
from resolver.names import prefix_handle

__all__ = ["ENV_SECRET", "SECRETS_FILE", "operator_secrets", "secret_mismatches", "secret_source"]

ENV_SECRET = "IDRES_ADMIN_SECRET"
SECRETS_FILE = "operator-secrets.json"
# Where the node's own prefix handle keeps the operator's secret, hashed (nodes/authoritative/own_prefix.py).
_SECKEY_INDEX = 300


def _database(data_dir: Path, name: str) -> Path:
    # As nodes.running.serve.db_path names it (imported from there it would be an import cycle).
    return data_dir / f"{name}.sqlite3"


def secret_source(data_dir: Path) -> str:
    """Where the operator secrets come from, in words for messages."""
    return f"${ENV_SECRET}" if os.environ.get(ENV_SECRET) else str(data_dir / SECRETS_FILE)


def operator_secrets(data_dir: Path, names: Iterable[str], *, create: bool | None = None) -> dict[str, str]:
    """The operator secret of each named node. ``IDRES_ADMIN_SECRET`` wins when set; otherwise the
    one stored in ``DATA/operator-secrets.json`` (mode 0600, written under a lock, so nodes started
    at once agree).

    A node with no stored secret gets a new random one only if ``create`` allows it: True for ``idres
    up``, which initialises a data directory; False for ``idres seed``, which uses what the nodes were
    started with; None (``idres serve``) when ``data_dir`` exists already, so a mistyped ``--data``
    creates nothing. Never for a node whose database exists: it was started with ``IDRES_ADMIN_SECRET``,
    and a new secret would lock its operators out. Those refusals are ConfigErrors that say what to do.
    """
    names = list(names)
    env = os.environ.get(ENV_SECRET)
    if env:
        return {name: env for name in names}
    path = data_dir / SECRETS_FILE
    stored = _read(path)
    missing = [n for n in names if n not in stored]
    if not missing:
        if stored and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # loosened by hand: kept to its owner again
        return {n: stored[n] for n in names}
    started = [n for n in missing if _database(data_dir, n).exists()]
    if started:
        many = len(started) > 1
        raise ConfigError(
            f"{path} holds no operator secret for {', '.join(started)}, yet {'they were' if many else 'it was'} "
            f"started before ({_database(data_dir, started[0])} exists): with ${ENV_SECRET} set, most likely. "
            f"Set {ENV_SECRET} to that same secret in this shell; a new secret would lock out "
            f"{'their' if many else 'its'} operators"
        )
    if create is False or (create is None and not data_dir.is_dir()):
        where = f"{data_dir} does not exist" if not data_dir.is_dir() else f"{path} holds no secret for {missing[0]}"
        raise ConfigError(
            f"no operator secret for {', '.join(missing)}: {where}. Give the --data directory the nodes were "
            f"started with, or set ${ENV_SECRET} if they were started with it"
            + (f" (to start a new node there, create {data_dir} first)" if create is None else "")
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".secrets.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = _read(path)  # again, under the lock: a node started at the same time may have written
        missing = [n for n in names if n not in stored]
        if missing:
            stored.update({n: secrets.token_urlsafe(18) for n in missing})
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(stored, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        os.chmod(path, 0o600)
    return {n: stored[n] for n in names}


def _read(path: Path) -> dict[str, str]:
    # Written whole by os.replace, so it is read without the lock.
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the operator secrets in {path}: {exc}") from exc
    return stored


def secret_mismatches(data_dir: Path, prefixes: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """The nodes (name -> prefix) whose database holds the hash of another operator secret than
    ``secrets`` gives them: started, last time, with a different one. A node with no database, or
    one that cannot be read (the node itself will say why at start), is not a mismatch."""
    stored = {name: _stored_hash(_database(data_dir, name), prefix) for name, prefix in prefixes.items()}
    checks = {name: hashed for name, hashed in stored.items() if hashed is not None}
    if not checks:
        return []
    # PBKDF2 (~0.1 s each) releases the GIL: check the nodes at once.
    with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
        matched = dict(zip(checks, pool.map(verify_secret, [secrets[n] for n in checks], checks.values()), strict=True))
    return [name for name, ok in matched.items() if not ok]


def _stored_hash(database: Path, prefix: str) -> str | None:
    """The HS_SECKEY hash in the node's own prefix handle, read without writing anything (as
    ``resolver.storage.integrity.check_file`` opens a file: never created, the WAL read too)."""
    if not database.is_file():
        return None
    try:
        conn = sqlite3.connect(database.resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only = ON")
        row = conn.execute("SELECT vals FROM handles WHERE key = ?", (prefix_handle(prefix),)).fetchone()
        values = unpack_values(row[0]) if row is not None else ()
    except (sqlite3.Error, ValueError, TypeError):  # not a node's database, or damaged
        return None
    finally:
        conn.close()
    return next(
        (v.value for v in values if v.index == _SECKEY_INDEX and v.type == "HS_SECKEY" and isinstance(v.value, str)),
        None,
    )
