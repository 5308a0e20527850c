"""One contract for every Store backend: real SQLite files and a real redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from keysvc.core.errors import (
    AlreadyExistsError,
    ConflictError,
    CursorExpiredError,
    DuplicateRequestError,
    InvalidArgumentError,
    NotFoundError,
    StoreUnavailableError,
)
from keysvc.core.model import Event, EventType, KeyRecord, Policy, QuotaRefill, RateLimit, TakeRequest
from keysvc.store.base import RequestMark, Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from tests._topology import REDIS_KINDS, flush, store_url

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # a multiple of 10 and of 60: windows start here


def rec(key_id: str, **kw: Any) -> KeyRecord:
    fields: dict[str, Any] = {
        "key_hash": "h-" + key_id,
        "hint": "ks_abcd",
        "owner_id": "owner-a",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(kw)
    return KeyRecord(key_id=key_id, **fields)


def pol(policy_id: str, version: int = 1, **kw: Any) -> Policy:
    return Policy(policy_id=policy_id, version=version, created_at=T0, updated_at=T0 + version, **kw)


def ev(type_: EventType = EventType.KEY_UPDATED, **kw: Any) -> Event:
    return Event(type=type_, at=T0, actor="admin-1", **kw)


class Backend:
    """Builds stores of one kind on one shared database, and can wipe it."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str) -> None:
        self.kind = kind
        self.path = tmp_path / "keysvc.db"
        self.redis_url = redis_url
        self.opened: list[Store] = []

    def make(self, **kw: Any) -> Store:
        store: Store
        if self.kind == "sqlite":
            kw.setdefault("poll_interval_s", 0.01)
            store = SqliteStore(str(self.path), **kw)
        else:
            # The caller's clock: the rules are tested at fixed instants
            # (test_counters.py covers Redis's own clock).
            kw.setdefault("store_clock", False)
            store = RedisStore(self.redis_url, namespace="t", timeout_s=2.0, **kw)
        self.opened.append(store)
        return store

    async def reset(self) -> None:
        """Lose everything, as a flushed Redis or a replaced database file would."""
        if self.kind != "sqlite":
            flush(self.redis_url)
            return
        for store in self.opened:
            await store.close()
        self.remove_files()

    def remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    url = store_url(request, request.param) if request.param != "sqlite" else ""
    b = Backend(request.param, tmp_path, url)
    yield b
    await b.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make()


async def all_events(store: Store) -> list[Event]:
    return list(await store.read_events("", 10_000, 0))


def cursor_order(cursor: str) -> tuple[int, int]:
    """Cursors are opaque to callers; the tests know both backends' forms."""
    first, _, second = cursor.partition("-")
    return int(first), int(second or 0)


# -- keys ---------------------------------------------------------------------


async def test_create_and_get_key(store: Store) -> None:
    record = rec("k1", name="n", policy_id="p1", scopes=("a", "b"), metadata={"team": "x"},
                 expires_at=T0 + 5, has_quota=True)
    await store.ping()
    await store.create_key(record, 10, ev(EventType.KEY_CREATED, key_id="k1"))
    assert await store.get_key("k1") == record
    assert await store.get_key_by_hash("h-k1") == record
    assert await store.get_key("nope") is None
    assert await store.get_key_by_hash("nope") is None
    assert await store.get_quota("k1") == 10
    assert await store.get_quota("nope") is None


async def test_get_keys_by_hash_answers_a_batch_in_order(store: Store) -> None:
    for key_id in ("k1", "k2"):
        await store.create_key(rec(key_id), None, ev(EventType.KEY_CREATED, key_id=key_id))
    assert await store.get_keys_by_hash([]) == []
    got = await store.get_keys_by_hash(["h-k2", "nope", "h-k1", "h-k2"])
    assert got == [rec("k2"), None, rec("k1"), rec("k2")]
    # More hashes than one SQLite statement may bind.
    many = [f"absent-{i}" for i in range(1200)] + ["h-k1"]
    got = await store.get_keys_by_hash(many)
    assert got[:-1] == [None] * 1200 and got[-1] == rec("k1")


