"""The shape of the code a newcomer relies on (docs/architecture.md): packages by role, imports one way,
no module too long, no name that hides a standard-library module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("resolver", "nodes", "benchmarks")
MAX_LINES = 500
# The sans-IO core decides; it never touches a socket, a file or a loop (STYLE.md §1).
SANS_IO = (
    "resolver.auth",
    "resolver.backoff",
    "resolver.bodies",
    "resolver.cache",
    "resolver.codec",
    "resolver.config",
    "resolver.errors",
    "resolver.limits",
    "resolver.names",
    "resolver.records",
    "resolver.resolution",
    "resolver.sites",
    "resolver.upstream",
    "resolver.values",
    "resolver.zone",
)
IO_LIBRARIES = ("aiohttp", "aiosqlite", "asyncio", "socket", "sqlite3", "uvloop")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of this project that ``name`` imports, ``TYPE_CHECKING`` and function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def test_no_import_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_package_inits_import_only_their_own_modules() -> None:
    """A package's ``__init__`` may re-export its own modules (a facade), nothing else: one that imported
    another package would tie the two together for every importer."""
    foreign = {
        name: sorted(t for t in _imports(name, path) if not t.startswith(name + "."))
        for name, path in MODULES.items()
        if path.name == "__init__.py"
    }
    assert {name: found for name, found in foreign.items() if found} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_at_most_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it by idea"


def test_no_module_shadows_the_standard_library() -> None:
    shadowing = sorted(str(path.relative_to(ROOT)) for path in MODULES.values() if path.stem in sys.stdlib_module_names)
    assert shadowing == []


@pytest.mark.parametrize("name", SANS_IO)
def test_the_core_imports_no_io_library(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported & set(IO_LIBRARIES) == set()


TEST_MODULES = sorted((ROOT / "tests").rglob("*.py"))


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_test_modules_are_at_most_500_lines_and_import_no_other_test_module(path: Path) -> None:
    """Tests mirror the code and are split by topic; what several share lives in conftest.py or a helper
    module (tests/fakes.py, tests/processes.py...), never in another test module."""
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(ROOT)}: split it by topic"
    imported = [
        node.module
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.")
    ]
    assert [m for m in imported if m.rpartition(".")[2].startswith("test_")] == []
