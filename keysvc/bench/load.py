"""The bench's load generator and meters: h2load with gRPC frames, /proc CPU clocks.

h2load (Debian's nghttp2-client) sends real gRPC requests: POST, content-type
application/grpc, te: trailers, and a body holding the 5-byte gRPC prefix and
the serialized request. It counts HTTP statuses only (a gRPC error is a 200
whose trailer says otherwise), so the bench probes every scenario with a real
gRPC client first, and checks here that the DATA bytes per response match the
probe's answer. Percentiles come from h2load's per-request `--log-file`.
The HTTP rows (keysvc.bench.envoy) send HTTP/1.1 GETs instead (`--h1`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LoadPlan",
    "LoadResult",
    "cpu_seconds",
    "descendants",
    "grpc_frame",
    "h2load_binary",
    "percentile",
    "run_h2load",
    "warm_up",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED_CPU = 0.9  # a client using this much of its one core may be the bottleneck


def grpc_frame(message: bytes) -> bytes:
    """Return one uncompressed gRPC length-prefixed message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load_binary() -> str | None:
    """Return the path of h2load, or None when nghttp2-client is not installed."""
    return shutil.which("h2load")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; everything after its ')' splits cleanly.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """Return user + system CPU seconds used so far by these processes, all threads included.

    /proc/<pid>/stat of a process sums every thread's time (gRPC's C-core
    threads too), in clock ticks (10 ms at the usual 100 Hz, so a run of a
    few seconds is accurate to well under 1%). A process gone is counted as 0.
    """
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLK_TCK