async def test_create_duplicate_is_refused_and_writes_nothing(store: Store) -> None:
    await store.create_key(rec("k1"), None, ev())
    before = await store.last_cursor()
    with pytest.raises(AlreadyExistsError):
        await store.create_key(rec("k1", key_hash="other"), 5, ev())
    with pytest.raises(AlreadyExistsError):
        await store.create_key(rec("k2", key_hash="h-k1"), 5, ev())
    assert await store.last_cursor() == before
    assert await store.get_key("k2") is None
    assert await store.get_key_by_hash("other") is None
    assert await store.get_quota("k1") is None
    assert await store.get_quota("k2") is None


async def test_list_keys_pages_and_filters(store: Store) -> None:
    for i in range(7):
        await store.create_key(rec(f"k{i}", owner_id="a" if i % 2 else "b"), None, ev())
    seen: list[str] = []
    token = ""
    while True:
        page = await store.list_keys("", 3, token)
        assert len(page.keys) <= 3
        seen += [r.key_id for r in page.keys]
        token = page.next_token
        if not token:
            break
    assert seen == [f"k{i}" for i in range(7)]
    first = await store.list_keys("a", 2, "")
    assert [r.key_id for r in first.keys] == ["k1", "k3"]
    rest = await store.list_keys("a", 2, first.next_token)
    assert [r.key_id for r in rest.keys] == ["k5"]
    assert rest.next_token == ""
    assert (await store.list_keys("nobody", 5, "")).keys == []
    await store.create_policy(pol("p1"), ev())
    await store.create_policy(pol("p2"), ev())
    policies_token = (await store.list_policies(1, "")).next_token
    for bad in ("garbage!", "Zm9v", policies_token):
        with pytest.raises(InvalidArgumentError):
            await store.list_keys("", 3, bad)
    with pytest.raises(InvalidArgumentError):
        await store.list_keys("", 0, "")


async def test_update_key_checks_revision(store: Store) -> None:
    await store.create_key(rec("k1", policy_id="p1"), None, ev())
    moved = rec("k1", key_hash="h-new", owner_id="owner-b", policy_id="p2", revision=2)
    await store.update_key(moved, 1, ev())
    assert await store.get_key("k1") == moved
    assert await store.get_key_by_hash("h-new") == moved
    assert await store.get_key_by_hash("h-k1") is None
    assert [r.key_id for r in (await store.list_keys("owner-b", 10, "")).keys] == ["k1"]
    assert (await store.list_keys("owner-a", 10, "")).keys == []
    assert await store.keys_with_policy("p1", 10) == (0, [])
    assert await store.keys_with_policy("p2", 10) == (1, ["k1"])
    before = await store.last_cursor()
    with pytest.raises(ConflictError):
        await store.update_key(dataclasses.replace(moved, name="late"), 1, ev())
    with pytest.raises(NotFoundError):
        await store.update_key(rec("ghost", revision=2), 1, ev())
    assert await store.get_key("k1") == moved
    assert await store.last_cursor() == before


async def test_rotate_key_is_atomic(store: Store) -> None:
    old = rec("k1", policy_id="p1")
    await store.create_key(old, None, ev())
    new = rec("k2", policy_id="p1", rotated_from="k1", has_quota=True)
    old2 = dataclasses.replace(old, rotated_to="k2", revoke_at=T0 + 60, revision=2)
    await store.rotate_key(old2, 1, new, 7, ev(EventType.KEY_ROTATED, key_id="k1"))
    assert await store.get_key("k1") == old2
    assert await store.get_key_by_hash("h-k2") == new
    assert await store.get_quota("k2") == 7
    assert await store.keys_with_policy("p1", 10) == (2, ["k1", "k2"])
    # A stale revision changes nothing: the new key is not inserted either.
    with pytest.raises(ConflictError):
        await store.rotate_key(dataclasses.replace(old2, revision=2), 1, rec("k3"), 3, ev())
    assert await store.get_key("k3") is None
    assert await store.get_quota("k3") is None
    with pytest.raises(AlreadyExistsError):
        await store.rotate_key(dataclasses.replace(old2, revision=3), 2, rec("k2"), None, ev())
    assert await store.get_key("k1") == old2
    assert await store.get_quota("k2") == 7


