"""The event log's loss contract and the follower that relies on it, on real Redis and SQLite.

Every way of losing events a follower has not read yet (trimmed to empty,
deleted, emptied, sequence reset) must be reported as `CursorExpiredError`,
and the follower must then flush its cache after reading the new cursor.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis

from keysvc.app.telemetry import AUDITOR
from keysvc.core.cache import KeyCache
from keysvc.core.errors import CursorExpiredError
from keysvc.core.model import Code, Event, EventType, Policy, RateLimit, RateLimitState
from keysvc.service.admin import AdminService
from keysvc.service.events import ACTIONS, BEHIND_AFTER_S, EventFollower, FollowerState
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from keysvc.testing import capture_logs
from tests._topology import REDIS_KINDS, client_of, store_url

pytestmark = pytest.mark.integration

NAMESPACE = "t"
STREAM = "{t}:events"


class Log:
    """Raw access to one backend's event log, to lose events the way operators and bugs do."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str) -> None:
        self.kind = kind
        self.path = tmp_path / "keysvc.db"
        self.redis_url = redis_url
        self.stores: list[Store] = []

    def make(self) -> Store:
        store: Store
        if self.kind == "sqlite":
            store = SqliteStore(str(self.path), poll_interval_s=0.01)
        else:
            store = RedisStore(self.redis_url, namespace=NAMESPACE, timeout_s=2.0)
        self.stores.append(store)
        return store

    def _sql(self, *statements: str) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    def _redis(self) -> redis.Redis:
        return client_of(self.redis_url)  # type: ignore[return-value]

    def empty(self) -> None:
        """Remove every entry but keep the log's identity (XTRIM MAXLEN 0; DELETE FROM events)."""
        if self.kind != "sqlite":
            with self._redis() as client:
                client.xtrim(STREAM, maxlen=0, approximate=False)
        else:
            self._sql("DELETE FROM events")

    def delete(self) -> None:
        """Remove the log itself (DEL of the stream; the SQLite id sequence reset)."""
        if self.kind != "sqlite":
            with self._redis() as client:
                client.delete(STREAM)
        else:
            self._sql("DELETE FROM events", "DELETE FROM sqlite_sequence WHERE name = 'events'")

    def append_raw(self, body: dict[str, object]) -> None:
        """Append an entry as another (newer) keysvc version might write it."""
        text = json.dumps(body)
        if self.kind != "sqlite":
            with self._redis() as client:
                client.xadd(STREAM, {"e": text})
        else:
            self._sql(f"INSERT INTO events (body) VALUES ('{text}')")

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture(params=["sqlite", *REDIS_KINDS])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Log]:
    url = store_url(request, request.param) if request.param != "sqlite" else ""
    found = Log(request.param, tmp_path, url)
    yield found
    await found.close()


def ev(key_id: str, type_: EventType = EventType.KEY_UPDATED) -> Event:
    return Event(type_, 1_700_000_000.0, "admin", key_id=key_id, key_hash="h-" + key_id)


