"""The bench's memory figure: RSS of a `keysvc serve` process holding N cached keys.

1. The bench makes the keys directly in Redis through the store API
   (`RedisStore.create_key`, the call AdminService makes, minus the audit span
   and the admin's authentication: a million keys through the audited admin
   API would take the better part of an hour), from two processes, in a
   namespace of their own, and writes their secrets to files in the bench's
   work directory (bench-only keys of a throwaway Redis; the directory is
   removed after a clean run). Every key looks like a
   production key and differs from the next in what the cache keeps: its own
   owner (one per four keys), two scopes from a realistic set, and 3 to 5
   metadata entries with per-key values (a tenant id, a plan, a region, an
   environment, a cost centre).
2. It starts a real `keysvc serve` (pinned like the bench's other servers,
   following the event log, a cache big enough for every key) and fills its
   cache from the bench's own process: Validate over gRPC (grpc.aio, at most
   `_IN_FLIGHT` calls in flight), one call per key, each a real cache miss
   (a store read, then the record cached exactly as the sidecar caches it);
   every answer must be VALID. So the figure is what a sidecar really holds.
3. The server cannot be told to collect garbage from outside, so a reading is
   taken only once it has settled: after a fill, the bench waits until the
   write-behind of last-use times has written every filled key (Redis's
   DBSIZE has grown by one per key), then reads VmRSS from /proc/<pid>/status
   until two readings `_SETTLE_S` apart agree within `_SETTLED_BYTES`. The
   baseline is read the same way after a warm-up fill of `_WARMUP` keys at full
   concurrency (first-use allocations, connection buffers), so a stage's
   bytes per key = (RSS - baseline) / keys cached since.
4. One extra fill, in a second server, of the smallest count of keys that all
   carry the same metadata (otherwise alike) says what varied metadata costs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

__all__ = ["format_memory", "key_shape", "measure_memory"]

NAMESPACE = "keysvc-bench-memory"
# Validate calls in flight during a fill: below what the sync stack lets wait on the store
# (12 of its 16 threads); a miss shed anyway (UNAVAILABLE, not cached) is asked again.
_IN_FLIGHT = 12
_RETRIES = 50
_WARMUP = 1000  # keys filled before the baseline is read
_SETTLE_S = 1.0
_SETTLED_BYTES = 256 * 1024
_WAIT_S = 120.0  # generous: a loaded 2-core VM, 100k last uses to write
_RSS_WAIT_S = 60.0

_SCOPES = ("orders:read", "orders:write", "invoices:read", "customers:read", "webhooks:write",
           "reports:read", "catalog:read")
_PLANS = ("free", "starter", "team", "business", "enterprise")
_REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-southeast-1", "sa-east-1")
_ENVS = ("prod", "staging", "dev")
_SCOPE_PAIRS = tuple(itertools.combinations(_SCOPES, 2))


def key_shape(i: int, *, varied: bool = True) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """The bench's key number `i`: its owner, scopes and metadata.

    With `varied=False` every key carries key 0's metadata; all else is alike.
    """
    scopes = _SCOPE_PAIRS[i % len(_SCOPE_PAIRS)]
    m = i if varied else 0
    metadata = {"tenant": f"tn_{m * 7919 % 10_000_019:08d}", "plan": _PLANS[m % len(_PLANS)],
                "region": _REGIONS[m % len(_REGIONS)]}
    if m % 3 >= 1:
        metadata["env"] = _ENVS[m % len(_ENVS)]
    if m % 3 == 2:
        metadata["cost_center"] = f"cc-{m % 4099:04d}"
    return f"org_{i // 4:07d}", scopes, metadata


def _create_keys(url: str, first: int, count: int, varied: bool, secrets_path: str) -> int:
    """Make keys `first` .. `first + count - 1`; write their secrets, one a line. Runs in a pool process."""
    from keysvc.core import keys
    from keysvc.core.model import Event, EventType, KeyRecord
    from keysvc.store.redis.store import RedisStore

    async def make() -> None:
        store = RedisStore(url, namespace=NAMESPACE, timeout_s=10, retries=2, event_retention=10_000)
        todo = iter(range(first, first + count))
        with open(secrets_path, "w") as out:  # noqa: ASYNC230 - a local file, written in small lines
            async def worker() -> None:
                for i in todo:
                    generated = keys.generate("ks")
                    now = time.time()
                    owner, scopes, metadata = key_shape(i, varied=varied)
                    record = KeyRecord(
                        key_id=keys.new_key_id(), key_hash=generated.key_hash, hint=generated.hint,
                        owner_id=owner, created_at=now, updated_at=now,
                        name=f"{metadata['plan']} key {i}", scopes=scopes, metadata=metadata,
                    )
                    event = Event(EventType.KEY_CREATED, now, actor="bench", key_id=record.key_id,
                                  key_hash=record.key_hash)
                    await store.create_key(record, None, event)
                    out.write(generated.secret + "\n")

            await asyncio.gather(*(worker() for _ in range(32)))
        await store.close()

    asyncio.run(make())
    return count


def _make_keys(url: str, workdir: Path, name: str, count: int, varied: bool) -> Path:
    """Make `count` keys from two processes; return the file of their secrets."""
    halves = [count // 2, count - count // 2]
    parts = [workdir / f"{name}-{i}.txt" for i in range(2)]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_create_keys, [url] * 2, [0, halves[0]], halves, [varied] * 2, [str(p) for p in parts]))
    secrets = workdir / f"{name}.txt"
    with secrets.open("w") as out:
        for part in parts:
            out.write(part.read_text())
            part.unlink()
    return secrets


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def _settled_rss(pid: int) -> int:
    """VmRSS once two readings `_SETTLE_S` apart agree within `_SETTLED_BYTES`."""
    deadline = time.monotonic() + _RSS_WAIT_S
    last = _rss_bytes(pid)
    while True:
        time.sleep(_SETTLE_S)
        rss = _rss_bytes(pid)
        if abs(rss - last) <= _SETTLED_BYTES:
            return rss
        if time.monotonic() > deadline:
            raise RuntimeError(f"server RSS still moving after {_RSS_WAIT_S:.0f} s ({last} -> {rss} bytes)")
        last = rss


def _wait_last_uses(redis_url: str, size_before: int, filled: int) -> None:
    """Return once the write-behind has stored a last-use time for each of `filled` new keys.

    Each key's first use makes one new Redis key, so DBSIZE says when it is done.
    """
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        deadline = time.monotonic() + _WAIT_S
        while (grown := int(client.dbsize()) - size_before) < filled:
            if time.monotonic() > deadline:
                raise RuntimeError(f"last uses of {grown} of {filled} keys written after {_WAIT_S:.0f} s")
            time.sleep(0.2)
    finally:
        client.close()


async def _fill(addr: str, secrets: Iterator[str], count: int) -> int:
    """Validate `count` keys from `secrets` over gRPC, `_IN_FLIGHT` at a time; each must be VALID.

    Returns:
        How many answers were UNAVAILABLE (shed under load) and asked again.
    """
    import grpc

    from keysvc.v1 import keysvc_pb2 as pb
    from keysvc.v1 import keysvc_pb2_grpc as pb_grpc

    todo = itertools.islice(secrets, count)
    done = shed = 0
    async with grpc.aio.insecure_channel(addr) as channel:
        validate = pb_grpc.KeyServiceStub(channel).Validate  # type: ignore[no-untyped-call]

        async def worker() -> None:
            nonlocal done, shed
            for secret in todo:
                request = pb.ValidateRequest(key=secret.strip())
                for _ in range(_RETRIES):
                    answer = await validate(request, timeout=30)
                    if answer.code != pb.CODE_UNAVAILABLE:
                        break
                    shed += 1
                    await asyncio.sleep(0.05)
                if not answer.valid:
                    raise RuntimeError(f"a bench key answered {pb.Code.Name(answer.code)}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(_IN_FLIGHT)))
    if done < count:
        raise RuntimeError(f"only {done} secrets in the file, want {count}")
    return shed


class _Filler:
    """One `keysvc serve` process whose cache the bench fills over gRPC, stage by stage."""

    def __init__(self, redis_url: str, workdir: Path, cpu: int | None, name: str, secrets: Path,
                 cache_size: int) -> None:
        from keysvc.bench.procs import start_keysvc

        self.redis_url = redis_url
        self._file = secrets.open()
        self.secrets: Iterator[str] = iter(self._file)
        self.server = start_keysvc(
            name, redis_url, workdir, cpu, "--redis-namespace", NAMESPACE, "--cache-size", str(cache_size),
            "--cache-ttl-s", "86400", "--store-timeout-ms", "5000",  # filling fast matters here
        )
        self.filled = 0

    def fill(self, count: int) -> dict[str, Any]:
        """Fill `count` more keys; return the server's settled RSS, seconds and CPU per key for it."""
        import redis

        from keysvc.bench.load import cpu_seconds

        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            size_before = int(client.dbsize())
        finally:
            client.close()
        pids = [self.server.proc.pid]
        cpu_before, started = cpu_seconds(pids), time.monotonic()
        shed = asyncio.run(_fill(self.server.addr, self.secrets, count))
        seconds, cpu = time.monotonic() - started, cpu_seconds(pids) - cpu_before
        self.filled += count
        _wait_last_uses(self.redis_url, size_before, count)
        return {"rss_bytes": _settled_rss(self.server.proc.pid), "fill_s": round(seconds, 1),
                "fill_per_s": round(count / seconds), "server_cpu_us_per_fill": round(cpu / count * 1e6),
                "shed": shed}

    def close(self) -> None:
        """Stop the server."""
        self._file.close()
        self.server.stop()


