"""The load tool: installing wrk when it is missing, running it pinned to a core, and reading its output.

wrk is closed-loop: each of its connections sends the next request only when the previous answer
arrived, so a server that stalls is sent less and its stall is under-counted (coordinated omission,
the reason wrk2 times each request from when it was due). Its requests/s are throughput at
saturation; its percentiles are service times at that concurrency, not latencies at a fixed offered
rate. The help of every ``python -m benchmarks`` command and their result tables are made here too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from nodes.running.operator_secrets import ENV_SECRET

__all__ = [
    "SECRET_ENV",
    "SPREAD_LUA",
    "WrkResult",
    "command_parser",
    "ensure_wrk",
    "parse_duration",
    "parse_prometheus",
    "parse_wrk",
    "percentile",
    "pin",
    "report",
    "request_path",
    "results_table",
    "row_label",
    "run_wrk",
    "summarize",
    "write_paths",
]

SPREAD_LUA = Path(__file__).with_name("lua") / "spread.lua"
_JSON_MARK = "IDRES-WRK-JSON "
# The same characters the resolver's own client leaves unencoded in a handle (resolver/client.py).
_SAFE = "/:@!$&'()*+,;=-._~"


# The operator secret of the nodes a benchmark starts or measures comes from the environment, as the
# nodes' own does: a secret on the command line is in `ps` and in shell histories.
SECRET_ENV = ENV_SECRET


class ToolError(RuntimeError):
    """A benchmark tool is missing or failed; the message says what to do."""


def ensure_wrk() -> str:
    """The path of ``wrk``, installed with apt-get (as root) when it is not on PATH."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise ToolError("wrk is not installed and this is not root: install it (apt-get install wrk) and rerun")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"])
    output = ""
    for step in steps:  # install; if the package lists are missing or stale, update them and retry
        done = subprocess.run(step, capture_output=True, text=True, env=env, check=False)
        output = done.stdout[-2000:] + done.stderr[-2000:]
        if step[1] == "install" and done.returncode == 0 and shutil.which("wrk"):
            return shutil.which("wrk") or "wrk"
    raise ToolError(f"could not install wrk with apt-get (running as root):\n{output}")


def request_path(handle: str) -> str:
    """The request path of ``handle`` on the HANDLE.NET REST API, encoded as the resolver's client does."""
    return "/api/handles/" + quote(handle, safe=_SAFE)


def write_paths(path: Path, handles: Iterable[str]) -> int:
    """Write one request path per line for ``spread.lua``; returns how many."""
    count = 0
    with open(path, "w", encoding="ascii") as out:
        for handle in handles:
            out.write(request_path(handle) + "\n")
            count += 1
    if not count:
        raise ValueError("no handles to write")
    return count


@dataclass(slots=True)
class WrkResult:
    """One wrk run. Latencies are in milliseconds."""

    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    command: str = ""

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_duration(text: str) -> float:
    """A wrk duration such as ``812.00us``, ``1.23ms``, ``2.01s`` or ``1.00m``, in milliseconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read wrk's text output and, when present, the JSON line ``spread.lua``'s ``done()`` prints.

    The JSON line is preferred (exact microseconds, p99.9); without it the ``--latency`` distribution
    and the summary lines are used.
    """
    errors: dict[str, int] = {}
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, socket.groups()), strict=True))
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    for line in output.splitlines():
        if line.startswith(_JSON_MARK):
            data = json.loads(line[len(_JSON_MARK) :])
            seconds = data["duration_us"] / 1e6
            exact = {k: v / 1000 for k, v in data["latency_us"].items()}
            errors = {k: int(v) for k, v in data["errors"].items() if k != "status"}
            non_2xx = int(data["errors"].get("status", non_2xx))
            return WrkResult(
                data["requests"], seconds, data["requests"] / seconds if seconds else 0.0, exact, errors, non_2xx
            )
    total = re.search(r"(\d+) requests in ([0-9.]+\w+),", output)
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", output)
    if total is None or rps is None:
        raise ValueError("wrk output has no summary (did the run fail?):\n" + output[-1000:])
    latency: dict[str, float] = {}
    for pct, value in re.findall(r"^\s*(\d+)%\s+([0-9.]+\w+)\s*$", output, flags=re.M):
        latency[f"p{pct}"] = parse_duration(value)
    avg = re.search(r"Latency\s+([0-9.]+\w+)\s+([0-9.]+\w+)\s+([0-9.]+\w+)", output)
    if avg:
        latency.update(
            mean=parse_duration(avg.group(1)), stdev=parse_duration(avg.group(2)), max=parse_duration(avg.group(3))
        )
    return WrkResult(
        int(total.group(1)), parse_duration(total.group(2)) / 1000, float(rps.group(1)), latency, errors, non_2xx
    )


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process to ``cpus`` (None: every CPU again). A no-op where affinity is not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(OSError, ValueError):  # the process may have exited already
        os.sched_setaffinity(pid, cpus if cpus is not None else set(range(os.cpu_count() or 1)))


