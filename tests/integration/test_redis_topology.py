"""Redis Cluster and Sentinel URLs, and the promise that an acknowledged write has reached a replica."""

from __future__ import annotations

import pytest

from keysvc.app.server import make_store
from keysvc.app.settings import Settings
from keysvc.core.errors import ConfigError, StoreUnavailableError
from keysvc.core.model import Event, EventType, KeyRecord
from keysvc.store.redis.store import RedisStore
from keysvc.store.redis.topology import CLUSTER, SENTINEL, Topology, parse
from tests._topology import Cluster, SentinelSet

T0 = 1_800_000_000.0


def test_cluster_and_sentinel_urls_parse() -> None:
    assert parse("redis://127.0.0.1:6379/0") is None
    assert parse("redis+cluster://10.0.0.1:7000,[::1]:7001") == Topology(
        CLUSTER, (("10.0.0.1", 7000), ("::1", 7001)))
    assert parse("redis+sentinel://u:p%40ss@s1:26379,s2:26379/main/2?replicas=0") == Topology(
        SENTINEL, (("s1", 26379), ("s2", 26379)), "main", 2, "u", "p@ss", 0)
    assert parse("redis+sentinel://s1:26379/main") == Topology(SENTINEL, (("s1", 26379),), "main")


@pytest.mark.parametrize("url", [
    "redis+cluster://",
    "redis+cluster://host",
    "redis+cluster://host:0",
    "redis+cluster://host:7000/1",
    "redis+cluster://host:7000?replicas=x",
    "redis+cluster://host:7000?wait=1",
    "redis+sentinel://s1:26379",
    "redis+sentinel://s1:26379/main/db",
    "redis+sentinel://s1:26379/main/0/extra",
])
def test_a_malformed_topology_url_is_a_config_error_that_hides_the_password(url: str) -> None:
    secret_url = url.replace("://", "://user:hunter2@", 1)
    with pytest.raises(ConfigError) as caught:
        make_store(Settings(store=secret_url))
    assert "hunter2" not in str(caught.value)


def _record(key_id: str) -> KeyRecord:
    return KeyRecord(key_id=key_id, key_hash="h-" + key_id, hint="ks_abcd", owner_id="o",
                     created_at=T0, updated_at=T0)


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_a_write_no_replica_has_is_not_acknowledged(
    request: pytest.FixtureRequest, kind: str
) -> None:
    topology: Cluster | SentinelSet = request.getfixturevalue("redis_" + kind)
    topology.flush()
    if isinstance(topology, Cluster):
        replica = topology.replica_of(topology.master_of("{keysvc}"))
    else:
        replica = topology.replica()
    store = RedisStore(topology.url, timeout_s=0.25)
    try:
        await store.ping()
        await store.create_key(_record("k0"), None, Event(EventType.KEY_CREATED, T0, "a", key_id="k0"))
        replica.pause()  # the real fault: a replica that receives nothing (kept well under 1 s)
        try:
            with pytest.raises(StoreUnavailableError, match="not confirmed by 1 replica"):
                await store.create_key(
                    _record("k1"), None, Event(EventType.KEY_CREATED, T0, "a", key_id="k1"))
        finally:
            replica.resume()
        # Once the replica has it, the next write is acknowledged again.
        await store.create_key(_record("k2"), None, Event(EventType.KEY_CREATED, T0, "a", key_id="k2"))
    finally:
        await store.close()