async def test_keys_with_policy(store: Store) -> None:
    for i in range(5):
        await store.create_key(rec(f"k{i}", policy_id="p1" if i < 4 else "p2"), None, ev())
    assert await store.keys_with_policy("p1", 2) == (4, ["k0", "k1"])
    count, ids = await store.keys_with_policy("p1", 0)
    assert (count, list(ids)) == (4, [])
    assert await store.keys_with_policy("none", 5) == (0, [])


# -- policies -------------------------------------------------------------------


async def test_policy_versions(store: Store) -> None:
    v1 = pol("p1", scopes=("read",), rate_limit=RateLimit(10, 60),
             quota_refill=QuotaRefill(100, 3600), allowed_cidrs=("10.0.0.0/8",), max_key_ttl_s=9)
    await store.create_policy(v1, ev(EventType.POLICY_CREATED, policy_id="p1"))
    assert await store.get_policy("p1") == v1
    with pytest.raises(AlreadyExistsError):
        await store.create_policy(pol("p1"), ev())
    for version in range(2, 6):
        await store.put_policy_version(pol("p1", version, description=f"v{version}"), ev())
    with pytest.raises(ConflictError):
        await store.put_policy_version(pol("p1", 5), ev())
    with pytest.raises(ConflictError):
        await store.put_policy_version(pol("p1", 9), ev())
    with pytest.raises(NotFoundError):
        await store.put_policy_version(pol("ghost", 2), ev())
    current = await store.get_policy("p1")
    assert current is not None
    assert (current.version, current.description) == (5, "v5")
    assert await store.get_policy("p1", 1) == v1
    assert await store.get_policy("p1", 6) is None
    assert await store.get_policy("ghost") is None
    versions: list[int] = []
    token = ""
    while True:
        page = await store.list_policy_versions("p1", 2, token)
        versions += [p.version for p in page.policies]
        token = page.next_token
        if not token:
            break
    assert versions == [5, 4, 3, 2, 1]
    with pytest.raises(InvalidArgumentError):
        await store.list_policy_versions("p1", 2, "bad-token")
    with pytest.raises(NotFoundError):
        await store.list_policy_versions("ghost", 2, "")


async def test_list_policies(store: Store) -> None:
    for name in ("b", "a", "c"):
        await store.create_policy(pol(name), ev())
    await store.put_policy_version(pol("a", 2), ev())
    first = await store.list_policies(2, "")
    assert [(p.policy_id, p.version) for p in first.policies] == [("a", 2), ("b", 1)]
    rest = await store.list_policies(2, first.next_token)
    assert [p.policy_id for p in rest.policies] == ["c"]
    assert rest.next_token == ""
    with pytest.raises(InvalidArgumentError):
        await store.list_policies(2, "%%%")


async def test_meta(store: Store) -> None:
    assert await store.get_meta("bootstrap") is None
    await store.set_meta("bootstrap", "done")
    await store.set_meta("bootstrap", "again")
    assert await store.get_meta("bootstrap") == "again"


# -- event log ------------------------------------------------------------------


