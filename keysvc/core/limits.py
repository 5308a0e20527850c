"""The rules of `Store.take`, shared by every backend.

SQLite runs `plan_take` inside its transaction; Redis runs the same rules in
Lua (`_redis_scripts.TAKE`), so the two are kept side by side and the contract
tests hold them to one behaviour:

- Fixed windows aligned to multiples of `window_s` since the epoch.
- A quota asked for whose counter does not exist (evicted, lost in a
  failover, deleted by hand) refuses the take and says so (`quota_missing`):
  a lost counter must never read as "unlimited", nor as "full" (a refill
  would over-grant). An admin setting the quota again heals it.
- With a refill, the quota is reset to `amount` once `interval_s` has passed
  since the last reset; the reset time advances by whole intervals so the
  cadence does not drift with traffic. A counter never reset before starts
  its cadence at its first use.
- Nothing is taken when either the rate limit or the quota refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keysvc.core.model import CounterResult, QuotaRefill, RateLimit, RateLimitState

__all__ = [
    "QuotaCounter",
    "TakePlan",
    "counter_result",
    "plan_take",
    "refill_quota",
    "window_start",
]


def window_start(now: float, window_s: int) -> int:
    """Return the start of the fixed window holding `now` (a multiple of `window_s`)."""
    return math.floor(now / window_s) * window_s


@dataclass(frozen=True, slots=True)
class QuotaCounter:
    """A stored quota counter; `remaining` None means there is none."""

    remaining: int | None
    refilled_at: float | None = None


def refill_quota(counter: QuotaCounter, refill: QuotaRefill | None, now: float) -> QuotaCounter:
    """Return the counter after any refill due at `now` (a missing one stays missing)."""
    if refill is None or counter.remaining is None:
        return counter
    if counter.refilled_at is None:
        return QuotaCounter(counter.remaining, now)
    elapsed = now - counter.refilled_at
    if elapsed < refill.interval_s:
        return counter
    periods = math.floor(elapsed / refill.interval_s)
    return QuotaCounter(refill.amount, counter.refilled_at + periods * refill.interval_s)


def counter_result(
    *,
    allowed: bool,
    rate_limited: bool,
    rate_limit: RateLimit | None,
    rate_used: int,
    quota_remaining: int | None,
    now: float,
    quota_missing: bool = False,
) -> CounterResult:
    """Build the answer of one take from what it counted at `now` (the store's clock)."""
    state = None
    if rate_limit is not None:
        start = window_start(now, rate_limit.window_s)
        state = RateLimitState(
            limit=rate_limit.requests,
            remaining=max(0, rate_limit.requests - rate_used),
            reset_at=float(start + rate_limit.window_s),
        )
    return CounterResult(
        allowed=allowed,
        rate_limit=state,
        quota_remaining=quota_remaining,
        rate_limited=rate_limited,
        quota_missing=quota_missing,
        counted_at=now,
    )


@dataclass(frozen=True, slots=True)
class TakePlan:
    """What one take decided and what to write back."""

    result: CounterResult
    rate_used: int
    """Requests counted in the current window after this take."""
    quota: QuotaCounter
    """The quota counter to store (unchanged when nothing was due or taken)."""


def plan_take(
    cost: int,
    rate_limit: RateLimit | None,
    rate_used: int,
    quota: QuotaCounter | None,
    refill: QuotaRefill | None,
    now: float,
) -> TakePlan:
    """Decide one take from the current window count and quota counter.

    Args:
        cost: quota units this call uses.
        rate_limit: the key's rate limit, or None.
        rate_used: requests already counted in the window holding `now`.
        quota: the stored counter (`QuotaCounter(None)` when it is missing), or
            None when the key has no quota.
        refill: the policy's refill rule, or None.
        now: the store's clock.
    """
    missing = quota is not None and quota.remaining is None
    counter = refill_quota(quota, refill, now) if quota is not None else QuotaCounter(None)
    rate_ok = rate_limit is None or rate_used + 1 <= rate_limit.requests
    quota_ok = not missing and (counter.remaining is None or counter.remaining >= cost)
    allowed = rate_ok and quota_ok
    if allowed:
        if rate_limit is not None:
            rate_used += 1
        if counter.remaining is not None:
            counter = QuotaCounter(counter.remaining - cost, counter.refilled_at)
    result = counter_result(
        allowed=allowed,
        rate_limited=not rate_ok,
        rate_limit=rate_limit,
        rate_used=rate_used,
        quota_remaining=counter.remaining,
        now=now,
        quota_missing=missing,
    )
    return TakePlan(result=result, rate_used=rate_used, quota=counter)