def make_cache(**overrides: float) -> KeyCache:
    settings: dict[str, float] = {"max_keys": 1000, "ttl_s": 300.0, "negative_max": 100,
                                  "negative_ttl_s": 2.0, "stale_window_s": 60.0}
    settings.update(overrides)
    return KeyCache(**settings)  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], bool], what: str, bound_s: float = 15.0) -> None:
    """Wait for a condition, with a generous deadline (the machine may be loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not predicate():
        assert loop.time() < deadline, f"not {what} within {bound_s}s"
        await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` until it is done (on 3.11, asyncio.wait_for in redis-py can swallow one)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)


# -- the store contract: every loss is reported -----------------------------------


async def test_an_emptied_log_expires_every_cursor_before_its_end(log: Log) -> None:
    store = log.make()
    cursor = await store.append_event(ev("k0"))
    await store.append_event(ev("k1"))  # the follower at `cursor` has not read this one
    log.empty()
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursor, 10, 0)


async def test_a_cursor_at_the_end_of_an_emptied_log_loses_nothing(log: Log) -> None:
    store = log.make()
    await store.append_event(ev("k0"))
    end = await store.append_event(ev("k1"))
    log.empty()
    assert await store.read_events(end, 10, 0) == []
    assert await store.last_cursor() == end, "the end of the log survives its emptying"
    later = await store.append_event(ev("k2"))
    if log.kind == "sqlite":  # Redis ids are not dense: there this may be a (needless) resync
        assert [e.cursor for e in await store.read_events(end, 10, 0)] == [later]


async def test_the_end_of_an_empty_log_is_a_real_cursor(log: Log) -> None:
    store = log.make()
    origin = await store.last_cursor()
    assert origin != "", "an empty log's end must be a cursor that can detect a loss"
    await store.append_event(ev("k0"))
    await store.append_event(ev("k1"))
    assert [e.key_id for e in await store.read_events(origin, 10, 0)] == ["k0", "k1"]
    log.empty()
    with pytest.raises(CursorExpiredError):
        await store.read_events(origin, 10, 0)


async def test_a_deleted_log_expires_a_cursor_taken_before(log: Log) -> None:
    store = log.make()
    await store.append_event(ev("k0"))
    cursor = await store.append_event(ev("k1"))
    log.delete()
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursor, 10, 0)
    await store.append_event(ev("k2"))
    with pytest.raises(CursorExpiredError):
        await store.read_events(cursor, 10, 0)


# -- the follower flushes on every loss, reading the new cursor first ---------------


async def _cached_world(log: Log) -> tuple[Store, AdminService, Validator, EventFollower, str, str]:
    """Two keys created and cached through a validator whose cache follows the log."""
    store = log.make()
    admin = AdminService(log.make(), auditor=AUDITOR)  # another process's admin: nothing applied locally
    _, kept = await admin.create_key("t", owner_id="o")
    created, revoked = await admin.create_key("t", owner_id="o")
    cache = make_cache()
    validator = Validator(store, cache)
    follower = EventFollower(store, cache, block_s=0.05)
    await follower.start()
    for secret in (kept, revoked):
        assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    return store, admin, validator, follower, created.record.key_id, revoked


@pytest.mark.parametrize("loss", ["empty", "delete"])
async def test_a_lost_log_flushes_the_cache(log: Log, loss: str) -> None:
    _, admin, validator, follower, revoked_id, revoked = await _cached_world(log)
    await admin.revoke_key("t", revoked_id)  # while this follower is not reading
    getattr(log, loss)()
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: follower.flushes >= 1, "flushed")
        assert (await validator.validate(ValidationRequest(revoked))).code is Code.REVOKED
        # Positioned at the new end: later changes still arrive.
        created, again = await admin.create_key("t", owner_id="o")
        assert (await validator.validate(ValidationRequest(again))).code is Code.VALID
        await admin.revoke_key("t", created.record.key_id)
        await wait_for(lambda: validator.check_cached(ValidationRequest(again)) is None, "evicted")
    finally:
        await stop(task)


async def test_a_follower_started_on_a_deleted_log_still_detects_a_later_loss(log: Log) -> None:
    """After the log was deleted once, the follower's cursor is still one that can expire."""
    store, admin, validator, follower, revoked_id, revoked = await _cached_world(log)
    log.delete()
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: follower.flushes >= 1, "flushed after the delete")
        assert (await validator.validate(ValidationRequest(revoked))).code is Code.VALID  # cached again
        await stop(task)
        await admin.revoke_key("t", revoked_id)  # while this follower is away
        log.empty()
        task = asyncio.create_task(follower.run())
        await wait_for(lambda: follower.flushes >= 2, "flushed after the emptying")
        assert (await validator.validate(ValidationRequest(revoked))).code is Code.REVOKED
    finally:
        await stop(task)
    del store


# -- each event type has its own action; unknown ones are skipped ---------------------


async def test_scheduled_deadline_events_leave_policies_and_limits_alone(log: Log) -> None:
    store = log.make()
    admin = AdminService(log.make(), auditor=AUDITOR)
    await admin.create_policy("t", Policy("p", 0, 0.0, 0.0, scopes=("read",), rate_limit=RateLimit(5, 60)))
    created, _ = await admin.create_key("t", owner_id="o", policy_id="p")
    cache = make_cache()
    validator = Validator(store, cache)
    policy = await store.get_policy("p")
    assert policy is not None
    cache.put_policy(policy, 0.0, cache.epoch)
    follower = EventFollower(store, cache, on_key_change=validator.forget_limits,
                             on_flush=validator.forget_all_limits)
    await follower.start()
    state = RateLimitState(5, 0, 4e9)
    validator._over_limit["other-key"] = (4e9, state)
    for kind in (EventType.KEY_EXPIRED, EventType.KEY_REVOKED_BY_SCHEDULE):
        await store.append_event(Event(kind, 1.0, "", key_id=created.record.key_id,
                                       key_hash=created.record.key_hash, policy_id="p"))
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: follower.applied >= 2, "applied")
    finally:
        await stop(task)
    assert cache.get_policy("p", 0.0) is policy, "a deadline passing does not change the policy"
    assert validator._over_limit == {"other-key": (4e9, state)}, "nor any other key's limits"