async def test_every_change_appends_one_event(store: Store) -> None:
    assert await store.read_events(await store.last_cursor(), 10, 0) == []
    await store.create_key(rec("k1"), None, ev(EventType.KEY_CREATED, key_id="k1"))
    await store.update_key(rec("k1", revision=2), 1, ev(EventType.KEY_UPDATED, key_id="k1"))
    await store.rotate_key(rec("k1", revision=3), 2, rec("k2"), None,
                           ev(EventType.KEY_ROTATED, key_id="k1"))
    await store.create_policy(pol("p"), ev(EventType.POLICY_CREATED, policy_id="p"))
    await store.put_policy_version(pol("p", 2), ev(EventType.POLICY_UPDATED, policy_id="p",
                                                   policy_version=2))
    cursor = await store.append_event(ev(EventType.KEY_REVOKED, key_id="k2", key_hash="h-k2"))
    events = await all_events(store)
    assert [e.type for e in events] == [
        EventType.KEY_CREATED, EventType.KEY_UPDATED, EventType.KEY_ROTATED,
        EventType.POLICY_CREATED, EventType.POLICY_UPDATED, EventType.KEY_REVOKED,
    ]
    assert events[-1] == ev(EventType.KEY_REVOKED, key_id="k2", key_hash="h-k2", cursor=cursor)
    assert events[4].policy_version == 2
    order = [cursor_order(e.cursor) for e in events]
    assert order == sorted(order)
    assert len(set(order)) == 6
    assert await store.last_cursor() == cursor
    # Counters, quotas, touches and meta are not lifecycle changes.
    await store.take(TakeRequest("k1", 1, RateLimit(5, 10), False, None, T0))
    await store.set_quota("k1", 3)
    await store.touch({"k1": T0})
    await store.set_meta("m", "v")
    assert await store.last_cursor() == cursor


async def test_read_events_after_a_cursor(store: Store) -> None:
    cursors = [await store.append_event(ev(key_id=f"k{i}")) for i in range(6)]
    later = await store.read_events(cursors[2], 100, 0)
    assert [e.key_id for e in later] == ["k3", "k4", "k5"]
    assert [e.cursor for e in later] == cursors[3:]
    assert [e.key_id for e in await store.read_events(cursors[0], 2, 0)] == ["k1", "k2"]
    assert await store.read_events(cursors[-1], 10, 0) == []
    for bad in ("nope", "-1", "1.5"):
        with pytest.raises(InvalidArgumentError):
            await store.read_events(bad, 10, 0)


async def test_blocking_read_wakes_on_append(backend: Backend) -> None:
    # SQLite polls for other processes' events; a poll far beyond the wait below
    # leaves only the in-process wake-up to deliver this one.
    store = backend.make(**({"poll_interval_s": 3600.0} if backend.kind == "sqlite" else {}))
    start = await store.append_event(ev(key_id="k0"))
    started = time.monotonic()
    assert await store.read_events(start, 10, 0.2) == []
    assert time.monotonic() - started >= 0.15
    reader = asyncio.create_task(store.read_events(start, 10, 10))
    await asyncio.sleep(0.1)
    assert not reader.done()
    cursor = await store.append_event(ev(key_id="k1"))
    got = await asyncio.wait_for(reader, 5)
    assert [(e.key_id, e.cursor) for e in got] == [("k1", cursor)]


async def test_cursor_expires_when_trimmed(backend: Backend) -> None:
    store = backend.make(event_retention=10)
    cursors = [await store.append_event(ev(key_id=f"k{i}")) for i in range(300)]
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursors[0], 10, 0)
    retained = await store.read_events("", 1000, 0)
    assert 10 <= len(retained) < 300
    assert retained[-1].cursor == cursors[-1]
    oldest = cursors.index(retained[0].cursor)
    resumed = await store.read_events(cursors[oldest], 1000, 0)
    assert [e.cursor for e in resumed] == cursors[oldest + 1 :]


async def test_cursor_expires_after_reset(backend: Backend) -> None:
    store = backend.make()
    await store.append_event(ev(key_id="k0"))
    cursor = await store.append_event(ev(key_id="k1"))
    await backend.reset()
    store = backend.make()
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursor, 10, 0)
    await store.append_event(ev(key_id="k2"))
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursor, 10, 0)
    assert [e.key_id for e in await store.read_events("", 10, 0)] == ["k2"]


# -- counters -------------------------------------------------------------------


async def test_take_without_limits_is_allowed(store: Store) -> None:
    result = await store.take(TakeRequest("k1", 1, None, False, None, T0))
    assert result.allowed
    assert (result.rate_limit, result.quota_remaining) == (None, None)


