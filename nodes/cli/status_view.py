"""``idres status`` on a terminal: the table of nodes, the mirrors, and what needs attention.

Laid out for 80 columns: each cell stacks two short lines (a node's name over its URL, its role over
its epoch, its records over its change-log position, or a recursive node's cache size over its hit
ratio) rather than spreading them over columns, and the prose goes below the table, wrapped between
words. Nothing is cut: a column too narrow folds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from nodes.cli.status import gather, known_secrets
from nodes.cli.status_report import MirrorLink, NodeRow, Report, assess
from resolver.config import Topology

__all__ = ["print_report", "run_status"]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _cells(row: NodeRow) -> tuple[Text, Text, str, str, str]:
    node = Text(row.name, style="bold")
    node.append("\n" + row.url, style="")
    up = Text("up", style="green") if row.up else Text("DOWN", style="bold red")
    if not row.up:
        return node, up, row.kind, row.prefix or "-", "-"
    if row.kind == "recursive":
        ratio = "-" if row.hit_ratio is None else f"{row.hit_ratio:.1%}"
        return node, up, "recursive", "-", f"{_count(row.cache_entries)} cached\n{ratio} hits"
    role = f"{row.role or '?'}\nepoch {_count(row.epoch)}"
    data = f"{_count(row.records)} records\nseq {_count(row.last_seq)}"
    return node, up, role, row.prefix or "-", data


def _table(report: Report) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    widest = max((max(len(r.name), len(r.url)) for r in report.nodes), default=4)
    table.add_column("Node", overflow="fold", min_width=widest)
    table.add_column("Up", overflow="fold")
    table.add_column("Role", overflow="fold")
    table.add_column("Prefix", overflow="fold")
    table.add_column("Data", overflow="fold")
    for row in report.nodes:
        table.add_row(*_cells(row))
    return table


def _link_line(link: MirrorLink) -> Text:
    line = Text(f"{link.mirror} follows {link.primary}: ", style="")
    if link.state in ("down", "unknown"):
        line.append(link.state, style="bold red")
        return line
    line.append(link.state, style="green" if link.state == "following" else "bold yellow")
    line.append(f", applied seq {_count(link.applied_seq)}, lag {_count(link.lag_seq)}, ")
    if link.lag_seconds is None:
        line.append("never caught up")
    else:
        line.append("caught up" if link.lag_seconds == 0 else f"last caught up {link.lag_seconds:g} s ago")
    if link.digest == "agrees":
        line.append("; digest ")
        line.append("agrees", style="green")
    elif link.digest == "differs":
        line.append("; digest ")
        line.append("DIFFERS", style="bold red")
    else:
        line.append(f"; digest unchecked: {link.digest_note}")
    if link.seen_seconds_ago is not None:
        line.append(f"; {link.primary} last polled {link.seen_seconds_ago:g} s ago")
    if link.last_error:
        line.append(f"; last error: {link.last_error}")
    return line


def _indented(text: Text) -> Padding:
    return Padding(text, (0, 0, 0, 2))


def print_report(console: Console, report: Report) -> None:
    """The report for people: the table, one line per mirror, the recursive nodes' upstreams, the
    problems, and a last line that says whether all is well."""
    up = sum(row.up for row in report.nodes)
    console.print(Text(f"{len(report.nodes)} nodes, {up} up"))
    console.print(_table(report))
    if report.links:
        console.print(Text("Mirrors", style="bold"))
        for link in report.links:
            console.print(_indented(_link_line(link)))
    recursive = [row for row in report.nodes if row.kind == "recursive" and row.up]
    if recursive:
        console.print(Text("Recursive", style="bold"))
    for row in recursive:
        down = ", ".join(row.upstreams_down) or "none"
        hits = (
            "no lookups yet" if row.hit_ratio is None else f"hits {row.hit_ratio:.1%} of {_count(row.lookups)} lookups"
        )
        workers = "" if row.workers is None else f"; {row.workers[0]} of {row.workers[1]} workers answer"
        line = f"{row.name}: cache {hits}; upstreams marked down: {down}"
        console.print(_indented(Text(line + workers)))
    for note in report.notes:
        console.print(Text(f"Note: {note}", style="dim"))
    if report.ok:
        console.print(Text("All is well.", style="bold green"))
        return
    console.print(Text(f"Needs attention ({len(report.problems)}):", style="bold red"))
    for problem in report.problems:
        console.print(_indented(Text(f"{problem.node}: {problem.message}")))


def run_status(
    topology: Topology,
    data_dir: Path,
    *,
    cafile: str | None,
    as_json: bool,
    timeout: float,
    max_lag: float,
    console: Console,
) -> int:
    """``idres status``: ask every node, print the report; 0 when all is well, 1 when something needs
    attention. A ConfigError (a CA file that cannot be read) goes to the caller."""
    secrets, missing = known_secrets(data_dir, topology)
    answers = asyncio.run(gather(topology, secrets, cafile=cafile or topology.tls_ca, timeout=timeout))
    notes = [f"digests not compared: {missing}"] if missing else []
    report = assess(topology, answers, max_lag=max_lag, notes=notes)
    if as_json:
        console.file.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")  # never wrapped
    else:
        print_report(console, report)
    return 0 if report.ok else 1