def measure_memory(url: str, workdir: Path, counts: Sequence[int], cpu: int | None) -> dict[str, Any]:
    """Return RSS before and after caching each of `counts` keys (cumulative, one server).

    A failure is reported in the result's `errors`, with what was measured until then.
    """
    result: dict[str, Any] = {"baseline_rss_bytes": 0, "stages": [], "same_metadata": None,
                              "create_s": 0.0, "errors": [], "method": _METHOD}
    import grpc
    import redis

    try:
        _measure(url, workdir, sorted(counts), cpu, result)
    except (RuntimeError, OSError, grpc.RpcError, redis.RedisError) as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    return result


_METHOD = ("keys made with RedisStore.create_key, 3-5 metadata entries with per-key values; "
           "cache filled over gRPC (Validate, one miss per key) in a real `keysvc serve`; "
           "settled VmRSS from /proc after the write-behind drained")


def _measure(url: str, workdir: Path, counts: Sequence[int], cpu: int | None, result: dict[str, Any]) -> None:
    total = counts[-1] + _WARMUP
    started = time.monotonic()
    varied = _make_keys(url, workdir, "memory-varied", total, varied=True)
    same = _make_keys(url, workdir, "memory-same", counts[0] + _WARMUP, varied=False)
    result["create_s"] = round(time.monotonic() - started, 1)
    stages: list[dict[str, Any]] = result["stages"]
    filler = _Filler(url, workdir, cpu, "memory", varied, total + 1000)
    try:
        result["baseline_rss_bytes"] = baseline = filler.fill(_WARMUP)["rss_bytes"]
        for count in counts:
            stage = filler.fill(count - (filler.filled - _WARMUP))
            stages.append({"keys": count, "cached": filler.filled - _WARMUP,
                           "bytes_per_key": (stage["rss_bytes"] - baseline) / count, **stage})
    finally:
        filler.close()
    filler = _Filler(url, workdir, cpu, "memory-same", same, total + 1000)
    try:
        baseline = filler.fill(_WARMUP)["rss_bytes"]
        stage = filler.fill(counts[0])
        result["same_metadata"] = {"keys": counts[0], "baseline_rss_bytes": baseline,
                                   "bytes_per_key": (stage["rss_bytes"] - baseline) / counts[0], **stage}
    finally:
        filler.close()


def _stage_line(label: str, stage: dict[str, Any]) -> str:
    return (f"    {stage['keys']:>9,} {label}: RSS {stage['rss_bytes'] / 2**20:8.1f} MiB, "
            f"{stage['bytes_per_key']:6.0f} bytes per cached key (filled in {stage['fill_s']} s, "
            f"{stage['fill_per_s']:,}/s, {stage['server_cpu_us_per_fill']} us server CPU per miss)")


def format_memory(memory: dict[str, Any]) -> list[str]:
    """Lines of text for the report."""
    lines = [f"memory: idle server RSS {memory['baseline_rss_bytes'] / 2**20:.1f} MiB "
             f"({memory['create_s']} s to make the keys)"]
    lines += [_stage_line("cached keys", stage) for stage in memory["stages"]]
    if memory.get("same_metadata"):
        lines.append(_stage_line("keys, same metadata on every key", memory["same_metadata"]))
    lines.append(f"    ({memory['method']})")
    lines += [f"    ERROR: {e}" for e in memory["errors"]]
    return lines
