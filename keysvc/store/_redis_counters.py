"""Per-key hot counters of `RedisStore`: rate windows, quotas and last use.

Every counter of a key shares the hash tag `{<key_id>}`, so in Redis Cluster
the hot path spreads over all slots, and one key's take (window + quota) is
one script on one slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from keysvc.errors import InvalidArgumentError
from keysvc.model import CounterResult, QuotaRefill, RateLimit
from keysvc.store import _redis_scripts as lua
from keysvc.store._counters import counter_result, window_start
from keysvc.store._redis_io import Caller

__all__ = ["RedisCounters"]

# A window key outlives its window a little, so a caller whose clock runs
# slightly behind still counts into the same key instead of a fresh one.
_WINDOW_SLACK_MS = 1000


class RedisCounters:
    """Counters under `<namespace>:c:{<key_id>}:...`."""

    def __init__(self, client: Redis, namespace: str, caller: Caller) -> None:
        self._client = client
        self._prefix = namespace + ":c:"
        self._call = caller
        self._take = client.register_script(lua.TAKE)
        self._create_quota = client.register_script(lua.CREATE_QUOTA)
        self._touch = client.register_script(lua.TOUCH)

    def key(self, key_id: str, *parts: str) -> str:
        """Return the name of one of a key's counters."""
        return ":".join((self._prefix + "{" + key_id + "}", *parts))

    async def take(
        self,
        key_id: str,
        cost: int,
        rate_limit: RateLimit | None,
        quota: bool,
        refill: QuotaRefill | None,
        now: float,
    ) -> CounterResult:
        """Run one take as one EVALSHA (see `Store.take`)."""
        if rate_limit is None and not quota:
            return CounterResult(allowed=True)
        limit, ttl_ms, window = -1, 1, self.key(key_id, "rl")
        if rate_limit is not None:
            start = window_start(now, rate_limit.window_s)
            window = self.key(key_id, "rl", str(rate_limit.window_s), str(start))
            limit = rate_limit.requests
            ttl_ms = int((start + rate_limit.window_s - now) * 1000) + 1 + _WINDOW_SLACK_MS
        args = [
            cost,
            limit,
            ttl_ms,
            1 if quota else 0,
            -1 if refill is None else refill.amount,
            0 if refill is None else refill.interval_s,
            repr(float(now)),
        ]
        reply = await self._call.write(self._take(keys=[window, self.key(key_id, "q")], args=args))
        allowed, rate_ok, used, has_quota, remaining = (int(v) for v in reply)
        return counter_result(
            allowed=bool(allowed),
            rate_limited=not rate_ok,
            rate_limit=rate_limit,
            rate_used=used,
            quota_remaining=remaining if has_quota else None,
            now=now,
        )

    async def create_quota(self, key_id: str, remaining: int, since: float) -> bool:
        """Create a key's quota counter unless it exists; return whether it did."""
        created = await self._call.write(
            self._create_quota(keys=[self.key(key_id, "q")], args=[remaining, repr(since)])
        )
        return bool(created)

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota; its refill cadence is kept."""
        counter = self.key(key_id, "q")
        if remaining is None:
            await self._call.write(self._client.delete(counter))
        elif remaining < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")
        else:
            await self._call.write(self._client.hset(counter, "remaining", remaining))

    async def get_quota(self, key_id: str) -> int | None:
        """Return a key's remaining quota, or None when it has none."""
        value = await self._call.read(lambda: self._client.hget(self.key(key_id, "q"), "remaining"))
        return None if value is None else int(value)

    async def touch(self, last_used: Mapping[str, float]) -> None:
        """Keep the later of the stored and given times (idempotent, so retried)."""
        if not last_used:
            return

        async def op() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id, at in last_used.items():
                    await self._touch(keys=[self.key(key_id, "lu")], args=[repr(float(at))], client=pipe)
                await pipe.execute()

        await self._call.read(op)

    async def last_used(self, key_ids: Sequence[str]) -> dict[str, float]:
        """Return the known last-use times of these keys (one pipelined round trip)."""
        ids = list(dict.fromkeys(key_ids))
        if not ids:
            return {}

        async def op() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.get(self.key(key_id, "lu"))
                return await pipe.execute()

        values = await self._call.read(op)
        return {i: float(v) for i, v in zip(ids, values, strict=True) if v is not None}
