"""The bench's report: what ran where, the tables, what each scenario means, the issue's targets, JSON."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite", "format_report", "run_meta", "targets"]


def _ratio(rows: dict[str, dict[str, Any]], a: str, b: str, figure: str) -> float | None:
    """Row a's figure over row b's (b "": the figure itself); None unless both rows measured it."""
    ok = [name for name in (a, b) if name and rows.get(name, {}).get("status") == "ok"]
    if len(ok) != len([name for name in (a, b) if name]):
        return None
    return float(rows[a][figure]) / (float(rows[b][figure]) if b else 1.0)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure this run measured and whether it is met."""
    rows = {row["name"]: row for row in report["scenarios"]}
    checks: list[tuple[str, float | None, float, bool]] = [  # (what, measured, bound, higher is better)
        ("hit QPS / floor QPS >= 0.85", _ratio(rows, "hit", "floor", "qps"), 0.85, True),
        ("malformed QPS / floor QPS >= 0.9", _ratio(rows, "malformed", "floor", "qps"), 0.9, True),
        ("hit QPS / miss QPS >= 1.5", _ratio(rows, "hit", "miss", "qps"), 1.5, True),
        ("hit CPU/call / floor CPU/call <= 1.15",
         _ratio(rows, "hit", "floor", "cpu_us_per_call"), 1.15, False),
        ("extauthz QPS / hit QPS >= 0.8", _ratio(rows, "extauthz", "hit", "qps"), 0.8, True),
        ("hit-workers2 CPU/call / hit CPU/call <= 1.1",
         _ratio(rows, "hit-workers2", "hit", "cpu_us_per_call"), 1.1, False),
        ("inprocess CPU/call <= 3 us", _ratio(rows, "inprocess", "", "cpu_us_per_call"), 3.0, False),
        ("hit CPU/call / inprocess CPU/call >= 50", _ratio(rows, "hit", "inprocess", "cpu_us_per_call"),
         50.0, True),
    ]
    for name in ("envoy-http", "http"):  # a core's worth of checks: 1 s / CPU per check
        cpu = rows[name]["cpu_us_per_call"] if rows.get(name, {}).get("status") == "ok" else None
        per_core = 1e6 / float(cpu) if cpu else None
        checks.append((f"{name} checks/s per keysvc core >= 20,000", per_core, 20_000.0, True))
    checks.append(("envoy-grpc CPU/check / envoy-http CPU/check >= 4",
                   _ratio(rows, "envoy-grpc", "envoy-http", "cpu_us_per_call"), 4.0, True))
    if report.get("propagation", {}).get("measured"):
        checks.append(("propagation p99 < 50 ms", report["propagation"]["p99_ms"], 50.0, False))
    for stage in report.get("memory", {}).get("stages", []):
        checks.append((f"RSS per cached key at {stage['keys']:,} keys <= 1024 bytes",
                       stage["bytes_per_key"], 1024.0, False))
    return [
        {"target": what, "measured": measured,
         "met": None if measured is None else (measured >= bound if higher else measured <= bound)}
        for what, measured, bound, higher in checks
    ]


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """A figure for the table; "-" when not measured (NaN, or null once read back from JSON)."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}{suffix}"


def format_report(report: dict[str, Any]) -> str:
    """Return the report as text: the table, what each scenario means, and notes."""
    meta = report["meta"]
    header = ("scenario", "QPS", "x floor", "p50 ms", "p99 ms", "p99.9 ms", "CPU us/call",
              "CPU x floor", "redis trips/call", "h2load CPU")
    lines = [f"# {meta['command']}", f"# {meta['pinning']}", f"# load: {meta['load']}",
             f"# {meta['cpus']} CPUs, {meta['machine']}, Linux {meta['kernel']}, Python {meta['python']}, "
             f"grpcio {meta['grpcio']}, {meta['h2load']}", ""]
    table: list[tuple[str, ...]] = [header]
    for row in report["scenarios"]:
        if row.get("via"):
            continue  # the HTTP rows' table, below
        if row["status"] != "ok":
            table.append((row["name"], row["status"], *("" for _ in header[2:])))
            continue
        table.append((
            row["name"], _num(row["qps"]), _num(row["qps_vs_floor"], 2, "x"), _num(row["p50_ms"], 2),
            _num(row["p99_ms"], 2), _num(row["p999_ms"], 2), _num(row["cpu_us_per_call"]),
            _num(row["cpu_vs_floor"], 2, "x"), _num(row["store_round_trips_per_call"], 2),
            _num(row["client_cpu"] and row["client_cpu"] * 100, 0, "%")
            + (" SATURATED" if row["client_saturated"] else ""),
        ))
    if len(table) > 1:
        lines += [*_aligned(table), ""]
    http_rows = [row for row in report["scenarios"] if row.get("via")]
    if http_rows:
        lines += [f"# {meta.get('http_load', 'HTTP rows')}; Envoy {meta.get('envoy', '?')}",
                  *_aligned(_http_table(http_rows)), ""]
    for row in report["scenarios"]:
        lines.append(f"{row['name']}: {row['meaning']}")
        lines += [f"    note: {n}" for n in row["notes"]] + [f"    ERROR: {e}" for e in row["errors"]]
    if "memory" in report:
        from keysvc.bench.memory import format_memory

        lines += ["", *format_memory(report["memory"])]
    if "propagation" in report:
        from keysvc.bench.propagation import format_propagation

        lines += ["", *format_propagation(report["propagation"])]
    lines += ["", "targets (from the issue; ratios from this run):"]
    for target in report.get("targets", []):
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"    {target['target']:<52} {_num(target['measured'], 2):>8}  {verdict}")
    lines.append(f"\n(bench took {meta['elapsed_s']} s)")
    return "\n".join(lines)


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for cells in table:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(padded))
    return lines


def _http_table(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Envoy-side figures: QPS and latency at h2load, CPU per request on each side of the hop."""
    header = ("scenario", "QPS", "p50 ms", "p99 ms", "keysvc CPU us/check", "checks/s per keysvc core",
              "Envoy CPU us/req", "keysvc cores per Envoy core", "client core (h2load+Envoy)")
    table: list[tuple[str, ...]] = [header]
    for row in rows:
        if row["status"] != "ok":
            table.append((row["name"], row["status"], *("" for _ in header[2:])))
            continue
        cpu = row["cpu_us_per_call"]
        per_core = None if cpu is None or math.isnan(cpu) or cpu <= 0 else 1e6 / cpu
        envoy = row.get("proxy_cpu")
        busy = row["client_cpu"] + (0.0 if envoy is None or math.isnan(envoy) else envoy)
        table.append((
            row["name"], _num(row["qps"]), _num(row["p50_ms"], 2), _num(row["p99_ms"], 2), _num(cpu),
            _num(per_core), _num(row.get("proxy_cpu_us_per_call"), 1),
            _num(row.get("keysvc_cores_per_envoy_core"), 1),
            _num(busy * 100, 0, "%") + (" SATURATED" if row["client_saturated"] else ""),
        ))
    return table


