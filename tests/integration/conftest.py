"""Fixtures for integration tests: each store backend, on a real file or a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from tests._topology import REDIS_KINDS, store_url


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind: a new SQLite file, or the test Redis after FLUSHALL.

    Redis runs as one server, as the session's Redis Cluster and behind its
    Sentinel set (tests/_topology.py), flushed before each test.
    """
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(str(tmp_path / "keysvc.db"), poll_interval_s=0.01)
    else:
        # The caller's clock, so contract tests can take at fixed instants;
        # tests/integration/test_counters.py covers Redis's own clock.
        store = RedisStore(store_url(request, request.param), timeout_s=1.0, store_clock=False)
    yield store
    await store.close()
