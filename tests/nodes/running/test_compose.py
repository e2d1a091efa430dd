"""docker-compose.yml must agree with the default topology (nodes/topology.toml).

No Docker engine is needed: the compose file is read as YAML and compared node by node with what
``load_topology()`` parses, so adding a node or changing a port in one file only fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodes.running.topology_file import load_topology
from resolver.config import NodeSpec, Topology

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TOPOLOGY = load_topology()
NODE_NAMES = list(TOPOLOGY.nodes)
SEED = "seed"  # the one-shot service that registers delegations and demo data once the nodes are up


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "docker-compose.yml has no services"
    found: dict[str, Any] = doc["services"]
    return found


def _expected_dependencies(topology: Topology, spec: NodeSpec) -> set[str]:
    """A child starts after the node it is delegated from, a mirror after its primary, a recursive node
    after its root hints."""
    if spec.role == "recursive":
        return set(spec.root_hints) or {n.name for n in topology.roots()}
    parent = topology.parent_of(spec)
    deps = {parent.name} if parent is not None else set()
    if spec.mirror_of is not None:
        deps.add(spec.mirror_of)
    return deps


def _dependencies(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on", [])
    return set(deps)  # the list form and the mapping form both yield service names


def test_one_service_per_topology_node(services: dict[str, Any]) -> None:
    assert sorted(services) == sorted([*NODE_NAMES, SEED])


def test_seed_registers_once_every_primary_is_healthy(services: dict[str, Any]) -> None:
    seed = services[SEED]
    assert seed.get("command") == ["seed", "--data", "/data"]
    assert seed.get("restart") == "no" and seed.get("network_mode") == "host"
    assert _dependencies(seed) == {n.name for n in TOPOLOGY.primaries()}


def test_dockerfile_runs_idres() -> None:
    assert DOCKERFILE.is_file()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT\s+\["idres"\]\s*$', text, re.MULTILINE), 'Dockerfile needs ENTRYPOINT ["idres"]'


@pytest.mark.parametrize("name", NODE_NAMES)
def test_service_builds_the_repo_image(services: dict[str, Any], name: str) -> None:
    build = services[name].get("build")
    if isinstance(build, dict):
        assert build.get("context", ".") in (".", "./")
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    else:
        assert build in (".", "./"), f"{name}: build must be the repository root"


@pytest.mark.parametrize("name", NODE_NAMES)
def test_service_serves_its_node(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert service.get("command") == ["serve", "--node", name, "--data", "/data"]
    assert any(str(v).split(":")[1:2] == ["/data"] for v in service.get("volumes", [])), f"{name}: no volume at /data"
    assert service.get("network_mode") == "host", f"{name}: the topology's 127.0.0.1 addresses need host networking"
    assert service.get("restart") == "unless-stopped"
    assert "IDRES_ADMIN_SECRET" in service.get("environment", {})


@pytest.mark.parametrize("name", NODE_NAMES)
def test_healthcheck_targets_the_node_address(services: dict[str, Any], name: str) -> None:
    spec = TOPOLOGY.node(name)
    test = services[name].get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck test must be an exec-form list"
    urls = re.findall(r"http://([^/:'\"\s]+):(\d+)(/[^'\"\s]*)", " ".join(test))
    assert urls == [(spec.host, str(spec.port), "/healthz")], f"{name}: healthcheck must GET {spec.url}/healthz"


@pytest.mark.parametrize("name", NODE_NAMES)
def test_start_order_follows_delegation_and_mirroring(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert _dependencies(service) == _expected_dependencies(TOPOLOGY, TOPOLOGY.node(name))
    deps = service.get("depends_on", {})
    if isinstance(deps, dict):
        for dep, how in deps.items():
            assert how.get("condition") == "service_healthy", f"{name}: wait until {dep} answers /healthz"
