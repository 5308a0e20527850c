"""`keysvc bench`: keysvc against the floor, in one run, on loopback, same load generator.

Each scenario gets its own server process, pinned to one core (taskset), and is
driven by h2load pinned to the other core, with redis-server; h2load sends real
gRPC frames at a fixed concurrency for a fixed duration, one key per scenario.
Before the load, a real gRPC client probes the scenario and checks the answer's
code (h2load sees HTTP statuses only); during it, the answer bytes are checked
against the probe's. Figures per scenario: QPS, p50/p99/p99.9 latency (from
h2load's per-request log), server CPU microseconds per call (/proc clocks of the
server and its threads and workers), Redis commands per call, ratios to the
floor, and h2load's own CPU use (to tell when the client was the bottleneck).

The Envoy and forward-auth rows (keysvc.bench.envoy) send HTTP/1.1 through a
real Envoy, or straight to keysvc's HTTP listener, and meter Envoy apart.

Optional: RSS per cached key (`--memory`, see keysvc.bench.memory) and
revocation propagation between two servers (`--propagation`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keysvc.bench.report import finite, format_report, run_meta, targets

__all__ = ["BenchOptions", "Row", "format_report", "main", "options_from", "run"]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """How hard and how long to drive each scenario, and what else to measure."""

    scenarios: tuple[str, ...]
    duration_s: float = 5.0
    warmup_s: float = 1.0
    connections: int = 8
    streams: int = 8
    server_cpu: int | None = 0
    client_cpu: int | None = 1
    rounds: int = 1  # each scenario runs this many times, round-robin; the table shows medians
    memory_keys: tuple[int, ...] = ()  # empty: no memory measurement
    revocations: int = 0  # 0: no propagation measurement
    stall_samples: int = 100  # misses timed with the store stopped, per stall row
    http_connections: int = 16  # h2load --h1 connections of the Envoy and http rows, one request each


@dataclass(slots=True)
class Row:
    """One scenario's figures (nan where not measured)."""

    name: str
    meaning: str
    status: str = "ok"  # ok | n/a | error
    qps: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    cpu_us_per_call: float = math.nan
    qps_vs_floor: float = math.nan
    cpu_vs_floor: float = math.nan
    store_round_trips_per_call: float = math.nan  # Redis total_reads_processed per call
    store_cmds_per_call: float = math.nan  # Redis total_commands_processed per call
    client_cpu: float = math.nan
    client_saturated: bool = False
    miss_budget_p50_ms: float = math.nan  # stall rows: a miss with the store stopped
    miss_budget_p99_ms: float = math.nan
    miss_budget_max_ms: float = math.nan
    via: str = ""  # the HTTP rows' path (envoy-grpc, ..., http); "" for gRPC straight to the server
    proxy_cpu_us_per_call: float = math.nan  # Envoy's CPU per request
    proxy_cpu: float = math.nan  # fraction of one core Envoy used
    keysvc_cores_per_envoy_core: float = math.nan  # keysvc CPU per check / Envoy CPU per request
    calls: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)  # per round: qps, cpu_us_per_call, p99_ms
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pinning(options: BenchOptions) -> str:
    if options.server_cpu is None:
        return "not pinned (--unpinned, or fewer than 2 CPUs available): the kernel places every process"
    return (f"server on CPU {options.server_cpu} (taskset -c {options.server_cpu}); "
            f"h2load and redis-server on CPU {options.client_cpu} (taskset -c {options.client_cpu})")


def _run_scenario(name: str, ctx: _Context) -> Row:
    import grpc

    from keysvc.bench.procs import BenchError, start_floor, start_keysvc

    scenario = ctx.scenarios[name]
    if scenario.via or name == "inprocess":  # not gRPC frames from h2load: rows of their own
        from keysvc.bench import envoy, inprocess

        return envoy.run_http_row(name, ctx) if scenario.via else inprocess.run_row(ctx)
    opts = ctx.options
    row = Row(name, scenario.meaning)
    try:
        if scenario.floor:
            server = start_floor(name, ctx.workdir, opts.server_cpu, ctx.fixture.valid_response,
                                 *scenario.server_args)
        else:
            server = start_keysvc(name, ctx.fixture.store, ctx.workdir, opts.server_cpu,
                                  *scenario.server_args)
    except BenchError as exc:
        row.status, row.errors = "error", [str(exc)]
        return row
    try:
        _drive(server, scenario, ctx, row)
    except BenchError as exc:
        row.errors.append(str(exc))
    except grpc.RpcError as exc:
        row.errors.append(f"probe failed: {exc.code().name}: {exc.details()}")
    finally:
        code = server.stop()
        if code != 0:
            row.errors.append(f"server exited {code}:\n{server.log_tail()}")
    if row.errors:
        row.status = "error"
    return row


