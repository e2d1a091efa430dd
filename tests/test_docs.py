"""The documentation cites only what exists, and docs/topology.md lists every topology key.

Paths in backticks that look like a repository file (``dir/file.ext``), relative links and their
anchors, in README.md and docs/*.md, must name files and headings of this repository; the keys the
topology parser (``resolver/config.py``) accepts must each have a row in docs/topology.md, with the
default of every cache and upstream setting as the code has it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest

from resolver.cache import CacheConfig
from resolver.config import parse_topology
from resolver.errors import ConfigError
from resolver.upstream import UpstreamConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TOPOLOGY_DOC = ROOT / "docs" / "topology.md"

# Directories a doc names as what a run makes, not as files of the repository: the data directory
# (idres-data by default, DATA in prose, its logs/), and the benchmarks' output.
RUNTIME = ("DATA/", "idres-data/", "logs/", "bench-results/")
_NOT_SOURCE = {".git", ".venv", "idres-data", "bench-results", "__pycache__"}
_CITED_PATH = re.compile(
    r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+\.[A-Za-z][A-Za-z0-9]{0,4})`"
)  # not a handle: 0.NA/88.118
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


@cache
def repository_files() -> frozenset[str]:
    """Every file of the repository, as a path relative to its root."""
    found: set[str] = set()
    for top in ROOT.iterdir():
        if top.name in _NOT_SOURCE or top.name.endswith(".egg-info"):
            continue
        paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        found.update(p.relative_to(ROOT).as_posix() for p in paths if "__pycache__" not in p.parts)
    return frozenset(found)


def exists_in_repository(path: str) -> bool:
    """``path`` from the root, or from inside a package (``authoritative/app.py`` in ``nodes/``)."""
    files = repository_files()
    return path in files or any(f.endswith("/" + path) for f in files)


def cited_paths(text: str) -> list[str]:
    return [p for p in _CITED_PATH.findall(text) if not p.startswith(RUNTIME)]


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces
    to hyphens; a repeated one gets -1, -2...)."""
    anchors: set[str] = set()
    for line in _CODE_BLOCK.sub("", text).splitlines():
        if not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_repository_paths_exist(doc: Path) -> None:
    missing = [p for p in cited_paths(doc.read_text(encoding="utf-8")) if not exists_in_repository(p)]
    assert not missing, f"{doc.name} cites files that are not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(_CODE_BLOCK.sub("", text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        readable = linked.exists() and linked.suffix == ".md"
        anchors = heading_anchors(linked.read_text(encoding="utf-8")) if readable else None
        if not linked.exists() or (anchor and anchors is not None and anchor not in anchors):
            broken.append(target)
    assert not broken, f"{doc.name} links to what does not exist: {broken}"


def test_the_path_check_tells_real_files_from_missing_ones() -> None:
    text = "`resolver/config.py`, `authoritative/app.py`, `shared/reference/perf.md`, `DATA/logs/NAME.log`"
    assert cited_paths(text) == ["resolver/config.py", "authoritative/app.py", "shared/reference/perf.md"]
    assert [exists_in_repository(p) for p in cited_paths(text)] == [True, True, False]
    assert {"listing-get-apihandlesprefix", "a-b", "a-b-1"} <= heading_anchors(
        "## Listing: GET /api/handles?prefix=\n# A b\n# A b\n"
    )


# -- docs/topology.md lists every key ------------------------------------------------------------------


def _known_keys(raw: dict[str, object]) -> list[str]:
    """The keys the parser accepts where ``raw`` has one it does not: its error names them all."""
    with pytest.raises(ConfigError) as refused:
        parse_topology(raw)
    known = re.search(r"\(known: (.*)\)$", str(refused.value))
    assert known is not None, f"the parser's refusal lists no known keys: {refused.value}"
    listed = known.group(1)
    return list(ast.literal_eval(listed)) if listed.startswith("[") else [k.strip() for k in listed.split(",")]


def _section(title: str) -> str:
    """The text of docs/topology.md under the heading that starts with ``title``."""
    text = TOPOLOGY_DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    found = [part for part in parts if part.startswith(title)]
    assert found, f"docs/topology.md has no section {title!r}"
    return found[0]


def _row(section: str, key: str) -> list[str] | None:
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{key}`":
            return cells
    return None


NODE = {"listen": "127.0.0.1:8100", "role": "top", "prefix": "88"}
NODE_KEYS = _known_keys({"nodes": {"x": {**NODE, "no_such_key": 1}}})
TABLES = _known_keys({"nodes": {"x": NODE}, "no_such_table": {}})
TLS_KEYS = _known_keys({"nodes": {"x": NODE}, "tls": {"no_such_key": "x"}})


def test_the_parser_is_asked_for_its_keys() -> None:
    assert {"listen", "durability", "access_log", "cache", "upstream"} <= set(NODE_KEYS)
    assert TABLES == ["nodes", "tls"] and TLS_KEYS == ["ca"]


@pytest.mark.parametrize("key", NODE_KEYS)
def test_every_node_key_has_a_row(key: str) -> None:
    row = _row(_section("[nodes.NAME]"), key)
    assert row is not None and len(row) == 5 and all(row), f"docs/topology.md: no full row for `{key}`"


@pytest.mark.parametrize("key", TABLES)
def test_every_top_level_table_has_a_row(key: str) -> None:
    assert _row(_section("Top-level tables"), key) is not None


@pytest.mark.parametrize("key", TLS_KEYS)
def test_every_tls_key_has_a_row(key: str) -> None:
    assert _row(_section("[tls]"), key) is not None


SETTINGS = [("[nodes.NAME.cache]", f.name, f.default) for f in fields(CacheConfig)] + [
    ("[nodes.NAME.upstream]", f.name, f.default) for f in fields(UpstreamConfig)
]


@pytest.mark.parametrize(("title", "name", "default"), SETTINGS, ids=[name for _, name, _ in SETTINGS])
def test_every_cache_and_upstream_setting_has_its_default(title: str, name: str, default: float) -> None:
    row = _row(_section(title), name)
    assert row is not None, f"docs/topology.md {title}: no row for `{name}`"
    shown = [float(n) for n in re.findall(r"`(-?[0-9.]+)`", row[2])]
    assert float(default) in shown, f"docs/topology.md {title} `{name}`: the default is {default}, not {row[2]}"
