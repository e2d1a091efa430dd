"""``idres check``: the full integrity check of each authoritative node's SQLite file, one line per node."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodes.running.serve import db_path
from resolver.config import Topology
from resolver.errors import ConfigError, HandleError
from resolver.storage.integrity import check_file, damaged, marker_path, refuse_emptied

__all__ = ["NodeCheck", "check_node", "run_check"]

_PREFIX = "storage error: "


@dataclass(frozen=True, slots=True)
class NodeCheck:
    """What the check found for one node: ``ok``, and a line for people."""

    name: str
    ok: bool
    line: str


def check_node(name: str, path: Path) -> NodeCheck:
    """``PRAGMA integrity_check`` of ``path`` in full (no time limit: this is the operator's own
    command, the start-up check is the bounded one); a file never created is not a failure."""
    try:
        refuse_emptied(path)
    except HandleError as exc:
        return NodeCheck(name, False, f"{name}: {exc.message.removeprefix(_PREFIX)}")
    if not path.exists():
        return NodeCheck(name, True, f"{name}: no database yet ({path}): the node has not stored anything")
    problems = check_file(path, full=True)
    if problems:
        return NodeCheck(name, False, f"{name}: {damaged(path, problems).message.removeprefix(_PREFIX)}")
    return NodeCheck(name, True, f"{name}: ok ({path})")


def run_check(topology: Topology, data_dir: Path, names: Sequence[str], echo: Callable[[str], object]) -> int:
    """Check the named nodes (every authoritative node when none is named): 0 when all are ok, else 1
    (also when none of them has a database in ``data_dir``)."""
    specs = [topology.node(name) for name in names] or list(topology.nodes.values())
    if names:
        recursive = [spec.name for spec in specs if spec.role == "recursive"]
        if recursive:
            raise ConfigError(f"{', '.join(recursive)}: a recursive node keeps no database to check")
    paths = {spec.name: db_path(data_dir, spec.name) for spec in specs if spec.role != "recursive"}
    if paths and not any(path.exists() or marker_path(path).exists() for path in paths.values()):
        # A mistyped --data is not "every node is fine": nothing was checked.
        echo(f"{data_dir} holds no node's database: is it the --data directory the nodes use? Nothing checked.")
        return 1
    results = [check_node(name, path) for name, path in paths.items()]
    for result in results:
        echo(result.line)
    return 0 if all(result.ok for result in results) else 1
