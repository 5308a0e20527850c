"""keysvc.core.cache: LRU of key records, negative cache, policies, epochs, what is kept per key."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import pytest

from keysvc.core.cache import CachedKey, KeyCache, cached_record
from keysvc.core.model import CachedRecord, KeyRecord, Policy

pytestmark = pytest.mark.unit

TTL = 10.0
STALE = 5.0
NEG_TTL = 2.0


def make_cache(*, max_keys: int = 3, negative_max: int = 3, negative_ttl_s: float = NEG_TTL) -> KeyCache:
    return KeyCache(
        max_keys=max_keys,
        ttl_s=TTL,
        negative_max=negative_max,
        negative_ttl_s=negative_ttl_s,
        stale_window_s=STALE,
    )


def record(key_hash: str, *, owner_id: str = "owner") -> KeyRecord:
    return KeyRecord(key_id=f"key_{key_hash}", key_hash=key_hash, hint="", owner_id=owner_id,
                     created_at=0.0, updated_at=0.0)


def cached(cache: KeyCache, key_hash: str, now: float, *, stale_ok: bool = False) -> CachedRecord | None:
    """The record `get` answers with, or None."""
    entry = cache.get(key_hash, now, stale_ok=stale_ok)
    return None if entry is None else entry.record


def policy(policy_id: str, version: int = 1) -> Policy:
    return Policy(policy_id=policy_id, version=version, created_at=0.0, updated_at=0.0)


# -- LRU ---------------------------------------------------------------------------


def test_get_returns_what_put_stored_and_counts_hits_and_misses() -> None:
    cache = make_cache()
    cache.put(record("h1"), 100.0, cache.epoch)
    assert cached(cache, "h1", 100.0) == cached_record(record("h1"))
    assert cache.get("nope", 100.0) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_least_recently_used_goes_first_and_evictions_are_counted() -> None:
    cache = make_cache(max_keys=3)
    for h in ("a", "b", "c"):
        cache.put(record(h), 100.0, cache.epoch)
    assert cache.get("a", 100.0) is not None  # a is now the most recent; b is the oldest
    cache.put(record("d"), 100.0, cache.epoch)
    assert len(cache) == 3
    assert cache.stats.evictions == 1
    assert cache.get("b", 100.0) is None
    assert all(cache.get(h, 100.0) is not None for h in ("a", "c", "d"))


def test_bound_holds_under_many_inserts() -> None:
    cache = make_cache(max_keys=3)
    for i in range(50):
        cache.put(record(f"h{i}"), 100.0, cache.epoch)
        assert len(cache) <= 3
    assert cache.stats.evictions == 47
    assert [cache.get(f"h{i}", 100.0) is not None for i in (46, 47, 48, 49)] == [False, True, True, True]


def test_put_again_replaces_and_refreshes_recency() -> None:
    cache = make_cache(max_keys=2)
    cache.put(record("a", owner_id="old"), 100.0, cache.epoch)
    cache.put(record("b"), 100.0, cache.epoch)
    cache.put(record("a", owner_id="new"), 100.0, cache.epoch)  # a becomes most recent
    cache.put(record("c"), 100.0, cache.epoch)
    assert cache.get("b", 100.0) is None
    hit = cached(cache, "a", 100.0)
    assert hit is not None
    assert hit.owner_id == "new"
    assert cache.stats.evictions == 1


# -- TTL and the stale window ------------------------------------------------------


def test_entry_is_fresh_until_ttl() -> None:
    cache = make_cache()
    cache.put(record("h"), 100.0, cache.epoch)
    assert cache.get("h", 100.0 + TTL - 0.001) is not None
    assert cache.get("h", 100.0 + TTL) is None


def test_reading_does_not_extend_freshness() -> None:
    cache = make_cache()
    cache.put(record("h"), 100.0, cache.epoch)
    assert cache.get("h", 109.0) is not None
    assert cache.get("h", 110.0) is None


def test_stale_entry_is_served_only_with_stale_ok_within_the_window() -> None:
    cache = make_cache()
    cache.put(record("h"), 100.0, cache.epoch)
    inside = 100.0 + TTL + STALE - 0.001
    assert cache.get("h", inside) is None
    assert cached(cache, "h", inside, stale_ok=True) == cached_record(record("h"))
    assert cache.get("h", 100.0 + TTL + STALE, stale_ok=True) is None


def test_put_refreshes_the_age() -> None:
    cache = make_cache()
    cache.put(record("h"), 100.0, cache.epoch)
    cache.put(record("h"), 108.0, cache.epoch)
    assert cache.get("h", 115.0) is not None


# -- negative entries --------------------------------------------------------------


def test_unknown_hash_is_remembered_until_negative_ttl() -> None:
    cache = make_cache()
    cache.put_unknown("h", 100.0, cache.epoch)
    assert cache.is_unknown("h", 100.0 + NEG_TTL - 0.001)
    assert cache.stats.negative_hits == 1
    assert not cache.is_unknown("h", 100.0 + NEG_TTL)
    assert not cache.is_unknown("h", 100.0)  # the expired entry was dropped
    assert cache.stats.negative_hits == 1


def test_negative_entries_are_bounded_oldest_first() -> None:
    cache = make_cache(negative_max=3)
    for i in range(10):
        cache.put_unknown(f"h{i}", 100.0, cache.epoch)
    assert [cache.is_unknown(f"h{i}", 100.5) for i in range(10)] == [False] * 7 + [True] * 3


def test_zero_negative_ttl_remembers_nothing() -> None:
    cache = make_cache(negative_ttl_s=0.0)
    cache.put_unknown("h", 100.0, cache.epoch)
    assert not cache.is_unknown("h", 100.0)


def test_put_of_a_record_drops_its_negative_entry() -> None:
    cache = make_cache()
    cache.put_unknown("h", 100.0, cache.epoch)
    cache.put(record("h"), 100.5, cache.epoch)
    assert not cache.is_unknown("h", 100.5)
    assert cache.get("h", 100.5) is not None


# -- epochs: a read that raced an invalidation is not cached -----------------------


def test_put_with_an_epoch_older_than_an_invalidation_is_dropped() -> None:
    cache = make_cache()
    seen = cache.epoch  # a reader notes the epoch, then goes to the store
    cache.evict_key("h")  # the key changes meanwhile
    cache.put(record("h", owner_id="stale read"), 100.0, seen)
    assert cache.get("h", 100.0) is None
    assert len(cache) == 0
    cache.put(record("h", owner_id="fresh read"), 100.0, cache.epoch)
    hit = cached(cache, "h", 100.0)
    assert hit is not None
    assert hit.owner_id == "fresh read"


@pytest.mark.parametrize("invalidate", ["evict_key", "evict_policy", "clear"])
def test_an_invalidation_drops_older_puts_of_what_it_invalidated(invalidate: str) -> None:
    cache = make_cache()
    seen = cache.epoch
    if invalidate == "clear":
        cache.clear()
    elif invalidate == "evict_key":
        cache.evict_key("h")
        cache.evict_key("u")
    else:
        cache.evict_policy("p")
    assert cache.epoch > seen
    with_policy = KeyRecord(key_id="key_h", key_hash="h", hint="", owner_id="o", created_at=0.0,
                            updated_at=0.0, policy_id="p")
    cache.put(with_policy if invalidate == "evict_policy" else record("h"), 100.0, seen)
    cache.put_policy(policy("p"), 100.0, seen)
    assert cache.get("h", 100.0) is None
    if invalidate != "evict_key":
        assert cache.get_policy("p", 100.0) is None
    if invalidate != "evict_policy":
        cache.put_unknown("u", 100.0, seen)
        assert not cache.is_unknown("u", 100.0)


@pytest.mark.parametrize("invalidate", ["evict_key", "evict_policy"])
def test_an_unrelated_invalidation_keeps_older_puts(invalidate: str) -> None:
    """Admin traffic on other keys and policies must not stop this key from being cached."""
    cache = make_cache()
    seen = cache.epoch
    getattr(cache, invalidate)("other")
    cache.put(record("h"), 100.0, seen)
    cache.put_unknown("u", 100.0, seen)
    cache.put_policy(policy("p"), 100.0, seen)
    assert cached(cache, "h", 100.0) is not None
    assert cache.is_unknown("u", 100.0)
    assert cache.get_policy("p", 100.0) is not None


def test_invalidations_remembered_are_bounded_and_forgetting_one_is_conservative() -> None:
    cache = make_cache()
    seen = cache.epoch
    for i in range(100_000):
        cache.evict_key(f"other{i}")
    assert len(cache._invalidated) <= cache.remembered_invalidations
    cache.put(record("h"), 100.0, seen)  # older than what was forgotten: dropped, to be safe
    assert cache.get("h", 100.0) is None
    cache.put(record("h"), 100.0, cache.epoch)
    assert cached(cache, "h", 100.0) is not None


# -- invalidation ------------------------------------------------------------------


def test_evict_key_drops_the_record_and_a_negative_entry() -> None:
    cache = make_cache()
    cache.put(record("a"), 100.0, cache.epoch)
    cache.put(record("b"), 100.0, cache.epoch)
    cache.put_unknown("u", 100.0, cache.epoch)
    cache.evict_key("a")
    cache.evict_key("u")
    assert cache.get("a", 100.0) is None
    assert cache.get("b", 100.0) is not None
    assert not cache.is_unknown("u", 100.0)
    assert cache.stats.invalidations == 2


def test_evict_policy_drops_only_that_policy() -> None:
    cache = make_cache()
    cache.put_policy(policy("p1"), 100.0, cache.epoch)
    cache.put_policy(policy("p2"), 100.0, cache.epoch)
    cache.put(record("h"), 100.0, cache.epoch)
    cache.evict_policy("p1")
    assert cache.get_policy("p1", 100.0) is None
    assert cache.get_policy("p2", 100.0) == policy("p2")
    assert cache.get("h", 100.0) is not None
    assert cache.stats.invalidations == 1


def test_clear_forgets_everything() -> None:
    cache = make_cache()
    cache.put(record("h"), 100.0, cache.epoch)
    cache.put_unknown("u", 100.0, cache.epoch)
    cache.put_policy(policy("p"), 100.0, cache.epoch)
    cache.clear()
    assert len(cache) == 0
    assert cache.get("h", 100.0) is None
    assert not cache.is_unknown("u", 100.0)
    assert cache.get_policy("p", 100.0) is None
    assert cache.stats.flushes == 1
    assert cache.stats.invalidations == 0


# -- policies ----------------------------------------------------------------------


def test_policy_ttl_and_stale_window() -> None:
    cache = make_cache()
    cache.put_policy(policy("p"), 100.0, cache.epoch)
    assert cache.get_policy("p", 100.0 + TTL - 0.001) == policy("p")
    assert cache.get_policy("p", 100.0 + TTL) is None
    assert cache.get_policy("p", 100.0 + TTL, stale_ok=True) == policy("p")
    assert cache.get_policy("p", 100.0 + TTL + STALE, stale_ok=True) is None
    assert cache.get_policy("missing", 100.0, stale_ok=True) is None


def test_put_policy_replaces_the_cached_version() -> None:
    cache = make_cache()
    cache.put_policy(policy("p", 1), 100.0, cache.epoch)
    cache.put_policy(policy("p", 2), 101.0, cache.epoch)
    cached = cache.get_policy("p", 101.0)
    assert cached is not None
    assert cached.version == 2


# -- what is kept per key ----------------------------------------------------------


def full_record(key_hash: str, **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "key_id": f"key_{key_hash}", "key_hash": key_hash, "hint": "ks_abcd", "owner_id": "owner",
        "created_at": 10.0, "updated_at": 20.0, "name": "billing", "policy_id": "p",
        "scopes": ("read",), "metadata": {"team": "a"}, "enabled": False, "expires_at": 30.0,
        "revoke_at": 40.0, "rotated_from": "key_old", "rotated_to": "key_new", "has_quota": True,
        "revision": 7, "announced_through": 25.0,
    }
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


_DECIDES = ("key_id", "key_hash", "owner_id", "policy_id", "scopes", "metadata", "enabled",
            "expires_at", "revoke_at", "has_quota", "budget_id", "revision")
_ADMIN_ONLY = ("hint", "created_at", "updated_at", "name", "rotated_from", "rotated_to", "announced_through")


def test_a_cached_record_keeps_what_decides_and_identifies_a_call() -> None:
    full = full_record("h", budget_id="key_old")
    kept = cached_record(full)
    assert {f: getattr(kept, f) for f in _DECIDES} == {f: getattr(full, f) for f in _DECIDES}
    # Its own slotted type, holding nothing else: admin-only fields are not kept (admins read the store).
    assert type(kept) is not KeyRecord
    assert tuple(f.name for f in dataclasses.fields(kept)) == _DECIDES
    assert not hasattr(kept, "__dict__")
    for name in _ADMIN_ONLY:
        assert not hasattr(kept, name)


def test_every_key_record_field_is_either_cached_or_admin_only() -> None:
    """A field added to KeyRecord must be placed: kept by the cache (it decides a call) or not."""
    assert sorted(f.name for f in dataclasses.fields(KeyRecord)) == sorted(_DECIDES + _ADMIN_ONLY)


def test_cached_records_with_equal_metadata_share_it() -> None:
    first = cached_record(full_record("a", metadata={"team": "a"}))
    second = cached_record(full_record("b", metadata={"team": "a"}))
    other = cached_record(full_record("c", metadata={"team": "b"}))
    assert first.metadata is second.metadata
    assert other.metadata == {"team": "b"}


def _fresh(text: str) -> str:
    """`text` as a new string object, as the store's decoder makes one per record."""
    return "".join(list(text))


