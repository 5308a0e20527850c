"""Rate limits, quotas and last-use times on the validator's hot path (the counters half of `Validator`)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import structlog

from keysvc.core.errors import StoreUnavailableError
from keysvc.core.model import (
    Code,
    CounterResult,
    Decision,
    KeyFacts,
    Policy,
    RateLimitState,
    TakeRequest,
    budget_of,
)
from keysvc.service.ports import Clock
from keysvc.store.base import Store

__all__ = ["Counting"]

log = structlog.get_logger("keysvc.validator")

_MISSING_QUOTA_WARNED_MAX = 1024
_SKEW_NOTICED_S = 1.0


def _on_local_clock(result: CounterResult, now: float) -> CounterResult:
    """Move the window's end from the store's clock onto this process's.

    The store counts on its own clock, so skewed sidecars share one window;
    each then tells its clients (and its over-limit memo) how long is left
    by its own clock. An offset under `_SKEW_NOTICED_S` cannot be told from
    the call's own latency: the store's (whole-second) window end is kept.
    """
    state = result.rate_limit
    if state is None or result.counted_at is None or abs(now - result.counted_at) < _SKEW_NOTICED_S:
        return result
    moved = RateLimitState(state.limit, state.remaining, state.reset_at - result.counted_at + now)
    return replace(result, rate_limit=moved, counted_at=now)


class Counting:
    """Counter calls, the over-limit memo and last-use notes; `Validator` sets the state in `__init__`."""

    _store: Store
    _clock: Clock
    _fail_open: bool
    _over_limit: dict[str, tuple[float, RateLimitState]]
    _last_used: dict[str, float]
    _last_used_lock: threading.Lock
    _last_used_max: int
    last_used_dropped: int
    _missing_quota_warned: set[str]
    store_errors: int

    def _note_use(self, key_id: str, now: float) -> None:
        with self._last_used_lock:
            used = self._last_used
            if len(used) < self._last_used_max or key_id in used:
                used[key_id] = now
            else:
                self.last_used_dropped += 1

    def _over_limit_decision(self, decision: Decision, key_id: str, now: float) -> Decision | None:
        blocked = self._over_limit.get(key_id)
        if blocked is None or blocked[0] <= now:  # a dead memo is the loop's drain to drop
            return None
        return Decision(
            Code.RATE_LIMITED, decision.record, decision.policy, decision.scopes,
            "rate limit exceeded", rate_limit=blocked[1],
        )

    async def _take(
        self, decision: Decision, record: KeyFacts, policy: Policy | None, cost: int, now: float,
        deadline: float,
    ) -> Decision:
        rate_limit = policy.rate_limit if policy is not None else None
        refill = policy.quota_refill if policy is not None else None
        try:
            async with asyncio.timeout_at(deadline):
                result = await self._store.take(
                    TakeRequest(budget_of(record), cost, rate_limit, record.has_quota, refill, now)
                )
        except (StoreUnavailableError, TimeoutError):
            self.store_errors += 1
            # Counters live only in the store: without it, limits cannot be kept.
            if self._fail_open:
                return decision
            return Decision(Code.UNAVAILABLE, record, policy, decision.scopes, "key store unavailable")
        result = _on_local_clock(result, now)
        if result.quota_missing:
            self._warn_missing_quota(record)
        if result.allowed:
            return Decision(
                Code.VALID, record, policy, decision.scopes,
                rate_limit=result.rate_limit, quota_remaining=result.quota_remaining,
            )
        if result.rate_limited:
            if result.rate_limit is not None:
                self._over_limit[record.key_id] = (result.rate_limit.reset_at, result.rate_limit)
            return Decision(
                Code.RATE_LIMITED, record, policy, decision.scopes, "rate limit exceeded",
                rate_limit=result.rate_limit, quota_remaining=result.quota_remaining,
            )
        return Decision(
            Code.QUOTA_EXHAUSTED, record, policy, decision.scopes, "quota exhausted",
            rate_limit=result.rate_limit, quota_remaining=result.quota_remaining,
        )

    def _warn_missing_quota(self, record: KeyFacts) -> None:
        """Log a lost quota counter once per key (until many keys have been logged)."""
        # Evicted, lost in a failover, or a half-done write: the take refused it.
        warned = self._missing_quota_warned
        if record.key_id in warned:
            return
        if len(warned) >= _MISSING_QUOTA_WARNED_MAX:
            warned.clear()
        warned.add(record.key_id)
        log.warning("quota.counter_missing", key_id=record.key_id, budget_id=budget_of(record),
                    outcome="refused as QUOTA_EXHAUSTED until an admin sets the quota")

    def forget_limits(self, key_id: str) -> None:
        """Drop the local over-limit memo of a key (its policy or key changed)."""
        self._over_limit.pop(key_id, None)

    def forget_all_limits(self) -> None:
        """Drop every local over-limit memo."""
        self._over_limit.clear()

    def drain_last_used(self) -> dict[str, float]:
        """Take the last-use times gathered since the previous drain."""
        with self._last_used_lock:
            drained, self._last_used = self._last_used, {}
        # Over-limit memos of windows that have ended are dead weight: drop them here,
        # off the hot path, so that map stays bounded too.
        now = self._clock()
        # The memo's one writer is the loop (here, `_take`, `forget_*`); hits only read it.
        for key_id, (reset_at, _) in list(self._over_limit.items()):
            if reset_at <= now:
                self._over_limit.pop(key_id, None)
        return drained