def _drive(server: Any, scenario: Any, ctx: _Context, row: Row) -> None:
    """Probe the scenario, warm up, then measure it under load into `row`."""
    from keysvc.bench.load import LoadPlan, grpc_frame, run_h2load, warm_up
    from keysvc.bench.scenarios import probe

    opts = ctx.options
    if scenario.workers > 1 and opts.server_cpu is not None and opts.client_cpu is not None:
        server.pin_workers((opts.server_cpu, opts.client_cpu), scenario.workers)
    expected = probe(server, scenario)
    if expected is None:
        row.status = "n/a"
        row.notes.append(f"{scenario.method} is not served")
        return
    body = ctx.workdir / f"{row.name}.body"
    body.write_bytes(grpc_frame(scenario.request))
    plan = LoadPlan(
        port=server.port, path=scenario.method, body=body, duration_s=opts.duration_s,
        connections=opts.connections, streams=opts.streams, client_cpu=opts.client_cpu,
        server_cpu=opts.server_cpu, server_pids=server.pids(),
        log_file=ctx.workdir / f"{row.name}.h2load.log", expected_response_bytes=expected,
    )
    if len(plan.server_pids) > 1:
        row.notes.append(f"{len(plan.server_pids)} processes (parent + workers), CPU summed")
    if scenario.stall:
        result = _stalled(server, plan, ctx, row)
    else:
        if opts.warmup_s > 0:
            row.errors += warm_up(plan, ctx.h2load, opts.warmup_s)
        reads_before, commands_before = ctx.redis.counters()
        result = run_h2load(plan, ctx.h2load)
        reads_after, commands_after = ctx.redis.counters()
        if result.requests:  # minus our own INFO call
            row.store_round_trips_per_call = (reads_after - reads_before - 1) / result.requests
            row.store_cmds_per_call = (commands_after - commands_before - 1) / result.requests
    row.qps, row.p50_ms, row.p99_ms, row.p999_ms = (
        result.qps, result.p50_ms, result.p99_ms, result.p999_ms)
    row.cpu_us_per_call, row.client_cpu = result.server_cpu_us_per_call, result.client_cpu
    row.client_saturated, row.calls = result.client_saturated, result.succeeded
    row.errors += result.errors
    if result.server_core_steal > 0.02:
        row.notes.append(f"the hypervisor took {result.server_core_steal:.0%} of the server's core (steal): "
                         "a noisy run")


def _stalled(server: Any, plan: Any, ctx: _Context, row: Row) -> Any:
    """Run h2load on the cached key while the store is stopped and misses flood in (no Redis counters)."""
    import dataclasses

    from keysvc.bench.load import run_h2load, warm_up
    from keysvc.bench.stall import Stall

    plan = dataclasses.replace(plan, connections=1, streams=1)  # what one hit waits, not throughput
    row.notes.append("h2load -c 1 -m 1: one cached-key call at a time")
    stall = Stall(ctx.redis, server, ctx.options.stall_samples)
    try:
        stall.start()
        if ctx.options.warmup_s > 0:
            row.errors += warm_up(plan, ctx.h2load, ctx.options.warmup_s)
        result = run_h2load(plan, ctx.h2load)
    finally:
        notes = stall.stop()
    row.notes += [n for n in notes if not n.startswith("!")]
    row.errors += [n.removeprefix("! ") for n in notes if n.startswith("!")]
    row.miss_budget_p50_ms, row.miss_budget_p99_ms = stall.miss_p50_ms, stall.miss_p99_ms
    row.miss_budget_max_ms = stall.miss_max_ms
    row.notes.append(f"{len(stall.miss_ms)} misses timed with the store stopped: p50 "
                     f"{row.miss_budget_p50_ms:.1f} ms, p99 {row.miss_budget_p99_ms:.1f} ms, "
                     f"max {row.miss_budget_max_ms:.1f} ms (client round trip included)")
    return result


