"""The hot path against real stores: what reaches the store, and what does not."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from keysvc.app.telemetry import AUDITOR
from keysvc.core import keys
from keysvc.core.cache import KeyCache
from keysvc.core.model import Code, Policy, RateLimit
from keysvc.service.admin import AdminService
from keysvc.service.events import EventFollower
from keysvc.service.validator import ValidationRequest, Validator
from keysvc.store.base import Store
from keysvc.store.redis.store import RedisStore
from keysvc.store.sqlite.store import SqliteStore

pytestmark = pytest.mark.integration


class CountingStore:
    """A real store that counts the calls made to it (not a mock: every call goes through)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


@pytest.fixture
def store(store: Store) -> CountingStore:
    """The backend-parametrized store, counting its calls."""
    return CountingStore(store)


def make_cache(**overrides: Any) -> KeyCache:
    settings: dict[str, Any] = {
        "max_keys": 1000, "ttl_s": 30.0, "negative_max": 100, "negative_ttl_s": 2.0,
        "stale_window_s": 60.0,
    }
    settings.update(overrides)
    return KeyCache(**settings)


async def test_malformed_keys_never_reach_the_store(store: CountingStore) -> None:
    validator = Validator(store, make_cache())  # type: ignore[arg-type]
    good = keys.generate().secret
    garbage = ["", "ks_", "x" * 5000, good[:-1] + ("A" if good[-1] != "A" else "B"), good.upper(),
               good + "0", "bearer " + good, "ks_" + "!" * 49]
    for key in garbage * 50:
        decision = await validator.validate(ValidationRequest(key))
        assert decision.code is Code.MALFORMED
    assert sum(store.calls.values()) == 0


async def test_hit_skips_the_store_and_miss_reads_once(store: CountingStore) -> None:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    _, secret = await admin.create_key("t", owner_id="o", scopes=["read"])
    validator = Validator(store, make_cache())  # type: ignore[arg-type]
    store.calls.clear()
    first = await validator.validate(ValidationRequest(secret, ["read"]))
    assert first.code is Code.VALID
    assert store.calls == Counter({"get_key_by_hash": 1})
    for _ in range(100):
        assert (await validator.validate(ValidationRequest(secret, ["read"]))).code is Code.VALID
    assert store.calls == Counter({"get_key_by_hash": 1}), "cache hits must not touch the store"


async def test_cache_disabled_reads_once_per_call(store: CountingStore) -> None:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    _, secret = await admin.create_key("t", owner_id="o")
    validator = Validator(store, make_cache(ttl_s=0.0))  # type: ignore[arg-type]
    store.calls.clear()
    for _ in range(20):
        assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    assert store.calls == Counter({"get_key_by_hash": 20})


async def test_unknown_keys_are_remembered_briefly(store: CountingStore) -> None:
    validator = Validator(store, make_cache())  # type: ignore[arg-type]
    unknown = keys.generate().secret
    for _ in range(50):
        assert (await validator.validate(ValidationRequest(unknown))).code is Code.NOT_FOUND
    assert store.calls == Counter({"get_key_by_hash": 1})


async def test_negative_cache_is_bounded(store: CountingStore) -> None:
    cache = make_cache(negative_max=10)
    validator = Validator(store, cache)  # type: ignore[arg-type]
    for _ in range(200):
        await validator.validate(ValidationRequest(keys.generate().secret))
    assert len(cache._negative) == 10


async def _policy_key_world(store: CountingStore) -> tuple[AdminService, str, Validator, EventFollower]:
    """Policy "p" (read, write), a key under it, and a validator whose cache follows the events."""
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    await admin.create_policy("t", Policy("p", 0, 0.0, 0.0, scopes=("read", "write")))
    _, secret = await admin.create_key("t", owner_id="o", policy_id="p")
    cache = make_cache()
    validator = Validator(store, cache)  # type: ignore[arg-type]
    follower = EventFollower(store, cache)  # type: ignore[arg-type]
    await follower.start()
    return admin, secret, validator, follower


async def test_policy_change_reaches_the_cache_through_events(store: CountingStore) -> None:
    admin, secret, validator, follower = await _policy_key_world(store)
    assert (await validator.validate(ValidationRequest(secret, ["write"]))).code is Code.VALID
    await admin.update_policy("t", Policy("p", 0, 0.0, 0.0, scopes=("read",)), expected_version=1,
                              allow_breaking=True)
    # Before the follower applies the event, the cached policy still answers.
    assert (await validator.validate(ValidationRequest(secret, ["write"]))).code is Code.VALID
    for event in await store.inner.read_events(follower.cursor, 100, 0.5):
        follower.apply(event)
    assert (await validator.validate(ValidationRequest(secret, ["write"]))).code is Code.INSUFFICIENT_SCOPE