def test_cached_records_with_different_metadata_share_the_values_that_repeat() -> None:
    first = cached_record(full_record("a", metadata={"tenant": _fresh("tn_1"), "plan": _fresh("business")}))
    second = cached_record(full_record("b", metadata={"tenant": _fresh("tn_2"), "plan": _fresh("business")}))
    assert first.metadata == {"tenant": "tn_1", "plan": "business"}
    assert second.metadata == {"tenant": "tn_2", "plan": "business"}
    assert first.metadata["plan"] is second.metadata["plan"]
    assert first.metadata is not second.metadata


def test_put_returns_the_entry_it_cached_as_get_returns_it() -> None:
    cache = make_cache()
    entry = cache.put(full_record("h"), 100.0, cache.epoch)
    assert cache.get("h", 100.0) is entry
    assert entry.record == cached_record(full_record("h"))
    assert entry.grant is None  # the Validator works it out on first use


def test_put_dropped_by_an_old_epoch_still_returns_the_trimmed_entry() -> None:
    cache = make_cache()
    seen = cache.epoch
    cache.evict_key("h")
    entry = cache.put(full_record("h"), 100.0, seen)
    assert isinstance(entry, CachedKey)
    assert entry.record == cached_record(full_record("h"))
    assert cache.get("h", 100.0) is None


