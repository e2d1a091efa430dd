"""docker-compose.yml, its topology (deploy/topology-compose.toml) and the default topology agree.

No Docker engine is needed: the compose file is read as YAML and compared node by node with what
``load_topology`` parses, so adding a node or changing a port in one file only fails here. The
compose topology is the default one with every node reached by its service name on the compose
network: same nodes, roles, prefixes, ports and settings.
"""

from __future__ import annotations

import dataclasses
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
TOPOLOGY_FILE = ROOT / "deploy" / "topology-compose.toml"
TOPOLOGY = load_topology(TOPOLOGY_FILE)
DEFAULT = load_topology()
NODE_NAMES = list(TOPOLOGY.nodes)
SEED = "seed"  # the one-shot service that registers delegations and demo data once the nodes are up
MOUNTED = "/etc/idres/topology.toml"  # where every service finds the topology


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "docker-compose.yml has no services"
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
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


def _networks(service: dict[str, Any]) -> set[str]:
    return set(service.get("networks", []))  # the list form and the mapping form both yield names


def test_one_service_per_topology_node(services: dict[str, Any]) -> None:
    assert sorted(services) == sorted([*NODE_NAMES, SEED])


def test_compose_topology_is_the_default_one_reached_by_service_names() -> None:
    """Only the host and the credentials setting differ: each node listens at its service name, on the
    default topology's port, and takes credentials from the other containers (another machine each)."""
    assert list(TOPOLOGY.nodes) == list(DEFAULT.nodes)
    for name, spec in TOPOLOGY.nodes.items():
        default = DEFAULT.node(name)
        assert (spec.host, spec.port) == (name, default.port), f"{name}: listen must be {name}:{default.port}"
        assert spec.allow_plain_credentials, f"{name}: the other containers send credentials over plain HTTP"
        same = dataclasses.replace(spec, host=default.host, allow_plain_credentials=default.allow_plain_credentials)
        assert same == default, f"{name}: differs from the default topology in more than its address"


def test_compose_network_is_a_bridge_and_the_topology_is_mounted(compose: dict[str, Any]) -> None:
    networks = compose.get("networks", {})
    assert networks, "docker-compose.yml declares no network"
    for name, network in networks.items():
        assert (network or {}).get("driver", "bridge") == "bridge", f"network {name} must be a bridge"
    configs = compose.get("configs", {})
    assert {(ROOT / c["file"]).resolve() for c in configs.values()} == {TOPOLOGY_FILE.resolve()}


@pytest.mark.parametrize("name", [*NODE_NAMES, SEED])
def test_every_service_is_on_the_network_with_the_topology(
    compose: dict[str, Any], services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert "network_mode" not in service, f"{name}: nodes find each other by service name, not host networking"
    assert _networks(service) and _networks(service) <= set(compose["networks"])
    mounts = [c for c in service.get("configs", []) if isinstance(c, dict)]
    assert any(c.get("target") == MOUNTED and c.get("source") in compose["configs"] for c in mounts), (
        f"{name}: the topology must be mounted at {MOUNTED}"
    )
    assert "IDRES_ADMIN_SECRET" in service.get("environment", {})
    assert any(str(v).split(":")[1:2] == ["/data"] for v in service.get("volumes", [])), f"{name}: no volume at /data"


def test_seed_registers_once_every_primary_is_healthy(services: dict[str, Any]) -> None:
    seed = services[SEED]
    assert seed.get("command") == ["seed", "--topology", MOUNTED, "--data", "/data"]
    assert seed.get("restart") == "no" and "ports" not in seed
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
def test_service_serves_its_node_on_its_published_port(services: dict[str, Any], name: str) -> None:
    service, spec = services[name], TOPOLOGY.node(name)
    assert service.get("command") == ["serve", "--node", name, "--topology", MOUNTED, "--data", "/data"]
    assert service.get("restart") == "unless-stopped"
    # "[ADDRESS:]PORT:PORT": the host port is the topology's, so the published ports are the ones
    # `idres up` uses; ADDRESS may come from the environment (${IDRES_PUBLISH_ADDRESS:-127.0.0.1}).
    published = [str(p).rsplit(":", 2)[-2:] for p in service.get("ports", [])]
    assert published == [[str(spec.port), str(spec.port)]], f"{name}: publish {spec.port}:{spec.port}"


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
