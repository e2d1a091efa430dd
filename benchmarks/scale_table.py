"""The scale benchmark's table: each figure of a run (``benchmarks.scale``) beside its target from
issue 12, and what the recursive node's slowest probe requests met on the machine."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["TARGETS", "print_table"]

# Issue 12's targets (at 10M identifiers and 1M answers, on the 2-CPU machine).
TARGETS = {
    "listing_page_ms": 50.0,
    "get_p99_during_listing_ms": 20.0,
    "mirror_records_per_second": 50_000,
    "mirror_primary_rss_mib": 300.0,
    "digest_ms": 1000.0,
    "get_ratio_at_n": 0.9,
    "recursive_rss_at_1m_mib": 1536.0,
    "recursive_worst_pause_ms": 50.0,
}


def _get(result: dict[str, Any], *keys: str) -> Any:
    """``result[k1][k2]...``, or None when a section is not available or a figure missing."""
    value: Any = result
    for key in keys:
        if not isinstance(value, dict) or value.get("available") is False or key not in value:
            return None
        value = value[key]
    return value


def _verdict(value: Any, limit: float, *, at_least: bool = False) -> str:
    if not isinstance(value, int | float):
        return "not available"
    ok = value >= limit if at_least else value < limit
    return "[green]MET[/green]" if ok else "[red]MISSED[/red]"


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if not isinstance(value, int | float):
        return "not available"
    return f"{value:,.{digits}f}{unit}"


def _under(table: Table, label: str, value: Any, limit: float, unit: str, digits: int = 2) -> None:
    """A row whose target is a figure under ``limit``."""
    table.add_row(label, _fmt(value, unit, digits), f"< {limit:g}{unit}", _verdict(value, limit))


def _reported(table: Table, label: str, figure: str) -> None:
    """A row with no target of its own, reported to explain the others."""
    table.add_row(label, figure, "(reported)", "")


def print_table(result: dict[str, Any], console: Console) -> None:
    load = result["load"]
    console.print(
        f"load: {load['identifiers']:,} identifiers at {load['per_second']:,}/s overall; "
        f"{load['bytes_per_identifier']:,} bytes per identifier on disk (SQLite file and WAL; "
        f"{load['bytes_per_identifier_database']:,} the file alone)"
    )
    for chunk in load["chunks"]:
        console.print(f"  {chunk['from']:>12,} - {chunk['to']:>12,}: {chunk['per_second']:>9,}/s")
    t = TARGETS
    n = f"{load['identifiers']:,}"
    table = Table(title=f"idres at scale: {n} identifiers, {result['setup']['answers']:,} recursive answers")
    for column in ("measure", "figure", "target", ""):
        table.add_column(column, justify="left" if column == "measure" else "right")
    listing = result["listing"]
    for name, label in (
        ("first_page", "listing: first page (max)"),
        ("deep_by_cursor", "listing: deep page by cursor (max)"),
        ("deep_by_page", f"listing: deep page=K, K={_get(listing, 'deep_page')} (max)"),
        ("count_only", "listing: count only, pageSize=0 (max)"),
    ):
        _under(table, label, _get(listing, name, "ms", "max"), t["listing_page_ms"], " ms")
    for section, label in (("get_during_listing", "listings"), ("get_during_digest", "digests")):
        idle = _get(result, "get_latency_alone", "latency_ms", "p99")
        _under(
            table,
            f"GET p99, {result['setup']['latency_connections']} connections, while {label} run "
            f"(alone: {_fmt(idle, ' ms', 2)})",
            _get(result, section, "get", "latency_ms", "p99"),
            t["get_p99_during_listing_ms"],
            " ms",
        )
    for name, label in (
        ("status", "digest: status with digest (max)"),
        ("digest", "digest: /api/replication/digest (max)"),
    ):
        _under(table, label, _get(result, "digest", name, "ms", "max"), t["digest_ms"], " ms")
    rate = _get(result, "mirror", "records_per_second")
    table.add_row(
        f"new mirror: records/s ({_fmt(_get(result, 'mirror', 'seconds'), ' s')} from its start; "
        f"{_fmt(_get(result, 'mirror', 'records_per_second_once_healthy'), '/s', 0)} once up)",
        _fmt(rate, "", 0),
        f">= {t['mirror_records_per_second']:,}",
        _verdict(rate, t["mirror_records_per_second"], at_least=True),
    )
    rss = _get(result, "mirror", "primary_peak_rss_mib")
    _under(table, "new mirror: primary's peak RSS meanwhile", rss, t["mirror_primary_rss_mib"], " MiB", 1)
    early, late = _get(result, "get_throughput", "at_checkpoint"), _get(result, "get_throughput", "at_n")
    ratio = _get(result, "get_throughput", "ratio")
    table.add_row(
        f"GET req/s at {n} / at {early['identifiers']:,} ({late['rps_median']:,} / {early.get('rps_median', 0):,})",
        _fmt(ratio, "", 3),
        f">= {t['get_ratio_at_n']}",
        _verdict(ratio, t["get_ratio_at_n"], at_least=True),
    )
    first, first_early = _get(late, "first_pass", "rps"), _get(early, "first_pass", "rps")
    _reported(
        table,
        f"  first pass over each sample, at N mostly from disk ({_fmt(first, '', 0)} / {_fmt(first_early, '', 0)})",
        _fmt(_get(result, "get_throughput", "first_pass_ratio"), "", 3),
    )
    rec = result["recursive"]
    per = _get(rec, "bytes_per_answer")
    value = _get(rec, "rss_at_1m_answers_mib")
    _under(
        table,
        f"recursive: RSS at 1M answers ({_get(rec, 'rss_at_1m_answers_is')}; {_fmt(per, ' B', 0)} an answer)",
        value,
        t["recursive_rss_at_1m_mib"],
        " MiB",
        1,
    )
    value = _get(rec, "worst_pause_machine_out_ms")
    tail = _fmt(_get(rec, "probe", "latency_from_due_ms", "p99.9"), " ms")
    _under(
        table,
        f"recursive: worst probe latency while filling ({_fmt(_get(rec, 'fill', 'per_second'), '/s', 0)}; "
        f"probe at {_get(rec, 'probe', 'priority')}), the time the machine itself stood still taken out",
        value,
        t["recursive_worst_pause_ms"],
        " ms",
    )
    _reported(
        table,
        f"  the same as measured, the machine's stand-stills in it (p99.9 {tail})",
        _fmt(_get(rec, "worst_pause_ms"), " ms", 2),
    )
    _reported(
        table,
        f"  an ordinary probe beside it, which also waits for a CPU (p99.9 "
        f"{_fmt(_get(rec, 'probe_ordinary', 'latency_from_due_ms', 'p99.9'), ' ms')})",
        _fmt(_get(rec, "worst_pause_ordinary_ms"), " ms", 2),
    )
    table.add_row(f"  CPUs while filling: {_get(rec, 'cpus')}", "", "", "")
    for cpu, meter in sorted((_get(rec, "machine") or {}).items()):
        _reported(
            table,
            f"  the machine's stand-stills on {cpu} (a real-time process {meter['priority']} late past "
            f"{meter['threshold_ms']:g} ms): times / in all / longest",
            f"{meter['count']:,} / {meter['total_ms']:,.0f} ms / {meter['max_ms']:.1f} ms",
        )
    worst = _get(rec, "kernel", "worst_interval") or {}
    _reported(
        table,
        "  the node's worst sample (every ~50 ms) by the kernel: on a CPU / waiting for one / major faults / steal",
        f"{worst.get('on_cpu_ms', '-')} / {worst.get('waited_ms', '-')} ms / {worst.get('major_faults', '-')} / "
        f"{worst.get('steal_ms', '-')} ms",
    )
    for request in (_get(rec, "worst_requests") or [])[:3]:
        around = request.get("kernel") or {}
        _reported(
            table,
            "  a slowest probe request: the machine stood still / what was left; in the samples around it "
            f"({around.get('samples_ms', '-')} ms) the node on a CPU / waiting for one / steal",
            f"{request['ms']:.1f} ms: {request['machine_stood_still_ms']:.1f} / {request['ms_machine_out']:.1f} ms; "
            f"{around.get('on_cpu_ms', '-')} / {around.get('waited_ms', '-')} / {around.get('steal_ms', '-')} ms",
        )
    _reported(
        table,
        "  the node's longest collection / longest late loop turn",
        f"{_fmt(_get(rec, 'node', 'gc_pause_max_ms'), ' ms')} / {_fmt(_get(rec, 'node', 'loop_late_max_ms'), ' ms')}",
    )
    down = _get(rec, "upstreams_marked_down")
    table.add_row(
        "recursive: upstreams marked down while filling",
        "not available" if down is None else (", ".join(down) or "none"),
        "none",
        "not available" if down is None else ("[green]MET[/green]" if not down else "[red]MISSED[/red]"),
    )
    console.print(table)
    console.print(f"machine: {result['machine']}")
    console.print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