def load_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server CPU, load-generator CPU): the first and the last CPU, or no pinning on a single CPU."""
    count = os.cpu_count() or 1
    if count < 2:
        return None, None
    return {0}, {count - 1}


def run_wrk(
    url: str,
    paths_file: Path,
    *,
    duration: float = 10.0,
    connections: int = 64,
    threads: int = 1,
    cpus: set[int] | None = None,
    extra: Sequence[str] = (),
    offset: int = 0,
) -> WrkResult:
    """Run wrk with ``spread.lua`` over ``paths_file`` against ``url`` (scheme, host and port); its
    (first) thread starts at line ``offset`` of the file."""
    wrk = ensure_wrk()
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(SPREAD_LUA),
        *extra,
        url,
        "--",
        str(paths_file),
        str(offset),
    ]

    def pin_self() -> None:
        if cpus is not None:
            pin(0, cpus)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, preexec_fn=pin_self, check=False)
    if done.returncode != 0:
        raise ToolError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    result = parse_wrk(done.stdout)
    result.command = " ".join([Path(cmd[0]).name, *cmd[1:]])
    return result


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of an ascending list (what HdrHistogram and wrk report): the
    smallest value with at least ``pct`` percent of the values at or below it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats going wrong at 100
    return float(sorted_values[min(int(rank), len(sorted_values)) - 1])


def summarize(latencies_ms: Iterable[float]) -> dict[str, float]:
    """count, mean and the p50/p90/p99/p99.9/max of latencies in milliseconds."""
    values = sorted(latencies_ms)
    if not values:
        return {"count": 0}
    out = {"count": float(len(values)), "mean": sum(values) / len(values)}
    for name, pct in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        out[name] = percentile(values, pct)
    out["max"] = values[-1]
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition: (name, sorted labels) -> value."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        try:
            samples[(match.group(1), labels)] = float(match.group(3))
        except ValueError:
            continue
    return samples


def report(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Console], dict[str, Any]],
    print_table: Callable[[dict[str, Any], Console], None],
) -> int:
    """The end of every benchmark's ``main``: run it, print its table, write its figures to ``args.json``."""
    console = Console()
    result = run(args, console)
    print_table(result, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"figures written to {args.json}")
    return 0


# -- the commands' help and result tables -----------------------------------------------------------


_NO_DEFAULT = (None, False, argparse.SUPPRESS)  # defaults not worth showing (a flag's False); 0 is shown


class _ClickStyle(argparse.HelpFormatter):
    """argparse help laid out as click lays out the other benchmark commands' (``python -m benchmarks
    bulk --help``): "Usage: ... [OPTIONS]", the description indented, "Options:", each option's
    default after its help as ``[default: X]``."""

    def add_usage(
        self, usage: str | None, actions: Iterable[argparse.Action], groups: Any, prefix: str | None = None
    ) -> None:
        super().add_usage(usage, actions, groups, prefix="Usage: ")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            textwrap.fill(p, width, initial_indent="  ", subsequent_indent="  ") for p in text.split("\n\n")
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # paths stay whole

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("%", "%%")  # argparse %-formats help strings
        default = action.default
        if action.option_strings and not action.required and all(default is not v for v in _NO_DEFAULT):
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
            text += f"  [default: {shown.replace('%', '%%')}]"
        return text


class _Parser(argparse.ArgumentParser):
    """Lists ``--help`` last among the options, as click does."""

    def format_help(self) -> str:
        actions = self._optionals._group_actions
        actions.sort(key=lambda action: "--help" in action.option_strings)  # stable: the rest keep their order
        return super().format_help()


def _refusing(message: str) -> type[argparse.Action]:
    """An option that is gone: naming it stops with ``message``, what to do instead."""

    class Refused(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
            parser.error(message)

    return Refused


def command_parser(command: str, description: str, *, refuse_secret: bool = False) -> argparse.ArgumentParser:
    """The option parser of ``python -m benchmarks COMMAND``, in the one help style of every command.
    ``description`` is the command's one sentence, the same as its entry in ``python -m benchmarks
    --help``. With ``refuse_secret``, the old ``--secret`` option stops with where the secret comes
    from now (``SECRET_ENV``)."""
    parser = _Parser(
        prog=f"python -m benchmarks {command}",
        usage="%(prog)s [OPTIONS]",
        description=description,
        formatter_class=_ClickStyle,
        add_help=False,
    )
    parser._optionals.title = "Options"
    parser.add_argument("--help", action="help", help="Show this message and exit.")
    if refuse_secret:
        gone = (
            f"--secret is gone: set {SECRET_ENV} in the environment instead "
            "(a secret on the command line shows in ps and in shell histories)"
        )
        parser.add_argument("--secret", nargs="?", action=_refusing(gone), help=argparse.SUPPRESS)
    return parser


# Row labels of result tables: a benchmark's keys (``recursive_hot``) with spaces, so a narrow
# terminal wraps them between words.
def row_label(key: str) -> str:
    return key.replace("_", " ")


def results_table(title: str, columns: Sequence[str]) -> Table:
    """A table of figures that stays readable in 80 columns: the first column holds the row labels
    (left), the others figures (right); a cell too wide wraps, at spaces and else anywhere
    (``overflow="fold"``), instead of ending in "…", so no two rows' labels are cut to the same text."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    return table