async def test_a_cached_key_answers_with_one_valid_decision_until_its_policy_changes(
    store: CountingStore,
) -> None:
    """The gRPC layer builds a VALID response once per Decision object: hits must share it."""
    admin, secret, validator, follower = await _policy_key_world(store)
    first = await validator.validate(ValidationRequest(secret, ["read"]))
    assert first.code is Code.VALID
    assert all(validator.check_cached(ValidationRequest(secret, ["read"])) is first for _ in range(3))
    await admin.update_policy("t", Policy("p", 0, 0.0, 0.0, scopes=("read",)), expected_version=1,
                              allow_breaking=True)
    for event in await store.inner.read_events(follower.cursor, 100, 0.5):
        follower.apply(event)
    after = await validator.validate(ValidationRequest(secret, ["read"]))
    assert after.code is Code.VALID
    assert after is not first
    assert after.scopes == ("read",)
    assert validator.check_cached(ValidationRequest(secret, ["read"])) is after


async def test_store_down_serves_cached_keys_within_the_stale_window(tmp_path: Path) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout_s=0.05, retries=0)
    sqlite = SqliteStore(str(tmp_path / "s.db"))
    admin = AdminService(sqlite, auditor=AUDITOR)
    _, cached_secret = await admin.create_key("t", owner_id="o")
    record = await sqlite.get_key_by_hash(keys.hash_key(cached_secret))
    assert record is not None
    now = [1000.0]
    cache = make_cache(ttl_s=1.0, stale_window_s=5.0)
    cache.put(record, now[0], cache.epoch)
    validator = Validator(store, cache, monotonic=lambda: now[0])
    uncached = keys.generate().secret

    now[0] += 2.0  # past the TTL: the validator tries the store, which is down
    assert (await validator.validate(ValidationRequest(cached_secret))).code is Code.VALID
    assert (await validator.validate(ValidationRequest(uncached))).code is Code.UNAVAILABLE
    now[0] += 5.0  # past the stale window too: fail closed
    assert (await validator.validate(ValidationRequest(cached_secret))).code is Code.UNAVAILABLE

    open_validator = Validator(store, make_cache(), fail_open=True)
    assert (await open_validator.validate(ValidationRequest(uncached))).code is Code.VALID
    await store.close()
    await sqlite.close()


async def test_over_limit_keys_are_refused_locally_until_the_window_resets(store: CountingStore) -> None:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    await admin.create_policy("t", Policy("lim", 0, 0.0, 0.0, rate_limit=RateLimit(3, 3600)))
    _, secret = await admin.create_key("t", owner_id="o", policy_id="lim")
    validator = Validator(store, make_cache())  # type: ignore[arg-type]
    codes = [(await validator.validate(ValidationRequest(secret))).code for _ in range(10)]
    assert codes == [Code.VALID] * 3 + [Code.RATE_LIMITED] * 7
    # One store refusal, then local answers: 4 takes, not 10.
    assert store.calls["take"] == 4
    limited = await validator.validate(ValidationRequest(secret))
    assert limited.rate_limit is not None
    assert limited.rate_limit.remaining == 0
    assert limited.rate_limit.reset_at > time.time()