async def test_an_unknown_event_type_is_skipped_and_following_goes_on(log: Log) -> None:
    _, admin, validator, follower, revoked_id, revoked = await _cached_world(log)
    for _ in range(3):
        log.append_raw({"type": "key.frobnicated", "at": 1.0, "key_id": revoked_id})
    await admin.revoke_key("t", revoked_id)
    with capture_logs() as logs:
        task = asyncio.create_task(follower.run())
        try:
            await wait_for(lambda: validator.check_cached(ValidationRequest(revoked)) is None, "evicted")
        finally:
            await stop(task)
    skipped = [r for r in logs.records() if r.get("event_type") == "key.frobnicated"]
    assert len(skipped) == 1, "logged once per type, not once per event"
    assert (await validator.validate(ValidationRequest(revoked))).code is Code.REVOKED
    assert follower.skipped == 3
    assert follower.flushes == 0


def test_every_event_type_of_this_version_has_an_action() -> None:
    assert set(ACTIONS) == set(EventType)


async def test_an_idle_read_confirms_the_follower_is_caught_up(log: Log) -> None:
    """A read that finds nothing new confirms; between confirmations the cache ages out."""
    store = log.make()
    admin = AdminService(log.make(), auditor=AUDITOR)
    _, secret = await admin.create_key("t", owner_id="o")
    clock = [100.0]
    cache = make_cache(stale_window_s=0.0)
    validator = Validator(store, cache, monotonic=lambda: clock[0])
    follower = EventFollower(store, cache, block_s=0.05, monotonic=lambda: clock[0])
    await follower.start()
    assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    assert validator.check_cached(ValidationRequest(secret)) is not None
    clock[0] += 2 * BEHIND_AFTER_S  # no confirmation for that long: behind, cache not read
    assert follower.state is FollowerState.BEHIND
    assert validator.check_cached(ValidationRequest(secret)) is None
    await follower.poll_once()  # nothing new in the log
    assert follower.health().state is FollowerState.FOLLOWING
    assert validator.check_cached(ValidationRequest(secret)) is not None
    # An idle follower reads (and so confirms) several times within the behind threshold.
    assert EventFollower(store, make_cache())._block_s <= BEHIND_AFTER_S / 2


def swap_in(copy: Path, path: Path) -> None:
    """Put `copy` in place of the database at `path`, as a restore would (its WAL goes too)."""
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    copy.replace(path)


async def test_a_replaced_sqlite_file_flushes_the_follower(tmp_path: Path) -> None:
    """A database file swapped under a running process (a restored copy) is a lost log too.

    The copy continues the same id sequence, so only the file's identity tells
    the follower that the revocation written to it never reached its log.
    """
    path = tmp_path / "keysvc.db"
    store = SqliteStore(str(path), poll_interval_s=0.01)
    admin_store = SqliteStore(str(path), poll_interval_s=0.01)
    created, secret = await AdminService(admin_store, auditor=AUDITOR).create_key("t", owner_id="o")
    await admin_store.close()
    cache = make_cache()
    validator = Validator(store, cache)
    follower = EventFollower(store, cache, block_s=0.05)
    await follower.start()
    assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    # The replacement: a copy of the file in which the key was revoked.
    copy = tmp_path / "copy.db"
    with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    copy_store = SqliteStore(str(copy))
    await AdminService(copy_store, auditor=AUDITOR).revoke_key("t", created.record.key_id)
    await copy_store.close()
    swap_in(copy, path)
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: follower.flushes >= 1, "flushed")
        assert (await validator.validate(ValidationRequest(secret))).code is Code.REVOKED
    finally:
        await stop(task)
        await store.close()
