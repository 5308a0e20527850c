"""The memory bench fills a real `keysvc serve` over gRPC with keys whose metadata differs (keysvc.bench.memory)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import redis

from keysvc.bench.memory import NAMESPACE, format_memory, measure_memory
from keysvc.core import keys
from keysvc.store.redis.store import RedisStore

pytestmark = pytest.mark.e2e


async def _records(url: str, secrets: list[str]) -> list[tuple[str, dict[str, str]]]:
    store = RedisStore(url, namespace=NAMESPACE, timeout_s=5, retries=1, event_retention=10_000)
    try:
        found = [await store.get_key_by_hash(keys.hash_key(s)) for s in secrets]
        assert all(r is not None for r in found)
        return [(r.key_id, dict(r.metadata)) for r in found if r is not None]
    finally:
        await store.close()


@pytest.mark.timeout(240)
def test_memory_is_measured_over_grpc_on_keys_with_varied_metadata(redis_url: str, tmp_path: Path) -> None:
    memory = measure_memory(redis_url, tmp_path, [1500], None)
    assert memory["errors"] == []
    (stage,) = memory["stages"]
    assert (stage["keys"], stage["cached"]) == (1500, 1500)
    # Measured on a process of its own (its CPU, read from /proc), at a real fill rate.
    assert stage["server_cpu_us_per_fill"] > 0
    assert stage["fill_per_s"] > 0
    assert memory["baseline_rss_bytes"] > 0
    same = memory["same_metadata"]
    assert (same["keys"], same["shed"] >= 0) == (1500, True)
    text = "\n".join(format_memory(memory))
    assert "same metadata" in text
    assert "over gRPC" in text

    secrets = (tmp_path / "memory-varied.txt").read_text().split()
    records = asyncio.run(_records(redis_url, secrets))
    assert len({tuple(sorted(m.items())) for _, m in records}) == len(records)
    assert {len(m) for _, m in records} == {3, 4, 5}
    # Every key the server was asked about was a miss it served and noted: the
    # write-behind had stored each key's last use before the figure was read.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        used = {m.group(1) for k in client.keys("*:lu") if (m := re.search(r"\{([^{}]+)\}:lu$", str(k)))}
    finally:
        client.close()
    assert {key_id for key_id, _ in records} <= used
