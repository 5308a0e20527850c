"""Per-budget hot counters of `RedisStore`: rate windows, quotas and last use.

A budget is a key's counters: its own key_id, or after a rotation the id of
the key it replaced (`KeyRecord.budget_id`), so old and new secret spend one
window and one quota. Every counter of a budget shares the hash tag
`{<budget_id>}`: in Redis Cluster the hot path spreads over all slots, one
take (window + quota) is one script on one slot, and a rotation moves nothing.
Last-use times stay per key (`{<key_id>}`).

Time: by default the script reads Redis's TIME, so every sidecar counts on
the one clock; `store_clock=False` uses the caller's `now` (tests of the
rules at fixed instants).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keysvc.core.errors import InvalidArgumentError
from keysvc.core.limits import counter_result
from keysvc.core.model import CounterResult, TakeRequest
from keysvc.store.redis import scripts as lua
from keysvc.store.redis.io import Caller
from keysvc.store.redis.topology import Client, Replicated

__all__ = ["RedisCounters"]

# A window hash outlives its window a little: its TTL only collects garbage,
# the start stored inside decides which window it counts.
_WINDOW_SLACK_MS = 1000


class RedisCounters:
    """Counters under `<namespace>:c:{<key_id>}:...`."""

    def __init__(
        self, client: Client, namespace: str, caller: Caller, *, store_clock: bool = True,
        ack: Replicated | None = None,
    ) -> None:
        self._client = client
        # Quota counters an admin set must survive a failover as the record does.
        self._ack = ack or Replicated(client, 0, 0.0)
        self._store_clock = store_clock
        self._prefix = namespace + ":c:"
        self._call = caller
        self._take = client.register_script(lua.TAKE)
        self._create_quota = client.register_script(lua.CREATE_QUOTA)

    def key(self, key_id: str, *parts: str) -> str:
        """Return the name of one of a key's counters."""
        return ":".join((self._prefix + "{" + key_id + "}", *parts))

    async def take(self, request: TakeRequest) -> CounterResult:
        """Run one take as one EVALSHA (see `Store.take`)."""
        budget_id, cost, rate_limit, quota, refill, now = request
        if rate_limit is None and not quota:
            return CounterResult(allowed=True)
        limit, window_s = -1, 0
        if rate_limit is not None:
            limit, window_s = rate_limit.requests, rate_limit.window_s
        args = [
            cost,
            limit,
            window_s,
            1 if quota else 0,
            -1 if refill is None else refill.amount,
            0 if refill is None else refill.interval_s,
            "" if self._store_clock else repr(float(now)),
            _WINDOW_SLACK_MS,
        ]
        keys = [self.key(budget_id, "rl", str(window_s)), self.key(budget_id, "q")]
        reply = await self._call.write(self._take(keys=keys, args=args))
        allowed, rate_ok, used, quota_state, remaining = (int(v) for v in reply[:5])
        return counter_result(
            allowed=bool(allowed),
            rate_limited=not rate_ok,
            rate_limit=rate_limit,
            rate_used=used,
            quota_remaining=remaining if quota_state == 1 else None,
            now=float(reply[5]),
            quota_missing=quota_state == -1,
        )

    async def create_quota(self, key_id: str, remaining: int, since: float) -> bool:
        """Create a key's quota counter unless it exists; return whether it did."""
        created = await self._call.write(
            self._ack.script(self._create_quota, [self.key(key_id, "q")], [remaining, repr(since)])
        )
        return bool(created)

    async def set_quota(self, key_id: str, remaining: int | None) -> None:
        """Set (or with None, remove) a key's remaining quota; its refill cadence is kept."""
        counter = self.key(key_id, "q")
        if remaining is None:
            await self._call.write(self._ack.command(counter, "DEL", counter))
        elif remaining < 0:
            raise InvalidArgumentError("remaining quota must be >= 0")
        else:
            await self._call.write(self._ack.command(counter, "HSET", counter, "remaining", remaining))

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
                    # EVAL, not a registered script: a cluster pipeline cannot load one on NOSCRIPT.
                    pipe.eval(lua.TOUCH, 1, self.key(key_id, "lu"), repr(float(at)))
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
