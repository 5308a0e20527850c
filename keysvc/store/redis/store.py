"""Production store: Redis, shared by every sidecar: one server, a Redis Cluster or behind Sentinel.

Key schema (`ns` = namespace):

    {ns}:key:<key_id>          STRING  KeyRecord JSON
    {ns}:hash:<key_hash>       STRING  KeyRecord JSON again (the hot-path lookup: one GET)
    {ns}:keys                  ZSET    every key_id, score 0 (lexical paging)
    {ns}:owner:<owner_id>      ZSET    key_ids of one owner
    {ns}:policy_keys:<id>      ZSET    key_ids referencing one policy
    {ns}:policy:<policy_id>    STRING  current Policy JSON
    {ns}:policy:<id>:versions  HASH    version -> Policy JSON, every version
    {ns}:policies              ZSET    every policy_id, score 0
    {ns}:meta                  HASH    name -> value
    {ns}:req:<actor>:<req_id>  STRING  RequestMark JSON, expiring (PXAT) with the mark
    {ns}:due                   ZSET    key_id -> next unannounced expiry/revocation time
    {ns}:events                STREAM  event log, field `e` = Event JSON
    ns:c:{<budget_id>}:q       HASH    quota {remaining, refilled_at}
    ns:c:{<budget_id>}:rl:<w>  HASH    window of w s {start, used}
    ns:c:{<key_id>}:lu         STRING  last-use time

A budget is the key's own key_id, or the one a rotated key inherits
(`KeyRecord.budget_id`): old and new secret share one quota and one window.

Why: everything an admin change touches (record, indexes, event) shares the
one hash tag `{ns}`, so in Redis Cluster it lives in one slot and every change
is one Lua script: atomic, one round trip, its event appended in the same
step. Admin changes are rare and validations read that slot only on a cache
miss, so one slot carries it easily. Counters are the hot path for limited
keys and take the key's own tag, so their load spreads over the cluster; a
take touches only its key's slot, in one EVALSHA.

The cost of that split: a quota counter cannot join the lifecycle script.
Creation writes it first (only if absent) and removes it again if the key is
refused, so a key is never visible without it; UpdateKey(quota_remaining)
writes it just after the revision-checked record. A rotation writes no
counter at all (the new key inherits the budget). Whatever is lost between
two steps, or evicted later, fails closed: a take whose counter is missing
is refused (`CounterResult.quota_missing`), never counted as unlimited.
Eviction is the one loss to rule out: run Redis with
`maxmemory-policy noeviction` (the first successful ping warns otherwise).

Clock: takes count on Redis's TIME, read inside the script, so sidecars
with skewed clocks agree on window boundaries and refill times.

Timeouts: every call has `timeout_s` on connect, on each reply and on
waiting for a pooled connection (redis-py's defaults are seconds), and one
deadline over all of it (`Caller`), `timeout_s * (1 + retries)`: a read's
retries (backoff of a millisecond or so) run inside it; writes get one
attempt, never retried (a retried write could apply twice).
Blocking event reads use their own
client without a socket timeout, bounded by `block_s + timeout_s` per call.

Modules: `scripts` (loads lua/*.lua), `counters` (the per-key slots),
`stream` (the event log), `io` (clients, errors, retries), `topology`
(Cluster and Sentinel URLs, writes acknowledged by a replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from keysvc.core.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
)
from keysvc.core.model import (
    CounterResult,
    Event,
    KeyRecord,
    TakeRequest,
    budget_of,
    next_deadline,
)
from keysvc.store.base import KeyPage, RequestMark
from keysvc.store.codec import (
    check_page_size,
    check_revision,
    dumps,
    event_to_dict,
    loads,
    record_from_dict,
    record_to_dict,
)
from keysvc.store.redis.io import text, warn_if_evictable
from keysvc.store.redis.keyspace import refused
from keysvc.store.redis.policies import RedisPolicies
from keysvc.store.redis.stream import end_of, parse_stream_id, read_entries, stream_info, wait_for_entry

__all__ = ["RedisStore"]


class RedisStore(RedisPolicies):
    """`Store` on Redis, with a key schema ready for Redis Cluster.

    Args:
        url: redis://host:port/db (or rediss://, unix://, redis+cluster://,
            redis+sentinel://: see `_redis_topology`).
        namespace: prefix of every key, and the lifecycle hash tag.
        timeout_s: connect, reply and pool-wait timeout of one call.
        retries: extra attempts of a failed read (writes get none).
        event_retention: about how many events the stream keeps.
        max_connections: connections per pool (one pool for calls, one for
            blocking event reads).
        store_clock: count windows and refills on Redis's TIME (False: on
            the caller's `now`, for tests of the rules at fixed instants).
    """

    # -- lifecycle --------------------------------------------------------------

    async def ping(self) -> None:
        """Return when Redis answers PING (the first time, also check its eviction policy)."""
        await self._call.read(self._client.ping)
        if not self._eviction_checked:
            self._eviction_checked = True
            await warn_if_evictable(self._client, self._call)

    async def close(self) -> None:
        """Close both connection pools. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()
            await self._blocking.aclose()

    # -- keys -------------------------------------------------------------------

    def _record_keys(self, new: KeyRecord, old: KeyRecord | None) -> list[str]:
        was = old or new
        return [
            self._k("key", new.key_id),
            self._k("hash", new.key_hash),
            self._k("hash", was.key_hash),
            self._k("owner", new.owner_id),
            self._k("owner", was.owner_id),
            self._k("policy_keys", new.policy_id),
            self._k("policy_keys", was.policy_id),
        ]

    async def _put_records(
        self, writes: Sequence[tuple[KeyRecord, KeyRecord | None, int]], event: Event,
        mark: RequestMark | None = None,
    ) -> str:
        """Run PUT_KEYS: (record, its stored version or None, expected revision) each."""
        keys = [self._events, self._k("keys"), self._k("due")]
        args: list[str | int] = [self._retention, dumps(event_to_dict(event))]
        for new, old, expected in writes:
            keys += self._record_keys(new, old)
            due = next_deadline(new)
            args += [new.key_id, expected, dumps(record_to_dict(new)), "" if due is None else repr(due)]
        self._with_mark(keys, args, mark)
        reply = await self._call.write(self._ack.script(self._put_keys, keys, args))
        if reply[0] != "OK":
            raise refused(str(reply[0]), f"key {writes[0][0].key_id}")
        return str(reply[1])

    async def _with_new_quota(
        self, record: KeyRecord, quota: int | None, write: Callable[[], Awaitable[str]]
    ) -> None:
        # The counter lives in the key's own slot, outside the lifecycle
        # script: written first, so the key is never visible without it, and
        # removed again when the key is refused. (After StoreUnavailableError
        # the outcome is unknown; a counter of a key never made is harmless.)
        created = False
        if quota is not None:
            created = await self._counters.create_quota(budget_of(record), quota, record.created_at)
        try:
            await write()
        except (AlreadyExistsError, NotFoundError, ConflictError):  # DuplicateRequestError too
            if created:
                await self._counters.set_quota(budget_of(record), None)
            raise

    async def _stored(self, record: KeyRecord, expected_revision: int) -> KeyRecord:
        # Read first to learn which index entries the new record replaces;
        # the script re-checks the revision, so they cannot go stale.
        check_revision(record.revision, expected_revision)
        stored = await self.get_key(record.key_id)
        if stored is None:
            raise NotFoundError(f"key {record.key_id} not found")
        if stored.revision != expected_revision:
            raise ConflictError(
                f"key {record.key_id} is at revision {stored.revision}, not {expected_revision}"
            )
        return stored

    async def create_key(
        self, record: KeyRecord, quota: int | None, event: Event, mark: RequestMark | None = None
    ) -> None:
        """Insert a new key and its event in one script (its quota counter just before)."""
        await self._with_new_quota(
            record, quota, lambda: self._put_records([(record, None, 0)], event, mark)
        )

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """Return the key with this public id, or None."""
        body = await self._call.read(lambda: self._client.get(self._k("key", key_id)))
        return None if body is None else record_from_dict(loads(body))

    async def due_keys(self, now: float, limit: int) -> Sequence[KeyRecord]:
        """Return keys whose next unannounced deadline has passed, soonest first."""
        ids = await self._call.read(
            lambda: self._client.zrangebyscore(self._k("due"), "-inf", now, start=0, num=max(1, limit))
        )
        if not ids:
            return []
        names = [self._k("key", text(i)) for i in ids]  # type: ignore[arg-type]
        bodies = await self._call.read(lambda: self._client.mget(names))
        return [record_from_dict(loads(b)) for b in bodies if b is not None]

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """Return the key whose secret hashes to `key_hash`, or None: one GET.

        The hash index holds a copy of the record (written by the same script
        as the record), so a cache miss costs exactly one round trip.
        """
        body = await self._call.read(lambda: self._client.get(self._k("hash", key_hash)))
        return None if body is None else record_from_dict(loads(body))

    async def get_keys_by_hash(self, key_hashes: Sequence[str]) -> Sequence[KeyRecord | None]:
        """Return the key of each hash, in order (None where unknown): one MGET."""
        bodies = await self._mget([self._k("hash", h) for h in key_hashes])
        return [None if b is None else record_from_dict(loads(b)) for b in bodies]

    async def list_keys(self, owner_id: str, page_size: int, page_token: str) -> KeyPage:
        """Page through keys ordered by key_id, optionally only `owner_id`'s."""
        check_page_size(page_size)
        index = self._k("owner", owner_id) if owner_id else self._k("keys")
        ids, token = await self._page_ids(index, "keys", page_size, page_token)
        bodies = await self._mget([self._k("key", i) for i in ids])
        return KeyPage([record_from_dict(loads(b)) for b in bodies if b is not None], token)

    async def keys_with_policy(self, policy_id: str, limit: int) -> tuple[int, Sequence[str]]:
        """Return how many keys reference `policy_id` and the first `limit` of their ids."""
        index = self._k("policy_keys", policy_id)

        async def op() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zcard(index)
                pipe.zrange(index, 0, max(0, limit) - 1)
                return await pipe.execute()

        count, ids = await self._call.read(op)
        return int(count), [text(i) for i in ids][: max(0, limit)]

    async def update_key(
        self, record: KeyRecord, expected_revision: int, event: Event,
        mark: RequestMark | None = None, *, quota: int | None = None,
    ) -> None:
        """Replace a key's record if it is still at `expected_revision`, then set `quota`.

        The counter follows the revision-checked record, so a lost race
        changes nothing; a failure between the two leaves the old value, or
        for a newly added quota a missing counter: refused, never unlimited.
        """
        if quota is not None and quota < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")
        stored = await self._stored(record, expected_revision)
        await self._put_records([(record, stored, expected_revision)], event, mark)
        if quota is not None:
            await self._counters.set_quota(budget_of(record), quota)

    async def rotate_key(
        self,
        old: KeyRecord,
        expected_revision: int,
        new: KeyRecord,
        quota: int | None,
        event: Event,
        mark: RequestMark | None = None,
    ) -> None:
        """Replace `old` and insert `new` in one script (`new`'s quota counter just before)."""
        stored = await self._stored(old, expected_revision)
        if new.key_id == old.key_id or new.key_hash in (old.key_hash, stored.key_hash):
            raise AlreadyExistsError(f"key {new.key_id} (or its hash) exists already")
        await self._with_new_quota(
            new,
            quota,
            lambda: self._put_records(
                [(old, stored, expected_revision), (new, None, 0)], event, mark
            ),
        )

    # -- counters (per-key slots: see counters) ------------------------------

    async def take(self, request: TakeRequest) -> CounterResult:
        """Take from the rate limit and quota in one EVALSHA (rules in `keysvc.core.limits`)."""
        return await self._counters.take(request)

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota; its refill cadence is kept."""
        await self._counters.set_quota(key_id, remaining)

    async def get_quota(self, key_id: str) -> int | None:
        """Return a key's remaining quota, or None when it has none."""
        return await self._counters.get_quota(key_id)

    async def touch(self, last_used: Mapping[str, float]) -> None:
        """Record last-use times; an older time never replaces a newer one."""
        await self._counters.touch(last_used)

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        """Return the known last-use times of these keys."""
        return await self._counters.last_used(key_ids)

    # -- event log (see _redis_stream) ------------------------------------------------

    async def append_event(self, event: Event) -> str:
        """Append an event on its own (XADD, trimmed to about `event_retention`)."""
        cursor = await self._call.write(self._ack.command(
            self._events, "XADD", self._events, "MAXLEN", "~", self._retention, "*",
            "e", dumps(event_to_dict(event)),
        ))
        return str(cursor)

    async def read_events(self, after: str, limit: int, block_s: float) -> Sequence[Event]:
        """Return up to `limit` events after `after`, waiting up to `block_s` for the first.

        A blocking wait only signals that something arrived; the read is then
        redone with its cursor check, so a reset during the wait is noticed.
        """
        if limit < 1:
            raise InvalidArgumentError("limit must be >= 1")
        start = parse_stream_id(after) if after else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, block_s)
        while True:
            events = await self._call.read(
                lambda: read_entries(self._client, self._events, start, limit)
            )
            left = deadline - loop.time()
            if events or left <= 0:
                return events
            await wait_for_entry(self._blocking, self._events, start, left, self._timeout_s)

    async def last_cursor(self) -> str:
        """Return the stream's end: its last generated id ("0-0" when there is no stream)."""
        return end_of(await self._call.read(lambda: stream_info(self._client, self._events)))
