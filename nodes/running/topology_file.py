"""Reading a topology file (TOML) at the edge; the default one ships inside the package."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from resolver.config import Topology, parse_topology
from resolver.errors import ConfigError

__all__ = ["DEFAULT_TOPOLOGY", "load_topology", "with_tls_files"]

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
        topology = parse_topology(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return _paths_from(topology, path.parent)


def _paths_from(topology: Topology, base: Path) -> Topology:
    """``topology`` with its TLS file paths relative to ``base`` (the topology file's directory) made whole."""

    def whole(path: str | None) -> str | None:
        return None if path is None else str(base / path)  # an absolute path stays as it is

    nodes = {
        name: dataclasses.replace(spec, tls_cert=whole(spec.tls_cert), tls_key=whole(spec.tls_key))
        for name, spec in topology.nodes.items()
    }
    return Topology(nodes, tls_ca=whole(topology.tls_ca))


def with_tls_files(topology: Topology, ca: Path, files: dict[str, tuple[Path, Path]]) -> Topology:
    """``topology`` served over HTTPS: node NAME with the certificate and key ``files[NAME]``, every
    node verifying the others against ``ca`` (what ``idres up --tls`` runs on)."""
    nodes = {
        name: dataclasses.replace(spec, tls_cert=str(files[name][0]), tls_key=str(files[name][1]))
        for name, spec in topology.nodes.items()
    }
    return Topology(nodes, tls_ca=str(ca))