async def test_redis_miss_is_exactly_one_round_trip(redis_url: str) -> None:
    """Counted by Redis itself: every command the server executed, per Validate on a cold cache."""
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, timeout_s=1.0)
    _, secret = await AdminService(store, auditor=AUDITOR).create_key("t", owner_id="o")
    validator = Validator(store, make_cache(ttl_s=0.0))
    await validator.validate(ValidationRequest(secret))  # connect first
    probe = aioredis.Redis.from_url(redis_url)
    await probe.config_resetstat()
    for _ in range(25):
        assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    stats = await probe.info("commandstats")
    await probe.aclose()
    await store.close()
    calls = {name: int(s["calls"]) for name, s in stats.items() if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    assert calls == {"cmdstat_get": 25}


async def test_last_used_is_write_behind_and_bounded(store: CountingStore) -> None:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    secrets = [(await admin.create_key("t", owner_id="o"))[1] for _ in range(5)]
    validator = Validator(store, make_cache(), last_used_max=3)  # type: ignore[arg-type]
    store.calls.clear()
    for secret in secrets * 3:
        await validator.validate(ValidationRequest(secret))
    assert "touch" not in store.calls, "last use is never written on the hot path"
    batch = validator.drain_last_used()
    assert len(batch) == 3 and validator.last_used_dropped == 6
    await store.touch(batch)
    assert set(await store.last_used(list(batch))) == set(batch)
    assert validator.drain_last_used() == {}


async def test_a_batch_reads_all_its_misses_in_one_store_call(store: CountingStore) -> None:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    await admin.create_policy("t", Policy("p", 0, 0.0, 0.0, scopes=("read",)))
    _, with_policy = await admin.create_key("t", owner_id="o", policy_id="p")
    _, plain = await admin.create_key("t", owner_id="o", scopes=("write",))
    unknown = [keys.generate().secret for _ in range(20)]
    validator = Validator(store, make_cache())  # type: ignore[arg-type]
    store.calls.clear()
    batch = [ValidationRequest(with_policy, ["read"]), *map(ValidationRequest, unknown),
             ValidationRequest(plain, ["write"]), ValidationRequest("garbage"), ValidationRequest(plain, ["read"])]
    codes = [d.code for d in await validator.validate_many(batch)]
    assert codes == [Code.VALID, *[Code.NOT_FOUND] * 20, Code.VALID, Code.MALFORMED, Code.INSUFFICIENT_SCOPE]
    assert store.calls == Counter({"get_keys_by_hash": 1, "get_policy": 1})
    # Now all cached (the unknown ones negatively): the same batch touches no store.
    store.calls.clear()
    assert [d.code for d in await validator.validate_many(batch)] == codes
    assert sum(store.calls.values()) == 0


async def test_redis_batch_is_one_round_trip(redis_url: str) -> None:
    """Counted by Redis itself: a batch of 100 misses on a cold cache is one MGET."""
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, timeout_s=1.0)
    secrets = [(await AdminService(store, auditor=AUDITOR).create_key("t", owner_id="o"))[1] for _ in range(10)]
    batch = [ValidationRequest(s) for s in secrets + [keys.generate().secret for _ in range(90)]]
    validator = Validator(store, make_cache())
    await store.ping()  # connect first
    probe = aioredis.Redis.from_url(redis_url)
    await probe.config_resetstat()
    codes = [d.code for d in await validator.validate_many(batch)]
    stats = await probe.info("commandstats")
    await probe.aclose()
    await store.close()
    assert codes == [Code.VALID] * 10 + [Code.NOT_FOUND] * 90
    calls = {name: int(s["calls"]) for name, s in stats.items()
             if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    assert calls == {"cmdstat_mget": 1}


async def test_misses_beyond_the_in_flight_bound_are_answered_without_the_store(redis_url: str) -> None:
    """A paused Redis (CLIENT PAUSE) holds two misses, two more queue; a fifth is shed at once."""
    import asyncio

    import redis.asyncio as aioredis

    store = RedisStore(redis_url, timeout_s=0.2, retries=0)
    await store.ping()
    validator = Validator(store, make_cache(), max_store_inflight=2, store_budget_s=0.2)
    probe = aioredis.Redis.from_url(redis_url)
    await probe.execute_command("CLIENT", "PAUSE", "5000", "ALL")

    def miss() -> ValidationRequest:
        return ValidationRequest(keys.generate().secret)

    try:
        waiting = [asyncio.create_task(validator.validate(miss())) for _ in range(4)]
        await asyncio.sleep(0)  # two wait on the store, two for a slot
        shed = await validator.validate(miss())
        assert shed.code is Code.UNAVAILABLE
        assert not any(t.done() for t in waiting), "the fifth miss waited"
        assert validator.store_shed == 1
        # Every one answers within its budget: the store timed out, or its slot never came.
        assert [(await t).code for t in waiting] == [Code.UNAVAILABLE] * 4
        assert validator.store_errors >= 2 and validator.store_shed + validator.store_errors == 5
        # Slots are given back: the next miss asks the store again (and times out on the pause).
        errors = validator.store_errors
        assert (await validator.validate(miss())).code is Code.UNAVAILABLE
        assert validator.store_errors == errors + 1
        # A batch takes one slot, and with none to be had its misses are shed together.
        shed_before = validator.store_shed
        held = [asyncio.create_task(validator.validate(miss())) for _ in range(4)]
        await asyncio.sleep(0)
        batch = await validator.validate_many([miss() for _ in range(5)])
        assert [d.code for d in batch] == [Code.UNAVAILABLE] * 5
        assert validator.store_shed == shed_before + 5
        await asyncio.gather(*held)
    finally:
        await probe.execute_command("CLIENT", "UNPAUSE")
        await probe.aclose()
        await store.close()


async def test_a_burst_beyond_the_in_flight_bound_waits_for_a_slot_on_a_healthy_store(
    store: CountingStore,
) -> None:
    """Against a store that answers, a burst of twice the bound is served, not refused."""
    import asyncio

    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    secrets = [(await admin.create_key("t", owner_id="o"))[1] for _ in range(8)]
    validator = Validator(store, make_cache(), max_store_inflight=4, store_budget_s=30.0)  # type: ignore[arg-type]
    decisions = await asyncio.gather(*(validator.validate(ValidationRequest(s)) for s in secrets))
    assert [d.code for d in decisions] == [Code.VALID] * 8
    assert validator.store_shed == 0


class _OneWriter(dict[str, Any]):
    """The over-limit memo, recording which threads change it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        self.writers.add(threading.current_thread().name)
        super().__setitem__(key, value)

    def pop(self, key: str, *default: Any) -> Any:
        self.writers.add(threading.current_thread().name)
        return super().pop(key, *default)


class _LockedCounts(list[int]):
    """The decision counts, recording every change made without the validator's count lock."""

    def __init__(self, validator: Validator) -> None:
        super().__init__(validator.decisions)
        self.validator = validator
        self.unlocked = 0

    def __setitem__(self, index: Any, value: Any) -> None:
        if not self.validator._count_lock.locked():
            self.unlocked += 1
        super().__setitem__(index, value)


async def test_hits_on_pool_threads_change_shared_state_only_under_a_lock_or_as_its_one_writer(
    store: CountingStore,
) -> None:
    """The sync stack answers hits on its threads: the over-limit memo has one writer (the loop),
    and the decision counts are changed under one lock, never by a GIL detail."""
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    await admin.create_policy("t", Policy("lim", 0, 0.0, 0.0, rate_limit=RateLimit(1, 60)))
    _, secret = await admin.create_key("t", owner_id="o", policy_id="lim")
    now = [time.time()]
    validator = Validator(store, make_cache(), clock=lambda: now[0])  # type: ignore[arg-type]
    memo = validator._over_limit = _OneWriter()
    counts = validator.decisions = _LockedCounts(validator)
    codes = [(await validator.validate(ValidationRequest(secret))).code for _ in range(3)]
    assert codes == [Code.VALID, Code.RATE_LIMITED, Code.RATE_LIMITED]
    assert memo  # refused locally from here
    now[0] += 120  # the window has reset: the memo is dead

    def pool_thread_hits() -> list[Code | None]:
        answers = [validator.check_cached(ValidationRequest(secret)) for _ in range(3)]
        return [None if a is None else a.code for a in answers]

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        assert pool.submit(pool_thread_hits).result(timeout=60) == [None] * 3  # to the store again
    assert all(not name.startswith("pool") for name in memo.writers), memo.writers
    assert counts.unlocked == 0
    validator.drain_last_used()  # the loop's drain drops the dead memo
    assert not memo


async def _two_keys_same_metadata(store: CountingStore) -> tuple[Validator, str, str]:
    admin = AdminService(store, auditor=AUDITOR)  # type: ignore[arg-type]
    _, first = await admin.create_key("a", owner_id="o", scopes=["read"], metadata={"tenant": "t1"})
    _, second = await admin.create_key("b", owner_id="o", scopes=["read"], metadata={"tenant": "t1"})
    return Validator(store, make_cache()), first, second  # type: ignore[arg-type]


async def test_a_caller_cannot_change_what_another_key_answers_through_a_decision(
    store: CountingStore,
) -> None:
    """Cached records with equal metadata share one mapping: a caller writing to the
    metadata of its Decision must not change the cache, nor another key's answer."""
    validator, first, second = await _two_keys_same_metadata(store)
    mine = await validator.validate(ValidationRequest(first, ["read"]))
    theirs = await validator.validate(ValidationRequest(second, ["read"]))
    assert mine.record is not None and theirs.record is not None
    with pytest.raises(TypeError):
        mine.record.metadata["tenant"] = "t2"  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        mine.record.metadata.clear()  # type: ignore[attr-defined]
    for secret in (first, second):
        again = await validator.validate(ValidationRequest(secret, ["read"]))
        assert again.record is not None and dict(again.record.metadata) == {"tenant": "t1"}


async def test_strings_that_only_look_like_a_cached_key_never_hit_it(store: CountingStore) -> None:
    """The hit path skips the shape check: a variant of a cached key (whitespace, case,
    unicode lookalikes, NULs) must still be refused, never answered as the real key."""
    validator, secret, _ = await _two_keys_same_metadata(store)
    assert (await validator.validate(ValidationRequest(secret))).code is Code.VALID
    body = secret.split("_", 1)[1]
    variants = [
        " " + secret, secret + " ", secret + "\n", secret + "\x00", "\t" + secret, secret.upper(),
        secret.swapcase(), secret.replace("_", "\uff3f"), "\uff4b\uff53_" + body,  # fullwidth
        secret.replace("s", "\u0455", 1),  # Cyrillic dze
        secret[:-1] + chr(ord(secret[-1]) + 0xFEE0) if secret[-1].isascii() else secret + "x",
        secret + "\u200b", "\u200b" + secret, "\ufeff" + secret, secret[:10] + "\ud800" + secret[11:],
    ]
    for variant in variants:
        for _ in range(3):
            decision = await validator.validate(ValidationRequest(variant))
            assert decision.code is Code.MALFORMED, repr(variant)
    assert validator.decisions[Code.VALID] == 1
