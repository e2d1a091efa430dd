"""Reading a topology file (nodes.running.topology_file): the default one ships in the package, and every
error names the file and what is wrong with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodes.running.topology_file import DEFAULT_TOPOLOGY, load_topology
from resolver.errors import ConfigError


def test_without_a_path_the_packaged_default_is_read() -> None:
    assert Path(__file__).resolve().parents[3] / "nodes" / "running" / "topology.toml" == DEFAULT_TOPOLOGY
    assert load_topology() == load_topology(DEFAULT_TOPOLOGY)
    assert "chongqing-top" in load_topology().nodes


def test_a_user_file_is_read_in_place_of_the_default(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[nodes.solo]\nrole = "top"\nprefix = "88"\nlisten = "127.0.0.1:9100"\n', encoding="utf-8")
    topology = load_topology(path)
    assert list(topology.nodes) == ["solo"]
    assert topology.node("solo").url == "http://127.0.0.1:9100"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=f"topology file {re.escape(str(missing))} does not exist"):
        load_topology(missing)


def test_bad_toml_is_named_with_where_it_breaks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodes.a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"topology file {re.escape(str(bad))} is not valid TOML: .*line 1"):
        load_topology(bad)


def test_a_topology_error_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(empty))}: .*no \[nodes\.NAME\] tables"):
        load_topology(empty)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[nodes.x]\nrole = "primary"\nprefix = "88"\nlisten = "h:1"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(wrong))}: node 'x': role must be one of"):
        load_topology(wrong)


def test_tls_files_are_found_beside_the_topology_file_unless_their_path_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "mine.toml"
    path.parent.mkdir()
    path.write_text(
        '[tls]\nca = "certs/ca.pem"\n'
        '[nodes.solo]\nrole = "top"\nprefix = "88"\nlisten = "127.0.0.1:9100"\n'
        'tls_cert = "certs/solo.pem"\ntls_key = "/etc/idres/solo-key.pem"\n',
        encoding="utf-8",
    )
    topology = load_topology(path)
    solo = topology.node("solo")
    assert topology.tls_ca == str(tmp_path / "conf" / "certs" / "ca.pem")
    assert (solo.tls_cert, solo.tls_key) == (str(tmp_path / "conf" / "certs" / "solo.pem"), "/etc/idres/solo-key.pem")
    assert solo.url == "https://127.0.0.1:9100"