def test_a_reinserted_key_is_a_new_entry_without_the_old_grant() -> None:
    cache = make_cache()
    old = cache.put(record("h"), 100.0, cache.epoch)
    old.grant = object()  # type: ignore[assignment]
    new = cache.put(record("h"), 101.0, cache.epoch)
    assert new is not old
    assert new.grant is None
    assert cache.get("h", 101.0) is new


# -- reads racing the event loop (the hot path may run on other threads) ----------


class _EvictedDuringRead(OrderedDict[str, Any]):
    """A key map whose entry another thread removes between lookup and reordering."""

    def move_to_end(self, key: str, last: bool = True) -> None:
        self.pop(key, None)
        super().move_to_end(key, last)


def test_a_hit_evicted_between_lookup_and_reordering_is_still_answered() -> None:
    cache = make_cache()
    entry = cache.put(record("h"), 100.0, cache.epoch)
    cache._keys = _EvictedDuringRead(cache._keys)
    assert cache.get("h", 100.0) is entry
    assert cache.get("h", 100.0) is None  # and it stays evicted


def test_an_expired_negative_entry_removed_meanwhile_is_not_an_error() -> None:
    cache = make_cache()
    cache.put_unknown("u", 100.0, cache.epoch)

    class _Gone(OrderedDict[str, float]):
        def get(self, key: str, default: Any = None) -> Any:
            value = super().get(key, default)
            self.pop(key, None)  # another thread drops it right after this lookup
            return value

    cache._negative = _Gone(cache._negative)
    assert not cache.is_unknown("u", 100.0 + NEG_TTL)