async def test_rate_limit_fixed_window(store: Store) -> None:
    limit = RateLimit(requests=3, window_s=10)
    results = [await store.take(TakeRequest("k1", 1, limit, False, None, T0 + 1 + i)) for i in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.rate_limit.remaining for r in results if r.rate_limit] == [2, 1, 0, 0]
    assert results[3].rate_limited
    assert {r.rate_limit.reset_at for r in results if r.rate_limit} == {T0 + 10}
    assert {r.rate_limit.limit for r in results if r.rate_limit} == {3}
    nxt = await store.take(TakeRequest("k1", 1, limit, False, None, T0 + 10))
    assert nxt.allowed
    assert nxt.rate_limit is not None
    assert (nxt.rate_limit.remaining, nxt.rate_limit.reset_at) == (2, T0 + 20)
    other = await store.take(TakeRequest("k2", 1, limit, False, None, T0 + 1))
    assert other.allowed


async def test_quota_is_exact_under_concurrency(store: Store) -> None:
    await store.create_key(rec("k1", has_quota=True), 150, ev())
    results = await asyncio.gather(
        *(store.take(TakeRequest("k1", 1, None, True, None, T0 + 1)) for _ in range(200))
    )
    assert sum(r.allowed for r in results) == 150
    assert all(not r.rate_limited for r in results)
    assert sorted(r.quota_remaining for r in results if r.allowed) == list(range(150))
    assert await store.get_quota("k1") == 0


async def test_nothing_is_taken_when_one_refuses(store: Store) -> None:
    limit = RateLimit(requests=5, window_s=60)
    await store.set_quota("k1", 2)
    refused = await store.take(TakeRequest("k1", 3, limit, True, None, T0))
    assert not refused.allowed
    assert not refused.rate_limited
    assert refused.quota_remaining == 2
    assert refused.rate_limit is not None
    assert refused.rate_limit.remaining == 5
    ok = await store.take(TakeRequest("k1", 2, limit, True, None, T0))
    assert ok.allowed
    assert ok.rate_limit is not None
    assert (ok.quota_remaining, ok.rate_limit.remaining) == (0, 4)
    await store.set_quota("k2", 10)
    tight = RateLimit(requests=1, window_s=60)
    assert (await store.take(TakeRequest("k2", 1, tight, True, None, T0))).allowed
    second = await store.take(TakeRequest("k2", 1, tight, True, None, T0))
    assert (second.allowed, second.rate_limited, second.quota_remaining) == (False, True, 9)
    assert await store.get_quota("k2") == 9


async def test_quota_refill(store: Store) -> None:
    refill = QuotaRefill(amount=5, interval_s=60)
    await store.create_key(rec("k1", has_quota=True), 2, ev())
    assert (await store.take(TakeRequest("k1", 2, None, True, refill, T0 + 1))).quota_remaining == 0
    refused = await store.take(TakeRequest("k1", 1, None, True, refill, T0 + 59))
    assert (refused.allowed, refused.quota_remaining) == (False, 0)
    refilled = await store.take(TakeRequest("k1", 1, None, True, refill, T0 + 61))
    assert (refilled.allowed, refilled.quota_remaining) == (True, 4)
    # The cadence is kept: the next reset is due at T0 + 120, not T0 + 121.
    await store.take(TakeRequest("k1", 4, None, True, refill, T0 + 62))
    assert not (await store.take(TakeRequest("k1", 1, None, True, refill, T0 + 119))).allowed
    assert (await store.take(TakeRequest("k1", 1, None, True, refill, T0 + 120))).quota_remaining == 4
    # A counter that is missing is not made full by a refill: it refuses.
    missing = await store.take(TakeRequest("k2", 1, None, True, refill, T0))
    assert (missing.allowed, missing.quota_missing, missing.quota_remaining) == (False, True, None)