@dataclass
class _Context:
    options: BenchOptions
    workdir: Path
    h2load: str
    redis: Any
    fixture: Any
    scenarios: dict[str, Any]
    envoy: str | None = None  # Envoy's binary; None: not installed (the Envoy rows are n/a)


def _median(runs: list[Row]) -> Row:
    """One row from a scenario's rounds: the median of each figure, every error kept."""
    first = runs[0]
    if len(runs) == 1:
        first.rounds = [{"qps": first.qps, "cpu_us_per_call": first.cpu_us_per_call, "p99_ms": first.p99_ms}]
        return first
    row = Row(first.name, first.meaning, via=first.via, notes=list(first.notes))
    row.errors = [e for run in runs for e in run.errors]
    row.rounds = [{"qps": r.qps, "cpu_us_per_call": r.cpu_us_per_call, "p99_ms": r.p99_ms} for r in runs]
    statuses = {run.status for run in runs}
    row.status = "error" if "error" in statuses else "n/a" if "n/a" in statuses else "ok"
    measured = [run for run in runs if run.status == "ok"]
    if not measured:
        return row
    for name in ("qps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_call", "store_round_trips_per_call",
                 "store_cmds_per_call", "client_cpu", "miss_budget_p50_ms", "miss_budget_p99_ms",
                 "miss_budget_max_ms", "proxy_cpu_us_per_call", "proxy_cpu"):
        setattr(row, name, statistics.median(getattr(run, name) for run in measured))
    row.client_saturated = any(run.client_saturated for run in measured)
    row.calls = sum(run.calls for run in measured)
    qps = "/".join(f"{run.qps:.0f}" for run in measured)
    cpu = "/".join(f"{run.cpu_us_per_call:.0f}" for run in measured)
    row.notes.append(f"rounds: QPS {qps}; CPU us/call {cpu} (medians shown)")
    return row


