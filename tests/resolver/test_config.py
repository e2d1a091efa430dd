"""Topology parsing and the relations between nodes (resolver.config); the default topology file as parsed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodes.running.topology_file import load_topology
from resolver.config import DEFAULT_LIMITS, NodeSpec, Topology, parse_topology
from resolver.errors import ConfigError


def names(nodes: list[NodeSpec]) -> list[str]:
    return [n.name for n in nodes]


# -- the default topology (DESIGN §8) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def default() -> Topology:
    return load_topology()


def test_default_topology_nodes(default: Topology) -> None:
    expected = {
        "chongqing-top": ("top", "88", 8100),
        "chengdu-top": ("top", "88", 8101),
        "auto-secondary": ("secondary", "88.118", 8200),
        "elec-secondary": ("secondary", "88.119", 8210),
        "automaker": ("enterprise", "88.118.8", 8300),
        "batterymaker": ("enterprise", "88.119.6", 8310),
    }
    for name, (role, prefix, port) in expected.items():
        node = default.node(name)
        assert (node.role, node.prefix, node.host, node.port) == (role, prefix, "127.0.0.1", port)
        assert node.url == f"http://127.0.0.1:{port}"
        assert node.description


def test_default_topology_backup_and_hosting(default: Topology) -> None:
    assert default.node("chengdu-top").mirror_of == "chongqing-top"
    assert default.node("chengdu-top").is_mirror
    assert not default.node("chongqing-top").is_mirror
    assert default.node("auto-secondary").hosts == ("88.118.9",)


def test_default_topology_tree(default: Topology) -> None:
    def parent(name: str) -> str | None:
        p = default.parent_of(default.node(name))
        return None if p is None else p.name

    assert parent("automaker") == "auto-secondary"
    assert parent("batterymaker") == "elec-secondary"
    assert parent("auto-secondary") == "chongqing-top"
    assert parent("elec-secondary") == "chongqing-top"
    assert parent("chongqing-top") is None
    assert parent("chengdu-top") is None  # a mirror is not delegated to


def test_default_topology_roots_and_sites(default: Topology) -> None:
    assert names(default.roots()) == ["chongqing-top", "chengdu-top"]
    assert names(default.sites_of("chongqing-top")) == ["chongqing-top", "chengdu-top"]
    assert names(default.mirrors_of("chongqing-top")) == ["chengdu-top"]
    assert names(default.sites_of("automaker")) == ["automaker"]
    assert "chengdu-top" not in names(default.primaries())


def test_unknown_node_name(default: Topology) -> None:
    with pytest.raises(ConfigError, match=r"no node named .nowhere. in the topology \(nodes: .*chongqing-top, "):
        default.node("nowhere")


# -- parse_topology ----------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "nodes": {
        "top": {"role": "top", "prefix": "88", "listen": "127.0.0.1:8100"},
        "backup": {"mirror_of": "top", "listen": "127.0.0.1:8101"},
        "sec": {"role": "secondary", "prefix": "88.118", "hosts": ["88.118.9"], "listen": "127.0.0.1:8200"},
        "ent": {"role": "enterprise", "prefix": "88.118.8", "listen": "127.0.0.1:8300"},
        "rec": {"role": "recursive", "root_hints": ["top", "backup"], "listen": "0.0.0.0:8000"},
    }
}


def with_node(name: str, spec: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["nodes"][name] = spec
    return raw


def config_error(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_topology(raw)
    return str(info.value)


def test_parse_topology() -> None:
    topo = parse_topology(BASE)
    assert list(topo.nodes) == ["top", "backup", "sec", "ent", "rec"]
    backup = topo.node("backup")
    assert (backup.role, backup.prefix, backup.mirror_of, backup.port) == ("top", "88", "top", 8101)
    rec = topo.node("rec")
    assert (rec.prefix, rec.root_hints, rec.host) == (None, ("top", "backup"), "0.0.0.0")
    assert names(topo.roots()) == ["top", "backup"]
    assert topo.parent_of(rec) is None


def test_prefixes_are_normalised() -> None:
    topo = parse_topology(with_node("ent2", {"role": "enterprise", "prefix": "88.118.ab", "listen": "h:1"}))
    assert topo.node("ent2").prefix == "88.118.AB"


def test_mirror_inherits_hosts_and_role() -> None:
    topo = parse_topology(with_node("sec-backup", {"mirror_of": "sec", "listen": "127.0.0.1:8201"}))
    node = topo.node("sec-backup")
    assert (node.role, node.prefix, node.hosts) == ("secondary", "88.118", ("88.118.9",))
    assert names(topo.sites_of("sec")) == ["sec", "sec-backup"]
    assert topo.parent_of(topo.node("ent")) == topo.node("sec")


def test_batch_workers_per_node() -> None:
    raw = copy.deepcopy(BASE)
    raw["nodes"]["ent"]["batch_workers"] = 0
    raw["nodes"]["backup"]["batch_workers"] = 3
    topo = parse_topology(raw)
    assert (topo.node("ent").batch_workers, topo.node("backup").batch_workers, topo.node("sec").batch_workers) == (
        0,
        3,
        None,  # the default: nodes.authoritative.batch.workers.DEFAULT_WORKERS
    )
    for bad in (-1, 65, 1.5, "2", True):
        raw["nodes"]["ent"]["batch_workers"] = bad
        assert "batch_workers must be a number of processes from 0 to 64" in config_error(raw)
    rec = with_node("rec", {"role": "recursive", "listen": "127.0.0.1:8000", "batch_workers": 1})
    assert "takes no batches" in config_error(rec)


def test_parent_is_the_longest_owning_prefix_even_across_gaps() -> None:
    topo = parse_topology(with_node("deep", {"role": "enterprise", "prefix": "88.118.8.1.2", "listen": "h:9"}))
    assert topo.parent_of(topo.node("deep")) == topo.node("ent")


def test_ipv6_listen_address() -> None:
    topo = parse_topology({"nodes": {"a": {"role": "top", "prefix": "88", "listen": "[::1]:8100"}}})
    assert (topo.node("a").host, topo.node("a").port) == ("[::1]", 8100)
    assert topo.node("a").url == "http://[::1]:8100"


@pytest.mark.parametrize("raw", [{}, {"nodes": {}}, {"nodes": []}, {"node": {"a": {}}}])
def test_missing_nodes(raw: Any) -> None:
    assert "the topology has no [nodes.NAME] tables" in config_error(raw)


def test_node_must_be_a_table() -> None:
    assert "node 'x': expected a table" in config_error(with_node("x", "127.0.0.1:1"))


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        (None, 'listen must be "HOST:PORT", not None'),
        ("8100", "listen must be \"HOST:PORT\", not '8100'"),
        (8100, "listen must be"),
        ("127.0.0.1:0", "port '0' is not a TCP port number"),
        ("127.0.0.1:65536", "port '65536' is not a TCP port number"),
        ("127.0.0.1:http", "port 'http' is not a TCP port number"),
        ("127.0.0.1:", "port '' is not a TCP port number"),
    ],
)
def test_bad_listen(listen: Any, message: str) -> None:
    spec = {"role": "enterprise", "prefix": "88.118.7", "listen": listen}
    if listen is None:
        del spec["listen"]
    assert message in config_error(with_node("x", spec))
    assert "node 'x'" in config_error(with_node("x", spec))


def test_unicode_digit_port_is_a_config_error() -> None:
    message = config_error(with_node("x", {"role": "enterprise", "prefix": "88.118.7", "listen": "h:²"}))
    assert message == "node 'x': port '²' is not a TCP port number"


@pytest.mark.parametrize("role", [None, "primary", "TOP", 1])
def test_bad_role(role: Any) -> None:
    spec = {"prefix": "88.118.7", "listen": "h:1"}
    if role is not None:
        spec["role"] = role
    message = config_error(with_node("x", spec))
    assert "node 'x': role must be one of top, secondary, enterprise, recursive" in message
    assert repr(role) in message


def test_duplicate_port() -> None:
    message = config_error(with_node("x", {"role": "enterprise", "prefix": "88.118.7", "listen": "127.0.0.1:8200"}))
    assert message == "nodes 'sec' and 'x' both listen on 127.0.0.1:8200"


def test_same_port_on_another_host_is_fine() -> None:
    parse_topology(with_node("x", {"role": "enterprise", "prefix": "88.118.7", "listen": "10.0.0.1:8200"}))


@pytest.mark.parametrize(
    ("spec", "prefix"),
    [
        ({"role": "enterprise", "prefix": "88.118.8"}, "88.118.8"),
        ({"role": "secondary", "prefix": "88.118"}, "88.118"),
        ({"role": "enterprise", "prefix": "88.118.9"}, "88.118.9"),  # hosted by sec
        ({"role": "secondary", "prefix": "88.120", "hosts": ["88.120.1", "88.120.1"]}, "88.120.1"),
    ],
)
def test_prefix_claimed_twice(spec: dict[str, Any], prefix: str) -> None:
    message = config_error(with_node("x", {**spec, "listen": "h:1"}))
    assert f"prefix {prefix} is claimed by both" in message
    assert "'x'" in message


@pytest.mark.parametrize("hosted", ["88.119.1", "88.118", "88"])
def test_hosted_prefix_must_be_derived(hosted: str) -> None:
    message = config_error(
        with_node("x", {"role": "secondary", "prefix": "88.118", "hosts": [hosted], "listen": "h:1"})
    )
    assert f"node 'x': hosted prefix {hosted} is not derived from 88.118" in message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"role": "top", "prefix": "20.500"}, "national prefix 88"),
        ({"role": "top", "prefix": 88}, 'prefix must be a string like "88.118", not 88'),
        ({"role": "top"}, "prefix must be a string"),
        ({"role": "secondary", "prefix": "88.121", "hosts": "88.121.1"}, "expected a list of strings"),
        ({"role": "secondary", "prefix": "88.121", "hosts": ["88.121.x_y"]}, "node 'x' hosts"),
    ],
)
def test_bad_prefixes(spec: dict[str, Any], message: str) -> None:
    assert message in config_error(with_node("x", {**spec, "listen": "h:1"}))


@pytest.mark.parametrize("primary", ["nowhere", "backup", "rec"])
def test_mirror_of_must_be_an_authoritative_primary(primary: str) -> None:
    message = config_error(with_node("x", {"mirror_of": primary, "listen": "h:1"}))
    assert message == f"node 'x': mirror_of {primary!r} is not an authoritative primary"


def test_mirror_of_must_be_a_name() -> None:
    message = config_error(with_node("x", {"mirror_of": 5, "listen": "h:1"}))
    assert message == "node 'x': mirror_of must be the name of a node, not 5"


def test_unknown_keys() -> None:
    message = config_error(with_node("x", {"role": "top", "prefix": "88.7", "listen": "h:1", "port": 5}))
    assert "node 'x': unknown keys ['port']" in message
    assert "'listen'" in message


def test_recursive_node_owns_no_prefix() -> None:
    message = config_error(with_node("x", {"role": "recursive", "prefix": "88.5", "listen": "h:1"}))
    assert "node 'x': a recursive node owns no prefix" in message


def test_root_hints_must_name_nodes() -> None:
    message = config_error(with_node("x", {"role": "recursive", "root_hints": ["top", "nope"], "listen": "h:1"}))
    assert "node 'x': root hint 'nope' is not a node of the topology" in message
    assert "expected a list of strings" in config_error(
        with_node("x", {"role": "recursive", "root_hints": "top", "listen": "h:1"})
    )


def test_default_limits() -> None:
    assert DEFAULT_LIMITS.max_value_bytes == 65_536
    assert DEFAULT_LIMITS.max_record_bytes == 262_144
    assert DEFAULT_LIMITS.max_values == 1_000
    assert DEFAULT_LIMITS.max_type_length == 128


def test_recursive_cache_and_upstream_settings_come_from_the_topology() -> None:
    spec = {
        "role": "recursive",
        "listen": "127.0.0.1:9000",
        "cache": {"max_ttl": 60, "stale_window": 600},
        "upstream": {"deadline": 1.5},
    }
    node = parse_topology(with_node("r", spec)).node("r")
    assert (node.cache.max_ttl, node.cache.stale_window, node.upstream.deadline) == (60, 600, 1.5)
    assert node.cache.negative_ttl == 30.0, "unset settings keep their defaults"
    assert load_topology().node("recursive").upstream.deadline == 3.0


def test_the_upstream_table_bounds_come_from_the_topology() -> None:
    spec = {"role": "recursive", "listen": "127.0.0.1:9000", "upstream": {"max_servers": 64, "forget_after": 60}}
    node = parse_topology(with_node("r", spec)).node("r")
    assert (node.upstream.max_servers, node.upstream.forget_after) == (64, 60)
    default = load_topology().node("recursive").upstream
    assert (default.max_servers, default.forget_after) == (1024, 600.0)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"role": "recursive", "listen": "h:1", "cache": {"ttl": 5}}, "unknown settings ['ttl']"),
        ({"role": "recursive", "listen": "h:1", "cache": {"max_ttl": "long"}}, "max_ttl must be a number"),
        ({"role": "recursive", "listen": "h:1", "cache": {"min_ttl": 10, "max_ttl": 5}}, "min_ttl"),
        ({"role": "recursive", "listen": "h:1", "upstream": []}, "expected a table"),
        ({"role": "recursive", "listen": "h:1", "upstream": {"max_servers": 0}}, "max_servers must be a whole"),
        ({"role": "recursive", "listen": "h:1", "upstream": {"forget_after": 0}}, "forget_after must be a positive"),
        ({"role": "enterprise", "prefix": "88.118.7", "listen": "h:1", "cache": {}}, "belong to recursive nodes"),
    ],
)
def test_bad_recursive_settings_are_named(spec: dict[str, Any], words: str) -> None:
    assert words in config_error(with_node("r", spec))


def test_trusted_servers_of_the_recursive_node() -> None:
    spec = {"role": "recursive", "listen": "h:1", "trusted_servers": ["http://10.0.0.5:8100", "https://ids.example"]}
    node = parse_topology(with_node("r", spec)).node("r")
    assert node.trusted_servers == ("http://10.0.0.5:8100", "https://ids.example")
    assert load_topology().node("recursive").trusted_servers == ()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"role": "recursive", "listen": "h:1", "trusted_servers": "http://h:1"}, "expected a list of strings"),
        ({"role": "recursive", "listen": "h:1", "trusted_servers": ["h:1"]}, "'h:1' is not a server URL"),
        ({"role": "recursive", "listen": "h:1", "trusted_servers": ["ftp://h:1"]}, "is not a server URL"),
        ({"role": "recursive", "listen": "h:1", "trusted_servers": ["http://h:x"]}, "is not a server URL"),
        ({"role": "recursive", "listen": "h:1", "trusted_servers": ["http://h:1/api"]}, "is not a server URL"),
        ({"role": "recursive", "listen": "h:1", "trusted_servers": ["http://u:p@h:1"]}, "is not a server URL"),
        ({"role": "top", "prefix": "88.7", "listen": "h:1", "trusted_servers": []}, "belong to recursive nodes"),
    ],
)
def test_bad_trusted_servers_are_named(spec: dict[str, Any], words: str) -> None:
    message = config_error(with_node("r", spec))
    assert "node 'r'" in message and words in message


# -- TLS (issue 11, finding 12) ------------------------------------------------------------------------


def _one(node: dict[str, Any], **top: Any) -> Topology:
    return parse_topology(
        {"nodes": {"n": {"role": "enterprise", "prefix": "88.1", "listen": "127.0.0.1:1", **node}}, **top}
    )


def test_a_node_with_a_certificate_and_key_serves_https_and_says_so_in_its_url() -> None:
    topology = _one({"tls_cert": "n.pem", "tls_key": "n-key.pem"}, tls={"ca": "ca.pem"})
    node = topology.node("n")
    assert (node.scheme, node.url, node.tls_cert, node.tls_key) == (
        "https",
        "https://127.0.0.1:1",
        "n.pem",
        "n-key.pem",
    )
    assert topology.tls_ca == "ca.pem" and not node.allow_plain_credentials
    plain = _one({})
    assert (plain.node("n").url, plain.tls_ca) == ("http://127.0.0.1:1", None)


def test_a_mirror_keeps_its_own_certificate() -> None:
    topology = parse_topology(
        {
            "nodes": {
                "p": {"role": "top", "prefix": "88", "listen": "127.0.0.1:1", "tls_cert": "p.pem", "tls_key": "p.key"},
                "m": {"mirror_of": "p", "listen": "127.0.0.1:2", "tls_cert": "m.pem", "tls_key": "m.key"},
            }
        }
    )
    assert (topology.node("m").tls_cert, topology.node("m").url) == ("m.pem", "https://127.0.0.1:2")


@pytest.mark.parametrize(
    ("node", "top", "words"),
    [
        ({"tls_cert": "n.pem"}, {}, "tls_cert and tls_key go together"),
        ({"tls_key": "n.pem"}, {}, "tls_cert and tls_key go together"),
        ({"tls_cert": 1, "tls_key": "k"}, {}, "tls_cert must be the path of a PEM file, not 1"),
        ({"allow_plain_credentials": "yes"}, {}, "allow_plain_credentials must be true or false, not 'yes'"),
        ({}, {"tls": {"ca": ""}}, "[tls] ca must be the path of a PEM file"),
        ({}, {"tls": {"cafile": "x"}}, "[tls]: unknown keys ['cafile'] (known: ca)"),
        ({}, {"certificates": {}}, "unknown tables ['certificates'] (known: nodes, tls)"),
    ],
)
def test_tls_settings_that_are_wrong_are_named(node: dict[str, Any], top: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _one(node, **top)
    assert words in str(caught.value)


def test_workers_change_log_age_and_public_digest() -> None:
    recursive = parse_topology({"nodes": {"r": {"role": "recursive", "listen": "127.0.0.1:1", "workers": 2}}})
    assert recursive.node("r").workers == 2
    node = _one({"change_log_max_age": 3600, "public_digest": True}).node("n")
    assert (node.change_log_max_age, node.public_digest, node.workers) == (3600.0, True, 1)
    assert _one({}).node("n").change_log_max_age == 7 * 86400.0 and not _one({}).node("n").public_digest


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ({"workers": 2}, "workers settings belong to recursive nodes"),
        ({"change_log_max_age": 0}, "change_log_max_age must be a number of seconds above 0, not 0"),
        ({"change_log_max_age": "1d"}, "change_log_max_age must be a number of seconds above 0, not '1d'"),
        ({"public_digest": 1}, "public_digest must be true or false, not 1"),
        ({"durability": "fsync"}, "durability must be one of full, normal, not 'fsync'"),
        ({"access_log": "yes"}, "access_log must be true or false, not 'yes'"),
        ({"front_door": 1}, "front_door must be true or false, not 1"),
        ({"public_url": "id.example.com"}, "public_url must be an http:// or https:// address, not 'id.example.com'"),
    ],
)
def test_growth_settings_that_are_wrong_are_named(node: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _one(node)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"workers": 0}, "workers must be a number of processes from 1 to 64, not 0"),
        ({"workers": True}, "workers must be a number of processes from 1 to 64, not True"),
        (
            {"public_digest": True},
            "change_log_max_age, public_digest, durability and front_door belong to authoritative nodes",
        ),
        (
            {"durability": "normal"},
            "change_log_max_age, public_digest, durability and front_door belong to authoritative nodes",
        ),
    ],
)
def test_recursive_growth_settings_that_are_wrong_are_named(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_topology({"nodes": {"r": {"role": "recursive", "listen": "127.0.0.1:1", **raw}}})
    assert words in str(caught.value)


def test_durability_is_full_unless_the_node_says_normal_and_a_mirror_keeps_its_own() -> None:
    topology = parse_topology(
        {
            "nodes": {
                "e": {"role": "enterprise", "prefix": "88.1", "listen": "127.0.0.1:1"},
                "m": {"mirror_of": "e", "listen": "127.0.0.1:2", "durability": "normal", "access_log": False},
            }
        }
    )
    assert (topology.node("e").durability, topology.node("e").access_log) == ("full", True)
    assert (topology.node("m").durability, topology.node("m").access_log) == ("normal", False)
