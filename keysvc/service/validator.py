"""The hot path: parse -> cache -> store -> policy -> counters -> Decision.

`check_cached` is a plain synchronous function: it answers from process
memory or returns None, and never awaits, holds a lock across work, or touches
the network, so the gRPC stack under it is a choice made by measurement. `validate` adds the
store round trips for misses and for keys with counters.

Threads: `check_cached` and `shed` may run on several threads at once (the sync
stack's pool) while the loop's thread runs everything else. The rule, for every
map and counter they share: a change is made under a lock (the decision counts,
`store_shed` and last uses under `_count_lock`, which is also `_last_used_lock`,
so a hit takes one lock here; the cache under its own), or by the one thread
that writes it (the over-limit memo and `store_errors`: the loop only; a hit on
another thread reads the memo and leaves a dead entry for the loop's drain);
lookups take no lock and are single reads of values never changed in place. A cached entry's grant is the one
exception: whichever thread makes it first stores it, and any two are equal
(`_grant`), so a lost store costs one more `make_grant`, never a wrong answer.

Store work is bounded, so misses cannot hold up hits: at most `max_store_inflight`
answers wait on the store at once and as many more wait for a slot (`StoreSlots`);
beyond that, or when its slot does not come in time, a miss is answered without the
store, from the stale cache or UNAVAILABLE, and counted in `store_shed`. Each answer
waits at most `store_budget_s` in all (one deadline for its slot, record, policy and
counters). The slots are only touched on the loop's thread, where every coroutine
here runs; `shed` (also called by the sync stack's threads) counts under a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import structlog

from keysvc.core.cache import CachedKey, KeyCache
from keysvc.core.errors import StoreUnavailableError
from keysvc.core.keys import lookup_hash, well_formed, well_formed_hash
from keysvc.core.model import Code, Decision, Policy, RateLimitState
from keysvc.core.policy import Grant, evaluate, make_grant
from keysvc.service._counting import Counting
from keysvc.service._slots import StoreSlots
from keysvc.store.base import Store

__all__ = ["ValidationRequest", "Validator"]

log = structlog.get_logger("keysvc.validator")


_MALFORMED = Decision(Code.MALFORMED, message="key is malformed")
_NOT_FOUND = Decision(Code.NOT_FOUND, message="key not found")
_UNAVAILABLE = Decision(Code.UNAVAILABLE, message="key store unavailable")
_VALID = int(Code.VALID)


def _grant(entry: CachedKey, policy: Policy | None) -> Grant:
    """The entry's grant under `policy`, made once per (cached record, policy version).

    Replaced as one object (never patched), so threads reading the entry see
    either grant whole; two threads making it at once both get a correct one.
    """
    grant = entry.grant
    if grant is None or grant.valid.policy is not policy:
        grant = entry.grant = make_grant(entry.record, policy)
    return grant


class ValidationRequest(NamedTuple):
    """One Validate call, transport-independent (a tuple: cheap to make per call)."""

    key: str
    required_scopes: Sequence[str] = ()
    client_ip: str = ""
    cost: int = 1


class Validator(Counting):
    """Answers validation requests from the cache, falling back to the store.

    A decision's record is the key as the cache keeps it (`keysvc.core.model.CachedRecord`):
    ids, scopes, metadata, state and deadlines, not its name, hint or times.

    Args:
        store: the backend.
        cache: the process's key cache (shared with the event follower).
        fail_open: answer VALID for uncached keys when the store is down.
        clock: wall clock for expiry, revocation and windows.
        monotonic: clock for cache ages.
        last_used_max: most distinct keys whose last use is held between two
            write-behind flushes (memory bound; later ones are counted and dropped).
        max_store_inflight: most answers (a Validate miss, a whole batch) waiting
            on the store at once, and most waiting for a slot.
        store_budget_s: the most one answer waits on the store, all its calls together.
    """

    def __init__(
        self,
        store: Store,
        cache: KeyCache,
        *,
        fail_open: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        last_used_max: int = 100_000,
        max_store_inflight: int = 32,
        store_budget_s: float = 0.2,
    ) -> None:
        self._store = store
        self.cache = cache
        self._fail_open = fail_open
        self._clock = clock
        self._monotonic = monotonic
        # key_id -> (window reset time, state): keys known to be over their rate
        # limit are refused locally until the window resets.
        self._over_limit: dict[str, tuple[float, RateLimitState]] = {}
        # key_id -> last use; drained by `drain_last_used` (write-behind),
        # at most `last_used_max` keys between two drains.
        # Pool threads note uses while the loop drains: both under this lock (O(1) work).
        self._last_used: dict[str, float] = {}
        self._last_used_max = last_used_max
        self.last_used_dropped = 0
        # Plain counters, read by the metrics exporter at scrape time (no per-call
        # instrument calls): decisions by Code value, store failures, and the
        # durations of answers that needed the store.
        self.decisions = [0] * (max(Code) + 1)
        self.store_errors = 0
        # Answers given without asking the store because too many were waiting on it.
        self.store_shed = 0
        # The decision counts, store_shed and last uses: one lock, so a hit takes one.
        self._count_lock = self._last_used_lock = threading.Lock()
        self._slots = StoreSlots(max_store_inflight)
        self._store_budget_s = store_budget_s
        self.on_store_answer: Callable[[float], None] | None = None
        # key_ids whose lost quota counter was logged (loop thread only; bounded).
        self._missing_quota_warned: set[str] = set()

    def check_cached(self, request: ValidationRequest) -> Decision | None:  # noqa: PLR0911 (see below)
        """Answer from memory, or return None when the store must be asked.

        One frame per hit: each outcome is counted and returned where it is
        decided, and a VALID hit counts itself and notes its use under one lock.
        """
        key = request.key
        key_hash = lookup_hash(key)
        if key_hash is None:
            return self._counted(_MALFORMED)
        mono = self._monotonic()
        cache = self.cache
        entry = cache.get(key_hash, mono)
        if entry is None:
            # A cached hash is a stored key's, shape and checksum right: only a miss needs checking.
            if not well_formed(key):
                return self._counted(_MALFORMED)
            return self._counted(_NOT_FOUND) if cache.is_unknown(key_hash, mono) else None
        record = entry.record
        policy: Policy | None = None
        if record.policy_id:
            policy = cache.get_policy(record.policy_id, mono)
            if policy is None:
                return None
        now = self._clock()
        grant = _grant(entry, policy)
        decision = evaluate(record, policy, request.required_scopes, request.client_ip, now, grant)
        if decision.code is not Code.VALID:
            return self._counted(decision)
        if grant.limited:
            over = self._over_limit_decision(decision, record.key_id, now)
            return None if over is None else self._counted(over)
        key_id = record.key_id
        with self._count_lock:  # also the last uses' lock (`_note_use`, inlined here)
            self.decisions[_VALID] += 1
            used = self._last_used
            if len(used) < self._last_used_max or key_id in used:
                used[key_id] = now
            else:
                self.last_used_dropped += 1
        return decision

    def _counted(self, decision: Decision) -> Decision:
        with self._count_lock:
            self.decisions[decision.code] += 1
        return decision

    async def validate(self, request: ValidationRequest) -> Decision:
        """Answer one request; never raises for a bad key or an unavailable store."""
        decision = self.check_cached(request)
        if decision is not None:
            return decision
        return await self.validate_from_store(request)

    async def validate_from_store(self, request: ValidationRequest) -> Decision:
        """Answer a request that `check_cached` could not (it returned None)."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._store_budget_s
        if not await self._slots.acquire(deadline):
            return self.shed(request)
        try:
            decision = await self._validate_from_store(request, deadline)
        finally:
            self._slots.release()
        with self._count_lock:
            self.decisions[decision.code] += 1
        if self.on_store_answer is not None:
            self.on_store_answer(time.perf_counter() - started)
        return decision

    async def validate_many(self, requests: Sequence[ValidationRequest]) -> list[Decision]:
        """Answer a batch: hits from memory, every miss from one store read under one budget.

        The batch takes one in-flight slot; the records of all its misses are
        read in one round trip (`Store.get_keys_by_hash`), their uncached
        policies and counters concurrently, all within one `store_budget_s`.
        """
        answers = [self.check_cached(r) for r in requests]
        misses = [i for i, answer in enumerate(answers) if answer is None]
        if not misses:
            return [a for a in answers if a is not None]
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._store_budget_s
        if not await self._slots.acquire(deadline):
            for i in misses:
                answers[i] = self.shed(requests[i])
            return [a for a in answers if a is not None]
        try:
            hashes = {h for i in misses if (h := well_formed_hash(requests[i].key)) is not None}
            try:
                async with asyncio.timeout_at(deadline):
                    found = await self._fetch_many(sorted(hashes))
            except (StoreUnavailableError, TimeoutError):
                self.store_errors += 1
                found = None
            decided = await asyncio.gather(
                *(self._judge(requests[i], found, deadline) for i in misses)
            )
        finally:
            self._slots.release()
        with self._count_lock:
            for i, decision in zip(misses, decided, strict=True):
                self.decisions[decision.code] += 1
                answers[i] = decision
        if self.on_store_answer is not None:
            self.on_store_answer(time.perf_counter() - started)
        return [a for a in answers if a is not None]

    def shed(self, request: ValidationRequest) -> Decision:
        """Answer a miss without asking the store (too many wait on it): stale, fail-open or UNAVAILABLE."""
        key_hash = well_formed_hash(request.key)
        decision = _MALFORMED if key_hash is None else self._unreachable(request, key_hash)
        with self._count_lock:
            self.store_shed += 1
            self.decisions[decision.code] += 1
        return decision

    def _unreachable(self, request: ValidationRequest, key_hash: str) -> Decision:
        """The answer when the store cannot be asked: from the stale window, else fail open or closed."""
        found = self._stale(key_hash)
        if found is None:
            return Decision(Code.VALID, message="fail-open") if self._fail_open else _UNAVAILABLE
        entry, policy = found
        now = self._clock()
        grant = _grant(entry, policy)
        decision = evaluate(entry.record, policy, request.required_scopes, request.client_ip, now, grant)
        if decision.code is not Code.VALID:
            return decision
        if grant.limited and not self._fail_open:
            # Counters live only in the store: without it, limits cannot be kept.
            return Decision(Code.UNAVAILABLE, entry.record, policy, decision.scopes, "key store unavailable")
        self._note_use(entry.record.key_id, now)
        return decision

    async def _validate_from_store(self, request: ValidationRequest, deadline: float) -> Decision:
        key_hash = well_formed_hash(request.key)
        if key_hash is None:  # check_cached refuses these; this only keeps the types honest
            return _MALFORMED
        try:
            async with asyncio.timeout_at(deadline):
                found = {key_hash: await self._fetch(key_hash)}
        except (StoreUnavailableError, TimeoutError):
            self.store_errors += 1
            return self._unreachable(request, key_hash)
        return await self._judge(request, found, deadline)

    async def _judge(
        self, request: ValidationRequest,
        found: dict[str, tuple[CachedKey, Policy | None] | None] | None, deadline: float,
    ) -> Decision:
        """Decide one miss from what the store returned (`found` None: it did not answer)."""
        key_hash = well_formed_hash(request.key)
        if key_hash is None:
            return _MALFORMED
        if found is None:
            return self._unreachable(request, key_hash)
        hit = found.get(key_hash)
        if hit is None:
            return _NOT_FOUND
        entry, policy = hit
        record = entry.record
        now = self._clock()
        grant = _grant(entry, policy)
        decision = evaluate(record, policy, request.required_scopes, request.client_ip, now, grant)
        if decision.code is not Code.VALID:
            return decision
        if grant.limited:
            decision = await self._take(decision, record, policy, max(request.cost, 1), now, deadline)
        if decision.code is Code.VALID:
            self._note_use(record.key_id, now)
        return decision

    async def _fetch(self, key_hash: str) -> tuple[CachedKey, Policy | None] | None:
        """Read a record (and its policy) through the cache; None if unknown."""
        cache = self.cache
        epoch = cache.epoch
        mono = self._monotonic()
        entry = cache.get(key_hash, mono)
        if entry is None:
            stored = await self._store.get_key_by_hash(key_hash)
            if stored is None:
                cache.put_unknown(key_hash, mono, epoch)
                return None
            entry = cache.put(stored, mono, epoch)
        record = entry.record
        policy: Policy | None = None
        if record.policy_id:
            policy = cache.get_policy(record.policy_id, mono)
            if policy is None:
                policy = await self._store.get_policy(record.policy_id)
                if policy is not None:
                    cache.put_policy(policy, mono, epoch)
        return entry, policy

    async def _fetch_many(
        self, key_hashes: Sequence[str]
    ) -> dict[str, tuple[CachedKey, Policy | None] | None]:
        """`_fetch` for many hashes: one store read for the records, their policies concurrently."""
        cache = self.cache
        epoch = cache.epoch
        mono = self._monotonic()
        entries: dict[str, CachedKey | None] = {h: cache.get(h, mono) for h in key_hashes}
        wanted = [h for h, entry in entries.items() if entry is None]
        for key_hash, stored in zip(wanted, await self._store.get_keys_by_hash(wanted), strict=True):
            if stored is None:
                cache.put_unknown(key_hash, mono, epoch)
            else:
                entries[key_hash] = cache.put(stored, mono, epoch)
        policies: dict[str, Policy | None] = {}
        for entry in entries.values():
            policy_id = entry.record.policy_id if entry is not None else ""
            if policy_id and policy_id not in policies:
                policies[policy_id] = cache.get_policy(policy_id, mono)
        missing = [p for p, policy in policies.items() if policy is None]
        for policy_id, policy in zip(
            missing, await asyncio.gather(*(self._store.get_policy(p) for p in missing)), strict=True
        ):
            policies[policy_id] = policy
            if policy is not None:
                cache.put_policy(policy, mono, epoch)
        return {
            h: None if entry is None else (entry, policies.get(entry.record.policy_id))
            for h, entry in entries.items()
        }

    def _stale(self, key_hash: str) -> tuple[CachedKey, Policy | None] | None:
        """The cached key and its policy within the stale window, if any."""
        mono = self._monotonic()
        entry = self.cache.get(key_hash, mono, stale_ok=True)
        if entry is None:
            return None
        policy = None
        policy_id = entry.record.policy_id
        if policy_id:
            policy = self.cache.get_policy(policy_id, mono, stale_ok=True)
            if policy is None:
                return None
        return entry, policy