async def test_removed_quota_counter_refuses_a_take_that_asks_for_it(store: Store) -> None:
    await store.set_quota("k1", 0)
    assert not (await store.take(TakeRequest("k1", 1, None, True, None, T0))).allowed
    await store.set_quota("k1", None)
    assert await store.get_quota("k1") is None
    # A key without a quota takes without one...
    result = await store.take(TakeRequest("k1", 1, None, False, None, T0))
    assert (result.allowed, result.quota_remaining) == (True, None)
    # ...while a quota asked for and not found refuses (a lost counter is not "unlimited").
    lost = await store.take(TakeRequest("k1", 1, None, True, None, T0))
    assert (lost.allowed, lost.rate_limited, lost.quota_missing) == (False, False, True)
    with pytest.raises(InvalidArgumentError):
        await store.set_quota("k1", -1)


async def test_touch_keeps_the_latest_time(store: Store) -> None:
    await store.touch({"k1": T0 + 5.25, "k2": T0})
    await store.touch({"k1": T0 + 1.5, "k2": T0 + 0.125})
    await store.touch({})
    assert await store.last_used(["k1", "k2", "k3"]) == {"k1": T0 + 5.25, "k2": T0 + 0.125}
    assert await store.last_used([]) == {}


# -- Redis only -----------------------------------------------------------------


async def test_redis_unreachable_raises_store_unavailable(free_tcp_port: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_tcp_port}/0", timeout_s=0.2)
    try:
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        with pytest.raises(StoreUnavailableError):
            await store.get_key_by_hash("h")
        with pytest.raises(StoreUnavailableError):
            await store.get_keys_by_hash(["h", "h2"])
        with pytest.raises(StoreUnavailableError):
            await store.create_key(rec("k1"), 5, ev())
        with pytest.raises(StoreUnavailableError):
            await store.take(TakeRequest("k1", 1, RateLimit(1, 1), True, None, T0))
        with pytest.raises(StoreUnavailableError):
            await store.read_events("", 10, 0.5)
    finally:
        await store.close()
        await store.close()


async def test_redis_lifecycle_keys_share_one_slot(redis_url: str) -> None:
    store = RedisStore(redis_url, namespace="slots")
    try:
        await store.create_key(rec("k1", policy_id="p1"), 5, ev())
        await store.rotate_key(rec("k1", policy_id="p1", revision=2), 1,
                               rec("k2", owner_id="o2"), 3, ev())
        await store.create_policy(pol("p1"), ev())
        await store.put_policy_version(pol("p1", 2), ev())
        await store.set_meta("m", "v")
        await store.append_event(ev())
        await store.take(TakeRequest("k1", 1, RateLimit(5, 60), True, None, T0))
        await store.touch({"k1": T0})
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        names = [name async for name in client.scan_iter(count=1000)]
        await client.aclose()
    finally:
        await store.close()
    lifecycle = [n for n in names if n.startswith("{slots}:")]
    counters = [n for n in names if n.startswith("slots:c:")]
    assert len(lifecycle) + len(counters) == len(names)
    assert len(lifecycle) >= 10
    assert {key_slot(n.encode()) for n in lifecycle} == {key_slot(b"slots")}
    for name in counters:
        key_id = name.split("{", 1)[1].split("}", 1)[0]
        assert key_slot(name.encode()) == key_slot(key_id.encode())
    assert {n.split("{", 1)[1].split("}", 1)[0] for n in counters} == {"k1", "k2"}


async def test_redis_reset_during_a_blocking_read_is_noticed(redis_url: str) -> None:
    store = RedisStore(redis_url, namespace="t", timeout_s=2.0)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        cursor = await store.append_event(ev(key_id="k0"))
        reader = asyncio.create_task(store.read_events(cursor, 10, 10))
        await asyncio.sleep(0.1)
        await client.flushall()
        await asyncio.sleep(0.01)
        await store.append_event(ev(key_id="k1"))
        with pytest.raises(CursorExpiredError):
            await asyncio.wait_for(reader, 5)
    finally:
        await client.aclose()
        await store.close()


# -- SQLite only ----------------------------------------------------------------


async def test_sqlite_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SqliteStore(str(path))
    await store.ping()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = conn.execute("SELECT value FROM store_meta WHERE name = 'schema_version'")
        assert version.fetchone() == ("1",)
    finally:
        conn.close()
    with pytest.raises(StoreUnavailableError):
        await store.ping()  # closed


