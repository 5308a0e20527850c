"""Bounded in-process caches of key records (by key hash) and policies. Pure, no I/O.

Lookups and inserts are plain dict operations so the Validate cache-hit path
stays a synchronous function that never leaves the process. Ages use a
monotonic clock passed in by the caller (`now`), which keeps this testable.

Consistency: the event follower calls `evict_key` / `evict_policy` / `clear`.
A store read that started before such an invalidation must not repopulate
the cache with what it read, so every insert carries the `epoch` the reader
saw before going to the store, and is dropped if an invalidation of that key
hash, of its policy, or of everything came after; fills of other keys are
kept (unrelated admin traffic must not leave keys uncached). Each
invalidation is remembered with its epoch, a bounded number of them: when one
is forgotten, every fill older than it is dropped (safe, never stale).
Inserts and invalidations take one lock, so a fill on a pool thread and an
invalidation on the loop's thread are ordered, never interleaved.

Memory: a cached key is one dict entry and one `CachedKey` (the record as
cached, its age, its grant), nothing else per key; the record keeps only what
decides and identifies a call (`CachedRecord`, slotted). At a million cached
keys every object and field here costs megabytes.

Threads: `get`, `is_unknown` and `get_policy` may run on the sync gRPC
stack's threads while the event loop inserts and evicts. The rule: every
change to a map or a counter (inserts, invalidations, clear, dropping an
expired negative entry, and a hit's LRU reordering and count) holds the one
lock above, for O(1) work; lookups take no lock, and are single reads of an
entry that is never changed in place (`CachedKey` fields are replaced whole),
so none checks-then-acts on a shared map: an entry removed between the lookup
and what follows it is answered as found, never a KeyError.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from keysvc.core.model import CachedRecord, KeyRecord, Policy
from keysvc.core.shared import SharedValues

if TYPE_CHECKING:
    from keysvc.core.policy import Grant

__all__ = ["MIN_LAG_LIMIT_S", "CacheStats", "CachedKey", "KeyCache", "cached_record"]

# The least follower lag tolerated before cached entries stop being read, in
# seconds, whatever the stale window: a caught-up follower confirms about once
# per blocking read, so a smaller limit would refuse the cache when idle.
MIN_LAG_LIMIT_S = 1.0

# Records cached with the same metadata share one mapping (metadata is often a
# team or an environment: the same few entries on thousands of keys). Where
# metadata differs from key to key (a tenant id), most values still repeat (a
# plan, a region), and those share one string each: each string a key holds
# costs ~55 bytes, a good part of what varied metadata adds per cached key.
_METADATA: SharedValues[Mapping[str, str]] = SharedValues()
_METADATA_VALUES: SharedValues[str] = SharedValues()
# Read-only views: a Decision hands its record (and so this mapping) to the caller, and
# one mapping is shared by every cached key with that metadata, so a caller writing to
# its answer's metadata would change the cache and other keys' answers (and what is
# sent upstream as identity). The empty one is shared too: writing to it must not
# give the one key metadata either.
_NO_METADATA: Mapping[str, str] = MappingProxyType({})


def _shared_metadata(metadata: Mapping[str, str]) -> Mapping[str, str]:
    if not metadata:
        return _NO_METADATA
    share = _METADATA_VALUES.share
    items = tuple((name, share(value, value)) for name, value in metadata.items())
    return _METADATA.share(items, MappingProxyType(dict(items)))


def cached_record(record: KeyRecord) -> CachedRecord:
    """The part of `record` the cache keeps: what decides and identifies a call (`CachedRecord`).

    Metadata equal to another cached key's is shared with it, as a read-only
    mapping (records are frozen, and so is what a caller is handed).
    """
    return CachedRecord(
        record.key_id, record.key_hash, record.owner_id, record.policy_id, record.scopes,
        _shared_metadata(record.metadata), record.enabled, record.expires_at, record.revoke_at,
        record.has_quota, record.budget_id, record.revision,
    )


class CachedKey:
    """One cached key: its record as cached, when it was cached, and what it grants.

    `grant` starts as None; the Validator sets it on first use and replaces it
    whole when the key's policy changes, so a reader on another thread sees the
    old grant or the new one, never a mix. An entry leaves the cache with its
    grant: nothing else holds per-key state.
    """

    __slots__ = ("cached_at", "grant", "record")

    def __init__(self, record: CachedRecord, cached_at: float) -> None:
        self.record = record
        self.cached_at = cached_at
        self.grant: Grant | None = None


@dataclass(slots=True)
class CacheStats:
    """Counters for metrics and the bench."""

    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    evictions: int = 0
    invalidations: int = 0
    flushes: int = 0


class KeyCache:
    """LRU of key records by key hash, a short negative cache, and policies by id.

    Records are kept as `cached_record` trims them.

    Args:
        max_keys: most key records held; the least recently used goes first.
        ttl_s: an entry older than this is not fresh (the safety net behind events).
        negative_max: most unknown hashes remembered.
        negative_ttl_s: how long an unknown hash is remembered.
        stale_window_s: how long past `ttl_s` an entry may still be read with
            `get(..., stale_ok=True)` (while the store is down); also how long
            entries are read at all once the event follower stops confirming
            it is caught up (at least `MIN_LAG_LIMIT_S`).
    """

    __slots__ = (
        "_floor",
        "_invalidated",
        "_keys",
        "_lag_limit_s",
        "_lock",
        "_negative",
        "_policies",
        "confirmed_at",
        "epoch",
        "max_keys",
        "negative_max",
        "negative_ttl_s",
        "remembered_invalidations",
        "stale_window_s",
        "stats",
        "ttl_s",
    )

    def __init__(
        self,
        *,
        max_keys: int,
        ttl_s: float,
        negative_max: int,
        negative_ttl_s: float,
        stale_window_s: float,
    ) -> None:
        self.max_keys = max_keys
        self.ttl_s = ttl_s
        self.negative_max = negative_max
        self.negative_ttl_s = negative_ttl_s
        self.stale_window_s = stale_window_s
        # OrderedDict, not a dict re-inserted on each hit: `move_to_end` is one
        # step under the lock, where pop-and-reinsert after a lock-free lookup
        # could put back an entry the event follower has just evicted.
        self._keys: OrderedDict[str, CachedKey] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._policies: dict[str, tuple[Policy, float]] = {}
        self.epoch = 0
        # ("k" or "p", key hash or policy id) -> epoch of its last invalidation,
        # oldest first; fills that began before `_floor` are all dropped.
        self._invalidated: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._floor = 0
        self.remembered_invalidations = 4096
        self._lock = threading.Lock()
        # When the event follower last confirmed it had read the whole log (on
        # the clock of `now`; a cache no follower keeps is always current).
        # Written only by the follower (one writer, on the loop's thread).
        # Once that is longer ago than `_lag_limit_s`, nothing cached is read.
        self.confirmed_at = math.inf
        self._lag_limit_s = max(stale_window_s, MIN_LAG_LIMIT_S)
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_hash: str, now: float, *, stale_ok: bool = False) -> CachedKey | None:
        """Return the cached key for `key_hash` if fresh (or within the stale window)."""
        keys = self._keys
        entry = keys.get(key_hash)
        if entry is not None and now - self.confirmed_at <= self._lag_limit_s:
            age = now - entry.cached_at
            if age < self.ttl_s or (stale_ok and age < self.ttl_s + self.stale_window_s):
                with self._lock:  # a hit reorders the LRU and counts: a writer
                    self.stats.hits += 1
                    # Not contextlib.suppress: that is a context manager per cache hit.
                    try:  # noqa: SIM105
                        keys.move_to_end(key_hash)
                    except KeyError:  # evicted by another thread since the lookup: still answerable
                        pass
                return entry
        with self._lock:
            self.stats.misses += 1
        return None

    def is_unknown(self, key_hash: str, now: float) -> bool:
        """True when `key_hash` was recently found not to exist."""
        until = self._negative.get(key_hash)
        if until is None:
            return False
        if until > now:
            with self._lock:
                self.stats.negative_hits += 1
            return True
        with self._lock:
            if self._negative.get(key_hash) == until:  # not renewed since it was read
                del self._negative[key_hash]
        return False

    def put(self, record: KeyRecord, now: float, epoch: int) -> CachedKey:
        """Cache `record` unless an invalidation happened after `epoch` was read.

        Returns:
            The entry made from `record` (trimmed as cached), also when it was
            not cached, so the caller answers from the same record either way.
        """
        entry = CachedKey(cached_record(record), now)
        key_hash = entry.record.key_hash
        with self._lock:
            if self._stale_fill(epoch, ("k", key_hash)) or (
                record.policy_id and self._stale_fill(epoch, ("p", record.policy_id))
            ):
                return entry
            keys = self._keys
            keys[key_hash] = entry
            keys.move_to_end(key_hash)
            self._negative.pop(key_hash, None)
            while len(keys) > self.max_keys:
                keys.popitem(last=False)
                self.stats.evictions += 1
        return entry

    def _stale_fill(self, epoch: int, target: tuple[str, str]) -> bool:
        """True when `target` was invalidated after a fill that began at `epoch` (lock held)."""
        return epoch < self._floor or self._invalidated.get(target, 0) > epoch

    def _invalidate(self, target: tuple[str, str]) -> None:
        """Advance the epoch and remember it for `target` (lock held)."""
        self.epoch += 1
        remembered = self._invalidated
        remembered[target] = self.epoch
        remembered.move_to_end(target)
        while len(remembered) > self.remembered_invalidations:
            _, forgotten = remembered.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def put_unknown(self, key_hash: str, now: float, epoch: int) -> None:
        """Remember that `key_hash` does not exist, briefly and within a bound."""
        if self.negative_ttl_s <= 0:
            return
        with self._lock:
            if self._stale_fill(epoch, ("k", key_hash)):
                return
            negative = self._negative
            negative[key_hash] = now + self.negative_ttl_s
            negative.move_to_end(key_hash)
            while len(negative) > self.negative_max:
                negative.popitem(last=False)

    def get_policy(self, policy_id: str, now: float, *, stale_ok: bool = False) -> Policy | None:
        """Return the cached current version of a policy if fresh (or within the stale window)."""
        entry = self._policies.get(policy_id)
        if entry is None or now - self.confirmed_at > self._lag_limit_s:
            return None
        age = now - entry[1]
        if age < self.ttl_s or (stale_ok and age < self.ttl_s + self.stale_window_s):
            return entry[0]
        return None

    def put_policy(self, policy: Policy, now: float, epoch: int) -> None:
        """Cache a policy's current version unless invalidated after `epoch`."""
        with self._lock:
            if not self._stale_fill(epoch, ("p", policy.policy_id)):
                self._policies[policy.policy_id] = (policy, now)

    def evict_key(self, key_hash: str) -> None:
        """Forget one key (changed elsewhere), including a negative entry."""
        with self._lock:
            self._invalidate(("k", key_hash))
            self.stats.invalidations += 1
            self._keys.pop(key_hash, None)
            self._negative.pop(key_hash, None)

    def evict_policy(self, policy_id: str) -> None:
        """Forget one policy (changed elsewhere)."""
        with self._lock:
            self._invalidate(("p", policy_id))
            self.stats.invalidations += 1
            self._policies.pop(policy_id, None)

    def clear(self) -> None:
        """Forget everything (the event log was lost, so anything may have changed)."""
        with self._lock:  # new maps: O(1) under the lock, whatever their size
            self.epoch += 1
            self._floor = self.epoch
            self._invalidated.clear()
            self.stats.flushes += 1
            self._keys = OrderedDict()
            self._negative = OrderedDict()
            self._policies = {}
