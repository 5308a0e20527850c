"""The cluster and Sentinel clients get the same explicit timeouts and no hidden retries as the plain one."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis, RedisCluster

from keysvc.store.redis.io import make_client

pytestmark = pytest.mark.unit


async def test_cluster_client_has_the_store_timeouts() -> None:
    client = make_client("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", socket_timeout=0.25,
                         connect_timeout=0.125, max_connections=7)
    assert isinstance(client, RedisCluster)
    kwargs = client.nodes_manager.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.125)
    assert kwargs["decode_responses"] is True
    assert client.retry.get_retries() == 0
    for node in client.nodes_manager.startup_nodes.values():
        assert node.max_connections == 7
        assert node.connection_kwargs["socket_timeout"] == 0.25
    await client.aclose()


async def test_sentinel_client_has_the_store_timeouts() -> None:
    client = make_client("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/main/3", socket_timeout=0.25,
                         connect_timeout=0.125, max_connections=7)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["db"]) == (0.25, 0.125, 3)
    assert kwargs["retry"].get_retries() == 0
    assert pool.max_connections == 7
    for sentinel in pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert sentinel_kwargs["socket_timeout"] == 0.125
        assert sentinel_kwargs["socket_connect_timeout"] == 0.125
    await client.aclose()
