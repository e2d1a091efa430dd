"""Shared test helpers: free ports, small topologies built in code, and Basic credentials."""

from __future__ import annotations

import socket
from typing import Any

from resolver.client import basic_auth
from resolver.config import Topology, parse_topology

OPERATOR_SECRET = "operator-secret-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def topology_of(nodes: dict[str, dict[str, Any]]) -> Topology:
    return parse_topology({"nodes": nodes})


def auth(identity: str, secret: str = OPERATOR_SECRET) -> dict[str, str]:
    return {"Authorization": basic_auth(identity, secret)}
