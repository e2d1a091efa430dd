"""What ``idres up`` prints: the nodes at any terminal width, and commands that run when pasted.

At 80 columns rich's default table cut URLs before their port and the commands to try were wrapped
mid-argument, so a paste ran half a command (issue 13, findings 1 and 2). Here the table is printed
only if it fits whole, else one block per node; a command is broken only between arguments, with a
shell line continuation, and never folded; and it names the ``idres`` that is running (the README
installs into ``.venv`` without activating it, so a bare ``idres`` was "command not found").
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nodes.running.operator_secrets import ENV_SECRET, SECRETS_FILE
from nodes.running.seeding import DEMO_CAR, Seeded
from resolver.config import NodeSpec, Topology
from resolver.names import prefix_handle

__all__ = ["command_lines", "idres_words", "print_command", "print_nodes", "print_summary", "say", "shown_path"]

INDENT = "  "
CONTINUED = "  "  # the lines after a `\`: further in than the first, so the command reads as one


def shown_path(path: Path) -> str:
    """``path`` as short as a command typed here can use it: relative to the working directory when
    it lies inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if relative.parts else "."


def idres_words() -> list[str]:
    """How to run ``idres`` again from this directory: ``idres`` when that is what the shell finds,
    else the script that is running (``.venv/bin/idres`` of a venv not activated), else this Python
    with ``-m nodes``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.name != "idres" or not script.is_file():
        # `python -m nodes`: the venv's own script, if it has one.
        script = Path(sys.executable).parent / "idres"
    if script.is_file():
        found = shutil.which("idres")
        if found is not None and Path(found).resolve() == script.resolve():
            return ["idres"]
        shown = shown_path(script)
        return [shown if os.sep in shown else f".{os.sep}{shown}"]
    return [shown_path(Path(sys.executable)), "-m", "nodes"]


def _units(words: Sequence[str]) -> list[str]:
    """The quoted words, an option kept with its value: a command is broken only between units."""
    quoted = [shlex.quote(w) for w in words]
    units: list[str] = []
    for word in quoted:
        if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
            units[-1] += " " + word
        else:
            units.append(word)
    return units


def command_lines(words: Sequence[str], width: int, indent: str = INDENT) -> list[str]:
    """The shell command ``words`` as lines of at most ``width`` columns where it can be: broken
    between arguments with `` \\``, so the lines pasted together run it. A single argument wider
    than that stays whole on its own line."""
    units = _units(words)
    lines: list[str] = []
    line = indent + units[0]
    for n, unit in enumerate(units[1:], start=2):
        room = width - (0 if n == len(units) else 2)  # a line that is continued ends with " \"
        if len(line) + 1 + len(unit) <= room:
            line += " " + unit
        else:
            lines.append(line + " \\")
            line = indent + CONTINUED + unit
    lines.append(line)
    return lines


def print_command(console: Console, words: Sequence[str], indent: str = INDENT) -> None:
    """Print a command to paste: no markup, no colours, never folded by the console."""
    for line in command_lines(words, console.width, indent):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def say(console: Console, text: str, *, lead: str = "") -> None:
    """Prose wrapped at spaces to the console's width, each line of ``text`` on its own, and a path or
    URL longer than a line left whole (rich would fold it in two); ``lead`` in red before it (an
    error's "idres up cannot start:")."""
    first = True
    for paragraph in (f"{lead} {text}" if lead else text).splitlines() or [""]:
        wrapped = textwrap.wrap(paragraph, console.width, break_long_words=False, break_on_hyphens=False)
        for line in wrapped or [""]:
            shown = Text(line)
            if first and lead:
                shown.stylize("red", 0, len(lead))
            first = False
            console.print(shown, soft_wrap=True, highlight=False)


def _role(spec: NodeSpec) -> str:
    return "mirror" if spec.mirror_of else spec.role


def _identity(spec: NodeSpec) -> str:
    return f"300:{prefix_handle(spec.prefix)}" if spec.prefix and not spec.is_mirror else "-"


def print_nodes(console: Console, topology: Topology) -> None:
    """The nodes as a table when it fits the console whole, else one block per node: a URL or an
    identity is never cut."""
    header = ("node", "role", "prefix", "URL", "operator identity")
    rows = [(s.name, _role(s), s.prefix or "-", s.url, _identity(s)) for s in topology.nodes.values()]
    # Each column as wide as its widest cell, two spaces between columns (box=None, no edge padding).
    natural = sum(max(cell_len(row[i]) for row in [header, *rows]) for i in range(len(header)))
    if natural + 2 * (len(header) - 1) <= console.width:
        table = Table(title="idres: nodes running", box=None, pad_edge=False, header_style="bold")
        for column in header:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        console.print("idres: nodes running", style="bold")
        for spec in topology.nodes.values():
            console.print(f"{spec.name}: {_role(spec)}" + (f", prefix {spec.prefix}" if spec.prefix else ""))
            console.print(f"{INDENT}{spec.url}", highlight=False, soft_wrap=True)
            if _identity(spec) != "-":
                console.print(f"{INDENT}operator {_identity(spec)}", highlight=False, soft_wrap=True)
    for spec in topology.nodes.values():
        if spec.mirror_of:
            say(console, f"{spec.name} is a mirror of {spec.mirror_of} and uses its operator identity.")


def print_summary(
    console: Console,
    topology: Topology,
    data_dir: Path,
    seeded: list[Seeded],
    secrets: dict[str, str],
    *,
    new: bool = False,
) -> None:
    """Everything ``idres up`` says once the nodes are up: nodes, data (``new``: made by this start, which
    a mistyped --data shows), secrets, commands to try."""
    print_nodes(console, topology)
    shown = shown_path(data_dir)
    say(console, f"Data directory: {shown}" + (" (new)" if new else ""))
    say(console, f"Logs: {os.path.join(shown, 'logs')}")
    if os.environ.get(ENV_SECRET):
        console.print(f"Operator secrets: all nodes use ${ENV_SECRET}.")
    else:
        say(console, f"Operator secrets (kept in {os.path.join(shown, SECRETS_FILE)}, mode 0600):")
        width = max(map(len, secrets), default=0)
        for name, secret in secrets.items():
            console.print(f"{INDENT}{name:{width}}  {secret}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"Registered: {len(seeded)} delegations, hosted prefixes and demo identifiers.")
    cacert = ["--cacert", shown_path(Path(topology.tls_ca))] if topology.tls_ca else []
    if topology.tls_ca:
        say(console, f"HTTPS: certificates from the local CA {cacert[1]}; clients verify against it.")
    idres = idres_words()
    console.print("\nTry:")
    recursive = next((n for n in topology.nodes.values() if n.role == "recursive"), None)
    if recursive is not None:
        print_command(console, [*idres, "resolve", DEMO_CAR, "--server", recursive.url, *cacert])
        # -G -d: the query without a `?`, which zsh would take for a glob, and a URL that fits a line.
        trace = f"{recursive.url}/api/handles/{DEMO_CAR}"
        print_command(console, ["curl", "-s", *cacert, "-G", "-d", "trace=true", trace])
    root = topology.roots()[0].url if topology.roots() else None
    if root is not None:
        print_command(console, [*idres, "resolve", DEMO_CAR, "--server", root, *cacert])
        print_command(console, ["curl", "-s", *cacert, f"{root}/api/handles/0.NA/88.118"])
    automaker = next((n for n in topology.primaries() if n.prefix == "88.118.8"), None)
    if automaker is not None:
        print_command(console, ["curl", "-s", *cacert, f"{automaker.url}/api/handles/{DEMO_CAR}"])
    if idres == ["idres"]:
        return
    activate = Path(idres[0]).parent / "activate"
    if activate.is_file():
        say(console, f"(Or `source {shown_path(activate)}` first, and type just `idres`.)")
