"""Operator secrets: from IDRES_ADMIN_SECRET, or generated once per node and kept in the data directory."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ENV_SECRET", "SECRETS_FILE", "operator_secrets"]

ENV_SECRET = "IDRES_ADMIN_SECRET"
SECRETS_FILE = "operator-secrets.json"


def operator_secrets(data_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """The operator secret of each named node. ``IDRES_ADMIN_SECRET`` wins when set; otherwise each
    node gets a random secret the first time, stored in ``DATA/operator-secrets.json`` with mode 0600
    (under a lock, so nodes started at once agree)."""
    names = list(names)
    env = os.environ.get(ENV_SECRET)
    if env:
        return {name: env for name in names}
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILE
    with open(data_dir / ".secrets.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
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
