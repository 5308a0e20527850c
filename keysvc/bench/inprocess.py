"""The `inprocess` scenario: CPU per cached call of `keysvc.inprocess`, beside the sidecar's hit.

A separate process, pinned to the server's core, opens a `KeyValidator` (and
an `AsyncKeyValidator`) on the bench's store, warms the cache with the bench's
hit key, then makes N calls in a tight loop and reads its own thread's CPU
clock (`time.thread_time_ns`) around them: the CPU a Python service pays per
validation when it validates in-process, where a sidecar hit costs its
gRPC server's CPU per call (the `hit` row) plus the caller's client side.

The key reaches the child on stdin, never on its command line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keysvc.bench.command import Row

__all__ = ["CALLS", "MEANING", "compare_with_hit", "measure", "row", "run_inprocess"]

CALLS = 200_000
MEANING = ("keysvc.inprocess.KeyValidator.validate, warm cache, key without limits: "
           "thread CPU per call in a tight loop (no hop)")
_ROUNDS = 3  # within the child: the median of three timed loops


def _timed(call: Any, key: str, calls: int) -> float:
    """CPU microseconds per call of `call(key)` on this thread (median of `_ROUNDS` loops)."""
    per_call = []
    for _ in range(_ROUNDS):
        started = time.thread_time_ns()
        for _ in range(calls):
            call(key)
        per_call.append((time.thread_time_ns() - started) / calls / 1000)
    return sorted(per_call)[len(per_call) // 2]


async def _timed_async(validator: Any, key: str, calls: int) -> float:
    per_call = []
    validate = validator.validate
    for _ in range(_ROUNDS):
        started = time.thread_time_ns()
        for _ in range(calls):
            await validate(key)
        per_call.append((time.thread_time_ns() - started) / calls / 1000)
    return sorted(per_call)[len(per_call) // 2]


def measure(store: str, key: str, calls: int) -> dict[str, Any]:
    """Open the library on `store`, warm `key`, and time `calls` cached calls each way."""
    from keysvc.inprocess import AsyncKeyValidator, KeyValidator
    from keysvc.service.validator import ValidationRequest

    # A TTL no run outlives: every timed call is a hit, however slow the machine.
    with KeyValidator.open(store, cache_ttl_s=86_400.0) as validator:
        code = validator.validate(key).code.name
        if code != "VALID":
            return {"error": f"the hit key answered {code}"}
        request = ValidationRequest(key)
        check_cached = validator.validator.check_cached
        result = {
            "code": code,
            "calls": calls,
            "sync_us": _timed(validator.validate, key, calls),
            "check_cached_us": _timed(lambda _key: check_cached(request), key, calls),
        }

    async def asynchronous() -> float:
        async with AsyncKeyValidator.open(store, cache_ttl_s=86_400.0) as checker:
            await checker.validate(key)
            return await _timed_async(checker, key, calls)

    result["async_us"] = asyncio.run(asynchronous())
    return result


def run_inprocess(store: str, key: str, workdir: Path, cpu: int | None, calls: int = CALLS) -> dict[str, Any]:
    """Run `measure` in a child process pinned to `cpu`; return its figures (or {"error": ...})."""
    command = [sys.executable, "-m", "keysvc.bench.inprocess"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    log = workdir / "inprocess.log"
    with log.open("wb") as stderr:
        config = json.dumps({"store": store, "key": key, "calls": calls}).encode()
        done = subprocess.run(command, input=config, stdout=subprocess.PIPE, stderr=stderr, timeout=600,
                              check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        return {"error": f"the in-process bench exited {done.returncode}:\n{tail}"}
    figures: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return figures


def row(store: str, key: str, workdir: Path, cpu: int | None, calls: int = CALLS) -> Row:
    """The scenario's `Row`: CPU per cached call; the asyncio and bare `check_cached` figures in its notes."""
    from keysvc.bench.command import Row

    result = Row("inprocess", MEANING)
    figures = run_inprocess(store, key, workdir, cpu, calls)
    if "error" in figures:
        result.status, result.errors = "error", [str(figures["error"])]
        return result
    result.cpu_us_per_call = figures["sync_us"]
    result.qps = 1e6 / figures["sync_us"]  # one core's worth of calls, from the CPU figure
    result.calls = int(figures["calls"]) * _ROUNDS
    result.notes.append(f"asyncio: {figures['async_us']:.2f} us CPU/call; Validator.check_cached alone: "
                        f"{figures['check_cached_us']:.2f} us; QPS is 1e6 / CPU us per call on one core")
    return result


def run_row(ctx: Any) -> Row:
    """The `inprocess` row of a run (`ctx`: keysvc.bench.command's context); --quick makes fewer calls."""
    opts = ctx.options
    calls = max(10_000, int(CALLS * min(1.0, opts.duration_s / 5)))
    return row(ctx.fixture.store, ctx.fixture.hit_key, ctx.workdir, opts.server_cpu, calls)


def compare_with_hit(rows: dict[str, Any]) -> None:
    """Note how much cheaper an in-process call is than a sidecar hit (its server's CPU alone)."""
    inprocess, hit = rows.get("inprocess"), rows.get("hit")
    if inprocess is None or hit is None:
        return
    cheaper = hit.cpu_us_per_call / inprocess.cpu_us_per_call
    inprocess.notes.append(f"{cheaper:.0f}x cheaper than a sidecar hit ({hit.cpu_us_per_call:.0f} us "
                           "CPU/call in the server alone; the caller's gRPC client side is not counted)")


def _main() -> None:
    import structlog

    # stdout carries the figures: the library's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    config = json.loads(sys.stdin.read())
    print(json.dumps(measure(config["store"], config["key"], int(config["calls"]))))


if __name__ == "__main__":
    _main()