async def test_sqlite_unopenable_file_raises_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "missing-dir" / "k.db"))
    with pytest.raises(StoreUnavailableError):
        await store.get_key("k1")
    await store.close()


async def test_sqlite_processes_share_the_event_log(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    one = SqliteStore(path, poll_interval_s=0.01)
    two = SqliteStore(path, poll_interval_s=0.01)
    try:
        cursor = await one.append_event(ev(key_id="k0"))
        assert [e.key_id for e in await two.read_events("", 10, 0)] == ["k0"]
        reader = asyncio.create_task(one.read_events(cursor, 10, 10))
        await asyncio.sleep(0.05)
        await two.create_key(rec("k1"), None, ev(EventType.KEY_CREATED, key_id="k1"))
        got = await asyncio.wait_for(reader, 5)
        assert [e.key_id for e in got] == ["k1"]
        assert await one.get_key("k1") == rec("k1")
        assert await one.last_cursor() == got[0].cursor
    finally:
        await one.close()
        await two.close()


# -- request marks ----------------------------------------------------------------


NOW = time.time()  # Redis expires a mark by its own clock


def mark(request_id: str = "r1", **kw: Any) -> RequestMark:
    fields: dict[str, Any] = {"actor": "admin-1", "request_id": request_id, "fingerprint": "f",
                              "outcome": '{"key_id": "k1"}', "expires_at": NOW + 3600,
                              "recorded_at": NOW}
    fields.update(kw)
    return RequestMark(**fields)


async def test_a_request_mark_is_written_with_its_change_or_not_at_all(store: Store) -> None:
    await store.create_key(rec("k1"), None, ev(EventType.KEY_CREATED), mark())
    assert await store.get_request("admin-1", "r1", NOW) == mark()
    assert await store.get_request("admin-2", "r1", NOW) is None  # scoped to the actor
    before = await store.last_cursor()
    # A held mark refuses the whole write: no key, no quota, no event.
    with pytest.raises(DuplicateRequestError):
        await store.create_key(rec("k2"), 5, ev(), mark(fingerprint="g"))
    with pytest.raises(DuplicateRequestError):
        await store.update_key(rec("k1", revision=2, name="x"), 1, ev(), mark())
    with pytest.raises(DuplicateRequestError):
        await store.create_policy(pol("p1"), ev(), mark())
    assert await store.get_key("k2") is None and await store.get_quota("k2") is None
    assert (await store.get_key("k1")) == rec("k1")
    assert await store.get_policy("p1") is None
    assert await store.last_cursor() == before
    # A refused write records no mark.
    with pytest.raises(ConflictError):
        await store.update_key(rec("k1", revision=8), 7, ev(), mark("r2"))
    with pytest.raises(AlreadyExistsError):
        await store.create_key(rec("k1"), None, ev(), mark("r3"))
    assert await store.get_request("admin-1", "r2", NOW) is None
    assert await store.get_request("admin-1", "r3", NOW) is None
    # Replacing moves the mark on, in the write that needs it.
    moved = mark(outcome='{"key_id": "k1", "revision": 2}', replace=True)
    await store.update_key(rec("k1", revision=2, key_hash="h-new"), 1, ev(), moved)
    got = await store.get_request("admin-1", "r1", NOW)
    assert got is not None and got.outcome == moved.outcome
    await store.create_policy(pol("p1"), ev(), mark("r4"))
    await store.put_policy_version(pol("p1", 2), ev(), mark("r5"))
    assert await store.get_request("admin-1", "r5", NOW) is not None


async def test_an_expired_request_mark_is_forgotten(store: Store) -> None:
    await store.create_key(rec("k1"), None, ev(), mark(expires_at=time.time() + 3600))
    later = time.time() + 7200
    assert await store.get_request("admin-1", "r1", later) is None
    await store.create_key(rec("k2"), None, ev(), mark(expires_at=later + 3600, recorded_at=later))
    got = await store.get_request("admin-1", "r1", later)
    assert got is not None and got.expires_at == later + 3600
