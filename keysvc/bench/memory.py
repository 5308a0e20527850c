"""The bench's memory figure: RSS of a keysvc server holding N cached keys.

1. The bench makes N keys directly in Redis through the store API
   (`RedisStore.create_key`, the call AdminService makes, minus the audit span),
   from two processes, in a namespace of their own, and writes their secrets
   to a file. A typical key: an owner, a name, one scope, one metadata entry.
2. It starts this module as a separate process (`python -m keysvc.bench.memory`):
   a real keysvc server (`server.build` + `server.start`, listening, following
   the event log), with a cache big enough for every key. The test-only part
   is the warm-up: instead of N gRPC calls, the helper calls the same
   `Validator.validate` the Validate handler calls, in-process, 32 at a time,
   so 1M keys fill in minutes instead of an hour. Each call is a real cache
   miss: a store read, then the record is cached exactly as it would be.
3. The bench reads the helper's VmRSS from /proc/<pid>/status when it is idle
   and serving, and after each fill (the write-behind of last-use times
   drained, a full GC done); bytes per key = RSS growth / keys cached.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any

__all__ = ["format_memory", "main", "measure_memory"]

NAMESPACE = "keysvc-bench-memory"
_CONCURRENCY = 32


def _create_keys(url: str, count: int, secrets_path: str) -> int:
    """Make `count` keys in the store; write their secrets, one a line. Runs in a pool process."""
    from keysvc.core import keys
    from keysvc.core.model import Event, EventType, KeyRecord
    from keysvc.store.redis.store import RedisStore

    async def make() -> None:
        store = RedisStore(url, namespace=NAMESPACE, timeout_s=10, retries=2, event_retention=10_000)
        todo = iter(range(count))
        with open(secrets_path, "w") as out:  # noqa: ASYNC230 - a local file, written in small lines
            async def worker() -> None:
                for i in todo:
                    generated = keys.generate("ks")
                    now = time.time()
                    record = KeyRecord(
                        key_id=keys.new_key_id(), key_hash=generated.key_hash, hint=generated.hint,
                        owner_id=f"owner-{i % 1000:04d}", created_at=now, updated_at=now,
                        name=f"service key {i}", scopes=("orders:read",), metadata={"team": "bench"},
                    )
                    event = Event(EventType.KEY_CREATED, now, actor="bench", key_id=record.key_id,
                                  key_hash=record.key_hash)
                    await store.create_key(record, None, event)
                    out.write(generated.secret + "\n")

            await asyncio.gather(*(worker() for _ in range(32)))
        await store.close()

    _run(make())
    return count


def _run(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvloop ships with keysvc on Linux
        return asyncio.run(coroutine)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def _expect(stream: IO[str], prefix: str, proc: subprocess.Popen[str], log: Path) -> str:
    line = stream.readline()
    if not line.startswith(prefix):
        proc.kill()
        raise RuntimeError(f"memory helper said {line!r}, want {prefix!r}:\n"
                           f"{log.read_text(errors='replace')[-1500:]}")
    return line.strip()


def measure_memory(url: str, workdir: Path, counts: Sequence[int], cpu: int | None) -> dict[str, Any]:
    """Return RSS before and after caching each of `counts` keys (cumulative, one process).

    A failure is reported in the result's `errors`, with what was measured until then.
    """
    result: dict[str, Any] = {"baseline_rss_bytes": 0, "stages": [], "create_s": 0.0, "errors": [],
                              "method": _METHOD}
    try:
        _measure(url, workdir, counts, cpu, result)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result["errors"].append(str(exc))
    return result


_METHOD = ("keys made with RedisStore.create_key; cache filled in a real server process "
           "through Validator.validate (in-process, not over gRPC); VmRSS from /proc")


def _measure(url: str, workdir: Path, counts: Sequence[int], cpu: int | None, result: dict[str, Any]) -> None:
    from keysvc.bench.procs import free_port, pinned

    total = max(counts)
    started = time.monotonic()
    halves = [total // 2, total - total // 2]
    files = [workdir / f"memory-secrets-{i}.txt" for i in range(2)]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_create_keys, [url] * 2, halves, [str(f) for f in files]))
    secrets = workdir / "memory-secrets.txt"
    with secrets.open("w") as out:
        for part in files:
            out.write(part.read_text())
            part.unlink()
    result["create_s"] = round(time.monotonic() - started, 1)
    log = workdir / "memory-helper.log"
    cmd = pinned(cpu, [sys.executable, "-m", "keysvc.bench.memory", "--store", url,
                       "--listen", f"127.0.0.1:{free_port()}", "--secrets", str(secrets),
                       "--cache-size", str(total + 1000)])
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    stages: list[dict[str, Any]] = result["stages"]
    try:
        _expect(proc.stdout, "ready", proc, log)
        result["baseline_rss_bytes"] = baseline = _rss_bytes(proc.pid)
        for count in counts:
            proc.stdin.write(f"fill {count}\n")
            proc.stdin.flush()
            _, cached, seconds = _expect(proc.stdout, "filled", proc, log).split()[1:]
            rss = _rss_bytes(proc.pid)
            stages.append({"keys": count, "cached": int(cached), "rss_bytes": rss,
                           "bytes_per_key": (rss - baseline) / count, "fill_s": float(seconds)})
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def format_memory(memory: dict[str, Any]) -> list[str]:
    """Lines of text for the report."""
    lines = [f"memory: idle server RSS {memory['baseline_rss_bytes'] / 2**20:.1f} MiB "
             f"({memory['create_s']} s to make the keys)"]
    for stage in memory["stages"]:
        lines.append(f"    {stage['keys']:>9,} cached keys: RSS {stage['rss_bytes'] / 2**20:8.1f} MiB, "
                     f"{stage['bytes_per_key']:6.0f} bytes per cached key (filled in {stage['fill_s']} s)")
    lines.append(f"    ({memory['method']})")
    lines += [f"    ERROR: {e}" for e in memory["errors"]]
    return lines


# -- the helper process --------------------------------------------------------------


def _tell(line: str) -> None:
    """One line to the bench, on the helper's stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _fill(app: Any, secrets: IO[str], count: int) -> None:
    from keysvc.core.model import Code
    from keysvc.service.validator import ValidationRequest

    validator = app.validator
    filled = len(app.cache)

    async def worker() -> None:
        nonlocal filled
        while filled < count:
            line = secrets.readline().strip()
            if not line:
                raise RuntimeError(f"only {filled} secrets in the file, want {count}")
            filled += 1
            decision = await validator.validate(ValidationRequest(line))
            if decision.code is not Code.VALID:
                raise RuntimeError(f"a bench key answered {decision.code.name}")

    await asyncio.gather(*(worker() for _ in range(_CONCURRENCY)))