class _Guarded(OrderedDict[str, Any]):
    """A cache map that records every change made without the cache's lock held."""

    def __init__(self, cache: KeyCache, items: OrderedDict[str, Any]) -> None:
        super().__init__(items)
        self.cache = cache
        self.unlocked: list[str] = []

    def _check(self, what: str) -> None:
        if not self.cache._lock.locked():
            self.unlocked.append(what)

    def __setitem__(self, key: str, value: Any) -> None:
        self._check("set")
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check("del")
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._check("pop")
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[str, Any]:
        self._check("popitem")
        return super().popitem(last)

    def move_to_end(self, key: str, last: bool = True) -> None:
        self._check("move_to_end")
        super().move_to_end(key, last)


def test_every_change_to_the_cache_maps_holds_its_lock() -> None:
    """Hits reorder the LRU and count: writers too, so they take the one lock (never a GIL detail)."""
    cache = make_cache(max_keys=2, negative_max=2)
    keys_map = cache._keys = _Guarded(cache, cache._keys)
    negative = cache._negative = _Guarded(cache, cache._negative)
    for n, key_hash in enumerate("abc"):
        cache.put(record(key_hash), 100.0 + n, cache.epoch)  # the third evicts the first
    assert cache.get("c", 103.0) is not None and cache.get("b", 103.0) is not None  # hits reorder
    assert cache.get("a", 103.0) is None
    for key_hash in "xyz":
        cache.put_unknown(key_hash, 100.0, cache.epoch)
    assert not cache.is_unknown("z", 100.0 + NEG_TTL)  # an expired entry is dropped
    cache.evict_key("b")
    assert keys_map.unlocked == [] and negative.unlocked == []
    assert cache.stats.hits == 2 and cache.stats.evictions == 1