def run_meta(options: Any, pinning: str, h2load: str) -> dict[str, Any]:
    """What ran where: the command, pinning, load, machine and versions (`options`: BenchOptions)."""
    import os
    import platform
    import subprocess
    import sys
    from dataclasses import asdict

    import grpc

    from keysvc.bench.envoy import envoy_version

    version = subprocess.run([h2load, "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "command": "keysvc " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "keysvc bench",
        "pinning": pinning,
        "load": (f"h2load -D {options.duration_s:g} -c {options.connections} -m {options.streams} -t 1 "
                 f"(after a {options.warmup_s:g} s unmeasured warm-up), one key per scenario, "
                 f"{options.connections * options.streams} calls in flight, {options.rounds} round(s) "
                 "round-robin, a fresh server each time"),
        "cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
        "python": platform.python_version(), "grpcio": grpc.__version__,
        "h2load": version.strip().split("\n")[0],
        "http_load": (f"HTTP rows: h2load --h1 -c {options.http_connections} -m 1 (GET, the key in "
                      "x-api-key); Envoy --concurrency 1 pinned with h2load, its app a direct_response"),
        "envoy": envoy_version(),
        "options": {k: v for k, v in asdict(options).items() if k != "scenarios"},
    }


def finite(value: Any) -> Any:
    """The report with NaN (not measured) as null, which JSON can hold."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