def _ratios(rows: list[Row]) -> None:
    from keysvc.bench.scenarios import stack_of

    by_name = {row.name: row for row in rows if row.status == "ok"}
    hit = by_name.get("hit")
    floors = {stack_of(row.name): row for row in by_name.values() if row.name.startswith("floor")}
    for row in rows:
        if row.status != "ok":
            continue
        if row.proxy_cpu_us_per_call > 0:
            row.keysvc_cores_per_envoy_core = row.cpu_us_per_call / row.proxy_cpu_us_per_call
        if row.client_saturated and row.via:
            row.notes.append("h2load and Envoy used >= 90% of their core: the client side may be the "
                             "bottleneck")
        if row.via:
            continue
        floor = floors.get(stack_of(row.name))  # each stack is compared with its own floor
        if floor is not None:
            row.qps_vs_floor = row.qps / floor.qps
            row.cpu_vs_floor = row.cpu_us_per_call / floor.cpu_us_per_call
        if row.client_saturated:
            row.notes.append("h2load used >= 90% of its core: the client may be the bottleneck")
    from keysvc.bench.inprocess import compare_with_hit

    compare_with_hit(by_name)
    workers = by_name.get("hit-workers2")
    if workers is not None and hit is not None:
        workers.notes.append(f"QPS {workers.qps / hit.qps:.2f}x hit's (one worker), "
                             f"CPU/call {workers.cpu_us_per_call / hit.cpu_us_per_call:.2f}x hit's")


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the bench; return the report (see `format_report`).

    Raises:
        keysvc.bench.procs.BenchError: h2load or redis-server is missing, or set-up failed.
    """
    from keysvc.bench.envoy import envoy_binary
    from keysvc.bench.load import h2load_binary
    from keysvc.bench.procs import BenchError, start_redis
    from keysvc.bench.scenarios import prepare, scenarios

    h2load = h2load_binary()
    if h2load is None:
        raise BenchError("h2load is not on PATH (apt-get install nghttp2-client)")
    if options.server_cpu is not None and shutil.which("taskset") is None:
        raise BenchError("taskset is not on PATH (apt-get install util-linux)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="keysvc-bench-"))
    report: dict[str, Any] = {"meta": run_meta(options, _pinning(options), h2load), "scenarios": []}
    redis = start_redis(workdir, options.client_cpu)
    failed = False
    try:
        _say(f"== redis-server at {redis.url}; {_pinning(options)}")
        fixture = prepare(workdir, redis)
        ctx = _Context(options, workdir, h2load, redis, fixture, scenarios(fixture), envoy_binary())
        runs: dict[str, list[Row]] = {name: [] for name in options.scenarios}
        for round_number in range(1, options.rounds + 1):
            for name in options.scenarios:
                _say(f"== {name} (round {round_number}/{options.rounds}): {ctx.scenarios[name].meaning}")
                row = _run_scenario(name, ctx)
                _say(f"   {row.status}: {row.qps:.0f} QPS, {row.cpu_us_per_call:.0f} us CPU/call"
                     + (f", Envoy {row.proxy_cpu_us_per_call:.0f} us CPU/request"
                        if row.via.startswith("envoy-") else "")
                     + "".join(f"\n   ! {e}" for e in row.errors))
                runs[name].append(row)
        rows = [_median(runs[name]) for name in options.scenarios]
        _ratios(rows)
        report["scenarios"] = [asdict(row) for row in rows]
        failed = any(row.status == "error" for row in rows)
        if options.memory_keys:
            from keysvc.bench.memory import measure_memory

            _say(f"== memory: RSS with {', '.join(map(str, options.memory_keys))} cached keys")
            report["memory"] = measure_memory(redis.url, workdir, options.memory_keys, options.server_cpu)
            failed = failed or bool(report["memory"]["errors"])
        if options.revocations:
            from keysvc.bench.propagation import measure_propagation

            _say(f"== propagation: {options.revocations} revocations seen by a second server")
            report["propagation"] = measure_propagation(fixture, workdir, options.revocations)
            failed = failed or bool(report["propagation"]["errors"])
    finally:
        redis.stop()
        if failed:
            _say(f"   logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    report["targets"] = targets(report)
    return report


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def options_from(args: argparse.Namespace) -> BenchOptions:
    """Turn `keysvc bench` flags into options.

    Raises:
        keysvc.core.errors.ConfigError: an unknown scenario or a bad number.
    """
    from keysvc.bench.scenarios import NAMES
    from keysvc.core.errors import ConfigError

    names = tuple(_csv(args.scenarios)) if args.scenarios else NAMES
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    duration = args.duration if args.duration is not None else (1.5 if args.quick else 5.0)
    if duration <= 0 or args.concurrency <= 0 or args.streams <= 0 or args.http_concurrency <= 0:
        raise ConfigError("--duration, --concurrency, --streams and --http-concurrency must be > 0")
    memory_keys = args.memory_keys or ("10000" if args.quick else "100000,1000000")
    try:
        memory = tuple(sorted(int(n) for n in _csv(memory_keys))) if args.memory else ()
    except ValueError:
        raise ConfigError(f"--memory-keys: not a list of numbers: {memory_keys!r}") from None
    if any(n <= 0 for n in memory):
        raise ConfigError("--memory-keys: counts must be > 0")
    revocations = args.revocations or (20 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 and not args.unpinned
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    return BenchOptions(
        scenarios=names, duration_s=duration, warmup_s=0.3 if args.quick else 1.0,
        connections=args.concurrency, streams=args.streams, server_cpu=server_cpu, client_cpu=client_cpu,
        rounds=rounds, memory_keys=memory, revocations=revocations if args.propagation else 0,
        stall_samples=20 if args.quick else 100, http_connections=args.http_concurrency,
    )


def main(args: argparse.Namespace) -> int:
    """Run `keysvc bench`; print the table (or JSON); 0 when every scenario ran cleanly."""
    import json

    from keysvc.bench.procs import BenchError

    options = options_from(args)
    try:
        report = run(options)
    except BenchError as exc:
        print(f"keysvc bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(finite(report), indent=2, default=str))
    else:
        print(format_report(report))
    errors = [row for row in report["scenarios"] if row["status"] == "error"]
    errors += [report[k] for k in ("memory", "propagation") if report.get(k, {}).get("errors")]
    return 1 if errors else 0
