"""Reading a topology file (TOML) at the edge; the default one ships inside the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

from resolver.config import Topology, parse_topology
from resolver.errors import ConfigError

__all__ = ["DEFAULT_TOPOLOGY", "load_topology"]

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.toml")


def load_topology(path: Path | None = None) -> Topology:
    path = path or DEFAULT_TOPOLOGY
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"topology file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"topology file {path} is not valid TOML: {exc}") from exc
    try:
        return parse_topology(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