def steal_seconds(cpu: int | None) -> float:
    """Return the time the hypervisor ran something else while `cpu` wanted to run (/proc/stat)."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return int(line.split()[8]) / _CLK_TCK
    return 0.0


def descendants(pid: int) -> list[int]:
    """Return `pid` and every process below it (the workers of `serve --workers N`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the q-quantile (0..1) of already sorted values, nearest-rank; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """One h2load run: where, what, how hard, how long, on which core."""

    port: int
    path: str  # the gRPC method, e.g. /keysvc.v1.KeyService/Validate (or the HTTP/1.1 GET's path)
    body: Path | None  # file holding one gRPC frame (None: HTTP/1.1 GETs)
    duration_s: float
    connections: int
    streams: int
    client_cpu: int | None
    server_cpu: int | None
    server_pids: Sequence[int]
    log_file: Path
    expected_response_bytes: int  # gRPC frame size of the probe's answer (0: not checked)
    headers: tuple[str, ...] = ()  # "name: value" each: HTTP/1.1 GETs (h2load --h1), not gRPC
    proxy_pids: Sequence[int] = ()  # Envoy in front of the server: its CPU is metered apart


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one h2load run measured."""

    requests: int
    succeeded: int
    failed: int
    errored: int
    qps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    server_cpu_us_per_call: float
    client_cpu: float  # fraction of one core h2load used
    response_bytes: float  # DATA bytes per response, as h2load counted them
    server_core_steal: float  # fraction of the run the server's core was taken by the hypervisor
    errors: tuple[str, ...]
    proxy_cpu_us_per_call: float = math.nan  # Envoy's CPU per request (plan.proxy_pids)
    proxy_cpu: float = math.nan  # fraction of one core Envoy used

    @property
    def client_saturated(self) -> bool:
        """True when h2load itself may have been the bottleneck."""
        return self.client_cpu >= SATURATED_CPU


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_DATA = re.compile(r"\((\d+)\) data")


def _command(plan: LoadPlan, binary: str, duration_s: float, log: Path | None) -> list[str]:
    cmd = [binary, "-D", f"{round(duration_s * 1000)}ms", "-c", str(plan.connections),
           "-m", str(plan.streams), "-t", "1"]
    if plan.headers:
        cmd += ["--h1", *(arg for header in plan.headers for arg in ("-H", header))]
    else:
        cmd += ["-d", str(plan.body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if log is not None:
        cmd.append(f"--log-file={log}")
    cmd.append(f"http://127.0.0.1:{plan.port}{plan.path}")
    if plan.client_cpu is not None:
        cmd = ["taskset", "-c", str(plan.client_cpu), *cmd]
    return cmd


def _run(cmd: list[str], timeout_s: float) -> tuple[int, str, float, float]:
    """Run h2load; return (exit code, output, wall seconds, CPU seconds h2load used).

    `taskset` exec()s h2load, so the child's own rusage (from wait4) is h2load's.
    """
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    return proc.returncode, output, wall, usage.ru_utime + usage.ru_stime


def warm_up(plan: LoadPlan, binary: str, seconds: float) -> list[str]:
    """Drive the server like `run_h2load`, unmeasured; return errors, if any."""
    code, output, _, _ = _run(_command(plan, binary, seconds, None), seconds + 30)
    return [f"h2load warm-up exited {code}: {output.strip()[-300:]}"] if code != 0 else []


def run_h2load(plan: LoadPlan, binary: str) -> LoadResult:
    """Drive the server for `plan.duration_s` and measure.

    The server's CPU clock is read just before and just after the h2load
    process, and divided by the calls it completed. Calls cut off at the end
    of the duration (at most connections x streams) may add a fraction of a
    percent.
    """
    errors: list[str] = []
    timeout = plan.duration_s + 30
    plan.log_file.unlink(missing_ok=True)  # h2load appends: each round's percentiles are its own
    server_before, steal_before = cpu_seconds(plan.server_pids), steal_seconds(plan.server_cpu)
    proxy_before = cpu_seconds(plan.proxy_pids)
    code, output, wall, client_cpu_s = _run(_command(plan, binary, plan.duration_s, plan.log_file), timeout)
    server_cpu_s = cpu_seconds(plan.server_pids) - server_before
    proxy_cpu_s = cpu_seconds(plan.proxy_pids) - proxy_before
    steal = (steal_seconds(plan.server_cpu) - steal_before) / max(wall, 1e-9)
    result = _parse(plan, code, output, (wall, steal), client_cpu_s, server_cpu_s, errors)
    if not plan.proxy_pids or not result.requests:
        return result
    return dataclasses.replace(result, proxy_cpu_us_per_call=proxy_cpu_s * 1e6 / result.requests,
                               proxy_cpu=proxy_cpu_s / max(wall, 1e-9))


def _parse(
    plan: LoadPlan, code: int, output: str, clocks: tuple[float, float], client_cpu_s: float,
    server_cpu_s: float, errors: list[str],
) -> LoadResult:
    wall, steal = clocks
    if code != 0:
        errors.append(f"h2load exited {code}: {output.strip()[-300:]}")
    finished = _FINISHED.search(output)
    counts = _REQUESTS.search(output)
    if finished is None or counts is None:
        errors.append("could not read h2load's summary")
        return LoadResult(0, 0, 0, 0, 0.0, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0, steal,
                          tuple(errors))
    qps = float(finished.group(3))
    total, _, done, succeeded, failed, errored = (int(g) for g in counts.groups())
    if failed or errored or succeeded == 0:
        errors.append(f"{failed} failed, {errored} errored, {succeeded} succeeded of {total}")
    status = _STATUS.search(output)
    if status is not None and any(int(n) for n in status.groups()[1:]):
        errors.append(f"non-2xx HTTP statuses: {status.group(0)}")
    data = _DATA.search(output)
    response_bytes = int(data.group(1)) / succeeded if data is not None and succeeded else 0.0
    expected = plan.expected_response_bytes
    # Denied calls and gRPC errors would change the body (an error has none at all).
    if expected and not 0.9 * expected <= response_bytes <= 1.1 * expected:
        errors.append(f"responses average {response_bytes:.1f} bytes, the probe's answer is {expected}")
    latencies = _latencies_ms(plan.log_file)
    measured = max(float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1), 1e-9)
    return LoadResult(
        requests=total, succeeded=succeeded, failed=failed, errored=errored, qps=qps,
        p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99),
        p999_ms=percentile(latencies, 0.999),
        server_cpu_us_per_call=server_cpu_s * 1e6 / done if done else math.nan,
        client_cpu=client_cpu_s / max(wall, measured), response_bytes=response_bytes,
        server_core_steal=steal, errors=tuple(errors),
    )


def _latencies_ms(log_file: Path) -> list[float]:
    """Per-request durations from h2load's log: `start_us <TAB> status <TAB> duration_us`."""
    values: list[float] = []
    try:
        with log_file.open() as lines:
            for line in lines:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1] == "200":
                    values.append(int(parts[2]) / 1000)
    except FileNotFoundError:
        return []
    values.sort()
    return values
