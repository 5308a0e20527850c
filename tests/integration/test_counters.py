"""Counters under faults: lost counters, rotation's shared budget, skewed clocks.

Every test runs against both real backends (a real redis-server, a real
SQLite file); faults are made the way they happen: a counter deleted under
the store (eviction, a lost write), sidecars whose clocks disagree.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from keysvc.app.telemetry import AUDITOR
from keysvc.core.cache import KeyCache
from keysvc.core.model import Code, Policy, QuotaRefill, RateLimit, TakeRequest
from keysvc.service.admin import AdminService
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore
from keysvc.testing import capture_logs
from tests._topology import client_of, current_store_url

pytestmark = pytest.mark.integration


def make_cache() -> KeyCache:
    return KeyCache(max_keys=1000, ttl_s=30.0, negative_max=100, negative_ttl_s=2.0,
                    stale_window_s=60.0)


@pytest.fixture
def lose_quota_counter(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], None]:
    """Delete a quota counter under the store, as an eviction or a lost write would."""

    def lose(budget_id: str) -> None:
        if isinstance(store, RedisStore):
            client = client_of(current_store_url(request))
            try:
                assert client.delete(f"keysvc:c:{{{budget_id}}}:q") == 1
            finally:
                client.close()
        else:
            conn = sqlite3.connect(tmp_path / "keysvc.db")
            try:
                with conn:
                    deleted = conn.execute("DELETE FROM quotas WHERE key_id = ?", (budget_id,))
                    assert deleted.rowcount == 1
            finally:
                conn.close()

    return lose


async def test_take_refuses_when_the_quota_counter_is_missing(
    store: Store, lose_quota_counter: Callable[[str], None]
) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    view, _ = await admin.create_key("t", owner_id="o", quota=5)
    key_id = view.record.key_id
    assert (await store.take(TakeRequest(key_id, 1, None, True, None, time.time()))).allowed
    lose_quota_counter(key_id)
    for refill in (None, QuotaRefill(100, 60)):
        result = await store.take(TakeRequest(key_id, 1, None, True, refill, time.time()))
        assert not result.allowed
        assert not result.rate_limited
        assert result.quota_remaining is None, "a missing counter is reported as missing"


async def test_validator_refuses_a_key_whose_quota_counter_is_lost(
    store: Store, lose_quota_counter: Callable[[str], None]
) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    view, secret = await admin.create_key("t", owner_id="o", quota=3)
    key_id = view.record.key_id
    validator = Validator(store, make_cache())
    assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    lose_quota_counter(key_id)
    with capture_logs() as logs:
        codes = {(await validator.validate(ValidationRequest(secret))).code for _ in range(20)}
    assert codes == {Code.QUOTA_EXHAUSTED}, "a lost counter must never mean unlimited"
    warnings = [r for r in logs.records() if r["level"] == "warning" and r.get("key_id") == key_id]
    assert len(warnings) == 1, "the lost counter is logged with its key_id, once"
    assert secret not in logs.getvalue()
    # An admin setting the quota again heals the key.
    await admin.update_key("t", key_id, {"quota_remaining": 2})
    fresh = Validator(store, make_cache())
    codes_after = [(await fresh.validate(ValidationRequest(secret))).code for _ in range(3)]
    assert codes_after == [Code.VALID, Code.VALID, Code.QUOTA_EXHAUSTED]


async def spend_through_both(validator: Validator, old: str, new: str, n: int) -> list[Code]:
    """Validate `n` times, alternating the two secrets of a rotation."""
    codes = []
    for i in range(n):
        codes.append((await validator.validate(ValidationRequest(old if i % 2 else new))).code)
    return codes


async def test_rotation_shares_one_quota(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    view, old_secret = await admin.create_key("t", owner_id="o", quota=10)
    validator = Validator(store, make_cache())
    assert (await validator.validate(ValidationRequest(old_secret))).code is Code.VALID
    new_view, new_secret, _ = await admin.rotate_key("t", view.record.key_id, grace_s=3600)
    assert new_view.quota_remaining == 9
    codes = await spend_through_both(validator, old_secret, new_secret, 30)
    assert 1 + codes.count(Code.VALID) == 10, codes
    assert set(codes[9:]) == {Code.QUOTA_EXHAUSTED}
    assert (await admin.get_key(new_view.record.key_id)).quota_remaining == 0
    assert (await admin.get_key(view.record.key_id)).quota_remaining == 0
    # Rotating again keeps the one budget: the third secret starts empty too.
    newest, third, _ = await admin.rotate_key("t", new_view.record.key_id, grace_s=3600)
    assert newest.quota_remaining == 0
    assert (await validator.validate(ValidationRequest(third))).code is Code.QUOTA_EXHAUSTED
    # An admin refill reaches every secret of the budget.
    await admin.update_key("t", newest.record.key_id, {"quota_remaining": 2})
    fresh = Validator(store, make_cache())
    codes = await spend_through_both(fresh, old_secret, third, 6)
    assert codes.count(Code.VALID) == 2, codes


async def test_rotation_shares_one_rate_window(store: Store) -> None:
    admin = AdminService(store, auditor=AUDITOR)
    await admin.create_policy("t", Policy("lim", 0, 0.0, 0.0, rate_limit=RateLimit(6, 3600)))
    view, old_secret = await admin.create_key("t", owner_id="o", policy_id="lim")
    validator = Validator(store, make_cache())
    assert (await validator.validate(ValidationRequest(old_secret))).code is Code.VALID
    _, new_secret, _ = await admin.rotate_key("t", view.record.key_id, grace_s=3600)
    # Another sidecar, so local over-limit memos do not hide what the store counts.
    other = Validator(store, make_cache())
    codes = await spend_through_both(validator, old_secret, new_secret, 10)
    codes += await spend_through_both(other, old_secret, new_secret, 10)
    assert 1 + codes.count(Code.VALID) == 6, codes
    assert set(codes) == {Code.VALID, Code.RATE_LIMITED}


async def test_skewed_sidecars_agree_on_rate_windows(redis_url: str) -> None:
    """Two validators whose clocks are a whole window apart still share one window."""
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        admin = AdminService(store, auditor=AUDITOR)
        await admin.create_policy("t", Policy("lim", 0, 0.0, 0.0, rate_limit=RateLimit(4, 3600)))
        _, secret = await admin.create_key("t", owner_id="o", policy_id="lim")
        skews = {"ahead": 3600.0, "behind": -3600.0}
        sidecars = {
            name: Validator(store, make_cache(), clock=lambda s=skew: time.time() + s)
            for name, skew in skews.items()
        }
        codes, waits = [], []
        for i in range(12):
            name = "ahead" if i % 2 else "behind"
            decision = await sidecars[name].validate(ValidationRequest(secret))
            codes.append(decision.code)
            assert decision.rate_limit is not None
            # What each sidecar tells its client: seconds until the window ends.
            waits.append(decision.rate_limit.reset_at - (time.time() + skews[name]))
        assert codes.count(Code.VALID) == 4, codes
        # Both describe the one shared window (generous margin: a loaded machine).
        assert 0 < min(waits) <= max(waits) <= 3600
        assert max(waits) - min(waits) < 600, waits
    finally:
        await store.close()


async def test_skewed_sidecars_agree_on_quota_refills(redis_url: str) -> None:
    """A sidecar whose clock runs a day ahead does not refill a quota early."""
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        admin = AdminService(store, auditor=AUDITOR)
        refill = QuotaRefill(3, 3600)
        await admin.create_policy("t", Policy("q", 0, 0.0, 0.0, quota_refill=refill))
        _, secret = await admin.create_key("t", owner_id="o", policy_id="q", quota=3)
        on_time = Validator(store, make_cache())
        ahead = Validator(store, make_cache(), clock=lambda: time.time() + 86400)
        codes = [(await on_time.validate(ValidationRequest(secret))).code for _ in range(3)]
        codes += [(await ahead.validate(ValidationRequest(secret))).code for _ in range(3)]
        assert codes == [Code.VALID] * 3 + [Code.QUOTA_EXHAUSTED] * 3
    finally:
        await store.close()


async def test_sqlite_update_with_quota_is_one_transaction(tmp_path: Path) -> None:
    """UpdateKey(quota_remaining) writes the record and its counter together, or neither."""
    path = tmp_path / "k.db"
    store = SqliteStore(str(path))
    try:
        admin = AdminService(store, auditor=AUDITOR)
        view, secret = await admin.create_key("t", owner_id="o")
        key_id = view.record.key_id
        # A fault in the counter's write, made by the database itself.
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute("CREATE TRIGGER no_quota BEFORE INSERT ON quotas "
                             "BEGIN SELECT RAISE(ABORT, 'counter write failed'); END")
        finally:
            conn.close()
        with pytest.raises(Exception):  # noqa: B017 - which error is not the point
            await admin.update_key("t", key_id, {"quota_remaining": 4})
        stored = await store.get_key(key_id)
        assert stored is not None
        assert (stored.has_quota, stored.revision) == (False, view.record.revision)
        decision = await Validator(store, make_cache()).validate(ValidationRequest(secret))
        assert decision.code is Code.VALID
    finally:
        await store.close()


async def test_an_evicting_redis_is_warned_about_at_start(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        for policy, warned in (("allkeys-lru", True), ("volatile-ttl", True), ("noeviction", False)):
            client.config_set("maxmemory-policy", policy)
            store = RedisStore(redis_url, timeout_s=2.0)
            try:
                with capture_logs() as logs:
                    await store.ping()
                    await store.ping()  # checked once, at the first answer
            finally:
                await store.close()
            found = [r for r in logs.records() if r["event"] == "redis.evicting_policy"]
            assert len(found) == (1 if warned else 0), (policy, logs.lines())
            if warned:
                assert found[0]["level"] == "warning"
                assert found[0]["maxmemory_policy"] == policy
    finally:
        client.config_set("maxmemory-policy", before)
        client.close()


async def test_a_full_noeviction_redis_refuses_takes_and_forgets_nothing(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout_s=2.0)
    client = redis.Redis.from_url(redis_url)
    saved = client.config_get("maxmemory")["maxmemory"], client.config_get(
        "maxmemory-policy")["maxmemory-policy"]
    try:
        admin = AdminService(store, auditor=AUDITOR)
        await admin.create_policy("t", Policy("lim", 0, 0.0, 0.0, rate_limit=RateLimit(5, 3600)))
        view, secret = await admin.create_key("t", owner_id="o", policy_id="lim", quota=5)
        validator = Validator(store, make_cache())
        assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write is now over the limit
        full = [(await validator.validate(ValidationRequest(secret))).code for _ in range(3)]
        assert full == [Code.UNAVAILABLE] * 3
        client.config_set("maxmemory", saved[0])
        assert (await admin.get_key(view.record.key_id)).quota_remaining == 4
        after = [(await validator.validate(ValidationRequest(secret))).code for _ in range(6)]
        assert after == [Code.VALID] * 4 + [Code.RATE_LIMITED] * 2
    finally:
        client.config_set("maxmemory", saved[0])
        client.config_set("maxmemory-policy", saved[1])
        client.close()
        await store.close()