async def _helper(store: str, listen: str, secrets_path: str, cache_size: int) -> None:
    from keysvc.app import server
    from keysvc.app.settings import load

    settings = load(env={}, overrides={
        "store": store, "redis_namespace": NAMESPACE, "listen": listen, "cache_size": cache_size,
        "cache_ttl_s": 86_400.0, "log_format": "json", "log_level": "warning",
        "store_timeout_ms": 5000,  # filling fast matters here, not answering fast
    })
    app = server.build(settings)
    await server.start(app)
    with open(secrets_path) as secrets:  # noqa: ASYNC230 - read line by line between awaits
        await _fill(app, secrets, 1)  # first call: lazy imports and first-use allocations
        await asyncio.sleep(1.5)  # the write-behind of last-use times drains each second
        gc.collect()
        _tell("ready")
        for command in sys.stdin:
            if not command.startswith("fill "):
                break
            count = int(command.split()[1])
            started = time.monotonic()
            await _fill(app, secrets, count)
            seconds = time.monotonic() - started
            await asyncio.sleep(1.5)
            gc.collect()
            _tell(f"filled {count} {len(app.cache)} {seconds:.1f}")
    await server.stop(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the memory helper (see the module docstring); return the exit code."""
    import argparse

    from keysvc.app import telemetry

    parser = argparse.ArgumentParser(prog="python -m keysvc.bench.memory")
    parser.add_argument("--store", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--secrets", required=True)
    parser.add_argument("--cache-size", type=int, required=True)
    args = parser.parse_args(argv)
    telemetry.configure_logging("json", "warning")
    _run(_helper(args.store, args.listen, args.secrets, args.cache_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
