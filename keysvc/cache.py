"""Bounded in-process caches of key records (by key hash) and policies. Pure, no I/O.

Lookups and inserts are plain dict operations so the Validate cache-hit path
stays a synchronous function that never leaves the process. On the sync gRPC
stack, reads run on several threads while the event loop's thread inserts and
evicts: every method is a sequence of single dict operations (each atomic
under the GIL) that tolerates an entry vanishing between two of them. Ages use a
monotonic clock passed in by the caller (`now`), which keeps this testable.

Consistency: the event follower calls `evict_key` / `evict_policy` / `clear`.
A store read that started before such an invalidation must not repopulate
the cache with what it read, so every insert carries the `epoch` the reader
saw before going to the store, and is dropped if an invalidation came after.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from keysvc.model import KeyRecord, Policy

__all__ = ["CacheStats", "KeyCache"]


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

    Args:
        max_keys: most key records held; the least recently used goes first.
        ttl_s: an entry older than this is not fresh (the safety net behind events).
        negative_max: most unknown hashes remembered.
        negative_ttl_s: how long an unknown hash is remembered.
        stale_window_s: how long past `ttl_s` an entry may still be read with
            `get(..., stale_ok=True)` (while the store is down).
    """

    __slots__ = (
        "_keys",
        "_negative",
        "_policies",
        "epoch",
        "max_keys",
        "negative_max",
        "negative_ttl_s",
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
        self._keys: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._policies: dict[str, tuple[Policy, float]] = {}
        self.epoch = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_hash: str, now: float, *, stale_ok: bool = False) -> KeyRecord | None:
        """Return the cached record for `key_hash` if fresh (or within the stale window)."""
        entry = self._keys.get(key_hash)
        if entry is not None:
            age = now - entry[1]
            if age < self.ttl_s or (stale_ok and age < self.ttl_s + self.stale_window_s):
                try:  # noqa: SIM105 - free when nothing is raised; contextlib.suppress is a call
                    self._keys.move_to_end(key_hash)
                except KeyError:  # evicted by another thread since the read: still answerable
                    pass
                self.stats.hits += 1
                return entry[0]
        self.stats.misses += 1
        return None

    def is_unknown(self, key_hash: str, now: float) -> bool:
        """True when `key_hash` was recently found not to exist."""
        until = self._negative.get(key_hash)
        if until is None:
            return False
        if until > now:
            self.stats.negative_hits += 1
            return True
        self._negative.pop(key_hash, None)  # pop: another thread may have dropped it already
        return False

    def put(self, record: KeyRecord, now: float, epoch: int) -> None:
        """Cache `record` unless an invalidation happened after `epoch` was read."""
        if epoch != self.epoch:
            return
        keys = self._keys
        keys[record.key_hash] = (record, now)
        keys.move_to_end(record.key_hash)
        self._negative.pop(record.key_hash, None)
        while len(keys) > self.max_keys:
            keys.popitem(last=False)
            self.stats.evictions += 1

    def put_unknown(self, key_hash: str, now: float, epoch: int) -> None:
        """Remember that `key_hash` does not exist, briefly and within a bound."""
        if epoch != self.epoch or self.negative_ttl_s <= 0:
            return
        negative = self._negative
        negative[key_hash] = now + self.negative_ttl_s
        negative.move_to_end(key_hash)
        while len(negative) > self.negative_max:
            negative.popitem(last=False)

    def get_policy(self, policy_id: str, now: float, *, stale_ok: bool = False) -> Policy | None:
        """Return the cached current version of a policy if fresh (or within the stale window)."""
        entry = self._policies.get(policy_id)
        if entry is None:
            return None
        age = now - entry[1]
        if age < self.ttl_s or (stale_ok and age < self.ttl_s + self.stale_window_s):
            return entry[0]
        return None

    def put_policy(self, policy: Policy, now: float, epoch: int) -> None:
        """Cache a policy's current version unless invalidated after `epoch`."""
        if epoch == self.epoch:
            self._policies[policy.policy_id] = (policy, now)

    def evict_key(self, key_hash: str) -> None:
        """Forget one key (changed elsewhere), including a negative entry."""
        self.epoch += 1
        self.stats.invalidations += 1
        self._keys.pop(key_hash, None)
        self._negative.pop(key_hash, None)

    def evict_policy(self, policy_id: str) -> None:
        """Forget one policy (changed elsewhere)."""
        self.epoch += 1
        self.stats.invalidations += 1
        self._policies.pop(policy_id, None)

    def clear(self) -> None:
        """Forget everything (the event log was lost, so anything may have changed)."""
        self.epoch += 1
        self.stats.flushes += 1
        self._keys.clear()
        self._negative.clear()
        self._policies.clear()
